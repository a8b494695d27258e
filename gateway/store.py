"""ConversationStore: every SQL statement of the gateway, over SQLite in WAL mode through aiosqlite.

Data model: a *conversation* row per (owner, external id) holds the stored system prompt (JSON list of the leading
system messages), the last model, counters and timestamps; a *message* row per stored message holds the message
JSON exactly as sent or received, its position ``seq``, whether the reply was interrupted, and the turn's usage.

Two connections: a writer, used under an asyncio lock so that one transaction is open at a time, and a reader,
which WAL lets run beside the writer.  A turn is one ``BEGIN IMMEDIATE`` transaction, so it is stored whole or not
at all; another process (the CLI) writing at the same time waits up to ``busy_timeout`` instead of failing.
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import aiosqlite

from gateway.errors import StorageUnavailable
from gateway.migrations import migrate
from gateway.protocol import Message, dumps


@dataclass(frozen=True)
class StoredConversation:
    """Memory as a turn needs it; ``exists`` is False for a conversation not created yet."""

    exists: bool
    system: list[Message] | None
    messages: list[Message]


@dataclass(frozen=True)
class Turn:
    """One turn to record: the request's new messages and the assistant reply, written together."""

    owner: str
    external_id: str
    model: str | None
    system: list[Message] | None  # replaces the stored system prompt when not None
    messages: list[Message]
    reply: Message
    interrupted: bool
    usage: dict[str, Any] | None


_LOAD = """
SELECT -1 AS seq, system_json FROM conversations WHERE owner = ? AND external_id = ?
UNION ALL
SELECT m.seq, m.body FROM messages AS m JOIN conversations AS c ON c.id = m.conversation_id
 WHERE c.owner = ? AND c.external_id = ?
ORDER BY seq
"""

# One statement creates the conversation or updates it, returning the id and the count after this turn.
_UPSERT = """
INSERT INTO conversations (owner, external_id, created_at, updated_at, model, system_json, message_count,
                           prompt_tokens, completion_tokens, cached_tokens)
VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
ON CONFLICT (owner, external_id) DO UPDATE SET
    updated_at = excluded.updated_at,
    model = COALESCE(excluded.model, conversations.model),
    system_json = COALESCE(excluded.system_json, conversations.system_json),
    message_count = conversations.message_count + excluded.message_count,
    prompt_tokens = conversations.prompt_tokens + excluded.prompt_tokens,
    completion_tokens = conversations.completion_tokens + excluded.completion_tokens,
    cached_tokens = conversations.cached_tokens + excluded.cached_tokens
RETURNING id, message_count
"""

_INSERT_MESSAGE = """
INSERT INTO messages (conversation_id, seq, role, body, created_at, interrupted, usage_json)
VALUES (?, ?, ?, ?, ?, ?, ?)
"""


class ConversationStore:
    def __init__(self, writer: aiosqlite.Connection, reader: aiosqlite.Connection) -> None:
        self._writer = writer
        self._reader = reader
        self._write_lock = asyncio.Lock()

    @classmethod
    async def open(cls, path: Path, *, synchronous: str = "normal", busy_timeout_ms: int = 5000) -> ConversationStore:
        """Open (creating and migrating if needed) the database at ``path``."""
        path.parent.mkdir(parents=True, exist_ok=True)
        writer = await _connect(path, synchronous, busy_timeout_ms, isolation_level="IMMEDIATE")
        try:
            await writer.execute("PRAGMA journal_mode = WAL")
            await migrate(writer)
            reader = await _connect(path, synchronous, busy_timeout_ms, isolation_level=None)
        except BaseException:
            await writer.close()
            raise
        return cls(writer, reader)

    async def close(self) -> None:
        """Close both connections; closing the last one checkpoints the WAL into the main file."""
        await self._reader.close()
        async with self._write_lock:
            await self._writer.close()

    async def ping(self) -> None:
        await self._reader.execute_fetchall("SELECT 1 FROM conversations LIMIT 1")

    async def load(self, owner: str, external_id: str) -> StoredConversation:
        try:
            rows = list(await self._reader.execute_fetchall(_LOAD, (owner, external_id, owner, external_id)))
        except sqlite3.Error as exc:
            raise StorageUnavailable("The conversation store cannot be read.", code="storage_unavailable") from exc
        if not rows:
            return StoredConversation(exists=False, system=None, messages=[])
        system_json = rows[0][1]
        return StoredConversation(
            exists=True,
            system=json.loads(system_json) if system_json else None,
            messages=[json.loads(row[1]) for row in rows[1:]],
        )

    async def append_turn(self, turn: Turn) -> None:
        """Record a turn in one transaction.  Shielded: once started, a cancelled caller cannot leave it half
        done or leave the writer inside an open transaction."""
        await asyncio.shield(self._append_turn(turn))

    async def _append_turn(self, turn: Turn) -> None:
        now = time.time()
        usage = turn.usage or {}
        details = usage.get("prompt_tokens_details")
        cached = details.get("cached_tokens") if isinstance(details, dict) else None
        async with self._write_transaction() as db:
            rows = await db.execute_fetchall(
                _UPSERT,
                (
                    turn.owner,
                    turn.external_id,
                    now,
                    now,
                    turn.model,
                    dumps(turn.system) if turn.system is not None else None,
                    len(turn.messages) + 1,
                    _count(usage.get("prompt_tokens")),
                    _count(usage.get("completion_tokens")),
                    _count(cached),
                ),
            )
            conversation_id, count_after = next(iter(rows))
            first_seq = count_after - len(turn.messages) - 1
            await db.executemany(_INSERT_MESSAGE, _message_rows(turn, conversation_id, first_seq, now))

    @asynccontextmanager
    async def _write_transaction(self) -> AsyncIterator[aiosqlite.Connection]:
        """One write transaction on the writer connection: committed whole, or rolled back whole.

        The writer runs with ``isolation_level="IMMEDIATE"``, so sqlite3 itself issues ``BEGIN IMMEDIATE`` with
        the first write statement, saving a thread round trip.  IMMEDIATE matters: a deferred transaction that
        upgrades to a write fails at once with SQLITE_BUSY when another process wrote meanwhile, and
        busy_timeout does not help.
        """
        async with self._write_lock:
            try:
                try:
                    yield self._writer
                    await self._writer.commit()
                except BaseException:
                    if self._writer.in_transaction:
                        await self._writer.rollback()
                    raise
            except sqlite3.Error as exc:
                raise StorageUnavailable(
                    "The conversation store cannot be written.", code="storage_unavailable"
                ) from exc


def _message_rows(turn: Turn, conversation_id: int, first_seq: int, now: float) -> list[tuple[Any, ...]]:
    """Rows for the turn's new messages, then its reply, which alone carries the usage and interrupted flag."""
    rows: list[tuple[Any, ...]] = [
        (conversation_id, first_seq + offset, m["role"], dumps(m), now, 0, None)
        for offset, m in enumerate(turn.messages)
    ]
    usage_json = dumps(turn.usage) if turn.usage is not None else None
    reply_seq = first_seq + len(turn.messages)
    rows.append((conversation_id, reply_seq, "assistant", dumps(turn.reply), now, int(turn.interrupted), usage_json))
    return rows


def _count(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else 0


async def _connect(
    path: Path, synchronous: str, busy_timeout_ms: int, isolation_level: Literal["IMMEDIATE"] | None
) -> aiosqlite.Connection:
    db = await aiosqlite.connect(path, isolation_level=isolation_level)
    await db.execute(f"PRAGMA busy_timeout = {int(busy_timeout_ms)}")
    await db.execute(f"PRAGMA synchronous = {'FULL' if synchronous == 'full' else 'NORMAL'}")
    await db.execute("PRAGMA foreign_keys = ON")
    return db
