"""ConversationStore: the connections to the SQLite database (WAL mode), turns, the history cache, checkpoints.

The SQLite backend is this module with ``connections`` (opening the file), ``turns`` (a turn's SQL and row
shapes), ``responses`` (finding and deleting the Responses API calls turns record), ``writer`` (the inline commits
of turns, group commit included), ``freshness`` (other processes' writes, and the cache's checks), ``catalog``
and ``edits`` (the conversations API and CLI: reads, and the edits of single messages), ``search`` (the messages'
full-text index and the search that reads it), ``keys`` (gateway keys), ``limits`` (limits shared by worker
processes) and ``migrations``; no other module holds SQL.  ``backend`` bundles them, with the cross-process
``locks``, as a ``core.ports.Storage``.

Data model: a *conversation* row per (owner, external id) holds the stored system prompt (JSON list of the leading
system messages), the last model, counters and timestamps, and its version and incarnation (what other processes'
caches and the turn fence check, see ``turns``); a *message* row per stored message holds the message
JSON exactly as sent or received, its position ``seq``, whether the reply was interrupted, and the turn's usage
and ledger (on its reply); a *response* row per Responses API call a turn answered names its reply's and first
input's seq (``responses``); the FTS5 table ``message_search`` holds each message's searchable text, kept in step
by triggers on the messages (``search``).

Two paths to the same file.  The *inline* path is a plain ``sqlite3`` connection used on the event loop with
``busy_timeout = 0``: it never waits for a lock, and in WAL mode with ``synchronous = NORMAL`` a read or a commit
is a few tens of microseconds of CPU with no fsync (a turn's commit more, for its text's search index: ``search``
has the figures).  Handing the same work to a thread (aiosqlite) costs ~160 us of wake-ups per call on the
benchmark machine, several times the work itself (see README, Benchmark).  Whenever waiting could be needed, the
*waiting* path takes over: an aiosqlite connection with the configured busy timeout, used when the inline path
meets a lock held by another process (the CLI, say), for every write when ``synchronous = "full"`` (each commit
then fsyncs), for migrations, for the statements of ``catalog``, ``search`` and ``keys`` (listing, searching,
reading, deleting conversations), and for WAL checkpoints, which the inline connection never runs
itself (``wal_autocheckpoint = 0``) because they fsync; a background task runs them.

A turn is stored whole or not at all (see ``turns``); one planned from a version of its conversation that is no
longer stored records nothing (``ConversationChanged``, the fence).  Recently active conversations are also held in
a ``HistoryCache``; ``freshness`` notices other connections' writes (``PRAGMA data_version``) and has each cached
entry checked by its conversation's version before it is used again, and keeps the keys' counter current.
The price of the inline path: a cache miss reads the history on the event loop, about 4 ms for a 2,000-message
conversation, during which other requests wait.

``readiness`` says whether a turn could be recorded now (``/readyz``): both connections are of a
``sqlite3.Connection`` subclass that reports each commit's outcome (``readiness``), and the file is compared with
the one opened.
"""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
import time
from collections.abc import AsyncIterator, Callable, Iterable
from functools import partial
from pathlib import Path
from typing import Any

import aiosqlite
import structlog

from gateway.core.ports import ConversationChanged, ConversationDeleted, Memory, StorageFault, StoredResponse, Turn
from gateway.errors import StorageUnavailable
from gateway.storage.cache import HistoryCache
from gateway.storage.sqlite.connections import open_connections
from gateway.storage.sqlite.freshness import Freshness, still_current
from gateway.storage.sqlite.readiness import FileWatch, WriteWatch, is_busy
from gateway.storage.sqlite.responses import delete_response, find_response
from gateway.storage.sqlite.turns import (
    CONVERSATION_CHANGED,
    CONVERSATION_DELETED,
    FIND_REPLY,
    HISTORY_BYTES,
    INLINE_READ_BYTES,
    INLINE_TURN_BYTES,
    LOAD,
    STAMP,
    incarnation_of,
    memory_from_rows,
    turn_params,
    turn_size,
    turn_statements,
)
from gateway.storage.sqlite.writer import TurnWriter

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
# While a write failure is remembered, how often readiness tries a write again to see whether it has gone.
WRITE_PROBE_INTERVAL_SECONDS = 1.0


class ConversationStore:
    """The turns of ``core.ports.TurnStore``, and the connections, transactions and checkpoints the rest of the
    backend shares.  ``turns_in_flight`` (see ``writer``) lets a turn share its commit while others are under way."""

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
        turns_in_flight: Callable[[], int] | None = None,
    ) -> None:
        # Kept rather than looked up per call: on Python 3.11 every asyncio.get_running_loop() is a getpid()
        # system call, and the hot path needed a few per turn.
        self._loop = asyncio.get_running_loop()
        self._inline = inline
        self._waiting = waiting
        self._inline_writes = inline_writes
        self._cache = HistoryCache(cache_messages, cache_bytes, check=partial(still_current, inline))
        self._freshness = Freshness(self._loop, inline, self._cache)
        self._writer = TurnWriter(self._loop, inline, self._cache, turns_in_flight)
        self._write_lock = asyncio.Lock()  # one open transaction at a time on the waiting connection
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
        turns_in_flight: Callable[[], int] | None = None,
    ) -> ConversationStore:
        """Open (creating and migrating if needed) the database at ``path``."""
        opened = await open_connections(path, synchronous=synchronous, busy_timeout_ms=busy_timeout_ms)
        store = cls(
            opened.inline,
            opened.waiting,
            inline_writes=synchronous != "full",
            cache_messages=cache_messages,
            cache_bytes=cache_bytes,
            turns_in_flight=turns_in_flight,
        )
        store._checkpointer = asyncio.create_task(store._checkpoint_periodically())
        store._files, store._writes = opened.files, opened.writes
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
        self._writer.observe = observe

    def count_conversations(self) -> int:
        (count,) = self._inline.execute("SELECT count(*) FROM conversations").fetchone()
        return int(count)

    async def readiness(self, *, write: bool = False) -> StorageFault | None:
        """None when a turn could be recorded now, else what stands in the way (see ``readiness``): the file deleted
        or replaced under the gateway, read-only, a full disk, a failed read, or a failed write (a commit or a
        checkpoint) not followed by a successful one.  ``write``: prove it with a write now (at start-up)."""
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
            if not is_busy(exc):  # another process holding the lock says nothing about the storage
                writes.failed(exc)
            return
        writes.succeeded()
        self._writer.dirty = True  # for the checkpointer

    async def load(self, owner: str, external_id: str) -> Memory:
        """The conversation's system prompt and history, from the cache when it can be trusted.  A history over
        ``INLINE_READ_BYTES`` is read on the waiting connection's thread and parsed in a worker thread, so that
        one large conversation does not stall every other request."""
        key = (owner, external_id)
        params = (owner, external_id, owner, external_id)
        try:
            try:
                self._freshness.look()
                cached = self._cache.get(key)  # checked by its version first when another process wrote meanwhile
                if cached is not None:
                    return cached
                epoch = self._cache.epoch
                size = self._inline.execute(HISTORY_BYTES, key).fetchone()
                if size is None or size[0] <= INLINE_READ_BYTES:
                    rows = self._inline.execute(LOAD, params).fetchall()
                    memory = memory_from_rows(rows)
                else:
                    memory, rows = await self._load_waiting(params)
            except sqlite3.OperationalError as exc:
                if not is_busy(exc):
                    raise
                self._cache.clear()
                epoch = self._cache.epoch
                memory, rows = await self._load_waiting(params)
        except sqlite3.Error as exc:
            raise StorageUnavailable("The conversation store cannot be read.", code="storage_unavailable") from exc
        # Stamped with the epoch the read began in: a write noticed while it was under way has it checked again.
        self._cache.put(key, memory, incarnation_of(rows), epoch=epoch)
        return memory

    async def _load_waiting(self, params: tuple[str, str, str, str]) -> tuple[Memory, list[Any]]:
        async with self._write_lock:  # behind any transaction open on this connection, as ``read`` is
            rows = list(await self._waiting.execute_fetchall(LOAD, params))
        memory = await asyncio.to_thread(memory_from_rows, rows) if len(rows) > 1 else memory_from_rows(rows)
        return memory, rows

    def look_again(self) -> None:
        """Have the next read look at the file for other connections' commits even within this event-loop
        iteration (``Freshness.forget``): ``FileLocks`` calls it when this process takes a conversation's lock."""
        self._freshness.forget()

    def keys_version(self) -> int:
        """A number that changes whenever keys were created or revoked by any connection, as of the last look at
        the file (``freshness``)."""
        try:
            return self._freshness.keys_version()
        except sqlite3.Error as exc:
            raise StorageUnavailable("The conversation store cannot be read.", code="storage_unavailable") from exc

    async def idempotent_reply(self, owner: str, external_id: str, key: str, since: float) -> tuple[str, bytes] | None:
        """The (request hash, body) kept under ``key`` for this conversation since ``since``, if any."""
        rows = await self.read_now(FIND_REPLY, (owner, external_id, key, since))
        return (rows[0][0], bytes(rows[0][1])) if rows else None

    async def find_response(self, owner: str, response_id: str) -> StoredResponse | None:
        """The response ``owner`` has under ``response_id``, with its reply and inputs (see ``responses``)."""
        return await find_response(self, owner, response_id)

    async def delete_response(self, owner: str, response_id: str) -> bool:
        """Delete a response record, and its turn's messages when it is the latest (see ``responses``)."""
        return await delete_response(self, owner, response_id)

    async def append_turn(self, turn: Turn) -> None:
        """Record a turn in one transaction, before the caller tells the client it is complete.

        While other turns are in flight the turn waits for the current event-loop iteration to end and commits
        together with any that finish in it (see ``writer``).
        """
        params = turn_params(turn)
        # Indexing a large turn's text for search (m012's triggers, ~1 us a character) would hold the event loop:
        # it commits from the waiting connection's thread instead; so does a turn replacing stored messages, whose
        # deletes take their text back out of the index, however large it was.
        inline = self._inline_writes and turn_size(params) <= INLINE_TURN_BYTES and turn.replace_from is None
        try:
            if inline and self._writer.should_share():
                # Not shielded: a cancelled caller cancels only its future; the batch still records the turn whole
                # (the writer skips futures nobody waits for).  A shield would cost each turn two more callbacks
                # and a loop iteration before it can answer.
                if await self._writer.queue(turn, params):
                    return
            elif inline and self._writer.record_now(turn, params):
                return
            await asyncio.shield(self._record_waiting(turn, params))
        except sqlite3.Error as exc:
            _raise_refused(exc)
            raise StorageUnavailable("The conversation store cannot be written.", code="storage_unavailable") from exc

    async def _record_waiting(self, turn: Turn, params: tuple[Any, ...]) -> None:
        key = (turn.owner, turn.external_id)
        stamp = None
        try:
            # The cached history stays (nothing changes it unless this commits) and is extended as an inline
            # commit extends it: a conversation of large turns would otherwise be read afresh every turn.
            async with self.transaction() as tx:
                for sql, values in turn_statements(turn, params):
                    await tx.execute(sql, values)
                if turn.expected_version is None and turn.replace_from is None:
                    rows = await tx.fetch(STAMP, key)
                    stamp = tuple(rows[0]) if rows else None
        except StorageUnavailable as exc:
            if isinstance(exc.__cause__, sqlite3.Error):
                _raise_refused(exc.__cause__)
            raise
        self._writer.committed(turn, params, stamp)

    async def read_now(self, sql: str, params: Any) -> list[Any]:
        """A small read on the event loop (the inline connection), or on the waiting connection when another
        process holds a lock that stands in the way."""
        try:
            try:
                return self._inline.execute(sql, params).fetchall()
            except sqlite3.OperationalError as exc:
                if not is_busy(exc):
                    raise
            async with self._write_lock:  # as ``read``
                return list(await self._waiting.execute_fetchall(sql, params))
        except sqlite3.Error as exc:
            raise StorageUnavailable("The conversation store cannot be read.", code="storage_unavailable") from exc

    # For the catalog and the keys: rare, possibly large reads and single-statement writes, on the waiting
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
            if self._writer.dirty:
                self._writer.dirty = False
                try:
                    # PASSIVE: copies what it can without waiting for or blocking readers and writers.
                    await self._waiting.execute_fetchall("PRAGMA wal_checkpoint(PASSIVE)")
                except sqlite3.Error as exc:
                    log.warning("checkpoint_failed", error=type(exc).__name__)


def _raise_refused(exc: sqlite3.Error) -> None:
    """Raise what the turn trigger's refusal means (migrations m006, m009), if ``exc`` is one."""
    if isinstance(exc, sqlite3.IntegrityError):
        if CONVERSATION_DELETED in str(exc):
            raise ConversationDeleted from exc
        if CONVERSATION_CHANGED in str(exc):
            raise ConversationChanged from exc
