"""Row shapes every backend shares: a conversation's rows read back as its ``Memory``, a message row as a
``StoredMessage`` (with its usage and ledger); usage counts as stored are ``core.ledger.token_count``'s.  Pure: no
driver, no SQL."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from gateway.core.history import replay
from gateway.core.ledger import token_count
from gateway.core.ports import Memory, StoredMessage

__all__ = ["memory_of", "stored_message", "token_count"]
from gateway.protocols.openai_chat import loads


def stored_message(row: Any) -> StoredMessage:
    """A message row read as (row id, seq, body, created_at, interrupted, usage_json, ledger_json): every
    backend's message reads select these columns in this order."""
    return StoredMessage(
        row_id=row[0],
        seq=row[1],
        body=loads(row[2]),
        created_at=row[3],
        interrupted=bool(row[4]),
        usage=loads(row[5]) if row[5] else None,
        ledger=loads(row[6]) if row[6] else None,
    )


def memory_of(rows: Sequence[Any], usage_column: int) -> Memory:
    """A conversation's ``Memory`` from its load rows: first the conversation's (seq, system JSON, window start,
    summary JSON, history bytes, version, ...), then one per message in order with its body JSON in column 1 and
    its usage JSON in ``usage_column``; no rows: a conversation not stored yet."""
    if not rows:
        return Memory(exists=False, system=None, messages=(), replayed=())
    _, system_json, window_start, summary_json, size, version = rows[0][:6]
    messages = tuple(loads(row[1]) for row in rows[1:])
    last_usage = rows[-1][usage_column] if len(rows) > 1 else None
    return Memory(
        exists=True,
        system=tuple(loads(system_json)) if system_json else None,
        messages=messages,
        replayed=tuple(map(replay, messages)),
        window_start=window_start,
        summary=loads(summary_json) if summary_json else None,
        last_usage=loads(last_usage) if last_usage else None,
        size=size,
        version=version,
    )
