"""The conversations use case: list, read, create, edit, rewind, fork, delete and expire stored conversations.

Knows no SQL and no HTTP server types.  Every call is scoped to the caller's owner, and a conversation of another
owner gets exactly the same ``NotFound`` as one that does not exist.  Every change takes the same per-conversation
ordering as chat turns, so it never lands in the middle of one.
"""

from __future__ import annotations

import re
import secrets
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from gateway.core.conversation_items import ConversationItems, parse_items
from gateway.core.history import split_system
from gateway.core.ledger import Pricing, conversation_ledger, reply_cost
from gateway.core.ordering import KeyedLocks
from gateway.core.ports import Catalog, ConversationInfo, NewMessage, StoredMessage
from gateway.core.search import matches_object, parse_query
from gateway.errors import Conflict, InvalidRequest, NotFound
from gateway.protocols.openai_chat import (
    Message,
    encode,
    list_object,
    validate_conversation_id,
    validate_messages,
)

DEFAULT_LIMIT = 20
MAX_LIMIT = 100
MAX_METADATA_PAIRS, MAX_METADATA_KEY, MAX_METADATA_VALUE = 16, 64, 512
_MESSAGE_ID_PREFIX = "msg_"
_DIGITS = re.compile(r"[0-9]{1,18}")  # ASCII digits only (str.isdigit also takes "²"), and within SQLite's integers
_ALL_MESSAGES = 1 << 62  # a seq past any conversation's last message
PURGE_BATCH = 500


@dataclass(frozen=True)
class PageRequest:
    limit: int
    order: str  # "asc" or "desc"
    after: str | None


def parse_page(query: Mapping[str, str], *, default_order: str) -> PageRequest:
    """``limit`` (1-100, default 20), ``order`` (asc|desc) and ``after`` (an id) from query parameters."""
    raw_limit = query.get("limit", str(DEFAULT_LIMIT))
    if not _DIGITS.fullmatch(raw_limit) or not 1 <= int(raw_limit) <= MAX_LIMIT:
        raise InvalidRequest(f"'limit' must be an integer from 1 to {MAX_LIMIT}.", code="invalid_limit", param="limit")
    order = query.get("order", default_order)
    if order not in ("asc", "desc"):
        raise InvalidRequest("'order' must be 'asc' or 'desc'.", code="invalid_order", param="order")
    return PageRequest(int(raw_limit), order, query.get("after") or None)


def parse_metadata(value: Any) -> dict[str, str]:
    """At most 16 string pairs, keys up to 64 characters, values up to 512 (OpenAI's limits)."""
    if (
        not isinstance(value, dict)
        or len(value) > MAX_METADATA_PAIRS
        or not all(isinstance(k, str) and isinstance(v, str) for k, v in value.items())
        or any(len(k) > MAX_METADATA_KEY or len(v) > MAX_METADATA_VALUE for k, v in value.items())
    ):
        raise InvalidRequest(
            f"'metadata' must be an object of at most {MAX_METADATA_PAIRS} string pairs, keys up to "
            f"{MAX_METADATA_KEY} and values up to {MAX_METADATA_VALUE} characters.",
            code="invalid_metadata",
            param="metadata",
        )
    return value


def check_history_size(messages: Sequence[Message], max_bytes: int) -> None:
    """``InvalidRequest`` (conversation_too_large) when ``messages`` are more than a conversation may hold
    (``limits.max_history_bytes``), as chat turns are refused past it."""
    size = sum(len(encode(m)) for m in messages)
    if size > max_bytes:
        raise InvalidRequest(
            f"The messages hold {size} bytes of JSON, more than a conversation may ({max_bytes}, "
            "limits.max_history_bytes).",
            code="conversation_too_large",
            param="messages",
        )


class ConversationsService:
    def __init__(
        self,
        catalog: Catalog,
        locks: KeyedLocks,
        *,
        pricing: Pricing | None = None,
        max_messages: int | None = None,
        max_history_bytes: int | None = None,
    ) -> None:
        self._catalog = catalog
        self._pricing = pricing or Pricing()
        self._locks = locks
        self._max_messages = max_messages
        self._max_history_bytes = max_history_bytes
        self.items = ConversationItems(
            catalog, locks, self._existing, max_messages=max_messages, max_history_bytes=max_history_bytes
        )

    async def list(self, owner: str, page: PageRequest) -> dict[str, Any]:
        cursor = await self._cursor(owner, page)
        found = await self._catalog.list_conversations(owner, limit=page.limit + 1, order=page.order, cursor=cursor)
        return list_object([conversation_object(c) for c in found[: page.limit]], has_more=len(found) > page.limit)

    async def _cursor(self, owner: str, page: PageRequest) -> ConversationInfo | None:
        if page.after is None:
            return None
        cursor = await self._catalog.get_conversation(owner, page.after)
        if cursor is None:
            raise InvalidRequest("'after' names no conversation of yours.", code="invalid_cursor", param="after")
        return cursor

    async def search(self, owner: str, q: str, page: PageRequest) -> dict[str, Any]:
        """The caller's conversations whose messages hold every word of ``q`` (``gateway.core.search``), a page by
        activity, each with its matching messages' snippets."""
        terms = parse_query(q)
        cursor = await self._cursor(owner, page)
        found = await self._catalog.search_conversations(
            owner, terms, limit=page.limit + 1, order=page.order, cursor=cursor
        )
        items = [
            {**conversation_object(hit.conversation), "matches": matches_object(hit, terms, _MESSAGE_ID_PREFIX)}
            for hit in found[: page.limit]
        ]
        return list_object(items, has_more=len(found) > page.limit)

    async def get(self, owner: str, conversation_id: str) -> dict[str, Any]:
        """The conversation with its ``cost`` (``gateway.core.ledger``), summed over every reply it holds, and its
        ``context``: the stored window's cut (the messages before ``window_start`` are not sent upstream) and the
        summary sent in their place."""
        conversation = await self._existing(owner, conversation_id)
        messages = await self._catalog.export_messages(conversation)
        cost = conversation_ledger(self._pricing, messages, conversation.model).summary()
        summary = conversation.summary.get("content") if conversation.summary is not None else None
        context = {"window_start": conversation.window_start, "summary": summary}
        return {**conversation_object(conversation), "cost": cost, "context": context}

    async def export(self, owner: str, conversation_id: str, fmt: str) -> Sequence[str]:
        """The lines of ``gateway conversations export`` (``gateway.core.transfer``)."""
        from gateway.core.transfer import FORMATS, export_lines  # transfer reads metadata as this module does

        if fmt not in FORMATS:
            choices = ", ".join(FORMATS)
            raise InvalidRequest(f"'format' must be one of {choices}.", code="invalid_format", param="format")
        conversation = await self._existing(owner, conversation_id)
        return export_lines(conversation, await self._catalog.export_messages(conversation), fmt)

    async def messages(self, owner: str, conversation_id: str, page: PageRequest) -> dict[str, Any]:
        conversation = await self._existing(owner, conversation_id)
        cursor_seq = None
        if page.after is not None:
            cursor_seq = await self._seq_of(conversation, page.after, "after", "invalid_cursor")
        found = await self._catalog.list_messages(
            conversation, limit=page.limit + 1, order=page.order, cursor_seq=cursor_seq
        )
        items = [message_object(m, reply_cost(self._pricing, m, conversation.model)) for m in found[: page.limit]]
        return list_object(items, has_more=len(found) > page.limit)

    async def set_metadata(self, owner: str, conversation_id: str, body: Any) -> dict[str, Any]:
        """PATCH (or OpenAI's POST): replace the metadata (the whole object, as OpenAI's conversations API does)."""
        metadata = parse_metadata(body.get("metadata") if isinstance(body, dict) else None)
        async with self._locks.hold((owner, conversation_id)):
            if not await self._catalog.set_metadata(owner, conversation_id, metadata):
                raise _not_found(conversation_id)
            return conversation_object(await self._existing(owner, conversation_id))

    async def delete_item(self, owner: str, conversation_id: str, item_id: str) -> dict[str, Any]:
        """Delete an item's message (OpenAI's items API); the conversation as it is then."""
        return conversation_object(await self.items.delete(owner, conversation_id, item_id))

    async def delete(self, owner: str, conversation_id: str) -> dict[str, Any]:
        async with self._locks.hold((owner, conversation_id)):
            if not await self._catalog.delete_conversation(owner, conversation_id):
                raise _not_found(conversation_id)
        return {"id": conversation_id, "object": "conversation.deleted", "deleted": True}

    async def create(self, owner: str, body: Any) -> dict[str, Any]:
        """A new conversation with optional ``id``, ``metadata`` and initial ``messages``, or OpenAI's ``items``
        (Responses input items, translated to messages), whose leading system messages become its system prompt,
        as in a chat turn."""
        fields = _fields(body, ("id", "metadata", "messages", "items"))
        conversation_id = _optional_id(fields, "id")
        metadata = parse_metadata(fields.get("metadata") or {})
        if fields.get("messages") is not None and fields.get("items") is not None:
            raise InvalidRequest(
                "Give either 'messages' or 'items', not both.", code="mutually_exclusive_parameters", param="items"
            )
        if fields.get("items") is not None:
            messages = parse_items(fields["items"])
        else:
            messages = validate_messages(fields.get("messages") or [], allow_empty=True)
        # The limits of a chat request apply to what a conversation may be created with.
        if self._max_messages is not None and len(messages) > self._max_messages:
            raise InvalidRequest(
                f"At most {self._max_messages} messages (limits.max_messages).",
                code="too_many_messages",
                param="messages",
            )
        if self._max_history_bytes is not None:
            check_history_size(messages, self._max_history_bytes)
        system, history = split_system(messages)
        now = time.time()
        info = ConversationInfo(0, owner, conversation_id, now, now, 0, None, metadata, 0, 0, 0, system or None)
        async with self._locks.hold((owner, conversation_id)):
            if not await self._catalog.create_conversation(info, [NewMessage(m, now) for m in history]):
                raise _exists(conversation_id, "id")
            return conversation_object(await self._existing(owner, conversation_id))

    async def rewind(self, owner: str, conversation_id: str, body: Any) -> dict[str, Any]:
        """Remove the last ``turns`` (default 1) user messages and everything after each."""
        turns = _fields(body, ("turns",)).get("turns", 1)
        if isinstance(turns, bool) or not isinstance(turns, int) or not 1 <= turns <= _ALL_MESSAGES:
            raise InvalidRequest("'turns' must be a positive integer.", code="invalid_turns", param="turns")
        async with self._locks.hold((owner, conversation_id)):
            conversation = await self._existing(owner, conversation_id)
            if await self._catalog.rewind(conversation, turns, time.time()) is None:
                raise InvalidRequest(
                    f"The conversation holds fewer than {turns} user turn(s).", code="invalid_turns", param="turns"
                )
            return conversation_object(await self._existing(owner, conversation_id))

    async def fork(self, owner: str, conversation_id: str, body: Any) -> dict[str, Any]:
        """A new conversation holding a copy of this one's history up to and including ``at_message_id``
        (default: all of it), with ``metadata`` (optional) plus ``forked_from``."""
        fields = _fields(body, ("new_id", "at_message_id", "metadata"))
        new_id = _optional_id(fields, "new_id")
        metadata = parse_metadata({**parse_metadata(fields.get("metadata", {})), "forked_from": conversation_id})
        async with self._locks.hold_all([(owner, conversation_id), (owner, new_id)]):
            source = await self._existing(owner, conversation_id)
            last_seq = _ALL_MESSAGES
            if fields.get("at_message_id") is not None:
                last_seq = await self._seq_of(source, fields["at_message_id"], "at_message_id", "invalid_message_id")
            if not await self._catalog.fork(source, new_id, last_seq=last_seq, metadata=metadata, at=time.time()):
                raise _exists(new_id, "new_id")
            return conversation_object(await self._existing(owner, new_id))

    async def purge(self, idle_seconds: float) -> int:
        """Delete every conversation idle for longer than ``idle_seconds``; return how many went.  Conversations
        with a turn or edit in flight are left for the next purge."""
        before, after_row, purged = time.time() - idle_seconds, 0, 0
        while batch := await self._catalog.idle_conversations(before, after_row, PURGE_BATCH):
            after_row = batch[-1][0]
            for row in batch:
                key = (row[1], row[2])
                if self._locks.busy(key):
                    continue
                # One at a time: a turn in flight in another process makes this wait for that turn alone (after
                # which the conversation is no longer idle), never with other conversations' locks held.
                async with self._locks.hold(key):
                    purged += await self._catalog.delete_idle([row], before)
        return purged

    async def _seq_of(self, conversation: ConversationInfo, message_id: Any, param: str, code: str) -> int:
        row_id = message_id.removeprefix(_MESSAGE_ID_PREFIX) if isinstance(message_id, str) else ""
        seq = await self._catalog.message_seq(conversation, int(row_id)) if _DIGITS.fullmatch(row_id) else None
        if seq is None:
            raise InvalidRequest(f"'{param}' names no message of this conversation.", code=code, param=param)
        return seq

    async def _existing(self, owner: str, conversation_id: str) -> ConversationInfo:
        conversation = await self._catalog.get_conversation(owner, conversation_id)
        if conversation is None:
            raise _not_found(conversation_id)
        return conversation


def conversation_object(c: ConversationInfo) -> dict[str, Any]:
    return {
        "id": c.external_id,
        "object": "conversation",
        "created_at": int(c.created_at),
        "updated_at": int(c.updated_at),
        "message_count": c.message_count,
        "model": c.model,
        "metadata": c.metadata,
        "usage": {
            "prompt_tokens": c.prompt_tokens,
            "completion_tokens": c.completion_tokens,
            "cached_tokens": c.cached_tokens,
        },
    }


def message_object(m: StoredMessage, cost: dict[str, Any] | None = None) -> dict[str, Any]:
    """The stored message's own fields, plus its stable id, time and flags, and a reply's usage and cost."""
    item = {
        **m.body,
        "id": f"{_MESSAGE_ID_PREFIX}{m.row_id}",
        "object": "conversation.message",
        "created_at": int(m.created_at),
        "interrupted": m.interrupted,
    }
    if m.usage is not None:
        item["usage"] = m.usage
    if cost is not None:
        item["cost"] = cost
    return item


def _fields(body: Any, known: tuple[str, ...]) -> dict[str, Any]:
    """A request body's fields: an object with only ``known`` keys (an empty body is an empty object)."""
    if body is None:
        return {}
    if not isinstance(body, dict):
        raise InvalidRequest("Request body must be a JSON object.", code="invalid_request")
    unknown = sorted(set(body) - set(known))
    if unknown:
        raise InvalidRequest(
            f"Unknown field '{unknown[0]}'; expected {', '.join(known)}.", code="unknown_field", param=unknown[0]
        )
    return body


def new_conversation_id() -> str:
    """A new random id, shaped like OpenAI's ``conv_...`` ids."""
    return f"conv_{secrets.token_hex(24)}"


def _optional_id(fields: dict[str, Any], param: str) -> str:
    """The conversation id named by ``param``, or a new one."""
    return new_conversation_id() if fields.get(param) is None else validate_conversation_id(fields[param], param)


def _exists(conversation_id: str, param: str) -> Conflict:
    return Conflict(
        f"A conversation with id '{conversation_id}' already exists.", code="conversation_exists", param=param
    )


def _not_found(conversation_id: str) -> NotFound:
    # The same body whether the id is unknown or belongs to another owner: nothing leaks either way.
    return NotFound(
        f"No conversation found with id '{conversation_id}'.", code="conversation_not_found", param="conversation_id"
    )
