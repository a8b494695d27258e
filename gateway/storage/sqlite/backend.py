"""SqliteStorage: the SQLite backend as one ``core.ports.Storage``: the turn store, the catalog and the key store
over one ``ConversationStore`` (one file, its two connections, one cache), opened and closed together.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from gateway.core.ports import StorageFault
from gateway.storage.sqlite.catalog import SqliteCatalog
from gateway.storage.sqlite.keys import SqliteKeyStore
from gateway.storage.sqlite.store import ConversationStore


@dataclass(frozen=True)
class SqliteStorage:
    turns: ConversationStore
    catalog: SqliteCatalog
    keys: SqliteKeyStore

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
    ) -> SqliteStorage:
        """Open (creating and migrating if needed) the database at ``path``; see ``ConversationStore.open``."""
        store = await ConversationStore.open(
            path,
            synchronous=synchronous,
            busy_timeout_ms=busy_timeout_ms,
            cache_messages=cache_messages,
            cache_bytes=cache_bytes,
            turns_in_flight=turns_in_flight,
        )
        return cls(store, SqliteCatalog(store), SqliteKeyStore(store))

    async def readiness(self, *, write: bool = False) -> StorageFault | None:
        return await self.turns.readiness(write=write)

    def count_conversations(self) -> int:
        return self.turns.count_conversations()

    def observe_writes(self, observe: Callable[[float], None]) -> None:
        self.turns.observe_writes(observe)

    async def close(self) -> None:
        await self.turns.close()
