"""The benchmark's upstream: an aiohttp server answering every chat completion with one prebuilt reply.

It does as little as possible so that the numbers measure what sits in front of it.  Run as
``python -m bench.upstream``; it prints ``port N`` once listening.
"""

from __future__ import annotations

import json

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


async def chat_completions(request: web.Request) -> web.Response:
    await request.read()
    return web.Response(body=REPLY, content_type="application/json")


def make_app() -> web.Application:
    app = web.Application()
    app.router.add_post("/v1/chat/completions", chat_completions)
    return app


if __name__ == "__main__":
    run_until_signalled(make_app())
