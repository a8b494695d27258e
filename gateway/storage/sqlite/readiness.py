"""Whether a turn could be recorded now: the storage faults ``/readyz`` reports, and how the store notices them.

``ConversationStore.readiness`` puts these together, each a ``core.ports.StorageFault``; this module holds no SQL.
A fault is one of:

- ``database_file_missing`` / ``database_file_replaced``: the path no longer names the file the gateway opened
  (deleted, or another file moved over it).  SQLite goes on writing to the open file, so turns would still
  "succeed", into a file nobody will ever read: only a restart opens the new one.  ``FileWatch`` compares the
  device and inode of the path with those it had when the store opened it.
- ``read_only``: the file (or its ``-wal``) cannot be opened for writing: an immutable file (``chattr +i``), a
  read-only mount, missing permissions.  ``os.access`` asks the kernel, which refuses root too in the first two.
- ``disk_full``: fewer than ``MIN_FREE_BYTES`` left on its filesystem (for unprivileged users), or a write failed
  with SQLite's "database or disk is full".
- ``write_failed`` / ``database_corrupt``: the last commit (or WAL checkpoint) failed with an I/O or corruption
  error.

Failed writes are seen where SQLite reports them: the store's connections are of a ``sqlite3.Connection``
subclass (``watched_connection``) that tells a ``WriteWatch`` how each commit went, and on the waiting connection
(off the event loop, so the cost does not matter) each statement too, checkpoints included.  A failure is
remembered until a write of the same kind succeeds.  Lock contention (busy), constraint violations and SQL errors
are not storage faults.
"""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path
from typing import Any

from gateway.core.ports import StorageFault

MIN_FREE_BYTES = 1 << 20
_CHECKPOINT = "PRAGMA wal_checkpoint"
_FAULT_CODES = frozenset(
    {
        sqlite3.SQLITE_FULL,
        sqlite3.SQLITE_IOERR,
        sqlite3.SQLITE_READONLY,
        sqlite3.SQLITE_CANTOPEN,
        sqlite3.SQLITE_CORRUPT,
        sqlite3.SQLITE_NOTADB,
        sqlite3.SQLITE_PERM,
    }
)


def is_storage_fault(exc: sqlite3.Error) -> bool:
    """Whether an error says the storage itself is failing (rather than a lock, a constraint or the SQL)."""
    code = getattr(exc, "sqlite_errorcode", None)
    return code is not None and code & 0xFF in _FAULT_CODES


def is_busy(exc: sqlite3.Error) -> bool:
    """Whether an error is lock contention: another connection holds the lock (the write can be tried again)."""
    code = getattr(exc, "sqlite_errorcode", None)
    return code is not None and code & 0xFF in (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED)


def fault_of(exc: sqlite3.Error, what: str = "write") -> StorageFault:
    code = (getattr(exc, "sqlite_errorcode", None) or 0) & 0xFF
    name = getattr(exc, "sqlite_errorname", type(exc).__name__)
    if code == sqlite3.SQLITE_FULL:
        return StorageFault("disk_full", f"the last {what} failed: the disk is full ({name})")
    if code == sqlite3.SQLITE_READONLY:
        return StorageFault("read_only", f"the last {what} failed: the database is read-only ({name})")
    if code in (sqlite3.SQLITE_CORRUPT, sqlite3.SQLITE_NOTADB):
        return StorageFault("database_corrupt", f"the last {what} failed: the database is corrupt ({name})")
    return StorageFault("write_failed", f"the last {what} failed: {exc} ({name})")


class WriteWatch:
    """How the latest writes went, as the store's connections report them (from any thread: plain assignments)."""

    def __init__(self) -> None:
        self.commit_error: sqlite3.Error | None = None
        self.checkpoint_error: sqlite3.Error | None = None

    @property
    def healthy(self) -> bool:
        return self.commit_error is None and self.checkpoint_error is None

    def fault(self) -> StorageFault | None:
        if self.commit_error is not None:
            return fault_of(self.commit_error)
        if self.checkpoint_error is not None:
            return fault_of(self.checkpoint_error, "checkpoint of the write-ahead log")
        return None

    def failed(self, exc: sqlite3.Error, *, checkpoint: bool = False) -> None:
        if not is_storage_fault(exc):
            return
        if checkpoint:
            self.checkpoint_error = exc
        else:
            self.commit_error = exc

    def succeeded(self, *, checkpoint: bool = False) -> None:
        if checkpoint:
            self.checkpoint_error = None
        else:
            self.commit_error = None


class _Watched(sqlite3.Connection):
    """Reports every commit to ``watch``; a commit that wrote rows clears an earlier failure."""

    watch: WriteWatch

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._changes_committed = 0

    def commit(self) -> None:
        try:
            super().commit()
        except sqlite3.Error as exc:
            self.watch.failed(exc)
            raise
        changes = self.total_changes
        if changes != self._changes_committed:  # a commit of no change writes nothing, so proves nothing
            self._changes_committed = changes
            self.watch.succeeded()


class _WatchedStatements(_Watched):
    """Also reports failing statements (a write can fail before its commit) and every WAL checkpoint."""

    def execute(self, sql: str, parameters: Any = (), /) -> sqlite3.Cursor:
        checkpoint = sql.startswith(_CHECKPOINT)
        try:
            cursor = super().execute(sql, parameters)
        except sqlite3.Error as exc:
            self.watch.failed(exc, checkpoint=checkpoint)
            raise
        if checkpoint:
            self.watch.succeeded(checkpoint=True)
        return cursor

    def executemany(self, sql: str, parameters: Any, /) -> sqlite3.Cursor:
        try:
            return super().executemany(sql, parameters)
        except sqlite3.Error as exc:
            self.watch.failed(exc)
            raise

    def executescript(self, sql_script: str, /) -> sqlite3.Cursor:
        try:
            return super().executescript(sql_script)
        except sqlite3.Error as exc:
            self.watch.failed(exc)
            raise


def watched_connection(watch: WriteWatch, *, statements: bool) -> type[sqlite3.Connection]:
    """A connection class (``sqlite3.connect(factory=...)``) reporting to ``watch``.  ``statements`` watches every
    statement too, which costs each a Python call: for the waiting connection, not the inline one."""
    base = _WatchedStatements if statements else _Watched
    return type(base.__name__, (base,), {"watch": watch})


class FileWatch:
    """The database file as the store opened it: does the path still name it, may it be written, is there room."""

    def __init__(self, path: Path) -> None:
        self._path = path.absolute()
        self._wal = self._path.with_name(self._path.name + "-wal")
        opened = os.stat(self._path)
        self._identity = (opened.st_dev, opened.st_ino)

    def fault(self) -> StorageFault | None:
        try:
            now = os.stat(self._path)
        except FileNotFoundError:
            return StorageFault(
                "database_file_missing",
                "the database file was deleted after the gateway opened it; restart the gateway to create a new one",
            )
        except OSError as exc:
            return StorageFault("unreachable", f"the database file cannot be looked up ({exc.strerror})")
        if (now.st_dev, now.st_ino) != self._identity:
            return StorageFault(
                "database_file_replaced",
                "another file took the database's place after the gateway opened it; restart the gateway to use it",
            )
        for path in (self._path, self._wal):
            if not os.access(path, os.W_OK) and (path is self._path or path.exists()):
                return StorageFault("read_only", f"the database file {path.name!r} cannot be opened for writing")
        try:
            disk = os.statvfs(self._path.parent)
        except OSError:
            return None  # no figure to judge by; a write that fails will say so
        free = disk.f_bavail * disk.f_frsize
        if free < MIN_FREE_BYTES:
            return StorageFault("disk_full", f"{free} bytes left on the database's filesystem")
        return None
