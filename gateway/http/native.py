"""The native endpoint over HTTP: ``POST /api/v1/services/aigc/text-generation/generation``.

The handler translates the native request into the OpenAI shape and hands it to the same chat use case as
``/v1/chat/completions`` (so memory, the context window and storage are shared); ``NativeChannel`` translates what
the use case answers back into native JSON or native SSE events.  Streaming is on when the client sends
``X-DashScope-SSE: enable`` or ``Accept: text/event-stream``, as DashScope's SDKs do.
"""

from __future__ import annotations

from collections.abc import Mapping

from aiohttp import web

from gateway.errors import error_body
from gateway.http.channel import HttpChannel, read_body
from gateway.http.chat import answer_chat
from gateway.http.state import CONFIG, IN_FLIGHT, REQUEST_ID
from gateway.observability.logs import note
from gateway.protocols.dashscope import NativeStream, answer_shape, native_error, native_reply, openai_body
from gateway.protocols.openai_chat import dumps, encode, loads, parse_chat_body, parse_json_body
from gateway.protocols.sse import DONE, SseParser

NATIVE_PATH = "/api/v1/services/aigc/text-generation/generation"
_NOT_FORWARDED = frozenset({"x-dashscope-sse"})  # the native framing switch: the upstream speaks OpenAI here


class NativeChannel(HttpChannel):
    """The use case's ``ReplyChannel``, answering in the native protocol."""

    def __init__(self, request: web.Request, result_format: str, incremental: bool, request_id: str) -> None:
        super().__init__(request)
        self._format = result_format
        self._request_id = request_id
        self._stream = NativeStream(result_format, incremental, request_id)
        self._parser = SseParser()

    async def respond(self, status: int, content_type: str, headers: Mapping[str, str], body: bytes) -> None:
        if status < 400:
            try:
                body = dumps(native_reply(loads(body), self._format, self._request_id)).encode()
            except (ValueError, KeyError, IndexError, TypeError):
                status = 502
                body = dumps(
                    native_error(
                        error_body(
                            "The upstream answered with something that is not a chat completion.", "upstream_error"
                        ),
                        self._request_id,
                    )
                ).encode()
        else:
            body = dumps(native_error(body, self._request_id)).encode()
        self.response = web.Response(status=status, body=body, headers={**headers, "Content-Type": "application/json"})

    async def open_stream(self, status: int, content_type: str, headers: Mapping[str, str]) -> None:
        response = web.StreamResponse(status=status, headers={**headers, "Content-Type": "text/event-stream"})
        await response.prepare(self._request)
        self.response = response

    async def send(self, data: bytes) -> None:
        out = b""
        for event in self._parser.feed(data):
            if event.data is None:
                continue
            if event.data.strip() == DONE:
                out += self._stream.flush()
                continue
            try:
                chunk = loads(event.data)
            except ValueError:
                chunk = None  # the use case has vetted every chunk it relays; this is belt and braces
            if isinstance(chunk, dict) and chunk.get("error"):
                out += self._stream.error(dumps({"error": chunk["error"]}).encode(), 500)
            elif isinstance(chunk, dict):
                out += self._stream.chunk(chunk)
        if out:
            await super().send(out)


async def native_generation(request: web.Request) -> web.StreamResponse:
    with request.app[IN_FLIGHT]:  # before the body is read, as for /v1/chat/completions
        return await _generate(request)


async def _generate(request: web.Request) -> web.StreamResponse:
    raw = await read_body(request)
    native = parse_json_body(raw)
    sse = request.headers.get("X-DashScope-SSE", "").lower() == "enable"
    stream = sse or "text/event-stream" in request.headers.get("Accept", "")
    body = parse_chat_body(encode(openai_body(native, stream=stream)), max_messages=request.app[CONFIG].max_messages)
    note(protocol="native")
    result_format, incremental = answer_shape(native)
    channel = NativeChannel(request, result_format, incremental, request[REQUEST_ID])
    forwarded = {k: v for k, v in request.headers.items() if k.lower() not in _NOT_FORWARDED}
    return await answer_chat(request, body, encode(body.fields), channel, forwarded)
