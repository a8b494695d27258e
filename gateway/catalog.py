"""ConversationCatalog: the SQL for seeing and managing stored conversations (listing, reading, deleting).

The storage layer's second half, beside ``store.ConversationStore`` (turns, cache, connections), whose waiting
connection runs these statements: they are rare and can be large, so they stay off the event loop.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from gateway.protocol import Message, dumps, loads
from gateway.store import ConversationStore


@dataclass(frozen=True)
class ConversationInfo:
    """A conversation as the conversations API shows it (``row_id`` is internal, for cursors and joins)."""

    row_id: int
    external_id: str
    created_at: float
    updated_at: float
    message_count: int
    model: str | None
    metadata: dict[str, str]
    prompt_tokens: int
    completion_tokens: int
    cached_tokens: int


@dataclass(frozen=True)
class StoredMessage:
    row_id: int
    seq: int
    body: Message
    created_at: float
    interrupted: bool
    usage: dict[str, Any] | None


# Pages of an owner's conversations by recent activity; ties (same updated_at) are broken by the row id.  A page
# starts after the cursor's (updated_at, id), or at the start when :cursor_id is NULL.
_LIST_CONVERSATIONS = {
    "desc": """
SELECT id, external_id, created_at, updated_at, message_count, model, metadata_json,
       prompt_tokens, completion_tokens, cached_tokens
  FROM conversations
 WHERE owner = :owner AND (:cursor_id IS NULL OR (updated_at, id) < (:cursor_updated, :cursor_id))
 ORDER BY updated_at DESC, id DESC LIMIT :limit
""",
    "asc": """
SELECT id, external_id, created_at, updated_at, message_count, model, metadata_json,
       prompt_tokens, completion_tokens, cached_tokens
  FROM conversations
 WHERE owner = :owner AND (:cursor_id IS NULL OR (updated_at, id) > (:cursor_updated, :cursor_id))
 ORDER BY updated_at ASC, id ASC LIMIT :limit
""",
}
_GET_CONVERSATION = """
SELECT id, external_id, created_at, updated_at, message_count, model, metadata_json,
       prompt_tokens, completion_tokens, cached_tokens
  FROM conversations WHERE owner = ? AND external_id = ?
"""

# Pages of one conversation's messages in seq order, after the cursor message's seq.
_LIST_MESSAGES = {
    "asc": """
SELECT id, seq, body, created_at, interrupted, usage_json FROM messages
 WHERE conversation_id = :conversation AND (:cursor_seq IS NULL OR seq > :cursor_seq)
 ORDER BY seq ASC LIMIT :limit
""",
    "desc": """
SELECT id, seq, body, created_at, interrupted, usage_json FROM messages
 WHERE conversation_id = :conversation AND (:cursor_seq IS NULL OR seq < :cursor_seq)
 ORDER BY seq DESC LIMIT :limit
""",
}
_SET_METADATA = "UPDATE conversations SET metadata_json = ? WHERE owner = ? AND external_id = ?"
_DELETE_CONVERSATION = "DELETE FROM conversations WHERE owner = ? AND external_id = ?"  # messages: ON DELETE CASCADE
_MESSAGE_SEQ = "SELECT seq FROM messages WHERE conversation_id = ? AND id = ?"


class ConversationCatalog:
    def __init__(self, store: ConversationStore) -> None:
        self._store = store

    async def get_conversation(self, owner: str, external_id: str) -> ConversationInfo | None:
        rows = await self._store.read(_GET_CONVERSATION, (owner, external_id))
        return _conversation(rows[0]) if rows else None

    async def list_conversations(
        self, owner: str, *, limit: int, order: str, cursor: ConversationInfo | None
    ) -> list[ConversationInfo]:
        params = {
            "owner": owner,
            "limit": limit,
            "cursor_id": cursor.row_id if cursor else None,
            "cursor_updated": cursor.updated_at if cursor else None,
        }
        return [_conversation(row) for row in await self._store.read(_LIST_CONVERSATIONS[order], params)]

    async def message_seq(self, conversation: ConversationInfo, message_row_id: int) -> int | None:
        rows = await self._store.read(_MESSAGE_SEQ, (conversation.row_id, message_row_id))
        return int(rows[0][0]) if rows else None

    async def list_messages(
        self, conversation: ConversationInfo, *, limit: int, order: str, cursor_seq: int | None
    ) -> list[StoredMessage]:
        params = {"conversation": conversation.row_id, "cursor_seq": cursor_seq, "limit": limit}
        return [
            StoredMessage(
                row_id=row[0],
                seq=row[1],
                body=loads(row[2]),
                created_at=row[3],
                interrupted=bool(row[4]),
                usage=loads(row[5]) if row[5] else None,
            )
            for row in await self._store.read(_LIST_MESSAGES[order], params)
        ]

    async def set_metadata(self, owner: str, external_id: str, metadata: dict[str, str]) -> bool:
        """Replace a conversation's metadata; False when there is no such conversation."""
        params = (dumps(metadata), owner, external_id)
        return await self._store.write(_SET_METADATA, params, conversation=(owner, external_id)) > 0

    async def delete_conversation(self, owner: str, external_id: str) -> bool:
        """Delete a conversation and (by cascade) every message of it; False when there was none."""
        changed = await self._store.write(_DELETE_CONVERSATION, (owner, external_id), conversation=(owner, external_id))
        return changed > 0


def _conversation(row: Any) -> ConversationInfo:
    return ConversationInfo(
        row_id=row[0],
        external_id=row[1],
        created_at=row[2],
        updated_at=row[3],
        message_count=row[4],
        model=row[5],
        metadata=loads(row[6]) if row[6] else {},
        prompt_tokens=row[7],
        completion_tokens=row[8],
        cached_tokens=row[9],
    )
