"""open_storage(config): the configured storage backend, opened, as one ``core.ports.Storage``.

The one place that picks a backend: today SQLite, at ``storage.path``.  ``app`` and the CLI open storage here and
see only the ports afterwards.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable

from gateway.core.ports import Storage
from gateway.settings.config import Config
from gateway.storage.sqlite.backend import SqliteStorage

# What the backend raises for a database it cannot open or use at all (a directory, a file that is not a
# database), beyond the ``StorageUnavailable`` of a read or write that failed: the CLI turns these into one line.
STORAGE_ERRORS: tuple[type[Exception], ...] = (sqlite3.Error,)


def storage_exists(config: Config) -> bool:
    """Whether the configured storage has been created (so that a command which only reads or edits it can
    refuse a mistyped location rather than create an empty one)."""
    return config.db_path.is_file()


async def open_storage(
    config: Config, *, turns_in_flight: Callable[[], int] | None = None, cache: bool = True
) -> Storage:
    """Open (creating and migrating if needed) the configured storage.

    ``turns_in_flight``: how many turns (and conversation edits) are under way in this process, the caller's own
    included, for a backend that commits turns finishing together as one (SQLite does).  ``cache``: hold recently
    active conversations in memory (``storage.cache_messages``); a short-lived command has no use for it.
    """
    return await SqliteStorage.open(
        config.db_path,
        synchronous=config.synchronous,
        busy_timeout_ms=config.busy_timeout_ms,
        cache_messages=config.cache_messages if cache else 0,
        cache_bytes=config.cache_bytes if cache else None,
        turns_in_flight=turns_in_flight,
    )
