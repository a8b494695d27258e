"""OpenAI's Conversations API shape, with the real ``openai`` SDK's ``client.conversations.*`` as the client:
creating with items, metadata updates, OpenAI's deleted object, and the items API (add, list and page, retrieve,
delete) over stored messages, shared with the Responses and chat completions paths, scoped to the owner.  Every
answer is validated by the SDK's own types."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import aiohttp
import openai
import pytest
from openai.types.conversations import (
    Conversation,
    ConversationDeletedResource,
    ConversationItem,
    ConversationItemList,
)
from pydantic import TypeAdapter

from tests.conftest import Gateway, make_config, start_gateway, user
from tests.fake_upstream import FakeUpstream, request_texts

A = {"Authorization": "Bearer key-a"}
ITEM = TypeAdapter(ConversationItem)
TOOL_CALL_ITEMS: list[Any] = [
    {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "Weather in Hangzhou?"}]},
    {
        "type": "message",
        "role": "assistant",
        "content": [{"type": "output_text", "text": "Let me look.", "annotations": []}],
    },
    {"type": "function_call", "call_id": "call_1", "name": "get_weather", "arguments": '{"city": "Hangzhou"}'},
    {"type": "function_call_output", "call_id": "call_1", "output": "24 degrees, sunny"},
    {"role": "assistant", "content": "It is sunny."},
]


def _valid(model: Any, value: Any) -> None:
    """``value`` (an SDK object) validates strictly as ``model``, from its JSON as sent."""
    TypeAdapter(model).validate_python(value.model_dump(mode="json"))


async def test_create_with_items_retrieve_update_and_delete(gateway: Gateway) -> None:
    client = gateway.sdk(api_key="key-a")
    created = await client.conversations.create(
        items=[
            {"type": "message", "role": "developer", "content": "You sell phones."},
            {"type": "message", "role": "user", "content": "hello"},
            {"role": "assistant", "content": "hi"},
        ],
        metadata={"topic": "phones"},
    )
    _valid(Conversation, created)
    assert created.object == "conversation" and created.id.startswith("conv_")
    assert created.metadata == {"topic": "phones"} and isinstance(created.created_at, int)
    assert (created.model_extra or {})["message_count"] == 2  # the leading developer item: the system prompt

    got = await client.conversations.retrieve(created.id)
    _valid(Conversation, got)
    assert (got.id, got.created_at, got.metadata) == (created.id, created.created_at, {"topic": "phones"})
    updated = await client.conversations.update(created.id, metadata={"topic": "tablets"})
    _valid(Conversation, updated)
    assert updated.metadata == {"topic": "tablets"}
    assert (await client.conversations.retrieve(created.id)).metadata == {"topic": "tablets"}

    items = await client.conversations.items.list(created.id, order="asc")
    assert [(i.type, getattr(i, "role", None)) for i in items.data] == [("message", "user"), ("message", "assistant")]

    deleted = await client.conversations.delete(created.id)
    _valid(ConversationDeletedResource, deleted)
    assert (deleted.id, deleted.object, deleted.deleted) == (created.id, "conversation.deleted", True)
    with pytest.raises(openai.NotFoundError):
        await client.conversations.retrieve(created.id)
    empty = await client.conversations.create(items=[])  # as the Agents SDK starts a session
    assert (await client.conversations.retrieve(empty.id)).metadata == {}


async def test_items_are_added_listed_paged_and_retrieved_as_responses_items(gateway: Gateway) -> None:
    client = gateway.sdk(api_key="key-a")
    conversation = await client.conversations.create()
    added = await client.conversations.items.create(conversation.id, items=TOOL_CALL_ITEMS, include=["x"])
    _valid(ConversationItemList, added)
    # Five items as four messages: the assistant's text and its tool call are one stored message, two items.
    assert [i.type for i in added.data] == ["message", "message", "function_call", "function_call_output", "message"]
    ids = [i.id for i in added.data]
    assert ids[1].startswith("msg_") and ids[2] == "fc_" + ids[1].removeprefix("msg_") + "_0"
    assert (added.first_id, added.last_id, added.has_more) == (ids[0], ids[-1], False)
    call = added.data[2]
    assert call.type == "function_call" and (call.call_id, call.name) == ("call_1", "get_weather")
    assert (await client.conversations.retrieve(conversation.id)).model_extra["message_count"] == 4  # type: ignore[index]

    newest = await client.conversations.items.list(conversation.id)  # desc by default
    assert [i.id for i in newest.data] == ids[::-1]
    for item in newest.data:
        ITEM.validate_python(item.model_dump(mode="json"))
    # Pages of two, through a message that is two items (the cursor falls between them).
    page = await client.conversations.items.list(conversation.id, order="asc", limit=2)
    assert ([i.id for i in page.data], page.has_more, page.last_id) == (ids[:2], True, ids[1])
    page = await client.conversations.items.list(conversation.id, order="asc", limit=2, after=ids[1])
    assert [i.id for i in page.data] == ids[2:4] and page.has_more
    page = await client.conversations.items.list(conversation.id, order="asc", limit=2, after=ids[3])
    assert ([i.id for i in page.data], page.has_more) == (ids[4:], False)
    back = await client.conversations.items.list(conversation.id, order="desc", limit=2, after=ids[2])
    assert [i.id for i in back.data] == [ids[1], ids[0]] and not back.has_more
    # The SDK's auto-paging follows last_id.
    assert [i.id async for i in client.conversations.items.list(conversation.id, order="asc", limit=1)] == ids

    for item in added.data:
        got = await client.conversations.items.retrieve(item.id, conversation_id=conversation.id)
        assert got == item
    with pytest.raises(openai.NotFoundError):
        await client.conversations.items.retrieve(ids[2][:-1] + "7", conversation_id=conversation.id)


async def test_a_turn_by_responses_or_chat_sees_added_items_and_not_deleted_ones(
    gateway: Gateway, upstream: FakeUpstream
) -> None:
    client = gateway.sdk(api_key="key-a")
    conversation = await client.conversations.create(items=[{"role": "user", "content": "I want a phone"}])
    await client.conversations.items.create(
        conversation.id, items=[{"role": "assistant", "content": "Which size?"}, {"role": "user", "content": "6.7"}]
    )
    response = await client.responses.create(model="qwen-plus", input="black", conversation=conversation.id)
    assert request_texts(upstream.last) == [
        ("user", "I want a phone"),
        ("assistant", "Which size?"),
        ("user", "6.7"),
        ("user", "black"),
    ]
    items = await client.conversations.items.list(conversation.id, order="asc")
    assert [i.type for i in items.data][-1] == "message" and items.data[-1].role == "assistant"  # type: ignore[union-attr]

    # Deleting an item in the middle: the next turn (chat completions, on the same conversation) goes without it.
    removed = await client.conversations.items.delete(items.data[1].id, conversation_id=conversation.id)
    _valid(Conversation, removed)
    assert removed.model_extra["message_count"] == 4  # type: ignore[index]
    chat = gateway.sdk(conversation.id, api_key="key-a")
    await chat.chat.completions.create(model="qwen-plus", messages=[user("thanks")])
    assert request_texts(upstream.last) == [
        ("user", "I want a phone"),
        ("user", "6.7"),
        ("user", "black"),
        ("assistant", "reply 1"),
        ("user", "thanks"),
    ]
    # The response whose input ("black") followed the cut still reads back; ids of the rest are unchanged.
    kept = await client.responses.retrieve(response.id)
    assert kept.output_text == "reply 1"
    after = await client.conversations.items.list(conversation.id, order="asc")
    assert [i.id for i in after.data][:3] == [items.data[0].id, *[i.id for i in items.data[2:4]]]
    # Deleting a response's input takes the response with it.
    await client.conversations.items.delete(items.data[3].id, conversation_id=conversation.id)
    with pytest.raises(openai.NotFoundError):
        await client.responses.retrieve(response.id)
    with pytest.raises(openai.NotFoundError):
        await client.conversations.items.delete(items.data[3].id, conversation_id=conversation.id)


async def test_chat_turns_read_back_as_items(gateway: Gateway, upstream: FakeUpstream) -> None:
    chat = gateway.sdk("chat-items", api_key="key-a")
    await chat.chat.completions.create(model="qwen-plus", messages=[user("hello")])
    client = gateway.sdk(api_key="key-a")
    items = await client.conversations.items.list("chat-items", order="asc")
    assert [(i.type, i.role, i.content[0].text) for i in items.data] == [  # type: ignore[union-attr]
        ("message", "user", "hello"),
        ("message", "assistant", "reply 1"),
    ]


async def test_another_owners_conversation_is_not_found_for_every_items_route(
    gateway: Gateway, http: aiohttp.ClientSession
) -> None:
    owner = gateway.sdk(api_key="key-a")
    conversation = await owner.conversations.create(items=[{"role": "user", "content": "secret"}])
    item = (await owner.conversations.items.list(conversation.id)).data[0].id
    other = gateway.sdk(api_key="key-b")
    calls = [
        other.conversations.retrieve(conversation.id),
        other.conversations.update(conversation.id, metadata={"x": "y"}),
        other.conversations.items.list(conversation.id),
        other.conversations.items.create(conversation.id, items=[{"role": "user", "content": "x"}]),
        other.conversations.items.retrieve(item, conversation_id=conversation.id),
        other.conversations.items.delete(item, conversation_id=conversation.id),
    ]
    for call in calls:
        with pytest.raises(openai.NotFoundError) as caught:
            await call
        assert caught.value.code == "conversation_not_found"
    assert [i.id for i in (await owner.conversations.items.list(conversation.id)).data] == [item]
    async with http.get(gateway.url + f"/v1/conversations/{conversation.id}", headers=A) as resp:
        assert resp.status == 200 and (await resp.json())["message_count"] == 1


@pytest.mark.parametrize(
    ("body", "param", "code"),
    [
        ({"items": "hello"}, "items", "invalid_type"),
        ({}, "items", "missing_required_parameter"),
        ({"items": [{"type": "message", "role": "user"}]}, "items[0].content", "missing_required_parameter"),
        ({"items": [{"type": "web_search_call"}]}, "items[0].type", "unsupported_value"),
        ({"items": [{"role": "user", "content": "x"}] * 21}, "items", "too_many_items"),
    ],
)
async def test_bad_items_are_refused(
    gateway: Gateway, http: aiohttp.ClientSession, body: dict[str, Any], param: str, code: str
) -> None:
    conversation = await gateway.sdk(api_key="key-a").conversations.create()
    async with http.post(gateway.url + f"/v1/conversations/{conversation.id}/items", json=body, headers=A) as resp:
        error = (await resp.json())["error"]
        assert (resp.status, error["param"], error["code"]) == (400, param, code)
    async with http.get(gateway.url + f"/v1/conversations/{conversation.id}", headers=A) as resp:
        assert (await resp.json())["message_count"] == 0


async def test_bad_cursors_and_both_messages_and_items_are_refused(
    gateway: Gateway, http: aiohttp.ClientSession
) -> None:
    conversation = await gateway.sdk(api_key="key-a").conversations.create(items=[{"role": "user", "content": "x"}])
    base = gateway.url + f"/v1/conversations/{conversation.id}/items"
    for query in ("after=msg_999999", "after=nonsense", "limit=0", "limit=101", "order=up"):
        async with http.get(f"{base}?{query}", headers=A) as resp:
            assert resp.status == 400, query
    for item_id in ("nonsense", "msg_999999", "fc_1_0"):
        async with http.get(f"{base}/{item_id}", headers=A) as resp:
            assert (resp.status, (await resp.json())["error"]["code"]) == (404, "item_not_found")
    body = {"messages": [user("a")], "items": [{"role": "user", "content": "b"}]}
    async with http.post(gateway.url + "/v1/conversations", json=body, headers=A) as resp:
        assert resp.status == 400


async def test_items_are_held_to_the_conversation_limits(tmp_path: Path, upstream: FakeUpstream) -> None:
    gateway = await start_gateway(
        make_config(tmp_path, upstream.url, limits__max_messages=3, limits__max_history_bytes=2048)
    )
    try:
        client = gateway.sdk(api_key="key-a")
        conversation = await client.conversations.create(items=[{"role": "user", "content": "x" * 1000}])
        with pytest.raises(openai.BadRequestError) as raised:
            await client.conversations.items.create(conversation.id, items=[{"role": "user", "content": "y" * 1500}])
        assert raised.value.code == "conversation_too_large"
        with pytest.raises(openai.BadRequestError) as raised:
            await client.conversations.items.create(conversation.id, items=[{"role": "user", "content": "z"}] * 4)
        assert raised.value.code == "too_many_messages"
        with pytest.raises(openai.BadRequestError) as raised:
            await client.conversations.create(items=[{"role": "user", "content": "z" * 3000}])
        assert raised.value.code == "conversation_too_large"
        await client.conversations.items.create(conversation.id, items=[{"role": "user", "content": "y" * 500}])
        items = await client.conversations.items.list(conversation.id)
        assert len(items.data) == 2
        size = gateway.rows("SELECT history_bytes FROM conversations")[0][0]
        assert size == sum(len(b) for (b,) in gateway.rows("SELECT body FROM messages")) <= 2048
    finally:
        await gateway.stop()
