"""Who is asking, and may they: the caller's principal under the auth mode, and the per-key request limits.

Open mode: the owner of conversations is the SHA-256 of whatever bearer credential the client presents (none: '').
Keys mode: the client must present a gateway key (``Authorization: Bearer gw-...`` or ``api-key: gw-...``); the
owner is the key's tenant, so keys of one tenant share conversations and keys of different tenants never do.
``auth.mode = "auto"`` is keys mode as soon as any key exists.

Limits are decided here, before anything goes upstream.  Each runs on the event loop without awaiting between
the check and the count, so parallel requests cannot overshoot: at most ``concurrent_requests`` in flight per key,
and at most ``requests_per_minute`` started in any 60 seconds (a sliding log of start times, exact rather than a
fixed-window approximation).  Open mode limits each credential the same way.  When several processes share
the database (workers, replicas), the storage's ``LimitStore`` counts instead, in the database, so that the limits
hold across all of them.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections import deque
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any

import structlog

from gateway.core.keys import KeyRing
from gateway.core.ports import Admission, LimitStore
from gateway.errors import AuthenticationFailed, GatewayError, RateLimited
from gateway.protocols.openai_chat import bearer_credential, owner_of
from gateway.settings.config import Config

TENANT_OWNER_PREFIX = "tenant:"
WINDOW_SECONDS = 60.0
log = structlog.get_logger("gateway")


@dataclass(frozen=True)
class Principal:
    """The caller: whose conversations it may see, and under which key and limits."""

    owner: str
    tenant: str | None = None
    key_id: str | None = None  # None in open mode
    admin: bool = False

    @property
    def limit_key(self) -> str:
        return self.key_id if self.key_id is not None else f"owner:{self.owner}"


def tenant_owner(tenant: str) -> str:
    """The owner of a tenant's conversations in the store."""
    return TENANT_OWNER_PREFIX + tenant


class Gatekeeper:
    def __init__(self, config: Config, ring: KeyRing) -> None:
        self._mode = config.auth_mode
        self._ring = ring

    async def keys_mode(self) -> bool:
        """Whether requests need a gateway key now (``auto``: once any key exists)."""
        if self._mode == "open":
            return False
        if self._ring.stale():
            await self._ring.refresh()
        return self._mode == "keys" or self._ring.any

    async def identify(self, headers: Mapping[str, str]) -> Principal:
        """The principal of a request, or ``AuthenticationFailed`` (401) in keys mode without a valid key."""
        authorization = headers.get("Authorization")
        if not await self.keys_mode():
            return Principal(owner=owner_of(authorization))
        secret = bearer_credential(authorization) or headers.get("api-key", "").strip()
        if not secret:
            raise AuthenticationFailed(
                "No gateway key provided: send 'Authorization: Bearer gw-...' or an 'api-key' header.",
                code="missing_api_key",
            )
        key = self._ring.find(secret)
        if key is None or key.revoked:
            # The same answer for an unknown and a revoked key, and never the key itself.
            raise AuthenticationFailed("Invalid or revoked gateway key.", code="invalid_api_key")
        return Principal(owner=tenant_owner(key.tenant), tenant=key.tenant, key_id=key.id, admin=key.admin)


class Limiter:
    """Per-key concurrency and request-rate limits; state for idle keys is swept away once a minute.  With a
    ``shared`` store the counting is its (across processes), and this only asks it."""

    def __init__(
        self, config: Config, clock: Callable[[], float] = time.monotonic, shared: LimitStore | None = None
    ) -> None:
        self._config = config
        self._clock = clock
        self._shared = shared
        self._background: set[asyncio.Future[Any]] = set()  # admissions and releases nobody awaits any more
        self._in_flight: dict[str, int] = {}
        self._started: dict[str, deque[float]] = {}
        self._last_sweep = clock()

    async def admit(self, principal: Principal) -> Callable[[], Awaitable[None]]:
        """Count a request in, or raise ``RateLimited``; awaiting the returned function counts it out when it ends
        (before its response goes out, so that a client sending its next request at once finds its slot free)."""
        limits = self._config.limits_for(principal.tenant)
        if not (limits.concurrent_requests or limits.requests_per_minute):
            return _nothing
        if self._shared is not None:
            return await self._admit_shared(principal.limit_key, limits.concurrent_requests, limits.requests_per_minute)
        now = self._clock()
        self._sweep(now)
        key = principal.limit_key
        in_flight = self._in_flight.get(key, 0)
        if limits.concurrent_requests and in_flight >= limits.concurrent_requests:
            raise _limited(
                f"Too many requests in flight for this key (limit {limits.concurrent_requests}).",
                "concurrency_limit_exceeded",
                1.0,
            )
        if limits.requests_per_minute:
            started = self._started.setdefault(key, deque())
            while started and started[0] <= now - WINDOW_SECONDS:
                started.popleft()
            if len(started) >= limits.requests_per_minute:
                wait = started[0] + WINDOW_SECONDS - now
                raise _limited(
                    f"Rate limit of {limits.requests_per_minute} requests per minute reached.",
                    "rate_limit_exceeded",
                    wait,
                )
            started.append(now)
        self._in_flight[key] = in_flight + 1

        async def release() -> None:
            self._release(key)

        return release

    async def _admit_shared(self, key: str, concurrent: int, per_minute: int) -> Callable[[], Awaitable[None]]:
        assert self._shared is not None
        shared = self._shared
        # Shielded: a client hanging up cancels its handler, maybe after the database counted the request in;
        # the slot must then still be given back, else it would count until this process's liveness ran out.
        admitting = asyncio.ensure_future(shared.admit(key, concurrent=concurrent, per_minute=per_minute))
        try:
            admission = await asyncio.shield(admitting)
        except asyncio.CancelledError:
            self._background.add(admitting)
            admitting.add_done_callback(self._background.discard)
            admitting.add_done_callback(lambda done: self._give_back(shared, key, done))
            raise
        if admission.refused == "concurrency_limit_exceeded":
            raise _limited(
                f"Too many requests in flight for this key (limit {concurrent}).",
                "concurrency_limit_exceeded",
                admission.retry_after,
            )
        if admission.refused is not None:
            raise _limited(
                f"Rate limit of {per_minute} requests per minute reached.", "rate_limit_exceeded", admission.retry_after
            )
        slot = admission.slot
        if slot is None:
            return _nothing

        async def release() -> None:
            # Shielded: a handler cancelled again meanwhile must still free the slot.
            await asyncio.shield(self._release_later(shared, key, slot))

        return release

    def _give_back(self, shared: LimitStore, key: str, done: asyncio.Future[Admission]) -> None:
        if not done.cancelled() and done.exception() is None and (slot := done.result().slot) is not None:
            self._release_later(shared, key, slot)

    def _release_later(self, shared: LimitStore, key: str, slot: str) -> asyncio.Task[None]:
        task = asyncio.get_running_loop().create_task(self._release_shared(shared, key, slot))
        self._background.add(task)
        task.add_done_callback(self._background.discard)
        return task

    @staticmethod
    async def _release_shared(shared: LimitStore, key: str, slot: str) -> None:
        try:
            await shared.release(key, slot)
        except GatewayError as exc:  # the slot's liveness runs out instead
            log.warning("limit_release_failed", error=exc.code)

    def _release(self, key: str) -> None:
        left = self._in_flight[key] - 1
        if left:
            self._in_flight[key] = left
        else:
            del self._in_flight[key]

    def _sweep(self, now: float) -> None:
        # Credentials come and go (in open mode, any string is one): drop the windows that have emptied.
        if now - self._last_sweep < WINDOW_SECONDS:
            return
        self._last_sweep = now
        for key in [k for k, started in self._started.items() if not started or started[-1] <= now - WINDOW_SECONDS]:
            del self._started[key]


def _limited(message: str, code: str, wait: float) -> GatewayError:
    return RateLimited(message, code=code, retry_after=max(1, math.ceil(wait)))


async def _nothing() -> None:
    return None
