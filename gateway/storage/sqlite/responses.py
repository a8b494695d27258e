"""Finding and deleting the Responses API calls that turns recorded (``core.ports.StoredResponse``, migration m008):
the SQL and the row mapping behind ``ConversationStore.find_response`` and ``delete_response``.

A turn writes its response row in its own transaction (``turns.turn_statements``), and a cut (``turns.
cut_statements``: a rewind, a replacing turn) removes the rows whose reply it removes; deleting the conversation
(the API, the CLI, the idle purge) removes them by cascade.  A row holds no message: it names its conversation's
row, its reply's seq and the seq of the first message its turn added, so its input items are the messages from
there to just before the reply, read from ``messages`` as they are stored now.
"""

from __future__ import annotations

import asyncio
from contextlib import AbstractAsyncContextManager
from typing import Any, Protocol

from gateway.core.ports import StoredResponse
from gateway.protocols.openai_chat import loads
from gateway.storage.rows import stored_message
from gateway.storage.sqlite.turns import INLINE_READ_BYTES, cut_statements

# The response row and its conversation's (row id, external id, message count, history size): owner-scoped.
_FIND_RESPONSE = """
SELECT c.id, c.external_id, c.message_count, c.history_bytes, r.created_at, r.request_json, r.first_seq, r.reply_seq
  FROM responses AS r JOIN conversations AS c ON c.id = r.conversation_id
 WHERE r.id = ? AND c.owner = ?
"""
_RESPONSE_MESSAGES = """
SELECT id, seq, body, created_at, interrupted, usage_json, ledger_json FROM messages
 WHERE conversation_id = ? AND seq BETWEEN ? AND ? ORDER BY seq
"""
_DELETE_RESPONSE = "DELETE FROM responses WHERE id = ?"


class _Transaction(Protocol):
    async def execute(self, sql: str, params: Any = ()) -> int: ...

    async def fetch(self, sql: str, params: Any = ()) -> list[Any]: ...


class _Store(Protocol):
    """What of ``store.ConversationStore`` these use (named structurally: the store imports this module)."""

    async def read(self, sql: str, params: Any) -> list[Any]: ...

    async def read_now(self, sql: str, params: Any) -> list[Any]: ...

    def transaction(self, *conversations: tuple[str, str]) -> AbstractAsyncContextManager[_Transaction]: ...


async def find_response(store: _Store, owner: str, response_id: str) -> StoredResponse | None:
    """The response with its reply and inputs, None when ``owner`` has none under ``response_id``.  Its messages
    are read on the event loop unless its conversation's history is large (as ``ConversationStore.load``)."""
    found = await store.read_now(_FIND_RESPONSE, (response_id, owner))
    if not found:
        return None
    head = found[0]
    conversation, _, _, history_bytes, _, _, first_seq, reply_seq = head
    params = (conversation, first_seq, reply_seq)
    if history_bytes <= INLINE_READ_BYTES:
        return _stored_response(response_id, head, await store.read_now(_RESPONSE_MESSAGES, params))
    rows = await store.read(_RESPONSE_MESSAGES, params)
    return await asyncio.to_thread(_stored_response, response_id, head, rows)


async def delete_response(store: _Store, owner: str, response_id: str) -> bool:
    """Delete the response record; when its reply is its conversation's last message, cut the conversation where
    its turn's messages begin (``turns.cut_statements``, as a rewind: counters recounted, the window reset if it
    began after the cut, idempotent replies forgotten), keeping the activity time.  False when ``owner`` has no
    response under ``response_id``."""
    found = await store.read(_FIND_RESPONSE, (response_id, owner))
    if not found:
        return False
    # The conversation a response belongs to never changes: its key, read first, names the cache entry to drop.
    async with store.transaction((owner, found[0][1])) as tx:
        rows = await tx.fetch(_FIND_RESPONSE, (response_id, owner))  # again, inside the transaction
        if not rows:
            return False
        _, external_id, message_count, _, _, _, first_seq, reply_seq = rows[0]
        if reply_seq == message_count - 1:
            for sql, params in cut_statements(owner, external_id, first_seq, None):
                await tx.execute(sql, params)
        await tx.execute(_DELETE_RESPONSE, (response_id,))  # after a cut, already gone with its reply
    return True


def _stored_response(response_id: str, head: Any, rows: list[Any]) -> StoredResponse | None:
    _, external_id, message_count, _, created_at, request_json, _, reply_seq = head
    messages = [stored_message(row) for row in rows]
    if not messages or messages[-1].seq != reply_seq:  # cut in between the two reads: gone
        return None
    return StoredResponse(
        id=response_id,
        conversation_id=external_id,
        created_at=created_at,
        request=loads(request_json),
        reply=messages[-1],
        inputs=messages[:-1],
        latest=reply_seq == message_count - 1,
    )
