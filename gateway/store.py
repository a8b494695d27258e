"""ConversationStore: the connections to the SQLite database (WAL mode), turns, the history cache, checkpoints.

The storage layer is this module with ``gateway.turns`` (a turn's SQL and row shapes), ``gateway.catalog`` (the
conversations API and CLI) and ``gateway.keys`` (gateway keys); no other module holds SQL.

Data model: a *conversation* row per (owner, external id) holds the stored system prompt (JSON list of the leading
system messages), the last model, counters and timestamps; a *message* row per stored message holds the message
JSON exactly as sent or received, its position ``seq``, whether the reply was interrupted, and the turn's usage.

Two paths to the same file.  The *inline* path is a plain ``sqlite3`` connection used on the event loop with
``busy_timeout = 0``: it never waits for a lock, and in WAL mode with ``synchronous = NORMAL`` a read or a commit
is a few tens of microseconds of CPU with no fsync.  Handing the same work to a thread (aiosqlite) costs ~160 us
of wake-ups per call on the benchmark machine, several times the work itself (see README, Benchmark).  Whenever
waiting could be needed, the *waiting* path takes over: an aiosqlite connection with the configured busy timeout,
used when the inline path meets a lock held by another process (the CLI, say), for every write when
``synchronous = "full"`` (each commit then fsyncs), for migrations, for the statements of ``gateway.catalog``
(listing, reading, deleting conversations), and for WAL checkpoints, which the inline connection never runs
itself (``wal_autocheckpoint = 0``) because they fsync; a background task runs them.

A turn is stored whole or not at all (see ``gateway.turns``).  Recently active
conversations are also held in a ``HistoryCache``; ``PRAGMA data_version`` on the inline connection (a few
microseconds) tells whether any other connection wrote since the last look, in which case the cache is dropped.
The price of the inline path: a cache miss reads the history on the event loop, about 4 ms for a 2,000-message
conversation, during which other requests wait.
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

from gateway.cache import HistoryCache, Memory
from gateway.errors import StorageUnavailable
from gateway.migrations import migrate
from gateway.turns import (
    LOAD,
    Turn,
    memory_from_rows,
    turn_params,
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


# How often the background task folds the WAL back into the database file while there were writes.
CHECKPOINT_INTERVAL_SECONDS = 1.0


class ConversationStore:
    def __init__(
        self, inline: sqlite3.Connection, waiting: aiosqlite.Connection, *, inline_writes: bool, cache_messages: int
    ) -> None:
        # Kept rather than looked up per call: on Python 3.11 every asyncio.get_running_loop() is a getpid()
        # system call, and the hot path needed a few per turn.
        self._loop = asyncio.get_running_loop()
        self._inline = inline
        self._waiting = waiting
        self._inline_writes = inline_writes
        self._cache = HistoryCache(cache_messages)
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
        cls, path: Path, *, synchronous: str = "normal", busy_timeout_ms: int = 5000, cache_messages: int = 0
    ) -> ConversationStore:
        """Open (creating and migrating if needed) the database at ``path``."""
        path.parent.mkdir(parents=True, exist_ok=True)
        waiting = await aiosqlite.connect(path, isolation_level="IMMEDIATE")
        try:
            await waiting.executescript(_pragmas(synchronous, busy_timeout_ms))
            await waiting.execute("PRAGMA journal_mode = WAL")
            await migrate(waiting)
            inline = sqlite3.connect(path, isolation_level="IMMEDIATE")
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
            await waiting.close()
            raise
        store = cls(inline, waiting, inline_writes=synchronous != "full", cache_messages=cache_messages)
        store._checkpointer = asyncio.create_task(store._checkpoint_periodically())
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

    async def ping(self) -> None:
        self._inline.execute("SELECT 1 FROM conversations LIMIT 1").fetchall()

    async def load(self, owner: str, external_id: str) -> Memory:
        """The conversation's system prompt and history, from the cache when it can be trusted."""
        key = (owner, external_id)
        params = (owner, external_id, owner, external_id)
        try:
            try:
                self._drop_cache_if_written_elsewhere()
                cached = self._cache.get(key)
                if cached is not None:
                    return cached
                rows = self._inline.execute(LOAD, params).fetchall()
            except sqlite3.OperationalError as exc:
                if not _is_busy(exc):
                    raise
                self._cache.clear()
                return memory_from_rows(list(await self._waiting.execute_fetchall(LOAD, params)))
        except sqlite3.Error as exc:
            raise StorageUnavailable("The conversation store cannot be read.", code="storage_unavailable") from exc
        memory = memory_from_rows(rows)
        self._cache.put(key, memory)
        return memory

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
        self._committed(turn)
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
        for turn, _, future in batch:
            self._committed(turn)
            if not future.cancelled():
                future.set_result(True)

    def _committed(self, turn: Turn) -> None:
        self._dirty = True
        key, appended = (turn.owner, turn.external_id), (*turn.messages, turn.reply)
        if turn.replace_from is not None:
            self._cache.discard(key)  # rare (a retried turn): read the conversation afresh next time
        else:
            self._cache.extend(key, turn.system, appended, turn.window, turn.usage)

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
        async with self.transaction((turn.owner, turn.external_id)) as tx:
            for sql, values in turn_statements(turn, params):
                await tx.execute(sql, values)

    # For the catalog (gateway.catalog): rare, possibly large reads and single-statement writes, on the waiting
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
