"""UpstreamClient: the one way out to the model API, over the app's single ``ClientSession``.

It owns the upstream URL, credentials, timeouts, retries (``gateway.upstream.retries`` decides which) and the mapping of
transport failures to gateway errors (connection failures → ``UpstreamUnavailable`` 502, no headers within
``first_byte_timeout`` or silence between chunks past ``idle_timeout`` → ``UpstreamTimeout`` 504), so callers see
either an ``UpstreamResponse`` or a ``GatewayError``, never an aiohttp exception.  Retries happen before the
response is handed on, so never after a byte has reached the client.
"""

from __future__ import annotations

import asyncio
import time
import zlib
from collections.abc import AsyncIterator, Iterable, Mapping
from dataclasses import dataclass
from types import TracebackType

import aiohttp
import structlog
from yarl import URL

from gateway.errors import UpstreamAuthFailed, UpstreamInvalidResponse, UpstreamTimeout, UpstreamUnavailable
from gateway.observability.logs import note
from gateway.observability.metrics import Metrics
from gateway.protocols.dashscope import native_request, openai_chunk, openai_completion, openai_error
from gateway.upstream.pool import PoolSlots
from gateway.protocols.openai_chat import dumps, loads
from gateway.upstream.retries import RETRYABLE_STATUSES, RetryPolicy, permanent
from gateway.upstream.secrets import NO_SECRETS, Scrubber, content_codings, decode_body, scrubber_for, stream_decoder
from gateway.protocols.sse import SseParser

log = structlog.get_logger("gateway")

# Response headers worth passing back to the client: request ids for support tickets, rate-limit hints.
_PASS_BACK_EXACT = frozenset({"x-request-id", "request-id", "retry-after", "retry-after-ms", "req-cost-time"})
_PASS_BACK_PREFIXES = ("x-ratelimit-", "x-dashscope-", "openai-")
# Request headers that select upstream behaviour (DashScope's X-DashScope-* switches, e.g. data inspection).
_FORWARD_PREFIXES = ("x-dashscope-",)
# Never relayed as they are, either way (RFC 9110 section 7.6.1): they describe one hop, or the framing, which
# aiohttp sets anew.  Credentials are replaced by the gateway's rules; X-Conversation-Id is the gateway's own.
_HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "proxy-connection",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
        "host",
        "content-length",
    }
)
# The body goes upstream as aiohttp's server decoded it, so a client's Content-Encoding would mislabel it.
_NOT_FORWARDED = _HOP_BY_HOP | {"authorization", "api-key", "x-conversation-id", "content-encoding"}
_NOT_PASSED_BACK = _HOP_BY_HOP - {"content-length"}


@dataclass(frozen=True)
class UpstreamSettings:
    base_url: str
    api_key: str
    connect_timeout: float
    first_byte_timeout: float
    idle_timeout: float
    pool_size: int
    retry: RetryPolicy
    protocol: str = "compatible"  # or "native": DashScope's own protocol, at native_base_url
    native_base_url: str = ""
    pool_timeout: float = 30.0  # waiting for one of pool_size connections (gateway.upstream.pool)


class UpstreamResponse:
    """An open upstream response: status and headers are known, the body is read or streamed by the caller.

    Every byte of it comes through ``read`` or ``chunks``, scrubbed of the secrets the gateway holds
    (``gateway.upstream.secrets``): an upstream may quote the key it was sent, and what it says reaches the client and may
    reach the log.  A secret split across two chunks is found too."""

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
            if name.lower() in _PASS_BACK_EXACT or name.lower().startswith(_PASS_BACK_PREFIXES)
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
            raise _translate(exc) from exc

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
                raise _translate(exc) from exc
            end = not data
            if decoder is not None:
                try:
                    data = decoder.flush() if end else decoder.decompress(data)
                except zlib.error as exc:
                    raise _undecodable() from exc
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
            for name, value in _end_to_end(response.headers.items(), _NOT_PASSED_BACK | {"content-type"}).items()
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
                raise _undecodable()
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
                raise _undecodable()
            self._drop_headers("content-encoding", "content-length")

    def _drop_headers(self, *names: str) -> None:
        self.headers = {name: value for name, value in self.headers.items() if name.lower() not in names}

    async def chunks(self) -> AsyncIterator[bytes]:
        if self._body is None:
            async for data in super().chunks():
                yield data
        elif self._body:
            yield self._body


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


def _undecodable() -> UpstreamInvalidResponse:
    return UpstreamInvalidResponse(
        "The upstream answered in a content encoding the gateway cannot inspect.", code="upstream_invalid_response"
    )


class UpstreamClient:
    def __init__(self, session: aiohttp.ClientSession, settings: UpstreamSettings, metrics: Metrics) -> None:
        self._session = session
        self._settings = settings
        self._metrics = metrics
        self._native = settings.protocol == "native"
        self._url = URL(
            f"{settings.native_base_url}/services/aigc/text-generation/generation"
            if self._native
            else f"{settings.base_url}/chat/completions"
        )
        # Reads are timed by UpstreamResponse (idle_timeout) and headers by _request (first_byte_timeout).  The wait
        # for a pooled connection is PoolSlots' (pool_timeout): aiohttp's own pool never makes a request wait, so
        # its connect timeout times the name lookup and the connect alone.
        self._timeout = aiohttp.ClientTimeout(
            total=None, connect=settings.connect_timeout, sock_connect=settings.connect_timeout
        )
        self._slots = PoolSlots(settings.pool_size, settings.pool_timeout)

    @property
    def uses_own_key(self) -> bool:
        """Whether the gateway sends its own key upstream (rather than forwarding the client's)."""
        return bool(self._settings.api_key)

    def check_credentials(self, status: int) -> None:
        """An upstream 401/403 against the gateway's own key is the operator's problem, not the client's: the body
        may quote the key, so the client gets neither it nor a status that blames them."""
        if status in (401, 403) and self.uses_own_key:
            log.error("upstream_rejected_gateway_key", upstream_status=status)
            raise UpstreamAuthFailed("The upstream rejected the gateway's credentials.", code="upstream_auth_failed")

    @staticmethod
    def connector(settings: UpstreamSettings) -> aiohttp.TCPConnector:
        return aiohttp.TCPConnector(limit=settings.pool_size, limit_per_host=settings.pool_size)

    def _headers(self, client_authorization: str | None, client_headers: Mapping[str, str]) -> dict[str, str]:
        headers = {"Content-Type": "application/json", "Accept": client_headers.get("Accept", "*/*")}
        headers.update(
            {name: value for name, value in client_headers.items() if name.lower().startswith(_FORWARD_PREFIXES)}
        )
        headers.update(self._credential(client_authorization))
        return headers

    def _credential(self, client_authorization: str | None) -> dict[str, str]:
        if self._settings.api_key:
            return {"Authorization": f"Bearer {self._settings.api_key}"}
        return {"Authorization": client_authorization} if client_authorization else {}

    def chat_completions(
        self, body: bytes, *, client_authorization: str | None, client_headers: Mapping[str, str]
    ) -> _Exchange:
        """``async with`` it: POST a chat completion; the block gets the response once headers arrived.  Leaving
        the block early (client gone, error) closes the connection, which is what stops the upstream from
        generating tokens nobody reads."""
        headers = self._headers(client_authorization, client_headers)
        if self._native:
            request = loads(body)
            body = dumps(native_request(request)).encode()
            if request.get("stream"):
                headers["X-DashScope-SSE"] = "enable"
        kind = NativeUpstreamResponse if self._native else UpstreamResponse
        return _Exchange(self, _Call("POST", self._url, body, headers, kind))

    def forward(
        self,
        method: str,
        path: str,
        query: str,
        body: bytes,
        *,
        native: bool,
        client_authorization: str | None,
        client_headers: Mapping[str, str],
    ) -> _Exchange:
        """``async with`` it: send a request the gateway does not serve itself to the same path under the upstream's
        base URL (``path`` and ``query`` as the client encoded them; ``native``: under DashScope's native base
        URL), with the client's end-to-end headers and the gateway's credential rules."""
        base = self._settings.native_base_url if native else self._settings.base_url
        url = URL(base.rstrip("/") + path + (f"?{query}" if query else ""), encoded=True)
        headers = _end_to_end(client_headers.items(), _NOT_FORWARDED)
        headers.update(self._credential(client_authorization))
        return _Exchange(self, _Call(method, url, body, headers, ForwardedResponse, decompress=False))

    async def _send(self, call: _Call) -> aiohttp.ClientResponse:
        """POST, retrying what ``gateway.upstream.retries`` allows; the last response or error is the caller's."""
        policy = self._settings.retry
        loop = asyncio.get_running_loop()
        deadline = loop.time() + policy.budget
        attempt = 1
        while True:
            try:
                response = await self._request(call)
            except UpstreamUnavailable as exc:  # no response at all: nothing was generated
                wait = policy.delay(attempt, None)
                if not policy.allows(attempt, wait, deadline - loop.time()):
                    raise
                reason = exc.code or "connection"
            else:
                if response.status not in RETRYABLE_STATUSES:
                    return response
                wait = policy.delay(attempt, response.headers)
                try:
                    if not policy.allows(attempt, wait, deadline - loop.time()) or permanent(
                        await _peek(response, self._settings.idle_timeout)
                    ):
                        return response
                except BaseException:  # cancelled while reading: nobody else will close it
                    response.close()
                    raise
                response.release()
                reason = f"http_{response.status}"
            self._metrics.retries.labels(reason).inc()
            note(upstream_attempts=attempt + 1, last_retry_reason=reason)
            await asyncio.sleep(wait)
            attempt += 1

    async def _request(self, call: _Call) -> aiohttp.ClientResponse:
        await self._slots.take()  # Overloaded (503 upstream_busy) past pool_timeout: the upstream never saw it
        started = time.perf_counter()
        try:
            async with asyncio.timeout(self._settings.first_byte_timeout):
                response = await self._session.request(
                    call.method,
                    call.url,
                    data=call.body,
                    headers=call.headers,
                    timeout=self._timeout,
                    auto_decompress=call.decompress,
                )
        except BaseException as exc:
            self._slots.give_back()
            if isinstance(exc, aiohttp.ClientError | TimeoutError):
                raise _translate(exc) from exc
            raise
        self._slots.hold_until_released(response)
        self._metrics.upstream.observe(time.perf_counter() - started)
        return response


@dataclass(frozen=True, slots=True)
class _Call:
    """One upstream request as ``UpstreamClient._send`` makes (and retries) it."""

    method: str
    url: URL
    body: bytes
    headers: dict[str, str]
    kind: type[UpstreamResponse]  # how the caller reads the response
    decompress: bool = True


class _Exchange:
    # A plain class rather than @asynccontextmanager: every chat request enters one, and the generator-based
    # form costs an async generator (with asyncio's finalizer bookkeeping) and several more calls per use.
    __slots__ = ("_call", "_client", "_response")

    def __init__(self, client: UpstreamClient, call: _Call) -> None:
        self._client = client
        self._call = call
        self._response: aiohttp.ClientResponse | None = None

    async def __aenter__(self) -> UpstreamResponse:
        self._response = await self._client._send(self._call)
        settings = self._client._settings
        response = self._call.kind(self._response, settings.idle_timeout, scrubber_for(settings.api_key))
        try:
            await response.prepare()
        except BaseException:  # __aexit__ will not run: close the connection here
            self._response.close()
            raise
        return response

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        assert self._response is not None
        if exc_type is None and self._response.content.at_eof():
            self._response.release()
        else:
            self._response.close()


async def _peek(response: aiohttp.ClientResponse, timeout: float) -> bytes:
    """An error response's body (kept by aiohttp for a later read), or nothing when it cannot be read."""
    try:
        async with asyncio.timeout(timeout):
            return await response.read()
    except (aiohttp.ClientError, TimeoutError):
        return b""


def _end_to_end(headers: Iterable[tuple[str, str]], dropped: frozenset[str]) -> dict[str, str]:
    return {name: value for name, value in headers if name.lower() not in dropped}


def _translate(exc: BaseException) -> UpstreamTimeout | UpstreamUnavailable:
    if isinstance(exc, TimeoutError | asyncio.TimeoutError):
        return UpstreamTimeout("The upstream did not answer in time.", code="upstream_timeout")
    if isinstance(exc, aiohttp.ClientPayloadError):
        return UpstreamUnavailable("The upstream connection broke mid-response.", code="upstream_disconnected")
    return UpstreamUnavailable("The upstream could not be reached.", code="upstream_unavailable")
