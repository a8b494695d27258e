"""SqliteCatalog: the SQL for seeing and managing stored conversations (list, search, read, create, edit, delete),
the ``core.ports.Catalog`` of the SQLite backend.  The search's index and the conditions on it are in ``search``.

Beside ``store.ConversationStore`` (turns and their reads; its commits in ``writer``, its connections from
``connections``) and ``keys``; the one-message edits of the Conversations items API (append, delete anywhere) are
in ``edits``.  The store's waiting connection runs these statements: they are rare and can be
large, so they stay off the event loop.  Every change is one ``ConversationStore.transaction``.

Token totals on a conversation are the sums of the usage stored with its replies: a turn adds its usage, and a
rewind or a fork recounts them from the messages that remain or were copied.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import cache
from typing import Any

from gateway.core.ports import ConversationInfo, NewMessage, SearchHit, StoredMessage
from gateway.core.search import can_match
from gateway.protocols.openai_chat import dumps, loads
from gateway.storage.rows import stored_message
from gateway.storage.sqlite import edits, search
from gateway.storage.sqlite.store import ConversationStore, Transaction
from gateway.storage.sqlite.turns import RECOUNT, cut_statements

_COLUMNS = """id, owner, external_id, created_at, updated_at, message_count, model, metadata_json,
       prompt_tokens, completion_tokens, cached_tokens, system_json, window_start, summary_json"""

# Pages of conversations by recent activity; ties (same updated_at) are broken by the row id.  A page starts
# after the cursor's (updated_at, id), or at the start when :cursor_id is NULL.  Keyed by (scope, order): scope
# "owner" is one owner's (the API's view, through the owner index), "operator" every owner whose hash starts with
# :owner_prefix, or with a NULL prefix the owner '' of clients without a credential (the CLI's view).  Statements
# are composed from constants only.
_OPERATOR_SCOPE = "(substr(owner, 1, length(:owner_prefix)) = :owner_prefix OR (:owner_prefix IS NULL AND owner = ''))"
_OWNER_SCOPES = {"owner": "owner = :owner", "operator": _OPERATOR_SCOPE}
_LIST_CONVERSATIONS = {
    (scope, order): f"""
SELECT {_COLUMNS}
  FROM conversations
 WHERE {condition} AND (:cursor_id IS NULL OR (updated_at, id) {op} (:cursor_updated, :cursor_id))
 ORDER BY updated_at {order.upper()}, id {order.upper()} LIMIT :limit
"""  # noqa: S608
    for scope, condition in _OWNER_SCOPES.items()
    for order, op in (("desc", "<"), ("asc", ">"))
}


@cache
def _search_conversations(scope: str, order: str, modes: tuple[str, ...]) -> str:
    """A page of the conversations (as ``_LIST_CONVERSATIONS`` pages them) that hold every term, tested as
    ``modes`` say (``search.plan``), and a last column with up to 3 of each one's matching messages: worked out for
    the page's conversations only.  Walking (``search.walks``): the scope's conversations in page order, LIMIT -1
    keeping SQLite from flattening that subquery or pushing the terms' condition into it, so that they are tested
    one by one in that order until the page is full (sorted by their keys alone: no index has the scope in
    activity order, and sorting whole rows cost ~10 times more); else the planner's choice, led by the index's
    lookups."""
    every, anyone = search.term_conditions(modes)
    direction, op = {"desc": ("DESC", "<"), "asc": ("ASC", ">")}[order]
    scoped = f"{_OWNER_SCOPES[scope]} AND (:cursor_id IS NULL OR (updated_at, id) {op} (:cursor_updated, :cursor_id))"
    ordered = f"ORDER BY updated_at {direction}, id {direction}"
    if search.walks(modes):
        page = f"""SELECT {_COLUMNS} FROM conversations WHERE id IN (
            SELECT c.id FROM (SELECT id, updated_at FROM conversations WHERE {scoped} {ordered} LIMIT -1) AS c
             WHERE {every} LIMIT :limit)"""  # noqa: S608 (constants only)
    else:
        page = f"SELECT {_COLUMNS} FROM conversations AS c WHERE {scoped} AND {every} {ordered} LIMIT :limit"  # noqa: S608
    return f"""
SELECT page.*, {search.MATCHES.format(condition=anyone)}
  FROM ({page}) AS page
 ORDER BY page.updated_at {direction}, page.id {direction}
"""  # noqa: S608


_GET_CONVERSATION = f"SELECT {_COLUMNS} FROM conversations WHERE owner = ? AND external_id = ?"  # noqa: S608
_FIND_CONVERSATIONS = f"SELECT {_COLUMNS} FROM conversations WHERE external_id = :id AND {_OPERATOR_SCOPE}"  # noqa: S608

# Pages of one conversation's messages in seq order, after the cursor message's seq.
_LIST_MESSAGES = {
    order: f"""
SELECT id, seq, body, created_at, interrupted, usage_json, ledger_json FROM messages
 WHERE conversation_id = :conversation AND (:cursor_seq IS NULL OR seq {op} :cursor_seq)
 ORDER BY seq {order.upper()} LIMIT :limit
"""  # noqa: S608
    for order, op in (("asc", ">"), ("desc", "<"))
}
_SET_METADATA = "UPDATE conversations SET metadata_json = ? WHERE owner = ? AND external_id = ?"
# Messages, idempotent replies and responses go by ON DELETE CASCADE (the waiting connection enforces foreign keys).
_DELETE_CONVERSATION = "DELETE FROM conversations WHERE owner = ? AND external_id = ?"
_MESSAGE_SEQ = "SELECT seq FROM messages WHERE conversation_id = ? AND id = ?"

# A row created here starts at version 1 (the column's default) with a new random incarnation (migration m009).
_CREATE_CONVERSATION = """
INSERT INTO conversations (owner, external_id, created_at, updated_at, model, system_json, metadata_json,
                           message_count, prompt_tokens, completion_tokens, cached_tokens, window_start, summary_json,
                           incarnation)
VALUES (?, ?, ?, ?, ?, ?, ?, 0, ?, ?, ?, ?, ?, random())
ON CONFLICT (owner, external_id) DO NOTHING
"""
_INSERT_MESSAGE = """
INSERT INTO messages (conversation_id, seq, role, body, created_at, interrupted, usage_json, ledger_json)
VALUES ((SELECT id FROM conversations WHERE owner = ? AND external_id = ?), ?, ?, ?, ?, ?, ?, ?)
"""
# A created or imported conversation keeps the token totals it came with; its size is what it holds.
_COUNT_CREATED = """
UPDATE conversations SET message_count = ?,
       history_bytes = (SELECT coalesce(sum(length(CAST(body AS BLOB))), 0) FROM messages
                        WHERE conversation_id = conversations.id)
 WHERE owner = ? AND external_id = ?
"""
_FORK_CONVERSATION = """
INSERT INTO conversations (owner, external_id, created_at, updated_at, model, system_json, metadata_json, incarnation)
SELECT owner, :new_id, :at, :at, model, system_json, :metadata, random() FROM conversations WHERE id = :source
ON CONFLICT (owner, external_id) DO NOTHING
"""
_FORK_MESSAGES = """
INSERT INTO messages (conversation_id, seq, role, body, created_at, interrupted, usage_json, ledger_json)
SELECT (SELECT id FROM conversations WHERE owner = :owner AND external_id = :new_id),
       seq, role, body, created_at, interrupted, usage_json, ledger_json
  FROM messages WHERE conversation_id = :source AND seq <= :last_seq
"""
# The seq of the Nth user message from the end: a rewind of N turns cuts there.
_NTH_LAST_USER_MESSAGE = """
SELECT seq FROM messages WHERE conversation_id = ? AND role = 'user' ORDER BY seq DESC LIMIT 1 OFFSET ?
"""
_IDLE_CONVERSATIONS = """
SELECT id, owner, external_id FROM conversations WHERE updated_at < ? AND id > ? ORDER BY id LIMIT ?
"""
_DELETE_IDLE = "DELETE FROM conversations WHERE id = ? AND updated_at < ?"


class SqliteCatalog:
    def __init__(self, store: ConversationStore) -> None:
        self._store = store

    async def get_conversation(self, owner: str, external_id: str) -> ConversationInfo | None:
        rows = await self._store.read(_GET_CONVERSATION, (owner, external_id))
        return _conversation(rows[0]) if rows else None

    async def find_conversations(self, external_id: str, owner_prefix: str | None) -> list[ConversationInfo]:
        """Conversations with this id whose owner starts with ``owner_prefix`` (the CLI names owners by prefix;
        None names the owner '')."""
        rows = await self._store.read(_FIND_CONVERSATIONS, {"id": external_id, "owner_prefix": owner_prefix})
        return [_conversation(row) for row in rows]

    async def list_conversations(
        self,
        owner: str | None,
        *,
        limit: int,
        order: str,
        cursor: ConversationInfo | None,
        owner_prefix: str | None = "",
    ) -> list[ConversationInfo]:
        """A page of ``owner``'s conversations; with ``owner`` None, of the owners ``owner_prefix`` names (see
        ``find_conversations``)."""
        scope, params = _page(owner, owner_prefix, limit, cursor)
        return [_conversation(row) for row in await self._store.read(_LIST_CONVERSATIONS[scope, order], params)]

    async def search_conversations(
        self,
        owner: str | None,
        terms: Sequence[str],
        *,
        limit: int,
        order: str,
        cursor: ConversationInfo | None,
        owner_prefix: str | None = "",
    ) -> list[SearchHit]:
        """A page, as ``list_conversations`` pages them, of the conversations in which every term occurs in some
        message, each with up to 3 of its messages holding a term, in order (``search``): a first statement
        counts how common the longer terms are (``search.probe``), which chooses the second's shape.  On the
        waiting connection, as every read here: a search reads the index and maybe many messages' text."""
        if not can_match(terms):
            return []
        probed, probe_params = search.probe_params(terms)
        counts = await self._store.read(search.probe(len(probed)), probe_params) if probed else [()]
        modes, params = search.plan(terms, dict(zip(probed, counts[0], strict=True)))
        scope, page = _page(owner, owner_prefix, limit, cursor)
        rows = await self._store.read(_search_conversations(scope, order, modes), params | page)
        return [SearchHit(_conversation(row), _matches(row[14])) for row in rows]

    async def message_seq(self, conversation: ConversationInfo, message_row_id: int) -> int | None:
        rows = await self._store.read(_MESSAGE_SEQ, (conversation.row_id, message_row_id))
        return int(rows[0][0]) if rows else None

    async def list_messages(
        self, conversation: ConversationInfo, *, limit: int, order: str, cursor_seq: int | None
    ) -> list[StoredMessage]:
        params = {"conversation": conversation.row_id, "cursor_seq": cursor_seq, "limit": limit}
        return [stored_message(row) for row in await self._store.read(_LIST_MESSAGES[order], params)]

    async def create_conversation(self, info: ConversationInfo, messages: Sequence[NewMessage]) -> bool:
        """Insert a conversation and its messages as given; False (and nothing written) when the id is taken.

        The counters come from ``info`` (an import keeps the totals it exported), the message count from
        ``messages``."""
        key = (info.owner, info.external_id)
        async with self._store.transaction(key) as tx:
            created = await tx.execute(
                _CREATE_CONVERSATION,
                (
                    *key,
                    info.created_at,
                    info.updated_at,
                    info.model,
                    dumps(info.system) if info.system is not None else None,
                    dumps(info.metadata),
                    info.prompt_tokens,
                    info.completion_tokens,
                    info.cached_tokens,
                    info.window_start,
                    dumps(info.summary) if info.summary is not None else None,
                ),
            )
            if not created:
                return False
            await tx.execute_many(
                _INSERT_MESSAGE,
                [
                    (
                        *key,
                        seq,
                        m.body["role"],
                        dumps(m.body),
                        m.created_at,
                        int(m.interrupted),
                        dumps(m.usage) if m.usage is not None else None,
                        dumps(m.ledger) if m.ledger is not None else None,
                    )
                    for seq, m in enumerate(messages)
                ],
            )
            await tx.execute(_COUNT_CREATED, (len(messages), *key))
        return True

    async def set_metadata(self, owner: str, external_id: str, metadata: dict[str, str]) -> bool:
        """Replace a conversation's metadata; False when there is no such conversation."""
        params = (dumps(metadata), owner, external_id)
        return await self._store.write(_SET_METADATA, params, conversation=(owner, external_id)) > 0

    async def delete_conversation(self, owner: str, external_id: str) -> bool:
        """Delete a conversation and (by cascade) every message and response of it; False when there was none."""
        changed = await self._store.write(_DELETE_CONVERSATION, (owner, external_id), conversation=(owner, external_id))
        return changed > 0

    async def rewind(self, conversation: ConversationInfo, turns: int, at: float) -> int | None:
        """Remove the last ``turns`` user messages and everything after each; return how many messages went, or
        None (nothing changed) when the conversation holds fewer user messages."""
        key = (conversation.owner, conversation.external_id)
        async with self._store.transaction(key) as tx:
            rows = await tx.fetch(_NTH_LAST_USER_MESSAGE, (conversation.row_id, turns - 1))
            if not rows:
                return None
            removed, *_ = [await tx.execute(sql, params) for sql, params in cut_statements(*key, rows[0][0], at)]
        return removed

    async def append_messages(
        self, conversation: ConversationInfo, messages: Sequence[NewMessage], at: float, *, max_bytes: int | None
    ) -> list[StoredMessage] | None:
        """Append messages after the last one (``edits``); the stored rows, or None past ``max_bytes``."""
        return await edits.append_messages(self._store, conversation, messages, at, max_bytes)

    async def delete_message(self, conversation: ConversationInfo, message_row_id: int) -> bool:
        """Delete one message from anywhere in the history (``edits``); False when there is no such one."""
        return await edits.delete_message(self._store, conversation, message_row_id)

    async def fork(
        self, source: ConversationInfo, new_id: str, *, last_seq: int, metadata: dict[str, str], at: float
    ) -> bool:
        """Copy ``source`` up to and including message ``last_seq`` to a new conversation of the same owner;
        False (and nothing written) when ``new_id`` is taken."""
        key = (source.owner, new_id)
        params = {"source": source.row_id, "owner": source.owner, "new_id": new_id, "at": at, "last_seq": last_seq}
        async with self._store.transaction(key) as tx:
            if not await tx.execute(_FORK_CONVERSATION, {**params, "metadata": dumps(metadata)}):
                return False
            await tx.execute(_FORK_MESSAGES, params)
            await _recount(tx, key, None, bump=0)  # a new row: at version 1 already
        return True

    async def export_messages(self, conversation: ConversationInfo) -> list[StoredMessage]:
        """Every message of a conversation, in order."""
        return await self.list_messages(conversation, limit=-1, order="asc", cursor_seq=None)

    async def idle_conversations(self, before: float, after_row: int, limit: int) -> list[tuple[int, str, str]]:
        """Up to ``limit`` conversations (row id, owner, external id) last active before ``before``, in row order
        from after row ``after_row``."""
        rows = await self._store.read(_IDLE_CONVERSATIONS, (before, after_row, limit))
        return [(row[0], row[1], row[2]) for row in rows]

    async def delete_idle(self, conversations: Sequence[tuple[int, str, str]], before: float) -> int:
        """Delete those of ``conversations`` still idle since before ``before``; return how many went."""
        async with self._store.transaction(*((owner, eid) for _, owner, eid in conversations)) as tx:
            return sum([await tx.execute(_DELETE_IDLE, (row_id, before)) for row_id, _, _ in conversations])


async def _recount(tx: Transaction, key: tuple[str, str], at: float | None, *, bump: int) -> None:
    await tx.execute(RECOUNT, {"owner": key[0], "id": key[1], "at": at, "bump": bump})


def _matches(column: str | None) -> list[tuple[int, int, str, str]]:
    """``search.MATCHES``' JSON array as (row id, seq, role, text), in seq order."""
    found = [(int(i), int(seq), str(role), str(text)) for i, seq, role, text in loads(column or "[]")]
    return sorted(found, key=lambda match: match[1])  # json_group_array's order follows its rows', not promised


def _page(
    owner: str | None, owner_prefix: str | None, limit: int, cursor: ConversationInfo | None
) -> tuple[str, dict[str, Any]]:
    """The scope and parameters of a page of conversations by activity, listed or searched."""
    scope = "owner" if owner is not None else "operator"
    return scope, {
        "owner": owner,
        "owner_prefix": owner_prefix,
        "limit": limit,
        "cursor_id": cursor.row_id if cursor else None,
        "cursor_updated": cursor.updated_at if cursor else None,
    }


def _conversation(row: Any) -> ConversationInfo:
    return ConversationInfo(
        row_id=row[0],
        owner=row[1],
        external_id=row[2],
        created_at=row[3],
        updated_at=row[4],
        message_count=row[5],
        model=row[6],
        metadata=loads(row[7]) if row[7] else {},
        prompt_tokens=row[8],
        completion_tokens=row[9],
        cached_tokens=row[10],
        system=loads(row[11]) if row[11] else None,
        window_start=row[12],
        summary=loads(row[13]) if row[13] else None,
    )
