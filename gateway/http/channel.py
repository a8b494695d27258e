"""The use case's reply channel over an aiohttp request, and reading a request body within its limits."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping

from aiohttp import web

from gateway.core.relay import ClientGone
from gateway.errors import InvalidRequest, PayloadTooLarge, RequestTimeout
from gateway.http.connections import waiting_for_client
from gateway.http.state import CONFIG


class HttpChannel:
    """The use case's ``ReplyChannel`` over an aiohttp request."""

    def __init__(self, request: web.Request) -> None:
        self._request = request
        self.response: web.StreamResponse | None = None

    async def respond(self, status: int, content_type: str, headers: Mapping[str, str], body: bytes) -> None:
        self.response = web.Response(status=status, body=body, headers={**headers, "Content-Type": content_type})

    async def open_stream(self, status: int, content_type: str, headers: Mapping[str, str]) -> None:
        response = web.StreamResponse(status=status, headers={**headers, "Content-Type": content_type})
        await response.prepare(self._request)
        self.response = response

    async def send(self, data: bytes) -> None:
        assert self.response is not None, "open_stream comes first"
        try:
            await self.response.write(data)
        except ConnectionResetError as exc:
            raise ClientGone from exc

    def abort(self) -> None:
        if self._request.transport is not None:
            self._request.transport.close()


async def read_body(request: web.Request) -> bytes:
    """The whole body, within ``server.max_body_bytes`` (else 413) and ``server.body_timeout_seconds`` in all,
    however it trickles (else 408): a byte now and then must not hold the connection, or an in-flight slot."""
    config = request.app[CONFIG]
    limit = config.max_body_bytes
    if request.content_length is not None and request.content_length > limit:
        raise PayloadTooLarge(f"Request body exceeds the {limit}-byte limit.", code="request_too_large")
    try:
        if request.content.is_eof():  # the usual case: the body came with the headers, nothing to wait for
            return await request.read()
        with waiting_for_client(request):
            async with asyncio.timeout(config.body_timeout):
                return await request.read()
    except web.HTTPRequestEntityTooLarge:
        raise PayloadTooLarge(f"Request body exceeds the {limit}-byte limit.", code="request_too_large") from None
    except web.RequestPayloadError:  # e.g. Content-Encoding: gzip over bytes that are not gzip
        raise InvalidRequest(
            "The request body could not be read as its Content-Encoding says.", code="invalid_body"
        ) from None
    except TimeoutError:
        raise RequestTimeout(
            f"The request body did not arrive within {config.body_timeout:g} seconds.", code="request_timeout"
        ) from None
