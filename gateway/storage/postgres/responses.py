"""Finding and deleting the Responses API calls that turns recorded, on PostgreSQL: the SQL and row mapping
behind ``PostgresTurnStore.find_response`` and ``delete_response`` (the SQLite backend's ``responses``, the same
rules).

A turn writes its response row inside ``gateway_record_turn``; a cut (``gateway_cut``: a rewind, a replacing
turn) removes the rows whose reply it removes; deleting the conversation removes them by cascade.  A row names
its conversation, its reply's seq and the seq of the first message its turn added, so its input items are the
messages from there to just before the reply, read as they are stored now.
"""

from __future__ import annotations

import asyncio
from typing import Any

from gateway.core.ports import StoredResponse
from gateway.protocols.openai_chat import loads
from gateway.storage.postgres.database import Database
from gateway.storage.postgres.turns import THREAD_PARSE_BYTES, cut
from gateway.storage.rows import stored_message

# The response row, its conversation's (external id, message count, history size) and the messages from its
# first input to its reply, in one statement (one round trip); owner-scoped.  No row: no such response.
_FIND_RESPONSE = """
WITH r AS (
    SELECT c.id AS conversation, c.external_id, c.message_count, c.history_bytes,
           r.created_at AS response_created, r.request_json, r.first_seq, r.reply_seq
      FROM responses AS r JOIN conversations AS c ON c.id = r.conversation_id
     WHERE r.id = $1 AND c.owner = $2)
SELECT r.external_id, r.message_count, r.history_bytes, r.response_created, r.request_json, r.reply_seq,
       m.id, m.seq, m.body, m.created_at, m.interrupted, m.usage_json, m.ledger_json
  FROM r LEFT JOIN messages AS m
    ON m.conversation_id = r.conversation AND m.seq BETWEEN r.first_seq AND r.reply_seq
 ORDER BY m.seq
"""
# Inside the deleting transaction: the row locked, so that a turn cannot make it no longer the latest meanwhile.
_LOCK_RESPONSE = """
SELECT c.external_id, c.message_count, r.first_seq, r.reply_seq
  FROM responses AS r JOIN conversations AS c ON c.id = r.conversation_id
 WHERE r.id = $1 AND c.owner = $2
   FOR UPDATE OF c
"""
_EXTERNAL_ID = """
SELECT c.external_id FROM responses AS r JOIN conversations AS c ON c.id = r.conversation_id
 WHERE r.id = $1 AND c.owner = $2
"""
_DELETE_RESPONSE = "DELETE FROM responses WHERE id = $1"


async def find_response(database: Database, owner: str, response_id: str) -> StoredResponse | None:
    """The response with its reply and inputs, None when ``owner`` has none under ``response_id``; a large
    conversation's messages are parsed in a worker thread."""
    rows = await database.fetch(_FIND_RESPONSE, response_id, owner)
    if not rows:
        return None
    if rows[0]["history_bytes"] > THREAD_PARSE_BYTES:
        return await asyncio.to_thread(_stored_response, response_id, rows)
    return _stored_response(response_id, rows)


async def delete_response(database: Database, owner: str, response_id: str) -> bool:
    """Delete the response record; when its reply is its conversation's last message, cut the conversation where
    its turn's messages begin (``turns.cut``, as a rewind does), keeping the activity time.  False when ``owner``
    has no response under ``response_id``."""
    # The conversation a response belongs to never changes: its key, read first, names the cache entry to drop.
    external_id = await database.fetchval(_EXTERNAL_ID, response_id, owner)
    if external_id is None:
        return False
    async with database.transaction((owner, external_id)) as conn:
        row = await conn.fetchrow(_LOCK_RESPONSE, response_id, owner)
        if row is None:
            return False
        if row["reply_seq"] == row["message_count"] - 1:
            await cut(conn, owner, external_id, row["first_seq"], None)
        # An earlier one's deletion changes nothing a turn loads (``Memory``): no new version, no fence tripped.
        await conn.execute(_DELETE_RESPONSE, response_id)  # after a cut, already gone with its reply
    return True


def _stored_response(response_id: str, rows: list[Any]) -> StoredResponse | None:
    head = rows[0]
    messages = [stored_message(row[6:]) for row in rows if row["id"] is not None]
    if not messages or messages[-1].seq != head["reply_seq"]:  # a cut in between: gone
        return None
    return StoredResponse(
        id=response_id,
        conversation_id=head["external_id"],
        created_at=head["response_created"],
        request=loads(head["request_json"]),
        reply=messages[-1],
        inputs=messages[:-1],
        latest=head["reply_seq"] == head["message_count"] - 1,
    )
