"""The Responses API's memory: which conversation a ``POST /v1/responses`` continues, and the stored responses
behind ``GET``/``DELETE /v1/responses/{id}`` and ``.../input_items``.

A response with ``store`` true is a turn of a conversation (``Turn.response``), recorded by the chat use case
(``gateway.core.chat``) like any other turn; this module only decides where a new one goes and reads or deletes
recorded ones.  ``previous_response_id`` continues the conversation of that response: from its latest turn it
appends; from an older one it forks (a new conversation holding the history up to that response, as the
conversations API's fork does), so a chain never silently loses or mixes turns.  ``conversation`` names a
conversation as ``X-Conversation-Id`` does.  Every call is scoped to the caller's owner: another owner's response
gets exactly the same answer as one that does not exist.  Knows no SQL and no HTTP server types.

``item_reference`` input items are looked up here (``resolve_references``): an output item id
(``msg_<hex>_<n>``, ``fc_<hex>_<n>``, ``rs_<hex>_<n>``) names the owner's stored response ``resp_<hex>``, whose
output items are rebuilt as ``GET`` gives them; an input item id (``msg_<row>``, ``fc_<row>_<n>``, ... as
``input_items`` and the Conversations items API give them out) names a stored message of the conversation the
request continues (``previous_response_id``'s or ``conversation``'s), and only of that one.  (Output items are
numbered as ``GET`` lists them; a stream numbers them as their parts came, the same for replies whose parts come
as reasoning, text, calls: an upstream that interleaved them otherwise named items a reference will not find.)
"""

from __future__ import annotations

import secrets
import time
from dataclasses import dataclass
from typing import Any

from gateway.core.conversation_items import item_row
from gateway.core.conversations import PageRequest, new_conversation_id
from gateway.core.ordering import KeyedLocks
from gateway.core.ports import Catalog, StoredResponse, TurnStore
from gateway.errors import Conflict, InvalidRequest, NotFound
from gateway.protocols.openai_chat import list_object, validate_conversation_id
from gateway.protocols.openai_responses import (
    ResponsesRequest,
    items_from_messages,
    response_from_stored,
    response_of_item,
    with_referenced_items,
)


def new_response_id() -> str:
    """A new response id, shaped like OpenAI's: ``resp_`` and 32 hex digits."""
    return f"resp_{secrets.token_hex(16)}"


@dataclass(frozen=True)
class Continuation:
    """Where a new response goes: the conversation (None: none, a turn with no memory) and the length of the
    stored history it continues (None: whatever it holds when the turn runs)."""

    conversation_id: str | None
    expected_length: int | None


class ResponsesService:
    def __init__(self, store: TurnStore, catalog: Catalog, locks: KeyedLocks) -> None:
        self._store = store
        self._catalog = catalog
        self._locks = locks

    async def resolve(
        self, owner: str, *, previous_response_id: str | None, conversation: str | None, store: bool
    ) -> Continuation:
        """The conversation a new response continues.  Without ``previous_response_id`` or ``conversation``, a
        new one when the response is to be stored (so that it can be continued), none otherwise."""
        if previous_response_id is not None and conversation is not None:
            raise InvalidRequest(
                "Mutually exclusive parameters: Ensure you are only providing one of: 'previous_response_id' or "
                "'conversation'.",
                code="mutually_exclusive_parameters",
                param="conversation",
            )
        if conversation is not None:
            return Continuation(validate_conversation_id(conversation, "conversation"), None)
        if previous_response_id is None:
            return Continuation(new_conversation_id() if store else None, None)
        found = await self._store.find_response(owner, previous_response_id)
        if found is None:
            raise _previous_not_found(previous_response_id)
        length = found.reply.seq + 1
        if found.latest or not store:
            # A response that records nothing reads the history up to this one where it is (the chat use case
            # reads only its first ``length`` messages): no fork needed.
            return Continuation(found.conversation_id, length)
        return Continuation(await self._fork(owner, previous_response_id, found), length)

    async def resolve_references(
        self, owner: str, req: ResponsesRequest, *, conversation: str | None
    ) -> ResponsesRequest:
        """The request with its ``item_reference`` items replaced by the owner's items they name (see the module
        docstring; ``conversation`` is the one the request names, by its field or the header); 400
        ``item_not_found`` naming ``input[i]`` for an id that names none of the owner's, unknown or another
        owner's alike.  One lookup per response referenced, and one read of the continued conversation for all
        the input item ids."""
        if not req.references:
            return req
        outputs: dict[str, list[dict[str, Any]]] = {}  # response id -> its output items ([] for none of the owner's)
        inputs: dict[str, dict[str, Any]] | None = None  # the continued conversation's items by id, once read
        found: dict[str, dict[str, Any]] = {}
        for ref in req.references:
            response_id = response_of_item(ref.id)
            if response_id is not None:
                if response_id not in outputs:
                    stored = await self._store.find_response(owner, response_id)
                    outputs[response_id] = (
                        [] if stored is None else response_from_stored(**_stored_fields(stored))["output"]
                    )
                item = next((i for i in outputs[response_id] if i.get("id") == ref.id), None)
            elif item_row(ref.id) is not None:
                if inputs is None:
                    inputs = await self._conversation_items(owner, req.previous_response_id, conversation)
                item = inputs.get(ref.id)
            else:
                item = None
            if item is not None:
                found[ref.id] = item
        return with_referenced_items(req, found)  # raises for the first reference not found

    async def _conversation_items(
        self, owner: str, previous_response_id: str | None, conversation: str | None
    ) -> dict[str, dict[str, Any]]:
        """The items of the owner's conversation a request continues, as stored before it runs, by id."""
        if previous_response_id is not None:
            previous = await self._store.find_response(owner, previous_response_id)
            if previous is None:
                raise _previous_not_found(previous_response_id)  # what the request would be told anyway
            conversation = previous.conversation_id
        info = None if conversation is None else await self._catalog.get_conversation(owner, conversation)
        if info is None:
            return {}
        messages = await self._catalog.export_messages(info)
        return {item["id"]: item for item in items_from_messages((m.row_id, m.body) for m in messages)}

    async def _fork(self, owner: str, response_id: str, found: StoredResponse) -> str:
        """A new conversation holding ``found``'s conversation up to and including its reply."""
        new_id = new_conversation_id()
        async with self._locks.hold_all([(owner, found.conversation_id), (owner, new_id)]):
            source = await self._catalog.get_conversation(owner, found.conversation_id)
            # Under the lock, look again: a rewind or delete may have taken the response meanwhile.
            again = await self._store.find_response(owner, response_id)
            if source is None or again is None or again.conversation_id != source.external_id:
                raise _previous_not_found(response_id)
            metadata = {"forked_from": source.external_id, "forked_from_response": response_id}
            if not await self._catalog.fork(
                source, new_id, last_seq=again.reply.seq, metadata=metadata, at=time.time()
            ):  # pragma: no cover - 192 random bits do not collide
                raise Conflict(f"A conversation with id '{new_id}' already exists.", code="conversation_exists")
        return new_id

    async def get(self, owner: str, response_id: str) -> dict[str, Any]:
        """The Response object of a stored response, as it stands now."""
        return response_from_stored(**_stored_fields(await self._existing(owner, response_id)))

    async def delete(self, owner: str, response_id: str) -> dict[str, Any]:
        """Delete a stored response; from the latest turn of its conversation, that turn's messages go too."""
        found = await self._existing(owner, response_id)
        async with self._locks.hold((owner, found.conversation_id)):
            if not await self._store.delete_response(owner, response_id):
                raise _not_found(response_id)
        return {"id": response_id, "object": "response", "deleted": True}

    async def input_items(self, owner: str, response_id: str, page: PageRequest) -> dict[str, Any]:
        """A page of the items the response's request added (OpenAI's list object; newest first by default)."""
        inputs = (await self._existing(owner, response_id)).inputs
        items = items_from_messages((m.row_id, m.body) for m in inputs)
        if page.order == "desc":
            items.reverse()
        start = 0
        if page.after is not None:
            ids = [item.get("id") for item in items]
            if page.after not in ids:
                raise InvalidRequest("'after' names no item of this response.", code="invalid_cursor", param="after")
            start = ids.index(page.after) + 1
        data = items[start : start + page.limit]
        return list_object(data, has_more=start + page.limit < len(items))

    async def _existing(self, owner: str, response_id: str) -> StoredResponse:
        found = await self._store.find_response(owner, response_id)
        if found is None:
            raise _not_found(response_id)
        return found


def _stored_fields(stored: StoredResponse) -> dict[str, Any]:
    """A stored response as the plain values ``response_from_stored`` takes."""
    return {
        "id": stored.id,
        "created_at": stored.created_at,
        "request": stored.request,
        "reply": stored.reply.body,
        "usage": stored.reply.usage,
        "interrupted": stored.reply.interrupted,
        "conversation_id": stored.conversation_id,
        "completed_at": stored.reply.created_at,
    }


def _previous_not_found(response_id: str) -> InvalidRequest:
    # OpenAI's answer, word for word: 400 whether the id is unknown, another owner's, or was not stored.
    return InvalidRequest(
        f"Previous response with id '{response_id}' not found.",
        code="previous_response_not_found",
        param="previous_response_id",
    )


def _not_found(response_id: str) -> NotFound:
    # The same body whether the id is unknown or belongs to another owner: nothing leaks either way.
    return NotFound(f"Response with id '{response_id}' not found.", code="response_not_found", param="response_id")
