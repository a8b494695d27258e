"""Gateway keys, the pure part: what a key is, how it is made and hashed, and recognising them per request.

A key is ``gw-`` and 43 URL-safe random characters (256 bits); the key store (``ports.KeyStore``) keeps only its
SHA-256.  A fast hash is right here, unlike for passwords: nobody can guess their way to a 256-bit random key, so
the hash only has to keep the database from holding a usable secret.  Each key has a public id (``key_...``, what
lists and revocation use), a tenant, an optional label and an admin flag.

The server holds every key in memory (``KeyRing``) and reads them again whenever the store says they may have
changed (``KeyStore.version``), so a key created or revoked with the CLI counts from the server's next request on,
without a restart.
"""

from __future__ import annotations

import hashlib
import re
import secrets
import time

from gateway.core.ports import GatewayKey, KeyStore

KEY_PREFIX = "gw-"
TENANT_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def valid_tenant(name: str) -> bool:
    return TENANT_PATTERN.fullmatch(name) is not None


def new_key(tenant: str, name: str | None, admin: bool) -> tuple[str, GatewayKey]:
    """A new key: the secret (to show once; only ``hash_key`` of it is stored) and its record."""
    secret = KEY_PREFIX + secrets.token_urlsafe(32)
    return secret, GatewayKey(f"key_{secrets.token_hex(8)}", tenant, name, admin, time.time(), None)


class KeyRing:
    """Every key, in memory, read again after the stored keys changed; ``find`` is a dict lookup."""

    def __init__(self, keys: KeyStore) -> None:
        self._keys = keys
        self._by_hash: dict[str, GatewayKey] = {}
        self._version: int | None = None

    def stale(self) -> bool:
        """Whether the stored keys may have changed since they were last read (checked without awaiting: per
        request)."""
        return self._keys.version() != self._version

    async def refresh(self) -> None:
        """Read the keys again if they may have changed since the last read."""
        version = self._keys.version()
        if version != self._version:
            self._by_hash = await self._keys.by_hash()
            self._version = version

    @property
    def any(self) -> bool:
        """Whether any key exists, revoked ones included (what switches ``auth.mode = "auto"`` to keys)."""
        return bool(self._by_hash)

    def find(self, secret: str) -> GatewayKey | None:
        return self._by_hash.get(hash_key(secret)) if secret.startswith(KEY_PREFIX) else None
