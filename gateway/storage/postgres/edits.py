"""Editing a conversation's messages one by one (OpenAI's Conversations items API) on PostgreSQL: appending
messages without a model call, and deleting one message from anywhere in the history.  The SQL behind
``PostgresCatalog.append_messages`` and ``delete_message``, each one ``Database.transaction`` (which drops this
process's cached history; the recount moves the conversation's version on, so other processes' caches let it go).

Both lock the conversation's row first (``FOR UPDATE``, as a turn's write of the row locks it): under READ
COMMITTED the state they read (where the history ends, which seq a message holds) then stays true until they
commit, as SQLite's ``BEGIN IMMEDIATE`` keeps it.

A deletion keeps ``seq`` contiguous (the messages after it move up by one), removes every response whose inputs or
reply held the message (the others after it move up with their messages), resets the context window when it
started after the message (its summary describes it), forgets idempotent replies (they answered a history that is
gone) and recounts the conversation's counters, size and token totals, as a rewind does.
"""

from __future__ import annotations

from collections.abc import Sequence

from gateway.core.ports import ConversationInfo, NewMessage, StoredMessage
from gateway.protocols.openai_chat import dumps, encode
from gateway.storage.postgres.database import Database
from gateway.storage.postgres.turns import RECOUNT
from gateway.storage.rows import stored_message

_STATE = """
SELECT id, message_count, history_bytes FROM conversations WHERE owner = $1 AND external_id = $2 FOR UPDATE
"""
# The new messages as parallel arrays, numbered on from the current count ($2); they come back as stored.
_INSERT = """
INSERT INTO messages (conversation_id, seq, role, body, created_at, interrupted, usage_json, ledger_json)
SELECT $1, $2 + m.ord::integer - 1, m.role, m.body, m.created_at, m.interrupted, m.usage_json, m.ledger_json
  FROM unnest($3::text[], $4::text[], $5::float8[], $6::boolean[], $7::text[], $8::text[])
           WITH ORDINALITY AS m (role, body, created_at, interrupted, usage_json, ledger_json, ord)
RETURNING id, seq, body, created_at, interrupted, usage_json, ledger_json
"""
_LOCK = "SELECT id FROM conversations WHERE id = $1 FOR UPDATE"
_SEQ = "SELECT seq FROM messages WHERE conversation_id = $1 AND id = $2"
_DELETE = "DELETE FROM messages WHERE conversation_id = $1 AND seq = $2"
# UNIQUE (conversation_id, seq) is checked row by row as an UPDATE goes (it is not deferrable), so moving rows one
# place up in one statement could collide midway: first out of the way (negated), then back one place up.
_PARK_MESSAGES = "UPDATE messages SET seq = -seq WHERE conversation_id = $1 AND seq > $2"
_SHIFT_MESSAGES = "UPDATE messages SET seq = -seq - 1 WHERE conversation_id = $1 AND seq < 0"
_DROP_RESPONSES = "DELETE FROM responses WHERE conversation_id = $1 AND first_seq <= $2 AND reply_seq >= $2"
_PARK_RESPONSES = "UPDATE responses SET reply_seq = -reply_seq WHERE conversation_id = $1 AND reply_seq > $2"
_SHIFT_RESPONSES = """
UPDATE responses SET reply_seq = -reply_seq - 1, first_seq = first_seq - 1 WHERE conversation_id = $1 AND reply_seq < 0
"""
_RESET_WINDOW = "UPDATE conversations SET window_start = 0, summary_json = NULL WHERE id = $1 AND window_start > $2"
_FORGET_REPLIES = "DELETE FROM idempotent_replies WHERE conversation_id = $1"


async def append_messages(
    database: Database,
    conversation: ConversationInfo,
    messages: Sequence[NewMessage],
    at: float,
    max_bytes: int | None,
) -> list[StoredMessage] | None:
    """Append ``messages`` after the conversation's last one; the stored rows, or None (nothing written) when the
    history would then hold more than ``max_bytes`` bytes of JSON.  An empty list when the conversation is gone."""
    key = (conversation.owner, conversation.external_id)
    encoded = [encode(m.body) for m in messages]
    async with database.transaction(key) as conn:
        state = await conn.fetchrow(_STATE, *key)
        if state is None:
            return []
        row_id, count, size = state
        if max_bytes is not None and size + sum(map(len, encoded)) > max_bytes:
            return None
        rows = await conn.fetch(
            _INSERT,
            row_id,
            count,
            [m.body["role"] for m in messages],
            [body.decode() for body in encoded],
            [m.created_at for m in messages],
            [m.interrupted for m in messages],
            [dumps(m.usage) if m.usage is not None else None for m in messages],
            [dumps(m.ledger) if m.ledger is not None else None for m in messages],
        )
        await conn.execute(RECOUNT, *key, at)
    # RETURNING promises no order: put them in the order they were given (their seq).
    return sorted(map(stored_message, rows), key=lambda m: m.seq)


async def delete_message(database: Database, conversation: ConversationInfo, message_row_id: int) -> bool:
    """Delete one message (see the module docstring); False, and nothing changed, when the conversation holds no
    message with that row id.  The activity time is kept, as deleting a response keeps it."""
    key = (conversation.owner, conversation.external_id)
    async with database.transaction(key) as conn:
        if await conn.fetchval(_LOCK, conversation.row_id) is None:
            return False
        seq = await conn.fetchval(_SEQ, conversation.row_id, message_row_id)
        if seq is None:
            return False
        c = conversation.row_id
        for sql, args in (
            (_DELETE, (c, seq)),
            (_PARK_MESSAGES, (c, seq)),
            (_SHIFT_MESSAGES, (c,)),
            (_DROP_RESPONSES, (c, seq)),
            (_PARK_RESPONSES, (c, seq)),
            (_SHIFT_RESPONSES, (c,)),
            (_RESET_WINDOW, (c, seq)),
            (_FORGET_REPLIES, (c,)),
        ):
            await conn.execute(sql, *args)
        await conn.execute(RECOUNT, *key, None)
    return True
