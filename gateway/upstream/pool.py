"""The wait for a free upstream connection, on its own bound (``upstream.pool_timeout_seconds``).

aiohttp counts the wait for a pooled connection against ``ClientTimeout.connect``, so a request queued behind
``upstream.pool_size`` slow ones was reported as the upstream's connect timeout (504) although it never left the
gateway.  ``PoolSlots`` is a gate of the pool's size in front of aiohttp's pool: a request takes a slot before
it goes out and gives it back when its connection goes back to the pool (or is closed), so aiohttp itself never
makes it wait and its connect timeout times only the connect.  A request that cannot get a slot in time is the
gateway's overload (503 ``upstream_busy``, with Retry-After), never a timeout blamed on the upstream.
"""

from __future__ import annotations

import asyncio
import time

import aiohttp

from gateway.errors import Overloaded
from gateway.observability.logs import note


class PoolSlots:
    def __init__(self, size: int, timeout: float) -> None:
        self._slots = asyncio.Semaphore(size)
        self._timeout = timeout

    async def take(self) -> None:
        """A slot, or ``Overloaded`` after ``timeout`` seconds of waiting."""
        if not self._slots.locked():
            await self._slots.acquire()  # free: returns at once, no timer needed
            return
        started = time.perf_counter()
        try:
            async with asyncio.timeout(self._timeout):
                await self._slots.acquire()
        except TimeoutError:
            note(pool_wait_ms=round((time.perf_counter() - started) * 1000, 1))
            raise Overloaded(
                f"Every upstream connection stayed busy for {self._timeout:g} seconds; retry shortly.",
                code="upstream_busy",
            ) from None
        note(pool_wait_ms=round((time.perf_counter() - started) * 1000, 1))

    def give_back(self) -> None:
        """The slot of a request that got no response (an error, a timeout, cancellation)."""
        self._slots.release()

    def hold_until_released(self, response: aiohttp.ClientResponse) -> None:
        """Keep the slot while ``response``'s connection is in use; give it back when aiohttp releases or closes
        the connection (once: aiohttp runs a connection's callbacks once and then forgets them)."""
        connection = response.connection
        if connection is None:  # the whole body has arrived: the connection is back in the pool already
            self._slots.release()
        else:
            connection.add_callback(self._slots.release)
