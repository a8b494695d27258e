"""ConversationStore: the connections to the SQLite database (WAL mode), turns, the history cache, checkpoints.

The storage layer is this module with ``gateway.storage.sqlite.turns`` (a turn's SQL and row shapes), ``gateway.storage.sqlite.catalog`` (the
conversations API and CLI) and ``gateway.core.keys`` (gateway keys); no other module holds SQL.

Data model: a *conversation* row per (owner, external id) holds the stored system prompt (JSON list of the leading
system messages), the last model, counters and timestamps; a *message* row per stored message holds the message
JSON exactly as sent or received, its position ``seq``, whether the reply was interrupted, and the turn's usage.

Two paths to the same file.  The *inline* path is a plain ``sqlite3`` connection used on the event loop with
``busy_timeout = 0``: it never waits for a lock, and in WAL mode with ``synchronous = NORMAL`` a read or a commit
is a few tens of microseconds of CPU with no fsync.  Handing the same work to a thread (aiosqlite) costs ~160 us
of wake-ups per call on the benchmark machine, several times the work itself (see README, Benchmark).  Whenever
waiting could be needed, the *waiting* path takes over: an aiosqlite connection with the configured busy timeout,
used when the inline path meets a lock held by another process (the CLI, say), for every write when
``synchronous = "full"`` (each commit then fsyncs), for migrations, for the statements of ``gateway.storage.sqlite.catalog``
(listing, reading, deleting conversations), and for WAL checkpoints, which the inline connection never runs
itself (``wal_autocheckpoint = 0``) because they fsync; a background task runs them.

A turn is stored whole or not at all (see ``gateway.storage.sqlite.turns``).  Recently active
conversations are also held in a ``HistoryCache``; ``PRAGMA data_version`` on the inline connection (a few
microseconds) tells whether any other connection wrote since the last look, in which case the cache is dropped.
The price of the inline path: a cache miss reads the history on the event loop, about 4 ms for a 2,000-message
conversation, during which other requests wait.

``readiness`` says whether a turn could be recorded now (``/readyz``): both connections are of a
``sqlite3.Connection`` subclass that reports each commit's outcome (``gateway.storage.sqlite.readiness``), and the file is
compared with the one opened.
"""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
import time
from collections.abc import AsyncIterator, Callable, Iterable
from pathlib import Path
from typing import Any

import aiosqlite
import structlog

from gateway.storage.cache import HistoryCache, Memory
from gateway.errors import StorageUnavailable
from gateway.storage.sqlite.migrations import migrate
from gateway.storage.sqlite.readiness import FileWatch, StorageFault, WriteWatch, watched_connection
from gateway.storage.sqlite.turns import (
    CONVERSATION_DELETED,
    FIND_REPLY,
    HISTORY_BYTES,
    LOAD,
    Turn,
    memory_from_rows,
    turn_params,
    turn_size,
    turn_statements,
)

log = structlog.get_logger("gateway")


class Transaction:
    """Statements of one ``ConversationStore.transaction`` block."""

    def __init__(self, db: aiosqlite.Connection) -> None:
        self._db = db

    async def execute(self, sql: str, params: Any = ()) -> int:
        """Run a write statement; return the number of rows it changed."""
        cursor = await self._db.execute(sql, params)
        return cursor.rowcount

    async def execute_many(self, sql: str, rows: Iterable[Any]) -> None:
        await self._db.executemany(sql, rows)

    async def fetch(self, sql: str, params: Any = ()) -> list[Any]:
        return list(await self._db.execute_fetchall(sql, params))


class ConversationDeleted(Exception):
    """A turn's conversation was deleted (by the CLI, say) while the turn was in flight: it was not recorded."""


# Histories larger than this (stored JSON bytes) are read off the event loop: ~1 ms of reading and parsing
# on it at this size, where a 64 MB history would stall every request for a second.
INLINE_READ_BYTES = 1 << 20
# How often the background task folds the WAL back into the database file while there were writes.
CHECKPOINT_INTERVAL_SECONDS = 1.0
# While a write failure is remembered, how often readiness tries a write again to see whether it has gone.
WRITE_PROBE_INTERVAL_SECONDS = 1.0


class ConversationStore:
    # Set by ``open`` (readiness: the file as opened, and how the latest writes went); None for a store built
    # around connections it was handed.
    _files: FileWatch | None = None
    _writes: WriteWatch | None = None
    _probed_at = float("-inf")

    def __init__(
        self,
        inline: sqlite3.Connection,
        waiting: aiosqlite.Connection,
        *,
        inline_writes: bool,
        cache_messages: int,
        cache_bytes: int | None = None,
    ) -> None:
        # Kept rather than looked up per call: on Python 3.11 every asyncio.get_running_loop() is a getpid()
        # system call, and the hot path needed a few per turn.
        self._loop = asyncio.get_running_loop()
        self._inline = inline
        self._waiting = waiting
        self._inline_writes = inline_writes
        self._cache = HistoryCache(cache_messages, cache_bytes)
        self._data_version: int | None = None
        self._version_checked = False
        self._generation = 0
        self._observe_write: Callable[[float], None] | None = None
        self._write_lock = asyncio.Lock()  # one open transaction at a time on the waiting connection
        self._dirty = False
        self._batch: list[tuple[Turn, tuple[Any, ...], asyncio.Future[bool]]] = []
        self._checkpointer: asyncio.Task[None] | None = None

    @classmethod
    async def open(
        cls,
        path: Path,
        *,
        synchronous: str = "normal",
        busy_timeout_ms: int = 5000,
        cache_messages: int = 0,
        cache_bytes: int | None = None,
    ) -> ConversationStore:
        """Open (creating and migrating if needed) the database at ``path``."""
        path.parent.mkdir(parents=True, exist_ok=True)
        writes = WriteWatch()
        # The plain connection first, made to read the header: a path SQLite cannot open (a directory, a file
        # that is not a database) fails here, before aiosqlite's thread exists.  Failing inside aiosqlite.connect
        # left that thread answering an event loop that asyncio.run had already closed, with tracebacks.
        inline = sqlite3.connect(
            path, isolation_level="IMMEDIATE", factory=watched_connection(writes, statements=False)
        )
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
                _pragmas(synchronous, 0, foreign_keys=False)
                + "PRAGMA wal_autocheckpoint = 0; PRAGMA cache_size = -32000;"
            )
        except BaseException:
            inline.close()
            await waiting.close()
            raise
        store = cls(
            inline, waiting, inline_writes=synchronous != "full", cache_messages=cache_messages, cache_bytes=cache_bytes
        )
        store._checkpointer = asyncio.create_task(store._checkpoint_periodically())
        store._files, store._writes = files, writes
        return store

    async def close(self) -> None:
        """Close both connections; closing the last one checkpoints the WAL into the main file."""
        if self._checkpointer is not None:
            self._checkpointer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._checkpointer
        self._inline.close()
        async with self._write_lock:
            await self._waiting.close()

    def observe_writes(self, observe: Callable[[float], None]) -> None:
        """Have ``observe`` told how long each inline commit of turns took, in seconds."""
        self._observe_write = observe

    def count_conversations(self) -> int:
        (count,) = self._inline.execute("SELECT count(*) FROM conversations").fetchone()
        return int(count)

    async def readiness(self, *, write: bool = False) -> StorageFault | None:
        """None when a turn could be recorded now, else what stands in the way (``gateway.storage.sqlite.readiness``): the file
        deleted or replaced under the gateway, read-only, a full disk, a failed read, or a failed write (a commit
        or a checkpoint) not followed by a successful one.  ``write``: prove it with a write now (at start-up)."""
        if self._files is not None and (fault := self._files.fault()) is not None:
            return fault
        try:
            self._inline.execute("SELECT 1 FROM conversations LIMIT 1").fetchall()
        except sqlite3.Error as exc:
            return StorageFault("unreachable", f"the database cannot be read: {exc}")
        writes = self._writes if self._writes is not None else WriteWatch()
        # An unready gateway gets no turns (the load balancer stops sending them), so no turn would ever show
        # that the fault has gone: try the failed kind of write again here, at most once per interval.
        now = time.monotonic()
        if write or (not writes.healthy and now - self._probed_at >= WRITE_PROBE_INTERVAL_SECONDS):
            if not write:  # the start-up's write does not count against the interval
                self._probed_at = now
            if write or writes.commit_error is not None:
                self._probe_write(writes)
            if writes.checkpoint_error is not None:
                with contextlib.suppress(sqlite3.Error):  # the watched connection records how it went
                    await self._waiting.execute_fetchall("PRAGMA wal_checkpoint(PASSIVE)")
        return writes.fault()

    def _probe_write(self, writes: WriteWatch) -> None:
        """Commit a real write that changes nothing (the header's user_version, rewritten as it is) on the inline
        connection, whose own commits leave the cache alone, outside any transaction (it holds none between
        event-loop callbacks)."""
        if self._inline.in_transaction:
            return
        try:
            (version,) = self._inline.execute("PRAGMA user_version").fetchone()
            self._inline.execute(f"PRAGMA user_version = {int(version)}")
        except sqlite3.Error as exc:
            if not _is_busy(exc):  # another process holding the lock says nothing about the storage
                writes.failed(exc)
            return
        writes.succeeded()
        self._dirty = True  # for the checkpointer

    async def load(self, owner: str, external_id: str) -> Memory:
        """The conversation's system prompt and history, from the cache when it can be trusted.  A history over
        ``INLINE_READ_BYTES`` is read on the waiting connection's thread and parsed in a worker thread, so that
        one large conversation does not stall every other request."""
        key = (owner, external_id)
        params = (owner, external_id, owner, external_id)
        try:
            try:
                self._drop_cache_if_written_elsewhere()
                cached = self._cache.get(key)
                if cached is not None:
                    return cached
                size = self._inline.execute(HISTORY_BYTES, key).fetchone()
                if size is None or size[0] <= INLINE_READ_BYTES:
                    memory = memory_from_rows(self._inline.execute(LOAD, params).fetchall())
                else:
                    memory = await self._load_waiting(params)
            except sqlite3.OperationalError as exc:
                if not _is_busy(exc):
                    raise
                self._cache.clear()
                return await self._load_waiting(params)
        except sqlite3.Error as exc:
            raise StorageUnavailable("The conversation store cannot be read.", code="storage_unavailable") from exc
        self._cache.put(key, memory)
        return memory

    async def _load_waiting(self, params: tuple[str, str, str, str]) -> Memory:
        async with self._write_lock:  # behind any transaction open on this connection, as ``read`` is
            rows = list(await self._waiting.execute_fetchall(LOAD, params))
        return await asyncio.to_thread(memory_from_rows, rows) if len(rows) > 1 else memory_from_rows(rows)

    def _drop_cache_if_written_elsewhere(self) -> None:
        # data_version changes when another connection commits (our own waiting connection included), never
        # for the inline connection's own commits, which the cache has already been told about.  One look per
        # event-loop iteration is as good as one per load: another process's write can land at any moment.
        if self._version_checked:
            return
        (version,) = self._inline.execute("PRAGMA data_version").fetchone()
        if version != self._data_version:
            self._cache.clear()
            self._data_version = version
            self._generation += 1
        self._version_checked = True
        self._loop.call_soon(self._forget_version_check)

    def generation(self) -> int:
        """A number that changes whenever another connection may have written to the database since the last
        call (the CLI revoking a key, say): what is held in memory from it must be read again."""
        try:
            self._drop_cache_if_written_elsewhere()
        except sqlite3.Error as exc:
            raise StorageUnavailable("The conversation store cannot be read.", code="storage_unavailable") from exc
        return self._generation

    def _forget_version_check(self) -> None:
        self._version_checked = False

    async def idempotent_reply(self, owner: str, external_id: str, key: str, since: float) -> tuple[str, bytes] | None:
        """The (request hash, body) kept under ``key`` for this conversation since ``since``, if any."""
        params = (owner, external_id, key, since)
        try:
            try:
                row = self._inline.execute(FIND_REPLY, params).fetchone()
            except sqlite3.OperationalError as exc:
                if not _is_busy(exc):
                    raise
                rows = list(await self._waiting.execute_fetchall(FIND_REPLY, params))
                row = rows[0] if rows else None
        except sqlite3.Error as exc:
            raise StorageUnavailable("The conversation store cannot be read.", code="storage_unavailable") from exc
        return (row[0], bytes(row[1])) if row is not None else None

    async def append_turn(self, turn: Turn, *, share_commit: bool = False) -> None:
        """Record a turn in one transaction, before the caller tells the client it is complete.

        ``share_commit``: other turns are in flight, so wait for the current event-loop iteration to end and
        commit together with any that finish in it (group commit: one WAL append and lock cycle for all).
        Alone, a turn commits at once rather than pay for the extra loop iterations.
        """
        params = turn_params(turn)
        try:
            if self._inline_writes and share_commit:
                # Not shielded: a cancelled caller cancels only its future; the batch still records the turn whole
                # (``_settle`` skips futures nobody waits for).  A shield would cost each turn two more callbacks
                # and a loop iteration before it can answer.
                if await self._queue_inline(turn, params):
                    return
            elif self._inline_writes and self._record_now(turn, params):
                return
            await asyncio.shield(self._record_waiting(turn, params))
        except sqlite3.Error as exc:
            if _is_deleted(exc):
                raise ConversationDeleted from exc
            raise StorageUnavailable("The conversation store cannot be written.", code="storage_unavailable") from exc

    def _queue_inline(self, turn: Turn, params: tuple[Any, ...]) -> asyncio.Future[bool]:
        """Queue a turn for the next group commit, which runs once the current loop iteration is done, so turns
        finishing together share one transaction.  The future says whether it was recorded; False means another
        connection holds the write lock."""
        future: asyncio.Future[bool] = self._loop.create_future()
        self._batch.append((turn, params, future))
        if len(self._batch) == 1:
            self._loop.call_soon(self._commit_batch)
        return future

    def _record_now(self, turn: Turn, params: tuple[Any, ...]) -> bool:
        """Commit one turn at once; False when another connection holds the write lock."""
        try:
            self._commit_inline([(turn, params)])
        except sqlite3.Error as exc:
            if _is_busy(exc):
                return False
            raise
        self._committed(turn, params)
        return True

    def _commit_batch(self) -> None:
        batch, self._batch = self._batch, []
        self._settle(batch)

    def _settle(self, batch: list[tuple[Turn, tuple[Any, ...], asyncio.Future[bool]]]) -> None:
        try:
            self._commit_inline([(turn, params) for turn, params, _ in batch])
        except sqlite3.Error as exc:
            busy = _is_busy(exc)
            if len(batch) > 1 and not busy:
                for item in batch:  # one bad turn must not fail the others
                    self._settle([item])
                return
            for _, _, future in batch:
                if future.cancelled():
                    continue
                if busy:
                    future.set_result(False)
                else:
                    future.set_exception(exc)
            return
        for turn, params, future in batch:
            self._committed(turn, params)
            if not future.cancelled():
                future.set_result(True)

    def _committed(self, turn: Turn, params: tuple[Any, ...]) -> None:
        self._dirty = True
        key, appended = (turn.owner, turn.external_id), (*turn.messages, turn.reply)
        if turn.replace_from is not None:
            self._cache.discard(key)  # rare (a retried turn): read the conversation afresh next time
        else:
            self._cache.extend(key, turn.system, appended, turn.window, turn.usage, turn_size(params))

    def _commit_inline(self, batch: list[tuple[Turn, tuple[Any, ...]]]) -> None:
        started = time.perf_counter()
        try:
            for turn, params in batch:
                for sql, values in turn_statements(turn, params):
                    self._inline.execute(sql, values)
            self._inline.commit()
        except BaseException:
            self._inline.rollback()
            raise
        if self._observe_write is not None:
            self._observe_write(time.perf_counter() - started)

    async def _record_waiting(self, turn: Turn, params: tuple[Any, ...]) -> None:
        try:
            async with self.transaction((turn.owner, turn.external_id)) as tx:
                for sql, values in turn_statements(turn, params):
                    await tx.execute(sql, values)
        except StorageUnavailable as exc:
            if isinstance(exc.__cause__, sqlite3.Error) and _is_deleted(exc.__cause__):
                raise ConversationDeleted from exc.__cause__
            raise

    # For the catalog (gateway.storage.sqlite.catalog): rare, possibly large reads and single-statement writes, on the waiting
    # connection's thread rather than on the event loop.

    async def read(self, sql: str, params: Any) -> list[Any]:
        """A read on the waiting connection; behind any transaction open on it, whose uncommitted rows it would
        otherwise see."""
        try:
            async with self._write_lock:
                return list(await self._waiting.execute_fetchall(sql, params))
        except sqlite3.Error as exc:
            raise StorageUnavailable("The conversation store cannot be read.", code="storage_unavailable") from exc

    async def write(self, sql: str, params: Any, *, conversation: tuple[str, str]) -> int:
        """Run one write statement touching ``conversation`` (owner, external id); return the rows changed."""
        async with self.transaction(conversation) as tx:
            return await tx.execute(sql, params)

    @contextlib.asynccontextmanager
    async def transaction(self, *conversations: tuple[str, str]) -> AsyncIterator[Transaction]:
        """One write transaction on the waiting connection, committed when the block ends and rolled back when it
        raises.  ``conversations`` (owner, external id) are the ones it may change: their cached history goes."""
        for key in conversations:
            self._cache.discard(key)
        async with self._write_lock:
            try:
                # IMMEDIATE: a deferred transaction that upgrades to a write fails at once with SQLITE_BUSY when
                # another process wrote meanwhile, and busy_timeout does not help.  Explicit, so that reads at the
                # start of the block see the same state the writes change.
                await self._waiting.execute("BEGIN IMMEDIATE")
                yield Transaction(self._waiting)
                await self._waiting.commit()
            except sqlite3.Error as exc:
                await self._rollback_waiting()
                raise StorageUnavailable(
                    "The conversation store cannot be written.", code="storage_unavailable"
                ) from exc
            except BaseException:
                await self._rollback_waiting()
                raise

    async def _rollback_waiting(self) -> None:
        if self._waiting.in_transaction:
            await self._waiting.rollback()

    async def _checkpoint_periodically(self) -> None:
        while True:
            await asyncio.sleep(CHECKPOINT_INTERVAL_SECONDS)
            if self._dirty:
                self._dirty = False
                try:
                    # PASSIVE: copies what it can without waiting for or blocking readers and writers.
                    await self._waiting.execute_fetchall("PRAGMA wal_checkpoint(PASSIVE)")
                except sqlite3.Error as exc:
                    log.warning("checkpoint_failed", error=type(exc).__name__)


def _is_deleted(exc: sqlite3.Error) -> bool:
    return isinstance(exc, sqlite3.IntegrityError) and CONVERSATION_DELETED in str(exc)


def _is_busy(exc: sqlite3.Error) -> bool:
    code = getattr(exc, "sqlite_errorcode", None)
    return code is not None and code & 0xFF in (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED)


def _pragmas(synchronous: str, busy_timeout_ms: int, *, foreign_keys: bool = True) -> str:
    return (
        f"PRAGMA busy_timeout = {int(busy_timeout_ms)};"
        f"PRAGMA synchronous = {'FULL' if synchronous == 'full' else 'NORMAL'};"
        f"PRAGMA foreign_keys = {'ON' if foreign_keys else 'OFF'};"
        # A burst can grow the WAL; once checkpointed and restarted, the file is cut back to this size.
        "PRAGMA journal_size_limit = 67108864;"
    )
