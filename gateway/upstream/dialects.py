"""The protocol the upstream speaks for chat (``upstream.protocol``), chosen once when the client is built.

The gateway works in OpenAI's shape throughout; a dialect is everything that differs on the wire for a chat
completion: where it goes (``url``), what the OpenAI-shaped body becomes on the way out, with any headers that
go with it (``request``), and which reply class reads the answer back into OpenAI's shape (``reply``).

- ``Compatible``: OpenAI chat completions at ``upstream.base_url`` (DashScope's compatible mode, or any
  OpenAI-compatible API); the body goes as it is.
- ``Native``: DashScope's own text-generation protocol at ``upstream.native_base_url``, translated both ways by
  ``gateway.protocols.dashscope``.

The pass-through needs no dialect: it forwards whatever the client sent, to whichever base URL it addressed.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Protocol

import aiohttp
from yarl import URL

from gateway.errors import UpstreamInvalidResponse
from gateway.protocols.dashscope import native_request, openai_chunk, openai_completion, openai_error
from gateway.protocols.openai_chat import dumps, loads
from gateway.protocols.sse import SseParser
from gateway.upstream.replies import UpstreamResponse
from gateway.upstream.secrets import NO_SECRETS, Scrubber


class Dialect(Protocol):
    url: URL  # where a chat completion goes
    reply: type[UpstreamResponse]  # reads the answer as OpenAI's

    def request(self, body: bytes, headers: dict[str, str]) -> bytes:
        """The upstream request body for an OpenAI-shaped ``body``; adds to ``headers`` what must go with it."""
        ...


class Compatible:
    __slots__ = ("reply", "url")

    def __init__(self, base_url: str) -> None:
        self.url = URL(f"{base_url}/chat/completions")
        self.reply: type[UpstreamResponse] = UpstreamResponse

    def request(self, body: bytes, headers: dict[str, str]) -> bytes:
        return body


class Native:
    __slots__ = ("reply", "url")

    def __init__(self, native_base_url: str) -> None:
        self.url = URL(f"{native_base_url}/services/aigc/text-generation/generation")
        self.reply: type[UpstreamResponse] = NativeUpstreamResponse

    def request(self, body: bytes, headers: dict[str, str]) -> bytes:
        request = loads(body)
        if request.get("stream"):
            headers["X-DashScope-SSE"] = "enable"  # the native endpoint streams only when asked by header
        return dumps(native_request(request)).encode()


class NativeUpstreamResponse(UpstreamResponse):
    """A response of DashScope's native endpoint, read and streamed as if it were OpenAI-shaped (the gateway's
    working shape): ``gateway.protocols.dashscope`` translates the body, the error body and each SSE event."""

    def __init__(self, response: aiohttp.ClientResponse, idle_timeout: float, scrubber: Scrubber = NO_SECRETS) -> None:
        super().__init__(response, idle_timeout, scrubber)
        self._parser = SseParser()

    async def read(self) -> bytes:
        raw = await super().read()
        if self.status >= 400:
            return openai_error(raw)
        try:
            return dumps(openai_completion(loads(raw))).encode()
        except (ValueError, KeyError, TypeError, AttributeError):
            return raw  # not a native answer: the caller reports it as such

    async def chunks(self) -> AsyncIterator[bytes]:
        async for data in super().chunks():
            try:
                out = b"".join(
                    openai_chunk(event.event, event.data) for event in self._parser.feed(data) if event.data is not None
                )
            except (ValueError, KeyError, IndexError, TypeError, AttributeError) as exc:
                raise UpstreamInvalidResponse(
                    "The upstream sent a malformed stream event.", code="upstream_invalid_response"
                ) from exc
            if out:
                yield out


def dialect_for(protocol: str, *, base_url: str, native_base_url: str) -> Dialect:
    """The dialect ``upstream.protocol`` names ("compatible" or "native"; config has checked which)."""
    return Native(native_base_url) if protocol == "native" else Compatible(base_url)
