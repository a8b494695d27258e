"""UpstreamClient: the one way out to the model API, over the app's single ``ClientSession``; implements
``core.ports.Upstream``.

It owns the upstream URLs, credentials, timeouts, retries (``gateway.upstream.retries`` decides which), the wait
for a pooled connection (``gateway.upstream.pool``) and the mapping of transport failures to gateway errors
(connection failures → ``UpstreamUnavailable`` 502, no headers within ``first_byte_timeout`` or silence between
chunks past ``idle_timeout`` → ``UpstreamTimeout`` 504), so callers see either a reply
(``gateway.upstream.replies``) or a ``GatewayError``, never an aiohttp exception.  Retries happen before the
reply is handed on, so never after a byte has reached the client.  What a chat completion looks like on the wire
is the dialect's (``gateway.upstream.dialects``).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping
from dataclasses import dataclass
from types import TracebackType

import aiohttp
import structlog
from yarl import URL

from gateway.errors import UpstreamAuthFailed, UpstreamUnavailable
from gateway.observability.logs import note
from gateway.observability.metrics import Metrics
from gateway.upstream.dialects import dialect_for
from gateway.upstream.headers import FORWARD_PREFIXES, NOT_FORWARDED, end_to_end
from gateway.upstream.pool import PoolSlots
from gateway.upstream.replies import ForwardedResponse, UpstreamResponse, transport_error
from gateway.upstream.retries import RETRYABLE_STATUSES, RetryPolicy, permanent
from gateway.upstream.secrets import scrubber_for

log = structlog.get_logger("gateway")


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


class UpstreamClient:
    def __init__(self, session: aiohttp.ClientSession, settings: UpstreamSettings, metrics: Metrics) -> None:
        self._session = session
        self._settings = settings
        self._metrics = metrics
        self._dialect = dialect_for(
            settings.protocol, base_url=settings.base_url, native_base_url=settings.native_base_url
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
            {name: value for name, value in client_headers.items() if name.lower().startswith(FORWARD_PREFIXES)}
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
        dialect = self._dialect
        return _Exchange(self, _Call("POST", dialect.url, dialect.request(body, headers), headers, dialect.reply))

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
        headers = end_to_end(client_headers.items(), NOT_FORWARDED)
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
                raise transport_error(exc) from exc
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
