"""Gateway keys: issue, list and revoke the keys clients present in keys mode, and recognise them per request.

A key is ``gw-`` and 43 URL-safe random characters (256 bits); the database keeps only its SHA-256.  A fast hash
is right here, unlike for passwords: nobody can guess their way to a 256-bit random key, so the hash only has to
keep the database from holding a usable secret.  Each key has a public id (``key_...``, what lists and revocation
use), a tenant, an optional label and an admin flag.

The server holds every key in memory (``KeyRing``) and reads them again whenever the database changed under it,
so a key created or revoked with the CLI counts from the server's next request on, without a restart.
"""

from __future__ import annotations

import hashlib
import re
import secrets
import time
from dataclasses import dataclass
from typing import Any

from gateway.storage.sqlite.store import ConversationStore

KEY_PREFIX = "gw-"
TENANT_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")

_COLUMNS = "id, tenant, name, admin, created_at, revoked_at"
_INSERT = """
INSERT INTO gateway_keys (id, key_hash, tenant, name, admin, created_at) VALUES (?, ?, ?, ?, ?, ?)
"""
_LIST = f"SELECT {_COLUMNS} FROM gateway_keys ORDER BY created_at, id"  # noqa: S608 (constants only)
_BY_HASH = f"SELECT key_hash, {_COLUMNS} FROM gateway_keys"  # noqa: S608 (constants only)
_REVOKE = "UPDATE gateway_keys SET revoked_at = ? WHERE id = ? AND revoked_at IS NULL"


@dataclass(frozen=True)
class GatewayKey:
    id: str
    tenant: str
    name: str | None
    admin: bool
    created_at: float
    revoked_at: float | None

    @property
    def revoked(self) -> bool:
        return self.revoked_at is not None


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def valid_tenant(name: str) -> bool:
    return TENANT_PATTERN.fullmatch(name) is not None


class KeyStore:
    """The SQL of gateway keys, over the store's waiting connection (rare, and the CLI's)."""

    def __init__(self, store: ConversationStore) -> None:
        self._store = store

    async def create(self, tenant: str, name: str | None, admin: bool) -> tuple[str, GatewayKey]:
        """A new key: the secret (to show once) and its record."""
        secret = KEY_PREFIX + secrets.token_urlsafe(32)
        record = GatewayKey(f"key_{secrets.token_hex(8)}", tenant, name, admin, time.time(), None)
        async with self._store.transaction() as tx:
            await tx.execute(_INSERT, (record.id, hash_key(secret), tenant, name, int(admin), record.created_at))
        return secret, record

    async def list(self) -> list[GatewayKey]:
        return [_key(row) for row in await self._store.read(_LIST, ())]

    async def revoke(self, key_id: str) -> bool:
        """Revoke a key for good; False when there is no such unrevoked key."""
        async with self._store.transaction() as tx:
            return await tx.execute(_REVOKE, (time.time(), key_id)) > 0

    async def by_hash(self) -> dict[str, GatewayKey]:
        return {row[0]: _key(row[1:]) for row in await self._store.read(_BY_HASH, ())}


class KeyRing:
    """Every key, in memory, read again after the database changed; ``find`` is a dict lookup."""

    def __init__(self, keys: KeyStore, store: ConversationStore) -> None:
        self._keys = keys
        self._store = store
        self._by_hash: dict[str, GatewayKey] = {}
        self._generation: int | None = None

    def stale(self) -> bool:
        """Whether the database changed since the keys were last read (checked without awaiting: per request)."""
        return self._store.generation() != self._generation

    async def refresh(self) -> None:
        """Read the keys again if the database changed since the last read."""
        generation = self._store.generation()
        if generation != self._generation:
            self._by_hash = await self._keys.by_hash()
            self._generation = generation

    @property
    def any(self) -> bool:
        """Whether any key exists, revoked ones included (what switches ``auth.mode = "auto"`` to keys)."""
        return bool(self._by_hash)

    def find(self, secret: str) -> GatewayKey | None:
        return self._by_hash.get(hash_key(secret)) if secret.startswith(KEY_PREFIX) else None


def _key(row: Any) -> GatewayKey:
    return GatewayKey(row[0], row[1], row[2], bool(row[3]), row[4], row[5])
