"""Editing a conversation's messages one by one (OpenAI's Conversations items API): appending messages without a
model call, and deleting one message from anywhere in the history.  The SQL behind ``SqliteCatalog.
append_messages`` and ``delete_message``, each one ``ConversationStore.transaction`` (which drops the cached
history).

A deletion keeps ``seq`` contiguous (the messages after it move up by one), removes every response whose inputs or
reply held the message (the others after it move up with their messages), resets the context window when it
started after the message (its summary describes it), forgets idempotent replies (they answered a history that is
gone) and recounts the conversation's counters, size and token totals, as a rewind does.  Both move the
conversation's version on (``turns.RECOUNT``), so other processes' cached histories of it are checked and dropped.
"""

from __future__ import annotations

from collections.abc import Sequence

from gateway.core.ports import ConversationInfo, NewMessage, StoredMessage
from gateway.protocols.openai_chat import dumps, encode
from gateway.storage.rows import stored_message
from gateway.storage.sqlite.store import ConversationStore
from gateway.storage.sqlite.turns import RECOUNT

_STATE = "SELECT id, message_count, history_bytes FROM conversations WHERE owner = ? AND external_id = ?"
_INSERT = """
INSERT INTO messages (conversation_id, seq, role, body, created_at, interrupted, usage_json, ledger_json)
VALUES (?, ?, ?, ?, ?, ?, ?, ?)
"""
_MESSAGES_FROM = """
SELECT id, seq, body, created_at, interrupted, usage_json, ledger_json FROM messages
 WHERE conversation_id = ? AND seq >= ? ORDER BY seq
"""
_SEQ = "SELECT seq FROM messages WHERE conversation_id = ? AND id = ?"
_DELETE = "DELETE FROM messages WHERE conversation_id = :c AND seq = :seq"
# Moving rows under UNIQUE (conversation_id, seq) one at a time could collide midway: first out of the way (negated),
# then back one place up.
_PARK_MESSAGES = "UPDATE messages SET seq = -seq WHERE conversation_id = :c AND seq > :seq"
_SHIFT_MESSAGES = "UPDATE messages SET seq = -seq - 1 WHERE conversation_id = :c AND seq < 0"
_DROP_RESPONSES = "DELETE FROM responses WHERE conversation_id = :c AND first_seq <= :seq AND reply_seq >= :seq"
_PARK_RESPONSES = "UPDATE responses SET reply_seq = -reply_seq WHERE conversation_id = :c AND reply_seq > :seq"
_SHIFT_RESPONSES = """
UPDATE responses SET reply_seq = -reply_seq - 1, first_seq = first_seq - 1 WHERE conversation_id = :c AND reply_seq < 0
"""
_RESET_WINDOW = "UPDATE conversations SET window_start = 0, summary_json = NULL WHERE id = :c AND window_start > :seq"
_FORGET_REPLIES = "DELETE FROM idempotent_replies WHERE conversation_id = :c"


async def append_messages(
    store: ConversationStore,
    conversation: ConversationInfo,
    messages: Sequence[NewMessage],
    at: float,
    max_bytes: int | None,
) -> list[StoredMessage] | None:
    """Append ``messages`` after the conversation's last one; the stored rows, or None (nothing written) when the
    history would then hold more than ``max_bytes`` bytes of JSON.  An empty list when the conversation is gone."""
    key = (conversation.owner, conversation.external_id)
    encoded = [encode(m.body) for m in messages]
    async with store.transaction(key) as tx:
        rows = await tx.fetch(_STATE, key)
        if not rows:
            return []
        row_id, count, size = rows[0]
        if max_bytes is not None and size + sum(map(len, encoded)) > max_bytes:
            return None
        await tx.execute_many(
            _INSERT,
            [
                (
                    row_id,
                    count + i,
                    m.body["role"],
                    body.decode(),
                    m.created_at,
                    int(m.interrupted),
                    dumps(m.usage) if m.usage is not None else None,
                    dumps(m.ledger) if m.ledger is not None else None,
                )
                for i, (m, body) in enumerate(zip(messages, encoded, strict=True))
            ],
        )
        await tx.execute(RECOUNT, {"owner": key[0], "id": key[1], "at": at, "bump": 1})
        return [stored_message(row) for row in await tx.fetch(_MESSAGES_FROM, (row_id, count))]


async def delete_message(store: ConversationStore, conversation: ConversationInfo, message_row_id: int) -> bool:
    """Delete one message (see the module docstring); False, and nothing changed, when the conversation holds no
    message with that row id.  The activity time is kept, as deleting a response keeps it."""
    key = (conversation.owner, conversation.external_id)
    async with store.transaction(key) as tx:
        rows = await tx.fetch(_SEQ, (conversation.row_id, message_row_id))
        if not rows:
            return False
        params = {"c": conversation.row_id, "seq": rows[0][0]}
        for sql in (
            _DELETE,
            _PARK_MESSAGES,
            _SHIFT_MESSAGES,
            _DROP_RESPONSES,
            _PARK_RESPONSES,
            _SHIFT_RESPONSES,
            _RESET_WINDOW,
            _FORGET_REPLIES,
        ):
            await tx.execute(sql, params)
        await tx.execute(RECOUNT, {"owner": key[0], "id": key[1], "at": None, "bump": 1})
    return True
