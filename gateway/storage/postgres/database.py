"""Database: the one object that owns the connections to PostgreSQL (an asyncpg pool) and this process's history
cache, and turns what the driver raises into the gateway's ``StorageUnavailable``.

Every PostgreSQL module of the backend (the turn store, catalog, keys, locks, limits) goes through here: the pool
for statements and transactions, ``connect_dedicated`` for connections that must stay out of the pool because
they hold session state (advisory locks, LISTEN).  Pool connections carry no session state, so handing one back
runs no reset query (asyncpg's default reset, ``RESET ALL; UNLISTEN *; ...``, would be a round trip per
statement); an open transaction is still rolled back.

Nothing here ever puts the URL in a message: errors name the location as ``url_for_logs`` (password ``***``).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeVar, cast

import asyncpg
from asyncpg.pool import PoolConnectionProxy

from gateway.errors import StorageUnavailable
from gateway.settings.database import redact
from gateway.storage.cache import HistoryCache

# What the driver raises when the server cannot be used: refused or lost connections (OSError, InterfaceError,
# asyncpg's ConnectionDoesNotExistError among them), a server error (PostgresError), a timeout.
# InternalClientError: "another operation is in progress" on a connection the server has just cut.
DRIVER_ERRORS: tuple[type[Exception], ...] = (
    asyncpg.PostgresError,
    asyncpg.InterfaceError,
    asyncpg.InternalClientError,
    OSError,
    TimeoutError,
)
# Errors that mean the connection died before the statement ran (a PostgreSQL restart closes every pooled
# connection; the pool notices only when one is used): a read is tried once more on a fresh connection.
_CONNECTION_LOST: tuple[type[Exception], ...] = (
    asyncpg.ConnectionDoesNotExistError,
    asyncpg.InterfaceError,
    ConnectionError,
    asyncpg.AdminShutdownError,
    asyncpg.CannotConnectNowError,
)
# How long opening a connection may take before the server counts as unreachable.
CONNECT_TIMEOUT_SECONDS = 10.0
CLOSE_TIMEOUT_SECONDS = 10.0
APPLICATION_NAME = "memory-gateway"

_T = TypeVar("_T")
_CUSTOM_PLAN = "SET LOCAL plan_cache_mode = force_custom_plan"

READ_FAILED = "The conversation store cannot be read."
WRITE_FAILED = "The conversation store cannot be written."


class DatabaseUnreachable(Exception):
    """The database could not be opened at all (refused, timed out, unknown host); the message names it by
    ``url_for_logs``, never with its password."""


async def _keep_session(connection: asyncpg.Connection) -> None:
    """The pool's reset: nothing (see the module docstring)."""


class Database:
    """``pool``: min a connection, max ``pool_size``; ``cache``: this process's history cache (entries validated by
    version on every load: ``store``)."""

    def __init__(self, pool: asyncpg.Pool, url: str, cache: HistoryCache) -> None:
        self.pool = pool
        self.cache = cache
        self.url_for_logs = redact(url)
        self._url = url
        # Set after a write that may change the number of conversations (``backend`` refreshes its count).
        self.conversations_changed = asyncio.Event()

    @classmethod
    async def open(
        cls, url: str, *, pool_size: int, cache_messages: int = 0, cache_bytes: int | None = None
    ) -> Database:
        """Connect (a first pool connection at once, so that a wrong URL fails here); ``DatabaseUnreachable`` when
        the server cannot be reached, asyncpg's own errors (a wrong password, no such database) as they come."""
        try:
            pool = await asyncpg.create_pool(
                dsn=url,
                min_size=1,
                max_size=max(1, pool_size),
                reset=_keep_session,
                timeout=CONNECT_TIMEOUT_SECONDS,
                server_settings={"application_name": APPLICATION_NAME},
            )
        except (OSError, TimeoutError) as exc:
            raise DatabaseUnreachable(f"cannot connect to {redact(url)}: {_describe(exc)}") from None
        except ValueError:
            # The driver's message quotes the URL's options, which may hold a password: never shown.
            raise DatabaseUnreachable(f"the driver refused the URL's options: {redact(url)}") from None
        return cls(pool, url, HistoryCache(cache_messages, cache_bytes))

    async def close(self) -> None:
        """Close the pool, waiting for connections in use to come back; after ``CLOSE_TIMEOUT_SECONDS`` (a server
        that stopped answering) the rest are dropped."""
        try:
            await asyncio.wait_for(self.pool.close(), timeout=CLOSE_TIMEOUT_SECONDS)
        except DRIVER_ERRORS:  # TimeoutError among them
            self.pool.terminate()

    # --- single statements on a pool connection --------------------------------------------------------------

    async def fetch(self, sql: str, *args: Any) -> list[asyncpg.Record]:
        """Rows of a read; a lost connection is retried once, anything else is ``StorageUnavailable``."""
        return await self._read(lambda conn: conn.fetch(sql, *args))

    async def fetchrow(self, sql: str, *args: Any) -> asyncpg.Record | None:
        return await self._read(lambda conn: conn.fetchrow(sql, *args))

    async def fetchval(self, sql: str, *args: Any) -> Any:
        return await self._read(lambda conn: conn.fetchval(sql, *args))

    async def fetch_custom_plan(self, sql: str, *args: Any) -> list[asyncpg.Record]:
        """Rows of a read planned for its parameters at every execution, as ``fetch`` otherwise.

        asyncpg prepares each statement once per connection and PostgreSQL, after 5 executions of a prepared
        statement, may switch to a generic plan, made without the parameters' values: for a search (a LIKE whose
        pattern the planner must see to judge) that plan read every message of a big tenant, 1.2-2.0 s a query
        against 3-28 ms planned for the pattern (measured, bench.search).  ``SET LOCAL`` inside a read-only
        transaction of its own, so the setting ends with it and never reaches another statement on the pooled
        connection; two round trips more than ``fetch``."""

        async def run(conn: PoolConnectionProxy[asyncpg.Record]) -> list[asyncpg.Record]:
            async with conn.transaction(readonly=True):
                await conn.execute(_CUSTOM_PLAN)
                return await conn.fetch(sql, *args)

        return await self._read(run)

    async def execute(self, sql: str, *args: Any) -> str:
        """Run one write statement in its own transaction; its status ("UPDATE 1").  Never retried: a lost
        connection may have committed it."""
        try:
            async with self.pool.acquire() as conn:
                return await conn.execute(sql, *args)
        except DRIVER_ERRORS as exc:
            raise StorageUnavailable(WRITE_FAILED, code="storage_unavailable") from exc

    async def _read(self, run: Callable[[PoolConnectionProxy[asyncpg.Record]], Awaitable[_T]]) -> _T:
        try:
            for attempt in (1, 2):
                try:
                    async with self.pool.acquire() as conn:
                        return await run(conn)
                except _CONNECTION_LOST:
                    if attempt == 2:
                        raise
        except DRIVER_ERRORS as exc:
            raise StorageUnavailable(READ_FAILED, code="storage_unavailable") from exc
        raise AssertionError("unreachable")  # pragma: no cover

    # --- transactions and dedicated connections --------------------------------------------------------------

    @contextlib.asynccontextmanager
    async def transaction(self, *conversations: tuple[str, str]) -> AsyncIterator[asyncpg.Connection]:
        """``async with database.transaction(key, ...) as conn:`` runs the block in one transaction on one pool
        connection (READ COMMITTED, as PostgreSQL defaults: lock the rows you change, ``SELECT ... FOR UPDATE``,
        when a read decides a write).  ``conversations`` (owner, external id) are the ones it may change: their
        cached entries go.  Driver errors become ``StorageUnavailable``; anything else rolls back and re-raises."""
        for key in conversations:
            self.cache.discard(key)
        try:
            async with self.pool.acquire() as conn, conn.transaction():
                # The pool's proxy forwards every Connection method; callers type against Connection.
                yield cast(asyncpg.Connection, conn)
        except DRIVER_ERRORS as exc:
            raise StorageUnavailable(WRITE_FAILED, code="storage_unavailable") from exc
        finally:
            # Creating and deleting conversations go through here (catalog, purge): the count may have moved.
            self.conversations_changed.set()

    async def connect_dedicated(self) -> asyncpg.Connection:
        """A connection of its own, outside the pool, for session state (advisory locks, LISTEN); the caller closes
        it.  ``StorageUnavailable`` when the server cannot be reached."""
        try:
            return await asyncpg.connect(
                dsn=self._url,
                timeout=CONNECT_TIMEOUT_SECONDS,
                server_settings={"application_name": APPLICATION_NAME},
            )
        except DRIVER_ERRORS as exc:
            raise StorageUnavailable(READ_FAILED, code="storage_unavailable") from exc


def _describe(exc: BaseException) -> str:
    """An OS-level error's text without anything the URL holds beyond host and port (which the OS error may name)."""
    if isinstance(exc, TimeoutError):
        return f"no answer within {CONNECT_TIMEOUT_SECONDS:g} s"
    return exc.strerror or str(exc) if isinstance(exc, OSError) else str(exc)
