"""open_storage(config): the configured storage backend, opened, as one ``core.ports.Storage``.

The one place that picks a backend: PostgreSQL when ``storage.path`` is a ``postgresql://`` URL
(``config.db_url``), else SQLite at the file ``config.db_path``.  ``app`` and the CLI open storage here and see
only the ports afterwards.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable

import asyncpg

from gateway.core.ports import Storage
from gateway.settings.config import Config
from gateway.storage.postgres.backend import PostgresStorage
from gateway.storage.postgres.database import DatabaseUnreachable
from gateway.storage.sqlite.backend import SqliteStorage

# What a backend raises for a database it cannot open or use at all, beyond the ``StorageUnavailable`` of a read
# or write that failed: the CLI turns these into one line.  SQLite: a directory, a file that is not a database.
# PostgreSQL: a server that cannot be reached (``DatabaseUnreachable``, which names it without the password),
# refused credentials or an unknown database (asyncpg's server errors, whose messages hold no password), a
# connection lost while opening.
STORAGE_ERRORS: tuple[type[Exception], ...] = (
    sqlite3.Error,
    DatabaseUnreachable,
    asyncpg.PostgresError,
    asyncpg.InterfaceError,
)


def storage_exists(config: Config) -> bool:
    """Whether the configured storage has been created (so that a command which only reads or edits it can
    refuse a mistyped location rather than create an empty one).

    PostgreSQL: always True.  The gateway never creates a database on a server, so a mistyped name cannot make
    one; it fails on connecting (an unknown database, one of ``STORAGE_ERRORS``), and an existing database the
    gateway has not used yet is one an operator created for it: its tables are created then."""
    if config.db_url is not None:
        return True
    return config.db_path.is_file()


async def open_storage(
    config: Config, *, turns_in_flight: Callable[[], int] | None = None, cache: bool = True
) -> Storage:
    """Open (creating and migrating if needed) the configured storage.

    ``turns_in_flight``: how many turns (and conversation edits) are under way in this process, the caller's own
    included, for a backend that commits turns finishing together as one (SQLite does; PostgreSQL commits each
    in its own round trip).  ``cache``: hold recently active conversations in memory (``storage.cache_messages``);
    a short-lived command has no use for it.
    """
    if config.db_url is not None:
        return await PostgresStorage.open(
            config.db_url,
            pool_size=config.storage_pool_size,
            cache_messages=config.cache_messages if cache else 0,
            cache_bytes=config.cache_bytes if cache else None,
        )
    return await SqliteStorage.open(
        config.db_path,
        synchronous=config.synchronous,
        busy_timeout_ms=config.busy_timeout_ms,
        cache_messages=config.cache_messages if cache else 0,
        cache_bytes=config.cache_bytes if cache else None,
        turns_in_flight=turns_in_flight,
        # Several workers share the file: their limits must be counted in it (one process counts them alone).
        shared_limits=config.workers > 1,
    )
