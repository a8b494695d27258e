"""The benchmark's upstream: an aiohttp server answering every chat completion with one prebuilt reply.

It does as little as possible so that the numbers measure what sits in front of it.  Run as
``python -m bench.upstream [--fault-rate F] [--delay S]``; it prints ``port N`` once listening.  A request with
``"stream": true`` gets ``STREAM_CHUNKS`` SSE chunks ``CHUNK_GAP`` seconds apart (for time-to-first-byte and
chunk-gap figures); ``--fault-rate`` answers that share of requests with a 500 (for the soak); ``--delay`` holds
every answer that many seconds (for the overload run, whose requests must stay in flight).
"""

from __future__ import annotations

import asyncio
import json
import random
import sys

from aiohttp import web

from bench.serving import run_until_signalled

REPLY = json.dumps(
    {
        "id": "chatcmpl-bench",
        "object": "chat.completion",
        "created": 1764000000,
        "model": "qwen-plus",
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": "Which screen size would you like: 6.1, 6.5 or 6.7 inch?"},
                "finish_reason": "stop",
            }
        ],
        "usage": {"prompt_tokens": 42, "completion_tokens": 17, "total_tokens": 59},
    }
).encode()


STREAM_CHUNKS = 20
CHUNK_GAP = 0.01
FAILURE = json.dumps({"error": {"message": "injected fault", "type": "server_error", "code": "injected"}}).encode()


def _chunk(delta: dict[str, str], finish: str | None = None) -> bytes:
    choice = {"index": 0, "delta": delta, "finish_reason": finish}
    event = {"id": "chatcmpl-bench", "object": "chat.completion.chunk", "model": "qwen-plus", "choices": [choice]}
    return b"data: " + json.dumps(event).encode() + b"\n\n"


def make_app(fault_rate: float = 0.0, delay: float = 0.0) -> web.Application:
    async def chat_completions(request: web.Request) -> web.StreamResponse:
        body = await request.read()
        if delay:
            await asyncio.sleep(delay)
        if fault_rate and random.random() < fault_rate:
            return web.Response(status=500, body=FAILURE, content_type="application/json")
        if b'"stream":true' not in body.replace(b" ", b""):
            return web.Response(body=REPLY, content_type="application/json")
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        for i in range(STREAM_CHUNKS):
            await response.write(_chunk({"content": f"word{i} "}))
            await asyncio.sleep(CHUNK_GAP)
        await response.write(_chunk({}, "stop") + b"data: [DONE]\n\n")
        return response

    app = web.Application()
    app.router.add_post("/v1/chat/completions", chat_completions)
    return app


if __name__ == "__main__":
    rate = float(sys.argv[sys.argv.index("--fault-rate") + 1]) if "--fault-rate" in sys.argv else 0.0
    delay = float(sys.argv[sys.argv.index("--delay") + 1]) if "--delay" in sys.argv else 0.0
    run_until_signalled(make_app(rate, delay))
