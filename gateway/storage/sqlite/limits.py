"""SqliteLimits: per-key request limits counted in the database file (``core.ports.LimitStore``), for worker
processes sharing it (``server.workers`` > 1; one process counts exactly in memory, ``core.access.Limiter``).

Data model (migration m010): ``limit_starts`` holds the start time of each request a key was admitted for in the
last 60 seconds (the exact sliding log the in-process limiter keeps), ``limit_slots`` a row per request in flight,
naming the process that admitted it by a random id and the byte of the lock file it holds while it lives
(``locks.FileLocks.process``).  A slot whose process holds its byte no more (dead, kill -9 included: the kernel
freed the lock) stops counting and is deleted by the next admission of its key; a process that claims a byte a
dead one held first deletes the slots left under it.

Each admission is decided in one ``BEGIN IMMEDIATE`` transaction, the write lock held from the first read, so two
processes can never both take the last place.  It runs on the event loop on a connection that never waits (a few
tens of microseconds) and, when another process holds the write lock, on a second connection in a thread, with
the configured busy timeout.  These are the backend's own connections: the store's are not disturbed.  Times are
wall-clock (``time.time``), the one clock every process shares; starts from a clock set back are dropped.
"""

from __future__ import annotations

import asyncio
import secrets
import sqlite3
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from gateway.core.ports import Admission
from gateway.errors import StorageUnavailable
from gateway.storage.sqlite.locks import FileLocks
from gateway.storage.sqlite.readiness import is_busy

T = TypeVar("T")
WINDOW_SECONDS = 60.0
CONCURRENCY_RETRY_SECONDS = 1.0

_SLOTS = "SELECT id, process, liveness FROM limit_slots WHERE key = ?"
_DROP_SLOT = "DELETE FROM limit_slots WHERE key = ? AND id = ?"
_ADD_SLOT = "INSERT INTO limit_slots (key, id, process, liveness) VALUES (?, ?, ?, ?)"
# A new owner of a liveness byte: the slots a dead process left under it are not this process's.
_DROP_INHERITED = "DELETE FROM limit_slots WHERE liveness = ? AND process <> ?"
_EXPIRE_STARTS = "DELETE FROM limit_starts WHERE key = ? AND (at <= ? OR at > ?)"
_COUNT_STARTS = "SELECT count(*), min(at) FROM limit_starts WHERE key = ?"
_ADD_START = "INSERT INTO limit_starts (key, at, nonce) VALUES (?, ?, random())"
# Keys that stopped sending leave their starts behind: swept once a minute by whichever process admits.
_SWEEP_STARTS = "DELETE FROM limit_starts WHERE at <= ?"


class SqliteLimits:
    def __init__(
        self, now: sqlite3.Connection, waiting: sqlite3.Connection, locks: FileLocks, clock: Callable[[], float]
    ) -> None:
        self._now = now  # busy_timeout 0: on the event loop
        self._waiting = waiting  # the busy timeout: in a thread, one at a time
        self._waiting_lock = asyncio.Lock()
        self._locks = locks
        self._clock = clock
        self._claimed: tuple[int, int] | None = None
        self._swept_at = float("-inf")

    @classmethod
    def open(
        cls, path: Path, locks: FileLocks, *, busy_timeout_ms: int, clock: Callable[[], float] = time.time
    ) -> SqliteLimits:
        """Two connections to the (already migrated) database at ``path``."""
        timeout = busy_timeout_ms / 1000
        now = sqlite3.connect(path, isolation_level=None, timeout=timeout, check_same_thread=False)
        waiting = sqlite3.connect(path, isolation_level=None, timeout=timeout, check_same_thread=False)
        try:
            for db in (now, waiting):
                # Losing the last starts to a power cut only forgets them: no fsync per admission.  This first
                # statement reads the schema and may meet another process's WAL recovery (workers starting
                # together), so it waits like any write; only then does ``now`` stop waiting.
                db.execute("PRAGMA synchronous = NORMAL")
            now.execute("PRAGMA busy_timeout = 0")
        except BaseException:
            now.close()
            waiting.close()
            raise
        return cls(now, waiting, locks, clock)

    async def close(self) -> None:
        self._now.close()
        async with self._waiting_lock:  # after an admission or release under way in the thread
            self._waiting.close()

    async def admit(self, key: str, *, concurrent: int, per_minute: int) -> Admission:
        """Count a request start for ``key`` (0: no limit of that kind), or refuse it, as ``core.access.Limiter``
        does in one process: concurrency first, then the rate."""
        process = self._locks.process()
        inherited = self._claimed != process  # the first admission since this process claimed its byte
        admission = await self._run(lambda db: self._decide(db, key, concurrent, per_minute, process, inherited))
        self._claimed = process
        return admission

    async def release(self, key: str, slot: str) -> None:
        def drop(db: sqlite3.Connection) -> None:
            with _transaction(db):
                db.execute(_DROP_SLOT, (key, slot))

        await self._run(drop)

    def _decide(
        self, db: sqlite3.Connection, key: str, concurrent: int, per_minute: int, process: tuple[int, int], fresh: bool
    ) -> Admission:
        now = self._clock()
        me, byte = process
        with _transaction(db):
            if fresh:
                db.execute(_DROP_INHERITED, (byte, me))
            if now - self._swept_at >= WINDOW_SECONDS:
                db.execute(_SWEEP_STARTS, (now - WINDOW_SECONDS,))
                self._swept_at = now
            if concurrent:
                # Another owner's slot counts while that process holds its byte (asked once per byte).  This
                # process's own locks never show as held to it, so a slot of a dead former owner of its byte
                # counts as dead too.
                alive: dict[int, bool] = {}
                dead = []
                slots = db.execute(_SLOTS, (key,)).fetchall()
                for slot_id, owner, liveness in slots:
                    if owner == me:
                        continue
                    if liveness not in alive:
                        alive[liveness] = self._locks.alive(liveness)
                    if not alive[liveness]:
                        dead.append((key, slot_id))
                db.executemany(_DROP_SLOT, dead)
                if len(slots) - len(dead) >= concurrent:
                    return Admission("concurrency_limit_exceeded", CONCURRENCY_RETRY_SECONDS)
            if per_minute:
                db.execute(_EXPIRE_STARTS, (key, now - WINDOW_SECONDS, now + WINDOW_SECONDS))
                count, oldest = db.execute(_COUNT_STARTS, (key,)).fetchone()
                if count >= per_minute:
                    return Admission("rate_limit_exceeded", oldest + WINDOW_SECONDS - now)
                db.execute(_ADD_START, (key, now))
            slot = None
            if concurrent:
                slot = secrets.token_hex(8)
                db.execute(_ADD_SLOT, (key, slot, me, byte))
        return Admission(None, slot=slot)

    async def _run(self, work: Callable[[sqlite3.Connection], T]) -> T:
        """``work`` on the connection that never waits, or, when another process holds the write lock, on the
        waiting one in a thread."""
        try:
            try:
                return work(self._now)
            except sqlite3.OperationalError as exc:
                if not is_busy(exc):
                    raise
            async with self._waiting_lock:
                return await asyncio.to_thread(work, self._waiting)
        except sqlite3.Error as exc:
            raise StorageUnavailable("The request limits cannot be counted.", code="storage_unavailable") from exc


class _transaction:  # noqa: N801 - used as a statement: ``with _transaction(db):``
    """One ``BEGIN IMMEDIATE`` ... ``COMMIT`` (rolled back when the block raises).  IMMEDIATE: the write lock from
    the first read on, so the counts read are the counts written against."""

    def __init__(self, db: sqlite3.Connection) -> None:
        self._db = db

    def __enter__(self) -> None:
        self._db.execute("BEGIN IMMEDIATE")

    def __exit__(self, exc_type: type[BaseException] | None, *_: object) -> None:
        if exc_type is None:
            self._db.execute("COMMIT")
        elif self._db.in_transaction:
            self._db.execute("ROLLBACK")
