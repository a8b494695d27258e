"""What a turn writes and what a conversation's rows read back as on PostgreSQL: the SQL of a ``Turn``
(``core.ports``) and of loading a ``Memory``, the mapping between rows and records, and the recount and cut the
catalog's edits share (``RECOUNT``, ``cut``).

One round trip each way, since every statement crosses the network: a turn is one call of
``gateway_record_turn`` (migration p001, as p002 replaced it: the fence, the cut it replaces, the conversation row,
its messages with the usage and ledger on the reply, window, idempotent reply and response, all in the call's own
transaction); a load is one statement that, given the version of the cached entry, returns only the conversation's
row when that version is still the stored one (the cached entry is good), else the row and every message.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import asyncpg

from gateway.core.ports import Memory, Turn
from gateway.protocols.openai_chat import cached_tokens, dumps, encode
from gateway.storage.rows import memory_of, token_count

# $3, $4: the cached entry's version and row id, or NULL (nothing cached).  The conversation's row comes first
# (seq -1): system prompt, window, summary, history size, version, row id; messages follow in order unless the row
# is still the cached one.  The row id as well as the version: a conversation deleted and created anew starts at
# version 1 again, but never with the same id (identities are not reused).
LOAD = """
WITH c AS (SELECT id, system_json, window_start, summary_json, history_bytes, version
             FROM conversations WHERE owner = $1 AND external_id = $2)
SELECT -1 AS seq, system_json AS body, window_start, summary_json, history_bytes, version, id, NULL AS usage_json
  FROM c
UNION ALL
SELECT m.seq, m.body, NULL, NULL, NULL, NULL, NULL, m.usage_json
  FROM c JOIN messages AS m ON m.conversation_id = c.id
 WHERE c.version IS DISTINCT FROM $3::BIGINT OR c.id IS DISTINCT FROM $4::BIGINT
ORDER BY seq
"""

_PLACEHOLDERS = ", ".join(f"${n}" for n in range(1, 28))
RECORD_TURN = f"SELECT o_conversation, o_version FROM gateway_record_turn({_PLACEHOLDERS})"  # noqa: S608 ($1..$27)
# The SQLSTATEs gateway_record_turn raises: the conversation was deleted meanwhile / its version is not the
# expected one (the fence).
CONVERSATION_DELETED = "GW001"
CONVERSATION_CHANGED = "GW002"

FIND_REPLY = """
SELECT r.request_hash, r.body FROM idempotent_replies AS r JOIN conversations AS c ON c.id = r.conversation_id
 WHERE c.owner = $1 AND c.external_id = $2 AND r.key = $3 AND r.created_at >= $4
"""

# Message count, token totals and size recounted from the messages the conversation holds (after a rewind, fork,
# import or edit), its version moved on; parameters (owner, external id, activity time or None to keep it).
RECOUNT = "SELECT gateway_recount(id, $3::DOUBLE PRECISION) FROM conversations WHERE owner = $1 AND external_id = $2"
_CUT = "SELECT gateway_cut(id, $3, $4::DOUBLE PRECISION) FROM conversations WHERE owner = $1 AND external_id = $2"

# Histories larger than this (stored JSON bytes) are parsed in a worker thread, as SQLite's are read off the loop.
THREAD_PARSE_BYTES = 1 << 20


async def cut(conn: asyncpg.Connection, owner: str, external_id: str, seq: int, at: float | None) -> int:
    """Remove a conversation's messages from ``seq`` on, inside the caller's transaction (a rewind, a deleted
    response): the window reset when it began after the cut, counters recounted (activity time ``at``, or kept),
    idempotent replies forgotten, responses whose reply goes deleted.  How many messages went (0: no such
    conversation)."""
    removed = await conn.fetchval(_CUT, owner, external_id, seq, at)
    return int(removed or 0)


def memory_from_rows(rows: Sequence[Any]) -> Memory:
    """Memory from ``LOAD`` rows read with no cached version: the conversation row (seq -1), then its messages in
    order."""
    return memory_of(rows, usage_column=7)


def turn_params(turn: Turn) -> tuple[Any, ...]:
    """``RECORD_TURN``'s 27 parameters, everything serialised before the call (see ``gateway_record_turn``)."""
    usage = turn.usage or {}
    appended = (*turn.messages, turn.reply)
    encoded = [encode(m) for m in appended]
    window_start, summary = turn.window if turn.window is not None else (0, None)
    reply, response = turn.idempotent, turn.response
    return (
        turn.owner,
        turn.external_id,
        time.time(),
        turn.model,
        dumps(turn.system) if turn.system is not None else None,
        [m["role"] for m in appended],
        [body.decode() for body in encoded],
        sum(map(len, encoded)),
        turn.interrupted,
        dumps(turn.usage) if turn.usage is not None else None,
        dumps(turn.ledger) if turn.ledger is not None else None,
        token_count(usage.get("prompt_tokens")),
        token_count(usage.get("completion_tokens")),
        token_count(cached_tokens(usage)),
        turn.existed,
        turn.expected_version,
        turn.replace_from,
        turn.window is not None,
        window_start,
        dumps(summary) if summary is not None else None,
        reply.key if reply is not None else None,
        reply.request_hash if reply is not None else None,
        reply.body if reply is not None else None,
        reply.expires_before if reply is not None else None,
        response.id if response is not None else None,
        response.created_at if response is not None else None,
        dumps(response.request) if response is not None else None,
    )


def turn_size(params: tuple[Any, ...]) -> int:
    """What a turn adds to the stored history, in UTF-8 bytes of its messages' JSON."""
    return int(params[7])
