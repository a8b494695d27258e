"""The pass-through use case: every API request the gateway does not serve itself goes upstream unchanged.

Method, path, query, headers and body go to the same path under the upstream's base URL (``/v1/...`` under
``upstream.base_url``, ``/api/v1/...`` under ``upstream.native_base_url``); status, headers and body come back as
they are, streamed as they arrive.  The gateway adds only what it adds to chat: its credential rules (the
upstream key, never a gateway key), the in-flight bound, retries and timeouts, the canonical log line and the
metrics.  No memory: only ``/v1/chat/completions`` and the native generation route have that.  Knows no SQL and
no HTTP server types.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Protocol

from gateway.core.ports import Upstream
from gateway.core.relay import ClientGone, ReplyChannel
from gateway.errors import GatewayError, UpstreamError
from gateway.observability.logs import note
from gateway.observability.metrics import Metrics

# What goes upstream (HEAD too, as GET's twin); OPTIONS is CORS's and never leaves the gateway.
FORWARDED_METHODS = ("GET", "POST", "PUT", "PATCH", "DELETE")


class ForwardChannel(ReplyChannel, Protocol):
    def abort(self) -> None:
        """Drop the client's connection: a body cut short upstream must not look complete to the client."""


@dataclass(frozen=True)
class Forward:
    method: str
    path: str  # below the API prefix (/v1 or /api/v1), as the client encoded it
    query: str
    body: bytes
    native: bool  # under DashScope's native prefix, /api/v1
    authorization: str | None  # the client's own credential, when it may go upstream (open mode)
    headers: Mapping[str, str]


class PassThrough:
    def __init__(self, upstream: Upstream, metrics: Metrics) -> None:
        self._upstream = upstream
        self._metrics = metrics

    async def forward(self, request: Forward, channel: ForwardChannel) -> None:
        try:
            await self._relay(request, channel)
        except UpstreamError as exc:
            self._metrics.upstream_errors.labels(type(exc).__name__).inc()
            raise

    async def _relay(self, request: Forward, channel: ForwardChannel) -> None:
        started = time.perf_counter()
        exchange = self._upstream.forward(
            request.method,
            request.path,
            request.query,
            request.body,
            native=request.native,
            client_authorization=request.authorization,
            client_headers=request.headers,
        )
        async with exchange as response:
            note(upstream_status=response.status, upstream_ms=round((time.perf_counter() - started) * 1000, 1))
            self._upstream.check_credentials(response.status)
            await channel.open_stream(response.status, response.content_type, response.headers)
            try:
                async for data in response.chunks():
                    await channel.send(data)
            except ClientGone:
                response.abort()
                note(interrupted=True)
            except GatewayError as exc:
                self._metrics.upstream_errors.labels(type(exc).__name__).inc()
                note(stream_error=exc.code)
                channel.abort()
