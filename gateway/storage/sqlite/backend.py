"""SqliteStorage: the SQLite backend as one ``core.ports.Storage``: the turn store, the catalog and the key store
over one ``ConversationStore`` (one file, its two connections, one cache), the cross-process locks on the file's
side file (``locks``), and, for several worker processes, the limits counted in the file (``limits``); opened and
closed together.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from pathlib import Path

from gateway.core.ports import ConversationLocks, LimitStore, StorageFault
from gateway.storage.sqlite.catalog import SqliteCatalog
from gateway.storage.sqlite.keys import SqliteKeyStore
from gateway.storage.sqlite.limits import SqliteLimits
from gateway.storage.sqlite.locks import FileLocks
from gateway.storage.sqlite.store import ConversationStore


@dataclass(frozen=True)
class SqliteStorage:
    turns: ConversationStore
    catalog: SqliteCatalog
    keys: SqliteKeyStore
    file_locks: FileLocks
    shared_limits: SqliteLimits | None = None

    @classmethod
    async def open(
        cls,
        path: Path,
        *,
        synchronous: str,
        busy_timeout_ms: int,
        cache_messages: int = 0,
        cache_bytes: int | None = None,
        turns_in_flight: Callable[[], int] | None = None,
        shared_limits: bool = False,
    ) -> SqliteStorage:
        """Open (creating and migrating if needed) the database at ``path``; see ``ConversationStore.open``.
        ``shared_limits``: count the per-key limits in the file (several worker processes share it); otherwise
        ``limits`` is None and the process's own limiter is exact."""
        store = await ConversationStore.open(
            path,
            synchronous=synchronous,
            busy_timeout_ms=busy_timeout_ms,
            cache_messages=cache_messages,
            cache_bytes=cache_bytes,
            turns_in_flight=turns_in_flight,
        )
        # Taking a conversation's lock makes the store look at the file again before it serves a cached history.
        locks = FileLocks(path, taken=store.look_again)
        try:
            limits = SqliteLimits.open(path, locks, busy_timeout_ms=busy_timeout_ms) if shared_limits else None
        except BaseException:
            await store.close()
            raise
        return cls(store, SqliteCatalog(store), SqliteKeyStore(store), locks, limits)

    @property
    def locks(self) -> ConversationLocks | None:
        # Always: the CLI and every server process using the file take them, whatever server.workers says.
        return self.file_locks

    @property
    def limits(self) -> LimitStore | None:
        return self.shared_limits

    def exclusive(self, name: str) -> AbstractAsyncContextManager[bool]:
        return self.file_locks.exclusive(name)

    async def readiness(self, *, write: bool = False) -> StorageFault | None:
        return await self.turns.readiness(write=write)

    def count_conversations(self) -> int:
        return self.turns.count_conversations()

    def observe_writes(self, observe: Callable[[float], None]) -> None:
        self.turns.observe_writes(observe)

    async def close(self) -> None:
        if self.shared_limits is not None:
            await self.shared_limits.close()
        self.file_locks.close()
        await self.turns.close()
