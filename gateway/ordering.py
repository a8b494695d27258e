"""Per-conversation ordering: turns on one conversation run one after another, different ones in parallel.

A lock exists only while someone holds or waits for it, so memory does not grow with the number of
conversations ever seen.  This orders turns within one gateway process; the store's transactions keep the
data whole across processes.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Hashable, Iterable
from contextlib import AsyncExitStack, asynccontextmanager


class KeyedLocks:
    def __init__(self) -> None:
        self._locks: dict[Hashable, tuple[asyncio.Lock, int]] = {}

    @asynccontextmanager
    async def hold(self, key: Hashable) -> AsyncIterator[None]:
        lock, users = self._locks.get(key, (None, 0))
        if lock is None:
            lock = asyncio.Lock()
        self._locks[key] = (lock, users + 1)
        try:
            async with lock:
                yield
        finally:
            lock, users = self._locks[key]
            if users == 1:
                del self._locks[key]
            else:
                self._locks[key] = (lock, users - 1)

    @asynccontextmanager
    async def hold_all(self, keys: Iterable[tuple[str, str]]) -> AsyncIterator[None]:
        """Hold several keys at once, taken in sorted order so that two holders of overlapping sets never wait
        for each other in a cycle."""
        async with AsyncExitStack() as stack:
            for key in sorted(set(keys)):
                await stack.enter_async_context(self.hold(key))
            yield

    def busy(self, key: Hashable) -> bool:
        """Whether someone holds or waits for ``key``."""
        return key in self._locks

    def __len__(self) -> int:
        return len(self._locks)
