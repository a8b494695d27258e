"""Reading an open upstream response: ``UpstreamResponse`` (a chat completion in OpenAI's shape) and
``ForwardedResponse`` (a pass-through reply, as it came), both implementing ``core.ports.UpstreamReply``.

Every byte of a body comes through ``read`` or ``chunks``, scrubbed of the secrets the gateway holds
(``gateway.upstream.secrets``): an upstream may quote the key it was sent, and what it says reaches the client and
may reach the log.  A secret split across two chunks is found too.  Reads are timed (``idle_timeout``) and a
transport failure becomes a ``GatewayError`` (``transport_error``), never an aiohttp exception.  A dialect whose
replies are not OpenAI-shaped subclasses ``UpstreamResponse`` (``gateway.upstream.dialects``).
"""

from __future__ import annotations

import asyncio
import zlib
from collections.abc import AsyncIterator, Iterable

import aiohttp

from gateway.errors import UpstreamInvalidResponse, UpstreamTimeout, UpstreamUnavailable
from gateway.upstream.headers import NOT_PASSED_BACK, PASS_BACK_EXACT, PASS_BACK_PREFIXES, end_to_end
from gateway.upstream.secrets import NO_SECRETS, Scrubber, content_codings, decode_body, stream_decoder


class UpstreamResponse:
    """An open upstream response: status and headers are known, the body is read or streamed by the caller."""

    _decoder: zlib._Decompress | None = None  # set by ForwardedResponse for a compressed stream it must inspect

    def __init__(self, response: aiohttp.ClientResponse, idle_timeout: float, scrubber: Scrubber = NO_SECRETS) -> None:
        self._response = response
        self._idle = idle_timeout
        self._scrubber = scrubber
        self.status = response.status
        self.content_type = response.headers.get("Content-Type", "application/json")
        self.headers = self._scrubbed_headers(
            (name, value)
            for name, value in response.headers.items()
            if name.lower() in PASS_BACK_EXACT or name.lower().startswith(PASS_BACK_PREFIXES)
        )

    def _scrubbed_headers(self, headers: Iterable[tuple[str, str]]) -> dict[str, str]:
        if not self._scrubber:
            return dict(headers)
        return {name: self._scrubber.scrub_text(value) for name, value in headers}

    @property
    def is_event_stream(self) -> bool:
        return self.content_type.split(";")[0].strip().lower() == "text/event-stream"

    async def prepare(self) -> None:
        """Run once the headers arrived, before the caller looks at them (``ForwardedResponse`` may change them)."""

    def abort(self) -> None:
        """Drop the connection now, so the upstream stops generating (and billing) tokens nobody will read."""
        self._response.close()

    async def read(self) -> bytes:
        raw = await self._read_raw()
        return self._scrubber.scrub(raw) if self._scrubber else raw

    async def _read_raw(self) -> bytes:
        try:
            async with asyncio.timeout(self._idle):
                return await self._response.read()
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise transport_error(exc) from exc

    async def chunks(self) -> AsyncIterator[bytes]:
        """Body bytes as they arrive; a cut or stalled stream raises a ``GatewayError``."""
        content = self._response.content
        # One generator for every case (no secrets, secrets, a compressed stream): a nested one would cost each
        # chunk of every stream another round of generator calls.
        scrubbing = self._scrubber.stream() if self._scrubber else None
        decoder = self._decoder
        while True:
            try:
                async with asyncio.timeout(self._idle):
                    data = await content.readany()
            except (aiohttp.ClientError, TimeoutError) as exc:
                raise transport_error(exc) from exc
            end = not data
            if decoder is not None:
                try:
                    data = decoder.flush() if end else decoder.decompress(data)
                except zlib.error as exc:
                    raise undecodable() from exc
            if scrubbing is not None:
                data = scrubbing.feed(data) + scrubbing.flush() if end else scrubbing.feed(data)
            if data:
                yield data
            if end:
                return


class ForwardedResponse(UpstreamResponse):
    """A pass-through response: every end-to-end header goes back, and the body as it came (not decompressed,
    so ``Content-Encoding`` and ``Content-Length`` stay true), scrubbed: a plain body chunk by chunk; an error body
    (status >= 400) whole, decoded if need be (and sent decoded only if a secret was masked in it); a compressed
    event stream decoded on the fly.  Either in an encoding other than gzip or deflate gets 502; other compressed
    bodies (a download, say) go as they came."""

    def __init__(self, response: aiohttp.ClientResponse, idle_timeout: float, scrubber: Scrubber = NO_SECRETS) -> None:
        super().__init__(response, idle_timeout, scrubber)
        self.content_type = response.headers.get("Content-Type", "application/octet-stream")
        # CORS is the gateway's to answer (server.cors_origins), whatever the upstream says of it.
        self.headers = self._scrubbed_headers(
            (name, value)
            for name, value in end_to_end(response.headers.items(), NOT_PASSED_BACK | {"content-type"}).items()
            if not name.lower().startswith("access-control-")
        )
        self._body: bytes | None = None  # an error body, read whole by prepare

    async def prepare(self) -> None:
        if not self._scrubber:
            return
        codings = content_codings(self._response.headers.get("Content-Encoding", ""))
        if self.status >= 400:
            raw = await self._read_raw()
            body = decode_body(raw, codings)
            if body is None:
                raise undecodable()
            scrubbed = self._scrubber.scrub(body)
            if scrubbed == body:
                self._body = raw  # nothing to mask: exactly as it came, compressed or not
                return
            self._body = scrubbed
            self._drop_headers("content-encoding", "content-length")
            self.headers["Content-Length"] = str(len(scrubbed))
        elif codings and self.is_event_stream:
            self._decoder = stream_decoder(codings)
            if self._decoder is None:
                raise undecodable()
            self._drop_headers("content-encoding", "content-length")

    def _drop_headers(self, *names: str) -> None:
        self.headers = {name: value for name, value in self.headers.items() if name.lower() not in names}

    async def chunks(self) -> AsyncIterator[bytes]:
        if self._body is None:
            async for data in super().chunks():
                yield data
        elif self._body:
            yield self._body


def undecodable() -> UpstreamInvalidResponse:
    return UpstreamInvalidResponse(
        "The upstream answered in a content encoding the gateway cannot inspect.", code="upstream_invalid_response"
    )


def transport_error(exc: BaseException) -> UpstreamTimeout | UpstreamUnavailable:
    """The gateway error for an aiohttp failure or a timeout, waiting for headers or reading a body."""
    if isinstance(exc, TimeoutError | asyncio.TimeoutError):
        return UpstreamTimeout("The upstream did not answer in time.", code="upstream_timeout")
    if isinstance(exc, aiohttp.ClientPayloadError):
        return UpstreamUnavailable("The upstream connection broke mid-response.", code="upstream_disconnected")
    return UpstreamUnavailable("The upstream could not be reached.", code="upstream_unavailable")
