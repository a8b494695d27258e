"""Opening a database file: the inline and the waiting connection (see ``store``), their pragmas, WAL mode and
migrations, and the watches over the file and its writes that readiness reads.
"""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass
from pathlib import Path

import aiosqlite

from gateway.storage.sqlite.migrations import migrate
from gateway.storage.sqlite.readiness import FileWatch, WriteWatch, watched_connection


@dataclass(frozen=True)
class Connections:
    inline: sqlite3.Connection  # on the event loop, never waits for a lock
    waiting: aiosqlite.Connection  # on its own thread, with the configured busy timeout
    files: FileWatch
    writes: WriteWatch


async def open_connections(path: Path, *, synchronous: str, busy_timeout_ms: int) -> Connections:
    """Both connections to the database at ``path``, created and migrated if needed; nothing left open when it
    fails."""
    path.parent.mkdir(parents=True, exist_ok=True)
    writes = WriteWatch()
    # The plain connection first, made to read the header: a path SQLite cannot open (a directory, a file
    # that is not a database) fails here, before aiosqlite's thread exists.  Failing inside aiosqlite.connect
    # left that thread answering an event loop that asyncio.run had already closed, with tracebacks.
    inline = sqlite3.connect(path, isolation_level="IMMEDIATE", factory=watched_connection(writes, statements=False))
    try:
        inline.execute("PRAGMA schema_version").fetchone()
        files = FileWatch(path)
        waiting = await aiosqlite.connect(
            path, isolation_level="IMMEDIATE", factory=watched_connection(writes, statements=True)
        )
    except BaseException:
        inline.close()
        raise
    try:
        await waiting.executescript(_pragmas(synchronous, busy_timeout_ms))
        await waiting.execute("PRAGMA journal_mode = WAL")
        await migrate(waiting)
        # A larger page cache than the 2 MB default: the inline connection does all the hot reads and writes.
        # No foreign-key enforcement here (~7 of the ~30 us a turn's INSERT took): this connection only ever
        # appends turns through the turn_writes trigger, whose messages take their conversation id from the
        # row it has just written, so the check cannot fail; deletes, whose cascades need it, run on the
        # waiting connection.
        inline.executescript(
            _pragmas(synchronous, 0, foreign_keys=False) + "PRAGMA wal_autocheckpoint = 0; PRAGMA cache_size = -32000;"
        )
    except BaseException:
        inline.close()
        await waiting.close()
        raise
    return Connections(inline, waiting, files, writes)


def _pragmas(synchronous: str, busy_timeout_ms: int, *, foreign_keys: bool = True) -> str:
    return (
        f"PRAGMA busy_timeout = {int(busy_timeout_ms)};"
        f"PRAGMA synchronous = {'FULL' if synchronous == 'full' else 'NORMAL'};"
        f"PRAGMA foreign_keys = {'ON' if foreign_keys else 'OFF'};"
        # A burst can grow the WAL; once checkpointed and restarted, the file is cut back to this size.
        "PRAGMA journal_size_limit = 67108864;"
    )
