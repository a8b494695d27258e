"""PostgresStorage: the PostgreSQL backend as one ``core.ports.Storage``: the turn store, catalog, key store,
cross-process locks and shared limits over one ``Database`` (pool and history cache), opened, migrated and closed
together, and what the server asks of the database as a whole (readiness, the conversation count, commit times).

Opening creates the pool and runs the migrations, then starts what keeps state current in the background: the
key store's watch (``keys``), the lock connections and their listener (``locks``), and the conversation count,
a ``count(*)`` refreshed every ``COUNT_SECONDS`` and soon after this process created or deleted conversations,
since the metrics gauge reads it on the event loop at every scrape and may not wait for a query.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from typing import cast

import asyncpg
import structlog

from gateway.core.ports import ConversationLocks, LimitStore, StorageFault
from gateway.errors import StorageUnavailable
from gateway.storage.postgres.catalog import PostgresCatalog
from gateway.storage.postgres.database import DRIVER_ERRORS, Database
from gateway.storage.postgres.keys import PostgresKeyStore
from gateway.storage.postgres.limits import PostgresLimitStore
from gateway.storage.postgres.locks import PostgresConversationLocks
from gateway.storage.postgres.migrations import migrate
from gateway.storage.postgres.readiness import WriteWatch, unreachable
from gateway.storage.postgres.store import PostgresTurnStore

log = structlog.get_logger("gateway")

COUNT_SECONDS = 2.0  # the conversation count's refresh interval while nothing here changed it
COUNT_AFTER_WRITE_SECONDS = 0.25  # at least this long between counts asked for by this process's own writes
READINESS_TIMEOUT_SECONDS = 5.0  # a readiness check that takes longer reports the database unreachable
WRITE_PROBE_INTERVAL_SECONDS = 1.0  # while a write failure is remembered, how often readiness tries a write
_COUNT = "SELECT count(*) FROM conversations"
# A real write that changes nothing anyone reads: proof at start-up (and after a failed write) that turns can
# be recorded, which a SELECT on a read-only server would not show.
_PROBE = """
INSERT INTO gateway_meta (name, value) VALUES ('write_probe', 0)
ON CONFLICT (name) DO UPDATE SET value = gateway_meta.value
"""


class PostgresStorage:
    def __init__(
        self,
        database: Database,
        keys: PostgresKeyStore,
        locks: PostgresConversationLocks,
        limits: PostgresLimitStore,
        *,
        conversations: int,
    ) -> None:
        self.database = database
        self._writes = WriteWatch()
        self._turns = PostgresTurnStore(database, self._writes)
        self._catalog = PostgresCatalog(database)
        self._keys = keys
        self._locks = locks
        self._limits = limits
        self._count = conversations
        self._probed_at = float("-inf")
        self._counter = asyncio.get_running_loop().create_task(self._count_periodically(), name="gateway-count")

    @classmethod
    async def open(
        cls, url: str, *, pool_size: int, cache_messages: int = 0, cache_bytes: int | None = None
    ) -> PostgresStorage:
        """Connect, migrate and start the background work; nothing left open when it fails."""
        database = await Database.open(url, pool_size=pool_size, cache_messages=cache_messages, cache_bytes=cache_bytes)
        keys: PostgresKeyStore | None = None
        locks: PostgresConversationLocks | None = None
        limits: PostgresLimitStore | None = None
        try:
            async with database.pool.acquire() as conn:
                applied = await migrate(cast(asyncpg.Connection, conn))  # the proxy forwards every method
            if applied:
                log.info("database_migrated", database=database.url_for_logs, applied=applied)
            keys = PostgresKeyStore(database)
            await keys.start()
            locks = PostgresConversationLocks(database.connect_dedicated)
            await locks.start()
            limits = PostgresLimitStore(database, locks)  # after locks.start(): it records slots by process number
            limits.start()
            conversations = int(await database.fetchval(_COUNT))
        except BaseException:
            if limits is not None:
                await limits.close()
            if locks is not None:
                await locks.close()
            if keys is not None:
                await keys.close()
            await database.close()
            raise
        return cls(database, keys, locks, limits, conversations=conversations)

    @property
    def turns(self) -> PostgresTurnStore:
        return self._turns

    @property
    def catalog(self) -> PostgresCatalog:
        return self._catalog

    @property
    def keys(self) -> PostgresKeyStore:
        return self._keys

    @property
    def locks(self) -> ConversationLocks | None:
        return self._locks

    @property
    def limits(self) -> LimitStore | None:
        return self._limits

    def exclusive(self, name: str) -> contextlib.AbstractAsyncContextManager[bool]:
        return self._locks.exclusive(name)

    async def readiness(self, *, write: bool = False) -> StorageFault | None:
        """None when a turn could be recorded now (see ``readiness``): the server answers, is no standby, and the
        last write of a turn did not fail (or a write since proved it healed).  ``write``: prove it with a write
        now (at start-up)."""
        now = time.monotonic()
        probe = write or (not self._writes.healthy and now - self._probed_at >= WRITE_PROBE_INTERVAL_SECONDS)
        try:
            async with asyncio.timeout(READINESS_TIMEOUT_SECONDS), self.database.pool.acquire() as conn:
                if await conn.fetchval("SELECT pg_is_in_recovery()"):
                    return StorageFault("read_only", "the database is a standby (in recovery): it takes no writes")
                if probe:
                    if not write:  # the start-up's write does not count against the interval
                        self._probed_at = now
                    try:
                        await conn.execute(_PROBE)
                    except asyncpg.PostgresError as exc:  # refused by the server: what the fault says
                        self._writes.failed(exc)
                    else:
                        self._writes.succeeded()
        except DRIVER_ERRORS as exc:
            return unreachable(exc)
        return self._writes.error

    def count_conversations(self) -> int:
        return self._count

    def observe_writes(self, observe: Callable[[float], None]) -> None:
        self._turns.observe = observe

    async def close(self) -> None:
        self._counter.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._counter
        await self._limits.close()
        await self._locks.close()
        await self._keys.close()
        await self.database.close()

    async def _count_periodically(self) -> None:
        changed = self.database.conversations_changed
        interval = COUNT_SECONDS
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(changed.wait(), interval)
            changed.clear()
            started = time.monotonic()
            try:
                self._count = int(await self.database.fetchval(_COUNT))
            except StorageUnavailable:
                pass  # readiness says so; the gauge keeps the last count
            took = time.monotonic() - started
            # count(*) reads the whole table: on a large one, ask less often, so the gauge stays a small cost.
            interval = max(COUNT_SECONDS, 20 * took)
            await asyncio.sleep(max(COUNT_AFTER_WRITE_SECONDS, 5 * took))
