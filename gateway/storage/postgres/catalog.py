"""PostgresCatalog: the SQL for seeing and managing stored conversations (list, search, read, create, edit,
delete), the ``core.ports.Catalog`` of the PostgreSQL backend -- the same statements as ``storage.sqlite.catalog``,
translated.  The search's index and the conditions on it are in ``search``.

Beside ``store`` (turns and their reads) and ``keys``; the one-message edits of the Conversations items API
(append, delete anywhere) are in ``edits``.  Every change is one ``Database.transaction``, which drops the
conversations' entries from this process's history cache; other processes see the change through the
conversation's ``version``, which every change of its history, window, system prompt or counters moves on (the
recount statement, ``turns.RECOUNT``, does it for the edits here).

Token totals on a conversation are the sums of the usage stored with its replies: a turn adds its usage, and a
rewind or a fork recounts them from the messages that remain or were copied.  Message bodies are TEXT, written and
read back byte for byte; times are DOUBLE PRECISION, exact for Python floats.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import cache
from typing import Any

from gateway.core.ports import ConversationInfo, NewMessage, SearchHit, StoredMessage
from gateway.core.search import can_match
from gateway.protocols.openai_chat import dumps, encode, loads
from gateway.storage.postgres import edits, search
from gateway.storage.postgres.database import Database
from gateway.storage.postgres.turns import RECOUNT, cut
from gateway.storage.rows import stored_message

_COLUMNS = """id, owner, external_id, created_at, updated_at, message_count, model, metadata_json,
       prompt_tokens, completion_tokens, cached_tokens, system_json, window_start, summary_json"""

# Pages of conversations by recent activity; ties (same updated_at) are broken by the row id.  A page starts
# after the cursor's (updated_at, id).  Keyed by (scope, order, whether there is a cursor): scope "owner" is one
# owner's (the API's view), "operator" every owner whose hash starts with $1, or with a NULL prefix the owner '' of
# clients without a credential (the CLI's view).  A prefix is compared as a string, not a LIKE pattern, so an
# owner holding '%' or '_' matches only itself.  The cursor-less statements are separate rather than "$n IS NULL
# OR ...", which a generic plan (asyncpg prepares every statement) could not use the activity index for.
# $1 is the owner or the prefix, $2 the limit (NULL: all), $3 and $4 the cursor's updated_at and id.  Statements
# are composed from constants only.
_OPERATOR_SCOPE = "(substr(owner, 1, length($1::text)) = $1::text OR ($1::text IS NULL AND owner = ''))"
_OWNER_SCOPES = {"owner": "owner = $1::text", "operator": _OPERATOR_SCOPE}
_LIST_CONVERSATIONS = {
    (scope, order, paged): f"""
SELECT {_COLUMNS}
  FROM conversations
 WHERE {condition}{f" AND (updated_at, id) {op} ($3::float8, $4::bigint)" if paged else ""}
 ORDER BY updated_at {order.upper()}, id {order.upper()} LIMIT $2::bigint
"""  # noqa: S608
    for scope, condition in _OWNER_SCOPES.items()
    for order, op in (("desc", "<"), ("asc", ">"))
    for paged in (False, True)
}


# Search's scopes: those of the list, and "everyone" for the operator's prefix '' (every owner: the CLI's search
# without --owner), which the planner otherwise takes for a rare one (it cannot tell that substr(owner, 1, 0) is
# always ''), and then tests every conversation rather than walking the activity index until the page is full.
_SEARCH_SCOPES = {**_OWNER_SCOPES, "everyone": "$1::text = ''"}


@cache
def _search_conversations(scope: str, order: str, paged: bool, indexed: int, short: int) -> str:
    """A page of the conversations (as ``_LIST_CONVERSATIONS`` pages them, same parameters) that hold every term
    (``search``; their patterns from $3, or $5 after a cursor), each joined to up to 3 of its matching messages
    (row id, seq, role, searchable text; NULLs for none), worked out for the page's conversations only."""
    every, anyone = search.term_conditions(5 if paged else 3, indexed, short)
    direction, op = {"desc": ("DESC", "<"), "asc": ("ASC", ">")}[order]
    after = f" AND (updated_at, id) {op} ($3::float8, $4::bigint)" if paged else ""
    return f"""
WITH page AS (
    SELECT {_COLUMNS} FROM conversations AS c
     WHERE {_SEARCH_SCOPES[scope]}{after} AND {every}
     ORDER BY updated_at {direction}, id {direction} LIMIT $2::bigint
)
SELECT page.*, x.id, x.seq, x.role, x.text
  FROM page LEFT JOIN LATERAL (
       SELECT m.id, m.seq, m.role, gateway_message_text(m.body) AS text FROM messages AS m
        WHERE m.conversation_id = page.id AND ({anyone})
        ORDER BY m.seq LIMIT 3) AS x ON true
 ORDER BY page.updated_at {direction}, page.id {direction}, x.seq
"""  # noqa: S608


_GET_CONVERSATION = f"SELECT {_COLUMNS} FROM conversations WHERE owner = $1 AND external_id = $2"  # noqa: S608
# The prefix is $1 (as in _OPERATOR_SCOPE), the id $2.
_FIND_CONVERSATIONS = f"SELECT {_COLUMNS} FROM conversations WHERE external_id = $2 AND {_OPERATOR_SCOPE}"  # noqa: S608

# Pages of one conversation's messages in seq order, after the cursor message's seq ($3); $2 the limit (NULL: all).
_LIST_MESSAGES = {
    (order, paged): f"""
SELECT id, seq, body, created_at, interrupted, usage_json, ledger_json FROM messages
 WHERE conversation_id = $1{f" AND seq {op} $3::integer" if paged else ""}
 ORDER BY seq {order.upper()} LIMIT $2::bigint
"""  # noqa: S608
    for order, op in (("asc", ">"), ("desc", "<"))
    for paged in (False, True)
}
# Metadata is not part of a conversation's memory (``Memory``): changing it leaves the version alone.
_SET_METADATA = "UPDATE conversations SET metadata_json = $1 WHERE owner = $2 AND external_id = $3"
# Messages, idempotent replies and responses go by ON DELETE CASCADE.
_DELETE_CONVERSATION = "DELETE FROM conversations WHERE owner = $1 AND external_id = $2"
_MESSAGE_SEQ = "SELECT seq FROM messages WHERE conversation_id = $1 AND id = $2"

# A created or imported conversation keeps the token totals it came with; its size is what it holds (worked out
# here from the bodies as stored: their UTF-8 bytes).  A new row starts at version 1 (the schema's default).  One
# statement: the conversation and its messages (parallel arrays, unnested) together, or nothing when the id is
# taken (no row comes back from the first INSERT, so the second inserts none).
_CREATE_CONVERSATION = """
WITH conversation AS (
    INSERT INTO conversations (owner, external_id, created_at, updated_at, model, system_json, metadata_json,
                               message_count, prompt_tokens, completion_tokens, cached_tokens, window_start,
                               summary_json, history_bytes)
    VALUES ($1, $2, $3, $4, $5, $6, $7, cardinality($12::text[]), $8, $9, $10, $11, $17, $18)
    ON CONFLICT (owner, external_id) DO NOTHING
    RETURNING id
), inserted AS (
    INSERT INTO messages (conversation_id, seq, role, body, created_at, interrupted, usage_json, ledger_json)
    SELECT conversation.id, m.ord::integer - 1, m.role, m.body, m.created_at, m.interrupted, m.usage_json,
           m.ledger_json
      FROM conversation,
           unnest($12::text[], $13::text[], $14::float8[], $15::boolean[], $16::text[], $19::text[])
               WITH ORDINALITY AS m (role, body, created_at, interrupted, usage_json, ledger_json, ord)
)
SELECT id FROM conversation
"""
# The source's row is share-locked (a turn's or an edit's FOR UPDATE of it waits) so that its system prompt and
# messages are copied as they were together, with no change committed in between.  The fork starts at version 0,
# so that the recount of what it copied leaves it at 1, where every new row starts.
_FORK_CONVERSATION = """
INSERT INTO conversations (owner, external_id, created_at, updated_at, model, system_json, metadata_json, version)
SELECT owner, $2, $3, $3, model, system_json, $4, 0 FROM conversations WHERE id = $1 FOR SHARE
ON CONFLICT (owner, external_id) DO NOTHING
RETURNING id
"""
_FORK_MESSAGES = """
INSERT INTO messages (conversation_id, seq, role, body, created_at, interrupted, usage_json, ledger_json)
SELECT $1, seq, role, body, created_at, interrupted, usage_json, ledger_json
  FROM messages WHERE conversation_id = $2 AND seq <= $3
"""
# The seq of the Nth user message from the end: a rewind of N turns cuts there.  The conversation's row is locked
# first (as a turn's write locks it), so that no turn commits between finding the cut and making it.
_LOCK = "SELECT id FROM conversations WHERE owner = $1 AND external_id = $2 FOR UPDATE"
_NTH_LAST_USER_MESSAGE = """
SELECT seq FROM messages WHERE conversation_id = $1 AND role = 'user' ORDER BY seq DESC LIMIT 1 OFFSET $2
"""
_IDLE_CONVERSATIONS = """
SELECT id, owner, external_id FROM conversations WHERE updated_at < $1 AND id > $2 ORDER BY id LIMIT $3
"""
_DELETE_IDLE = "DELETE FROM conversations WHERE id = ANY($1::bigint[]) AND updated_at < $2"
_INT_MAX = (1 << 31) - 1  # the largest INTEGER (a seq)


class PostgresCatalog:
    def __init__(self, database: Database) -> None:
        self._db = database

    async def get_conversation(self, owner: str, external_id: str) -> ConversationInfo | None:
        row = await self._db.fetchrow(_GET_CONVERSATION, owner, external_id)
        return _conversation(row) if row is not None else None

    async def find_conversations(self, external_id: str, owner_prefix: str | None) -> list[ConversationInfo]:
        """Conversations with this id whose owner starts with ``owner_prefix`` (the CLI names owners by prefix;
        None names the owner '')."""
        return [_conversation(row) for row in await self._db.fetch(_FIND_CONVERSATIONS, owner_prefix, external_id)]

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
        scope, args = _page(owner, owner_prefix, limit, cursor)
        rows = await self._db.fetch(_LIST_CONVERSATIONS[scope, order, cursor is not None], *args)
        return [_conversation(row) for row in rows]

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
        message, each with up to 3 of its messages holding a term, in order (``search``).  Planned for its
        patterns at every execution (``Database.fetch_custom_plan``): a generic plan cannot judge a LIKE."""
        if not can_match(terms):
            return []
        indexed, short, patterns = search.term_patterns(terms)
        scope, args = _page(owner, owner_prefix, limit, cursor)
        if scope == "operator" and owner_prefix == "":
            scope = "everyone"
        statement = _search_conversations(scope, order, cursor is not None, indexed, short)
        hits: dict[int, SearchHit] = {}
        for row in await self._db.fetch_custom_plan(statement, *args, *patterns):
            hit = hits.setdefault(row[0], SearchHit(_conversation(row), []))
            if row[14] is not None:
                hit.messages.append((row[14], row[15], row[16], row[17]))
        return list(hits.values())  # in the statement's order: dicts keep the order of insertion

    async def message_seq(self, conversation: ConversationInfo, message_row_id: int) -> int | None:
        seq = await self._db.fetchval(_MESSAGE_SEQ, conversation.row_id, message_row_id)
        return int(seq) if seq is not None else None

    async def list_messages(
        self, conversation: ConversationInfo, *, limit: int, order: str, cursor_seq: int | None
    ) -> list[StoredMessage]:
        args: list[Any] = [conversation.row_id, _limit(limit)]
        if cursor_seq is not None:
            args.append(cursor_seq)
        rows = await self._db.fetch(_LIST_MESSAGES[order, cursor_seq is not None], *args)
        return [stored_message(row) for row in rows]

    async def create_conversation(self, info: ConversationInfo, messages: Sequence[NewMessage]) -> bool:
        """Insert a conversation and its messages as given; False (and nothing written) when the id is taken.

        The counters come from ``info`` (an import keeps the totals it exported), the message count from
        ``messages``."""
        key = (info.owner, info.external_id)
        bodies = [encode(m.body) for m in messages]
        async with self._db.transaction(key) as conn:
            created = await conn.fetchval(
                _CREATE_CONVERSATION,
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
                [m.body["role"] for m in messages],
                [body.decode() for body in bodies],
                [m.created_at for m in messages],
                [m.interrupted for m in messages],
                [dumps(m.usage) if m.usage is not None else None for m in messages],
                dumps(info.summary) if info.summary is not None else None,
                sum(map(len, bodies)),
                [dumps(m.ledger) if m.ledger is not None else None for m in messages],
            )
        return created is not None

    async def set_metadata(self, owner: str, external_id: str, metadata: dict[str, str]) -> bool:
        """Replace a conversation's metadata; False when there is no such conversation."""
        async with self._db.transaction((owner, external_id)) as conn:
            status = await conn.execute(_SET_METADATA, dumps(metadata), owner, external_id)
        return _rows(status) > 0

    async def delete_conversation(self, owner: str, external_id: str) -> bool:
        """Delete a conversation and (by cascade) every message and response of it; False when there was none."""
        async with self._db.transaction((owner, external_id)) as conn:
            status = await conn.execute(_DELETE_CONVERSATION, owner, external_id)
        return _rows(status) > 0

    async def rewind(self, conversation: ConversationInfo, turns: int, at: float) -> int | None:
        """Remove the last ``turns`` user messages and everything after each; return how many messages went, or
        None (nothing changed) when the conversation holds fewer user messages."""
        key = (conversation.owner, conversation.external_id)
        async with self._db.transaction(key) as conn:
            row_id = await conn.fetchval(_LOCK, *key)
            if row_id is None:
                return None
            # A negative OFFSET is an error here, and the same as none in SQLite.
            seq = await conn.fetchval(_NTH_LAST_USER_MESSAGE, row_id, max(0, turns - 1))
            if seq is None:
                return None
            return await cut(conn, *key, seq, at)

    async def append_messages(
        self, conversation: ConversationInfo, messages: Sequence[NewMessage], at: float, *, max_bytes: int | None
    ) -> list[StoredMessage] | None:
        """Append messages after the last one (``edits``); the stored rows, or None past ``max_bytes``."""
        return await edits.append_messages(self._db, conversation, messages, at, max_bytes)

    async def delete_message(self, conversation: ConversationInfo, message_row_id: int) -> bool:
        """Delete one message from anywhere in the history (``edits``); False when there is no such one."""
        return await edits.delete_message(self._db, conversation, message_row_id)

    async def fork(
        self, source: ConversationInfo, new_id: str, *, last_seq: int, metadata: dict[str, str], at: float
    ) -> bool:
        """Copy ``source`` up to and including message ``last_seq`` to a new conversation of the same owner;
        False (and nothing written) when ``new_id`` is taken."""
        key = (source.owner, new_id)
        # seq is an INTEGER: a last_seq past its range means every message (it is "up to and including").
        last = max(min(last_seq, _INT_MAX), -_INT_MAX)
        async with self._db.transaction(key) as conn:
            fork_id = await conn.fetchval(_FORK_CONVERSATION, source.row_id, new_id, at, dumps(metadata))
            if fork_id is None:
                return False
            await conn.execute(_FORK_MESSAGES, fork_id, source.row_id, last)
            await conn.execute(RECOUNT, *key, None)
        return True

    async def export_messages(self, conversation: ConversationInfo) -> list[StoredMessage]:
        """Every message of a conversation, in order."""
        return await self.list_messages(conversation, limit=-1, order="asc", cursor_seq=None)

    async def idle_conversations(self, before: float, after_row: int, limit: int) -> list[tuple[int, str, str]]:
        """Up to ``limit`` conversations (row id, owner, external id) last active before ``before``, in row order
        from after row ``after_row``."""
        rows = await self._db.fetch(_IDLE_CONVERSATIONS, before, after_row, limit)
        return [(row[0], row[1], row[2]) for row in rows]

    async def delete_idle(self, conversations: Sequence[tuple[int, str, str]], before: float) -> int:
        """Delete those of ``conversations`` still idle since before ``before``; return how many went."""
        if not conversations:
            return 0
        async with self._db.transaction(*((owner, eid) for _, owner, eid in conversations)) as conn:
            status = await conn.execute(_DELETE_IDLE, [row_id for row_id, _, _ in conversations], before)
        return _rows(status)


def _limit(limit: int) -> int | None:
    """A page size as LIMIT takes it: NULL for all rows (the ports' -1, SQLite's LIMIT -1)."""
    return limit if limit >= 0 else None


def _rows(status: str) -> int:
    """The row count of a command status such as ``DELETE 3`` or ``UPDATE 0``."""
    return int(status.rsplit(" ", 1)[-1])


def _page(
    owner: str | None, owner_prefix: str | None, limit: int, cursor: ConversationInfo | None
) -> tuple[str, list[Any]]:
    """The scope and leading arguments of a page of conversations by activity, listed or searched."""
    scope, who = ("owner", owner) if owner is not None else ("operator", owner_prefix)
    args: list[Any] = [who, _limit(limit)]
    if cursor is not None:
        args += [cursor.updated_at, cursor.row_id]
    return scope, args


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
