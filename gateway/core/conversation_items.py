"""OpenAI's Conversations items over stored conversations: list, read, add and delete items.

An item is a stored message in Responses item form (``items_from_messages``): ``msg_<row>`` for a message,
``rs_<row>`` for an assistant's reasoning, ``fc_<row>_<n>`` for its tool calls, ``fco_<row>`` for a tool result, so
one stored message may be several items and every item id names its message's row.  Items a client adds are
translated to chat messages as ``POST /v1/responses`` translates its input items, and appended without a model
call; deleting an item deletes its whole message.  Owner-scoped and under the conversation's ordering, as every
other change (``gateway.core.conversations``).
"""

from __future__ import annotations

import re
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING, Any

from gateway.core.ordering import KeyedLocks
from gateway.core.ports import Catalog, ConversationInfo, NewMessage, StoredMessage
from gateway.errors import InvalidRequest, NotFound
from gateway.protocols.openai_chat import Message, encode, list_object
from gateway.protocols.openai_responses import items_from_messages, parse_responses_request

if TYPE_CHECKING:  # conversations imports this module
    from gateway.core.conversations import PageRequest

MAX_ITEMS = 20  # per request, as OpenAI's API takes
_ITEM_ID = re.compile(r"(?:msg|rs|fco)_([0-9]{1,18})|fc_([0-9]{1,18})_[0-9]{1,9}")


def item_row(item_id: Any) -> int | None:
    """The row id of the message an item id names, or None when it is not shaped like one of ours."""
    match = _ITEM_ID.fullmatch(item_id) if isinstance(item_id, str) else None
    return None if match is None else int(match.group(1) or match.group(2))


def parse_items(value: Any, param: str = "items") -> list[Message]:
    """Items (Responses input items: messages, function calls and their outputs; reasoning is dropped) as chat
    messages, validated as ``POST /v1/responses`` validates ``input``; errors name ``items[i]...``."""
    if not isinstance(value, list):
        raise InvalidRequest(f"'{param}' must be an array of items.", code="invalid_type", param=param)
    try:
        return parse_responses_request(encode({"model": "-", "input": value})).messages
    except InvalidRequest as exc:
        shown = exc.param.replace("input", param, 1) if exc.param else param
        raise InvalidRequest(exc.message.replace("'input", f"'{param}"), code=exc.code, param=shown) from exc


def items_of(messages: Sequence[StoredMessage], *, descending: bool = False) -> list[dict[str, Any]]:
    """The messages' items, in the messages' order; with ``descending``, each message's items reversed too."""
    items: list[dict[str, Any]] = []
    for m in messages:
        own = items_from_messages([(m.row_id, m.body)])
        items.extend(reversed(own) if descending else own)
    return items


class ConversationItems:
    """``existing`` finds the caller's conversation or raises the conversations API's ``NotFound``."""

    def __init__(
        self,
        catalog: Catalog,
        locks: KeyedLocks,
        existing: Callable[[str, str], Awaitable[ConversationInfo]],
        *,
        max_messages: int | None,
        max_history_bytes: int | None,
    ) -> None:
        self._catalog = catalog
        self._locks = locks
        self._existing = existing
        self._max_messages = max_messages
        self._max_history_bytes = max_history_bytes

    async def list(self, owner: str, conversation_id: str, page: PageRequest) -> dict[str, Any]:
        conversation = await self._existing(owner, conversation_id)
        cursor_seq = None
        if page.after is not None:
            seq = await self._seq(conversation, page.after)
            if seq is None:
                raise _bad_cursor()
            cursor_seq = seq - 1 if page.order == "asc" else seq + 1  # from the cursor's own message on
        # Every message is at least one item: limit + 2 messages tell whether more follow, whatever the cursor skips.
        found = await self._catalog.list_messages(
            conversation, limit=page.limit + 2, order=page.order, cursor_seq=cursor_seq
        )
        items = items_of(found, descending=page.order == "desc")
        if page.after is not None:
            ids = [item["id"] for item in items]
            if page.after not in ids:
                raise _bad_cursor()
            items = items[ids.index(page.after) + 1 :]
        return list_object(items[: page.limit], has_more=len(items) > page.limit)

    async def get(self, owner: str, conversation_id: str, item_id: str) -> dict[str, Any]:
        conversation = await self._existing(owner, conversation_id)
        return await self._item(conversation, item_id)

    async def add(self, owner: str, conversation_id: str, body: Any) -> dict[str, Any]:
        """Append the body's ``items`` as messages (no model call); the list of the items they are stored as."""
        if not isinstance(body, dict):
            raise InvalidRequest("Request body must be a JSON object.", code="invalid_request")
        if "items" not in body:
            raise InvalidRequest(
                "Missing required parameter: 'items'.", code="missing_required_parameter", param="items"
            )
        raw = body["items"]
        if isinstance(raw, list) and len(raw) > MAX_ITEMS:
            raise InvalidRequest(f"At most {MAX_ITEMS} items at a time.", code="too_many_items", param="items")
        messages = parse_items(raw)
        if self._max_messages is not None and len(messages) > self._max_messages:  # as in one chat request
            raise InvalidRequest(
                f"At most {self._max_messages} messages (limits.max_messages).", code="too_many_messages", param="items"
            )
        now = time.time()
        async with self._locks.hold((owner, conversation_id)):
            conversation = await self._existing(owner, conversation_id)
            stored = await self._catalog.append_messages(
                conversation, [NewMessage(m, now) for m in messages], now, max_bytes=self._max_history_bytes
            )
            if messages and stored == []:  # deleted meanwhile by another process (the CLI)
                await self._existing(owner, conversation_id)
        if stored is None:
            raise InvalidRequest(
                "The items would make the conversation larger than it may be (limits.max_history_bytes).",
                code="conversation_too_large",
                param="items",
            )
        return list_object(items_of(stored), has_more=False)

    async def delete(self, owner: str, conversation_id: str, item_id: str) -> ConversationInfo:
        """Delete the message the item belongs to (all of its items); the conversation as it is then."""
        async with self._locks.hold((owner, conversation_id)):
            conversation = await self._existing(owner, conversation_id)
            await self._item(conversation, item_id)
            row = item_row(item_id)
            if row is None or not await self._catalog.delete_message(conversation, row):
                raise _item_not_found(item_id)
            return await self._existing(owner, conversation_id)

    async def _seq(self, conversation: ConversationInfo, item_id: str) -> int | None:
        row = item_row(item_id)
        return None if row is None else await self._catalog.message_seq(conversation, row)

    async def _item(self, conversation: ConversationInfo, item_id: str) -> dict[str, Any]:
        seq = await self._seq(conversation, item_id)
        if seq is not None:
            found = await self._catalog.list_messages(conversation, limit=1, order="asc", cursor_seq=seq - 1)
            for item in items_of(found):
                if item["id"] == item_id:
                    return item
        raise _item_not_found(item_id)


def _bad_cursor() -> InvalidRequest:
    return InvalidRequest("'after' names no item of this conversation.", code="invalid_cursor", param="after")


def _item_not_found(item_id: str) -> NotFound:
    return NotFound(f"Item with id '{item_id[:128]}' not found.", code="item_not_found", param="item_id")
