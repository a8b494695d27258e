"""Row shapes every backend shares: a message row read back as a ``StoredMessage``, and a usage count as stored
(a non-negative integer, anything else 0).  Pure: no driver, no SQL."""

from __future__ import annotations

from typing import Any

from gateway.core.ports import StoredMessage
from gateway.protocols.openai_chat import loads


def token_count(value: Any) -> int:
    """A usage figure as the counters keep it: a non-negative integer, else (absent, a bool, junk) 0."""
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else 0


def stored_message(row: Any) -> StoredMessage:
    """A message row read as (row id, seq, body, created_at, interrupted, usage_json)."""
    return StoredMessage(
        row_id=row[0],
        seq=row[1],
        body=loads(row[2]),
        created_at=row[3],
        interrupted=bool(row[4]),
        usage=loads(row[5]) if row[5] else None,
    )
