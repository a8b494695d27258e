"""Relaying an upstream reply to the client: the ``ReplyChannel`` the chat and pass-through use cases answer
through, the pumping of a stream's events from an ``UpstreamReply`` to it, and the reading of what the upstream
sent (stream events, a completion body) and of how a stream failed.

The rule that a turn is recorded before the client sees the reply complete is the chat use case's
(``gateway.core.chat``): ``pump`` holds ``data: [DONE]`` back for it.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Protocol

from gateway.core.ports import UpstreamReply
from gateway.errors import GatewayError, UpstreamInvalidResponse
from gateway.protocols.openai_chat import Message, loads
from gateway.protocols.sse import DONE, ReplyAssembler, SseParser, encode_event

STREAM_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}


class ClientGone(Exception):
    """The client closed the connection; raised by ``ReplyChannel.send``."""


class ReplyChannel(Protocol):
    """How the use case answers; implemented by the HTTP handler."""

    async def respond(self, status: int, content_type: str, headers: Mapping[str, str], body: bytes) -> None: ...

    async def open_stream(self, status: int, content_type: str, headers: Mapping[str, str]) -> None: ...

    async def send(self, data: bytes) -> None: ...


class StreamFailed(Exception):
    """The upstream's stream ended short of a finished reply; ``error`` says how, for the client's error event."""

    def __init__(self, error: GatewayError) -> None:
        self.error = error


async def pump(
    response: UpstreamReply, channel: ReplyChannel, assembler: ReplyAssembler, *, hide_usage: bool = False
) -> None:
    """Relay SSE events until ``[DONE]`` (held back for the caller); fold only what the client was sent into
    ``assembler``, and the usage.  ``hide_usage``: the gateway asked for the usage chunk for its own ledger, the
    client did not, so that chunk is not relayed.  Any way the stream can end short of a finished reply raises
    ``StreamFailed``."""
    parser = SseParser()
    done = False
    try:
        async for data in response.chunks():
            out: list[bytes] = []
            chunks: list[dict[str, Any]] = []
            for event in parser.feed(data):
                if event.data is None:
                    out.append(event.raw)  # keep-alive comments pass through
                    continue
                if event.data.strip() == DONE:
                    done = True
                    break
                chunk = _parse_chunk(event.data)
                if not (hide_usage and chunk.get("choices") == [] and "usage" in chunk):
                    out.append(event.raw)
                chunks.append(chunk)
            if out:
                await channel.send(b"".join(out))
            for chunk in chunks:
                assembler.add(chunk)
            if done:
                break
    except GatewayError as exc:
        raise StreamFailed(exc) from exc
    if not done or not assembler.finished:
        raise StreamFailed(
            UpstreamInvalidResponse(
                "The upstream stream ended before the reply was complete.", code="upstream_stream_incomplete"
            )
        )


def error_event(error: GatewayError) -> bytes:
    """An SSE event carrying an error's OpenAI-shaped body, re-serialized onto one line (an upstream's own body
    may hold newlines, which would end the event early)."""
    return encode_event(loads(error.body()))


async def send_quietly(channel: ReplyChannel, data: bytes) -> None:
    """Send what is only worth sending while the client is still there (an error event, say)."""
    try:
        await channel.send(data)
    except ClientGone:
        pass


def parse_completion(body: bytes) -> tuple[Message, dict[str, Any] | None] | None:
    """(choice 0's message, usage) of a chat completion body, or None when it is not one."""
    try:
        data = loads(body)
        message = data["choices"][0]["message"]
    except (ValueError, KeyError, IndexError, TypeError):
        return None
    if not isinstance(message, dict) or message.get("role") != "assistant":
        return None
    usage = data.get("usage")
    return message, usage if isinstance(usage, dict) else None


def _parse_chunk(data: str) -> dict[str, Any]:
    try:
        chunk = loads(data)
    except ValueError:
        chunk = None
    if not isinstance(chunk, dict):
        raise StreamFailed(
            UpstreamInvalidResponse("The upstream sent a malformed stream event.", code="upstream_invalid_response")
        )
    error = chunk.get("error")
    if error:
        message = error.get("message") if isinstance(error, dict) else str(error)
        code = error.get("code") if isinstance(error, dict) else None
        raise StreamFailed(
            UpstreamInvalidResponse(f"The upstream failed mid-stream: {message}", code=str(code or "upstream_error"))
        )
    return chunk
