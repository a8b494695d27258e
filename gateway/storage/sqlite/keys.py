"""SqliteKeyStore: the SQL of gateway keys (``core.ports.KeyStore``), over the store's waiting connection.

Key operations are rare (a request reads the keys only after they changed, the CLI writes them), so they run off
the event loop.  Whether they changed is the ``keys_version`` counter (migration m009) that each create and revoke
moves on in its own transaction, read again whenever ``PRAGMA data_version`` says another connection committed
(``freshness``): turns other workers write do not make this process re-read the keys.
"""

from __future__ import annotations

import time
from typing import Any

from gateway.core.keys import hash_key, new_key
from gateway.core.ports import GatewayKey
from gateway.storage.sqlite.store import ConversationStore

_COLUMNS = "id, tenant, name, admin, created_at, revoked_at"
_INSERT = """
INSERT INTO gateway_keys (id, key_hash, tenant, name, admin, created_at) VALUES (?, ?, ?, ?, ?, ?)
"""
_LIST = f"SELECT {_COLUMNS} FROM gateway_keys ORDER BY created_at, id"  # noqa: S608 (constants only)
_BY_HASH = f"SELECT key_hash, {_COLUMNS} FROM gateway_keys"  # noqa: S608 (constants only)
_REVOKE = "UPDATE gateway_keys SET revoked_at = ? WHERE id = ? AND revoked_at IS NULL"
_KEYS_CHANGED = "UPDATE gateway_meta SET value = value + 1 WHERE name = 'keys_version'"


class SqliteKeyStore:
    def __init__(self, store: ConversationStore) -> None:
        self._store = store

    async def create(self, tenant: str, name: str | None, admin: bool) -> tuple[str, GatewayKey]:
        """A new key: the secret (to show once) and its record."""
        secret, record = new_key(tenant, name, admin)
        async with self._store.transaction() as tx:
            await tx.execute(_INSERT, (record.id, hash_key(secret), tenant, name, int(admin), record.created_at))
            await tx.execute(_KEYS_CHANGED)
        return secret, record

    async def list(self) -> list[GatewayKey]:
        return [_key(row) for row in await self._store.read(_LIST, ())]

    async def revoke(self, key_id: str) -> bool:
        """Revoke a key for good; False when there is no such unrevoked key."""
        async with self._store.transaction() as tx:
            if not await tx.execute(_REVOKE, (time.time(), key_id)):
                return False
            await tx.execute(_KEYS_CHANGED)
            return True

    async def by_hash(self) -> dict[str, GatewayKey]:
        return {row[0]: _key(row[1:]) for row in await self._store.read(_BY_HASH, ())}

    def version(self) -> int:
        return self._store.keys_version()


def _key(row: Any) -> GatewayKey:
    return GatewayKey(row[0], row[1], row[2], bool(row[3]), row[4], row[5])
