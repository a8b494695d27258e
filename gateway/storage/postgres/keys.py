"""PostgresKeyStore: the SQL of gateway keys (``core.ports.KeyStore``) on PostgreSQL, and the watch that keeps
``version()`` current across processes and replicas.

Only each key's SHA-256 is stored.  Creating or revoking a key also moves ``gateway_meta.keys_version`` on and
sends ``NOTIFY gateway_keys`` with the new number, in the same statement (so the same transaction: a notification
is delivered only if the change commits).  ``version()`` is asked per request and may not await, so a background
task (``start``) keeps it current: it LISTENs on ``gateway_keys`` on a connection of its own
(``Database.connect_dedicated``; LISTEN is session state, which a pool connection must not carry) and, as the
fallback for a notification lost with its connection, reads ``keys_version`` again every second on it.  When that
connection dies (a PostgreSQL restart closes it) it connects again at once, then every half second while the server
is away, and the first read on the new connection catches any change made meanwhile.  A key revoked by another
process (the CLI, another replica) is thus seen when the notification arrives (milliseconds), within about a second
at worst.

``version()`` is a count of the distinct ``keys_version`` values seen (moving on whenever the stored number
differs from the last one seen), so it only ever moves on, whatever the stored number does.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import Any

import asyncpg
import structlog

from gateway.core.keys import hash_key, new_key
from gateway.core.ports import GatewayKey
from gateway.errors import StorageUnavailable
from gateway.storage.postgres.database import DRIVER_ERRORS, Database

log = structlog.get_logger("gateway")

CHANNEL = "gateway_keys"
# How often the watch reads keys_version when no notification came (the fallback; revocation within 2 s), how
# long one read may take before the connection counts as lost, and how long to wait between reconnection tries.
POLL_SECONDS = 1.0
READ_TIMEOUT_SECONDS = 5.0
RECONNECT_SECONDS = 0.5
# What ends one connection's watch (the next one takes over): the server lost, refused or failing.
_WATCH_ERRORS: tuple[type[BaseException], ...] = (StorageUnavailable, *DRIVER_ERRORS)

_COLUMNS = "id, tenant, name, admin, created_at, revoked_at"
# The number moves on and the notification goes out only when the key statement changed a row: the CTEs feed
# each other, so a revoke of no key bumps nothing (and returns no row).  An upsert rather than an UPDATE, so that
# a missing 'keys_version' row (a database that never had one) starts it.
_BUMP = """
bumped AS (
    INSERT INTO gateway_meta (name, value) SELECT 'keys_version', 1 FROM changed
    ON CONFLICT (name) DO UPDATE SET value = gateway_meta.value + 1
    RETURNING value
)
SELECT value, pg_notify('gateway_keys', value::text) FROM bumped
"""
_INSERT = f"""
WITH changed AS (
    INSERT INTO gateway_keys (id, key_hash, tenant, name, admin, created_at) VALUES ($1, $2, $3, $4, $5, $6)
    RETURNING id
), {_BUMP}"""  # noqa: S608 (constants only)
_REVOKE = f"""
WITH changed AS (
    UPDATE gateway_keys SET revoked_at = $1 WHERE id = $2 AND revoked_at IS NULL RETURNING id
), {_BUMP}"""  # noqa: S608 (constants only)
_LIST = f"SELECT {_COLUMNS} FROM gateway_keys ORDER BY created_at, id"  # noqa: S608 (constants only)
_BY_HASH = f"SELECT key_hash, {_COLUMNS} FROM gateway_keys"  # noqa: S608 (constants only)
_KEYS_VERSION = "SELECT value FROM gateway_meta WHERE name = 'keys_version'"


class PostgresKeyStore:
    """The key store over ``database``.  ``start()`` must be awaited before ``version()`` means anything across
    processes (``backend`` does it when it opens the storage), and ``close()`` before the database closes."""

    def __init__(self, database: Database) -> None:
        self._db = database
        self._seen: int | None = None  # the last keys_version read or notified (None: no row yet)
        self._version = 0
        self._watch: asyncio.Task[None] | None = None

    async def start(self) -> None:
        """Read the current ``keys_version`` (so that no change made from now on can go unseen) and start the watch
        that keeps ``version()`` current.  Raises ``StorageUnavailable`` when the database cannot be read."""
        if self._watch is not None:
            return
        self._seen = await self._db.fetchval(_KEYS_VERSION)
        self._watch = asyncio.create_task(self._watch_changes(), name="gateway-keys-watch")

    async def close(self) -> None:
        """Stop the watch and close its connection."""
        watch, self._watch = self._watch, None
        if watch is not None:
            watch.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watch

    async def create(self, tenant: str, name: str | None, admin: bool) -> tuple[str, GatewayKey]:
        """A new key: the secret (to show once) and its record."""
        secret, record = new_key(tenant, name, admin)
        # A transaction of one statement rather than ``Database.execute``'s read retry: a write is never repeated.
        async with self._db.transaction() as conn:
            row = await conn.fetchrow(_INSERT, record.id, hash_key(secret), tenant, name, admin, record.created_at)
        self._observe(row[0] if row is not None else None)
        return secret, record

    async def list(self) -> list[GatewayKey]:
        return [_key(row) for row in await self._db.fetch(_LIST)]

    async def revoke(self, key_id: str) -> bool:
        """Revoke a key for good; False when there is no such unrevoked key."""
        async with self._db.transaction() as conn:
            row = await conn.fetchrow(_REVOKE, time.time(), key_id)
        if row is None:
            return False
        self._observe(row[0])
        return True

    async def by_hash(self) -> dict[str, GatewayKey]:
        return {row[0]: _key(row[1:]) for row in await self._db.fetch(_BY_HASH)}

    def version(self) -> int:
        """Moves on whenever the stored keys may have changed: at once for this process's own writes, when the
        notification arrives for another's, within ``POLL_SECONDS`` at worst (see the module docstring)."""
        return self._version

    def _observe(self, value: int | None) -> None:
        if value != self._seen:
            self._seen = value
            self._version += 1

    def _notified(self, connection: Any, pid: int, channel: str, payload: object) -> None:
        # The payload is the new keys_version; one that is not a number still says the keys changed.
        try:
            self._observe(int(str(payload)))
        except ValueError:
            self._version += 1

    async def _watch_changes(self) -> None:
        """LISTEN and poll on a dedicated connection; when it fails, connect again (forever, until closed): at once
        after a connection that worked, then every ``RECONNECT_SECONDS`` while the server is away."""
        lost = False
        while True:
            conn: asyncpg.Connection | None = None
            try:
                conn = await self._db.connect_dedicated()
                closed = await self._listen(conn)
                while True:
                    # Also right after a reconnection: notifications sent while no connection listened are lost.
                    self._observe(await conn.fetchval(_KEYS_VERSION, timeout=READ_TIMEOUT_SECONDS))
                    if lost:
                        log.info("keys_watch_restored", database=self._db.url_for_logs)
                        lost = False
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(closed.wait(), POLL_SECONDS)
            except _WATCH_ERRORS as exc:
                if not lost:  # once per outage, not once per try
                    log.warning("keys_watch_lost", error=type(exc).__name__, database=self._db.url_for_logs)
                    lost = True
                    continue
            finally:
                if conn is not None:
                    with contextlib.suppress(*DRIVER_ERRORS):
                        await asyncio.wait_for(conn.close(), timeout=READ_TIMEOUT_SECONDS)
            await asyncio.sleep(RECONNECT_SECONDS)

    async def _listen(self, conn: asyncpg.Connection) -> asyncio.Event:
        """LISTEN on ``conn``; the event is set when the connection closes (a server restart closes its socket),
        so the watch connects again at once rather than at its next poll."""
        closed = asyncio.Event()
        conn.add_termination_listener(lambda _: closed.set())
        await conn.add_listener(CHANNEL, self._notified)
        return closed


def _key(row: Any) -> GatewayKey:
    return GatewayKey(row[0], row[1], row[2], bool(row[3]), row[4], row[5])
