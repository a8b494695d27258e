"""What a turn writes and what a conversation's rows read back as: the SQL of a ``Turn`` (``core.ports``) and of
loading a ``Memory``, and the mapping between rows and records, used by ``store`` and ``writer``.

A turn is a single ``INSERT`` into the ``turn_writes`` view (migration m002; its trigger as m011 left it, which puts
the turn's usage and ledger on the reply), so it is stored whole or not at all; a turn that moved the context
window's cut also updates the conversation's ``window_start`` and summary, and one that answers a Responses API
call records it (migration m008; read back by ``responses``), in the same transaction.  Loading reads the
conversation row (system prompt, window, summary, version) and its messages in one statement.

Versions (migration m009): every write that changes what ``load`` returns moves the conversation's ``version`` on by
one -- a turn once, whatever it holds (its cut of a replaced end included), and ``RECOUNT`` once for an edit -- and
a row's random ``incarnation`` tells a conversation created anew from the one that was deleted.  The pair
(incarnation, version) is the *stamp* the history cache checks its entries by (``STAMP``).
"""

from __future__ import annotations

import time
from typing import Any

from gateway.core.ports import Memory, Turn
from gateway.protocols.openai_chat import cached_tokens, dumps, encode
from gateway.storage.rows import memory_of, token_count

# The first row is the conversation's (seq -1): its system prompt, window, summary, history size and stamp.
LOAD = """
SELECT -1 AS seq, system_json, window_start, summary_json, history_bytes, version, incarnation FROM conversations
 WHERE owner = ? AND external_id = ?
UNION ALL
SELECT m.seq, m.body, NULL, NULL, m.usage_json, NULL, NULL
  FROM messages AS m JOIN conversations AS c ON c.id = m.conversation_id
 WHERE c.owner = ? AND c.external_id = ?
ORDER BY seq
"""
# What a cached history is checked by: no row, or one of another incarnation or version, means it is stale.
STAMP = "SELECT incarnation, version FROM conversations WHERE owner = ? AND external_id = ?"

RECORD_TURN = """
INSERT INTO turn_writes (owner, external_id, at, model, system_json, bodies_json, interrupted, usage_json,
                         ledger_json, prompt_tokens, completion_tokens, cached_tokens, existed, expected_version)
VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
"""
# What the turn trigger raises for a turn whose conversation was deleted while it was in flight (migration m006),
# and for one whose conversation is no longer at the version it was planned from (m009: ``Turn.expected_version``).
CONVERSATION_DELETED = "conversation_deleted"
CONVERSATION_CHANGED = "conversation_changed"
SET_WINDOW = "UPDATE conversations SET window_start = ?, summary_json = ? WHERE owner = ? AND external_id = ?"
# Run after the turn's INSERT: its reply is then the conversation's last message, and its first message is as many
# from the end as the turn stored (the second parameter: its messages and the reply).
_RECORD_RESPONSE = """
INSERT INTO responses (id, conversation_id, first_seq, reply_seq, created_at, request_json)
SELECT ?, id, message_count - ?, message_count - 1, ?, ? FROM conversations WHERE owner = ? AND external_id = ?
"""


def _token_sum(path: str) -> str:
    return (
        f"coalesce(sum(CASE WHEN json_type(usage_json, '{path}') = 'integer'"
        f" AND json_extract(usage_json, '{path}') >= 0 THEN json_extract(usage_json, '{path}') END), 0)"
    )


# Message count and token totals recounted from the messages a conversation holds (after a rewind, fork, import
# or replaced turn); :at is the new activity time, or NULL to keep it; :bump how far the version moves on (0 inside
# a turn, whose upsert moves it, or for a row just created at version 1).
RECOUNT = f"""
UPDATE conversations SET
    (message_count, prompt_tokens, completion_tokens, cached_tokens, history_bytes) = (
        SELECT count(*), {_token_sum("$.prompt_tokens")}, {_token_sum("$.completion_tokens")},
               {_token_sum("$.prompt_tokens_details.cached_tokens")}, coalesce(sum(length(CAST(body AS BLOB))), 0)
          FROM messages WHERE conversation_id = conversations.id),
    updated_at = coalesce(:at, updated_at),
    version = version + :bump
 WHERE owner = :owner AND external_id = :id
"""  # noqa: S608
_CUT_MESSAGES = """
DELETE FROM messages
 WHERE conversation_id = (SELECT id FROM conversations WHERE owner = :owner AND external_id = :id) AND seq >= :seq
"""
# A cut before the upstream window's start (gateway.core.window) leaves its summary describing turns that are gone:
# send the whole remaining history again, to be cut anew when it no longer fits.
_RESET_WINDOW = """
UPDATE conversations SET window_start = 0, summary_json = NULL
 WHERE owner = :owner AND external_id = :id AND window_start > :seq
"""


# Replies recorded under an Idempotency-Key describe turns a cut may remove: a retry after it calls upstream anew.
_FORGET_REPLIES = """
DELETE FROM idempotent_replies
 WHERE conversation_id = (SELECT id FROM conversations WHERE owner = :owner AND external_id = :id)
"""
# A response goes with its reply (its inputs lie before it: a cut that keeps the reply keeps them).
_CUT_RESPONSES = """
DELETE FROM responses
 WHERE conversation_id = (SELECT id FROM conversations WHERE owner = :owner AND external_id = :id) AND reply_seq >= :seq
"""


def cut_statements(
    owner: str, external_id: str, seq: int, at: float | None, *, bump: int = 1
) -> list[tuple[str, dict[str, Any]]]:
    """The statements, for one transaction, that remove a conversation's messages from ``seq`` on (a rewind, or a
    turn that replaces the end of history): the first one's row count is the number removed.  ``bump``: how far
    the version moves on (0 for a turn's cut: the turn itself moves it)."""
    params = {"owner": owner, "id": external_id, "seq": seq, "at": at, "bump": bump}
    return [
        (_CUT_MESSAGES, params),
        (_RESET_WINDOW, params),
        (RECOUNT, params),
        (_FORGET_REPLIES, params),
        (_CUT_RESPONSES, params),
    ]


_RECORD_REPLY = """
INSERT OR REPLACE INTO idempotent_replies (conversation_id, key, request_hash, created_at, body)
SELECT id, ?, ?, ?, ? FROM conversations WHERE owner = ? AND external_id = ?
"""
_EXPIRE_REPLIES = """
DELETE FROM idempotent_replies
 WHERE conversation_id = (SELECT id FROM conversations WHERE owner = ? AND external_id = ?) AND created_at < ?
"""
FIND_REPLY = """
SELECT r.request_hash, r.body FROM idempotent_replies AS r JOIN conversations AS c ON c.id = r.conversation_id
 WHERE c.owner = ? AND c.external_id = ? AND r.key = ? AND r.created_at >= ?
"""


HISTORY_BYTES = "SELECT history_bytes FROM conversations WHERE owner = ? AND external_id = ?"
# Histories larger than this (stored JSON bytes) are read off the event loop: ~1 ms of reading and parsing
# on it at this size, where a 64 MB history would stall every request for a second.
INLINE_READ_BYTES = 1 << 20
# A turn of more message JSON than this commits on the waiting connection (a thread): the search index's
# triggers tokenize its text at ~0.35 us (English) to ~1 us (Chinese) a character, too long for the event loop.
INLINE_TURN_BYTES = 16 * 1024


def memory_from_rows(rows: list[Any]) -> Memory:
    """Memory from ``LOAD`` rows: the conversation row (seq -1, its system prompt), then messages in order."""
    return memory_of(rows, usage_column=4)


def incarnation_of(rows: list[Any]) -> int | None:
    """The conversation row's incarnation from ``LOAD`` rows (None: no such conversation)."""
    return int(rows[0][6]) if rows else None


def turn_params(turn: Turn) -> tuple[Any, ...]:
    """``RECORD_TURN``'s parameters, then (not parameters of it: ``turn_statements`` leaves them out) the JSON of
    the turn's response request fields (None without a response) and the UTF-8 size of the messages the turn
    stores, as ``history_bytes`` counts them.  Everything is serialised here, before any write begins."""
    usage = turn.usage or {}
    encoded = [encode(m) for m in (*turn.messages, turn.reply)]
    bodies = [body.decode() for body in encoded]
    return (
        turn.owner,
        turn.external_id,
        time.time(),
        turn.model,
        dumps(turn.system) if turn.system is not None else None,
        dumps(bodies),
        int(turn.interrupted),
        dumps(turn.usage) if turn.usage is not None else None,
        dumps(turn.ledger) if turn.ledger is not None else None,
        token_count(usage.get("prompt_tokens")),
        token_count(usage.get("completion_tokens")),
        token_count(cached_tokens(usage)),
        int(turn.existed),
        turn.expected_version,
        dumps(turn.response.request) if turn.response is not None else None,
        sum(map(len, encoded)),
    )


def turn_size(params: tuple[Any, ...]) -> int:
    """What a turn adds to the stored history, in UTF-8 bytes of its messages' JSON."""
    return int(params[-1])


def turn_statements(turn: Turn, params: tuple[Any, ...]) -> list[tuple[str, Any]]:
    """A turn's statements, for one transaction: the cut of what it replaces, its ``RECORD_TURN`` (``params``,
    from ``turn_params``), its window when that moved, its idempotent reply and its response, if any."""
    statements: list[tuple[str, Any]] = []
    if turn.replace_from is not None:
        statements += cut_statements(turn.owner, turn.external_id, turn.replace_from, None, bump=0)
    statements.append((RECORD_TURN, params[:-2]))
    if turn.window is not None:
        start, summary = turn.window
        summary_json = dumps(summary) if summary is not None else None
        statements.append((SET_WINDOW, (start, summary_json, turn.owner, turn.external_id)))
    reply = turn.idempotent
    if reply is not None:
        key = (turn.owner, turn.external_id)
        statements.append((_EXPIRE_REPLIES, (*key, reply.expires_before)))
        statements.append((_RECORD_REPLY, (reply.key, reply.request_hash, params[2], reply.body, *key)))
    response = turn.response
    if response is not None:
        added = len(turn.messages) + 1
        values = (response.id, added, response.created_at, params[-2], turn.owner, turn.external_id)
        statements.append((_RECORD_RESPONSE, values))
    return statements
