"""PostgresTurnStore: chat turns on PostgreSQL (``core.ports.TurnStore``): load a conversation's memory, record a
turn, find a kept idempotent reply, find and delete recorded Responses API calls.

Several processes and replicas share the database, so a history cached here may be outdated at any moment.  It is
never trusted unseen: every load sends the cached entry's ``version`` and row id along, and the one statement
(``turns.LOAD``) answers with only the conversation's row when that is still the stored row at that version, else
with the row and every message.  A load is one round trip either way, a hit costs no message transfer.  (The row
id because a conversation deleted and created anew starts at version 1 again; identities are never reused.)
That a conversation is not stored is cached too, so a new conversation's first turn extends the entry.

A turn is one round trip too: one call of ``gateway_record_turn`` (``turns``) doing the fence, the cut, the rows
and the version in its own transaction.  After it commits, the cached entry is extended when it held exactly the
version the turn replaced (so no other process wrote in between), and dropped otherwise.  The write runs shielded
from the caller's cancellation: once sent, a turn is recorded whole or not at all, and the cache hears of it
either way.  ``synchronous_commit`` is the server's (on by default): a turn a client saw complete is on disk.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

import asyncpg

from gateway.core.ports import ConversationChanged, ConversationDeleted, Memory, StoredResponse, Turn
from gateway.errors import StorageUnavailable
from gateway.storage.postgres import responses
from gateway.storage.postgres.database import DRIVER_ERRORS, WRITE_FAILED, Database
from gateway.storage.postgres.readiness import WriteWatch
from gateway.storage.postgres.turns import (
    CONVERSATION_CHANGED,
    CONVERSATION_DELETED,
    FIND_REPLY,
    LOAD,
    RECORD_TURN,
    THREAD_PARSE_BYTES,
    memory_from_rows,
    turn_params,
    turn_size,
)

_ABSENT = Memory(exists=False, system=None, messages=(), replayed=())


class PostgresTurnStore:
    """``writes`` hears how each turn's write went (readiness); ``observe``, when set, each commit's duration."""

    def __init__(self, database: Database, writes: WriteWatch) -> None:
        self._db = database
        self._writes = writes
        self.observe: Callable[[float], None] | None = None
        # The row id of each cached conversation, by key: what tells a row created anew from the one cached.
        self._row_ids: dict[tuple[str, str], int] = {}

    async def load(self, owner: str, external_id: str) -> Memory:
        """The conversation's memory: the cached entry when the database says it is still the stored row at the
        stored version, else read afresh (parsed in a worker thread when large) and cached."""
        key = (owner, external_id)
        cache = self._db.cache
        cached = cache.get(key)
        row_id = self._row_ids.get(key)
        if cached is not None and cached.exists and row_id is None:
            cached = None  # its row id was forgotten (see _remember): read afresh
        version = cached.version if cached is not None else None
        rows = await self._db.fetch(LOAD, owner, external_id, version, row_id if cached is not None else None)
        if not rows:
            if cached is not None and not cached.exists:
                return cached
            # Absence is cached too (version 0): a conversation's first turn then extends it.
            cache.put(key, _ABSENT)
            return _ABSENT
        head = rows[0]
        if cached is not None and len(rows) == 1 and head["version"] == version and head["id"] == row_id:
            return cached
        if head["history_bytes"] > THREAD_PARSE_BYTES:
            memory = await asyncio.to_thread(memory_from_rows, rows)
        else:
            memory = memory_from_rows(rows)
        cache.put(key, memory, head["id"])
        self._remember(key, head["id"])
        return memory

    def _remember(self, key: tuple[str, str], row_id: int) -> None:
        """Note the row id a cached entry was read from.  The cache evicts entries without telling: past a bound
        well over its size, the notes are forgotten all at once, and each entry still cached is read once more."""
        if len(self._row_ids) > 4 * len(self._db.cache) + 1024:
            self._row_ids.clear()
        self._row_ids[key] = row_id

    async def idempotent_reply(self, owner: str, external_id: str, key: str, since: float) -> tuple[str, bytes] | None:
        """The (request hash, body) kept under ``key`` for this conversation since ``since``, if any."""
        row = await self._db.fetchrow(FIND_REPLY, owner, external_id, key, since)
        return (row[0], bytes(row[1])) if row is not None else None

    async def find_response(self, owner: str, response_id: str) -> StoredResponse | None:
        return await responses.find_response(self._db, owner, response_id)

    async def delete_response(self, owner: str, response_id: str) -> bool:
        return await responses.delete_response(self._db, owner, response_id)

    async def append_turn(self, turn: Turn) -> None:
        """Record ``turn`` in one round trip before the caller tells the client it is complete.  Raises
        ``ConversationDeleted`` / ``ConversationChanged`` (nothing recorded) as ``core.ports.TurnStore`` says,
        ``StorageUnavailable`` when the database cannot take it."""
        recording = asyncio.ensure_future(self._record(turn, turn_params(turn)))
        recording.add_done_callback(_retrieve)
        await asyncio.shield(recording)

    async def _record(self, turn: Turn, params: tuple[Any, ...]) -> None:
        key = (turn.owner, turn.external_id)
        try:
            async with self._db.pool.acquire() as conn:
                started = time.perf_counter()
                row = await conn.fetchrow(RECORD_TURN, *params)
                elapsed = time.perf_counter() - started
        except asyncpg.PostgresError as exc:
            self._db.cache.discard(key)
            if exc.sqlstate == CONVERSATION_DELETED:
                raise ConversationDeleted from exc
            if exc.sqlstate == CONVERSATION_CHANGED:
                raise ConversationChanged from exc
            self._writes.failed(exc)
            raise StorageUnavailable(WRITE_FAILED, code="storage_unavailable") from exc
        except DRIVER_ERRORS as exc:
            self._db.cache.discard(key)
            self._writes.failed(exc)
            raise StorageUnavailable(WRITE_FAILED, code="storage_unavailable") from exc
        self._writes.succeeded()
        if self.observe is not None:
            self.observe(elapsed)
        if not turn.existed:  # it may have created the conversation
            self._db.conversations_changed.set()
        assert row is not None  # a function with OUT parameters returns one row
        self._committed(turn, params, row[0], row[1])

    def _committed(self, turn: Turn, params: tuple[Any, ...], row_id: int, version: int) -> None:
        key, cache = (turn.owner, turn.external_id), self._db.cache
        cached = cache.get(key)
        if cached is None:
            return
        if turn.replace_from is not None or (cached.exists and self._row_ids.get(key) != row_id):
            cache.discard(key)  # a retried turn (rare), or another row than the cached one: read afresh next time
            return
        # Extended only when the entry holds the version this turn moved on from (no other process wrote in
        # between); dropped otherwise.
        appended = (*turn.messages, turn.reply)
        cache.extend(
            key, turn.system, appended, turn.window, turn.usage, turn_size(params), version=version, stamp=row_id
        )
        self._remember(key, row_id)


def _retrieve(recording: asyncio.Future[None]) -> None:
    """Mark the outcome of a write whose caller was cancelled as seen (asyncio would log it as never retrieved);
    the caller that stayed gets it from ``shield`` as usual."""
    if not recording.cancelled():
        recording.exception()
