"""Per-conversation ordering: turns on one conversation run one after another, different ones in parallel.

A lock exists only while someone holds or waits for it, so memory does not grow with the number of
conversations ever seen.  The in-process lock comes first; when several processes share the database (workers,
replicas, the CLI) the storage's ``ConversationLocks`` (``shared``) is taken next, so that only one holder per
process ever waits on the cross-process lock, and the in-process hand-over stays a plain ``asyncio.Lock``.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Hashable, Iterable
from contextlib import AbstractAsyncContextManager, AsyncExitStack, asynccontextmanager
from types import TracebackType
from typing import Any

from gateway.core.ports import ConversationLocks


class KeyedLocks:
    def __init__(self, shared: ConversationLocks | None = None) -> None:
        self._locks: dict[Hashable, tuple[asyncio.Lock, int]] = {}
        # Set once storage is open (the app creates the locks before it, for the writer's turns-in-flight count).
        self.shared = shared

    def hold(self, key: tuple[str, str]) -> _Hold:
        """``async with locks.hold(key):`` runs the block holding ``key``'s lock."""
        return _Hold(self._locks, key, self.shared)

    @asynccontextmanager
    async def hold_all(self, keys: Iterable[tuple[str, str]]) -> AsyncIterator[None]:
        """Hold several keys at once, taken in sorted order so that two holders of overlapping sets never wait
        for each other in a cycle: by the shared locks' own order first (``ConversationLocks.rank``), which every
        process follows alike whatever keys collide."""
        shared = self.shared
        async with AsyncExitStack() as stack:
            for key in sorted(set(keys), key=lambda k: (shared.rank(k) if shared is not None else 0, k)):
                await stack.enter_async_context(self.hold(key))
            yield

    def busy(self, key: Hashable) -> bool:
        """Whether someone holds or waits for ``key``."""
        return key in self._locks

    def __len__(self) -> int:
        return len(self._locks)


class _Hold:
    # A plain class rather than @asynccontextmanager: every chat turn enters one, and the generator-based form
    # costs an async generator (with asyncio's finalizer bookkeeping) and several more calls per use.
    __slots__ = ("_held", "_key", "_locks", "_shared")

    def __init__(
        self, locks: dict[Hashable, tuple[asyncio.Lock, int]], key: tuple[str, str], shared: ConversationLocks | None
    ) -> None:
        self._locks = locks
        self._key = key
        self._shared = shared
        self._held: AbstractAsyncContextManager[Any] | None = None

    async def __aenter__(self) -> None:
        lock, users = self._locks.get(self._key, (None, 0))
        if lock is None:
            lock = asyncio.Lock()
        self._locks[self._key] = (lock, users + 1)
        try:
            await lock.acquire()
        except BaseException:
            self._leave()
            raise
        if self._shared is not None:
            held = self._shared.hold(self._key)
            try:
                await held.__aenter__()
            except BaseException:
                lock.release()
                self._leave()
                raise
            self._held = held

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        try:
            if self._held is not None:
                held, self._held = self._held, None
                await held.__aexit__(exc_type, exc, tb)
        finally:
            self._locks[self._key][0].release()
            self._leave()

    def _leave(self) -> None:
        lock, users = self._locks[self._key]
        if users == 1:
            del self._locks[self._key]
        else:
            self._locks[self._key] = (lock, users - 1)
