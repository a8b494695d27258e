"""Memory through /v1/chat/completions: history prepended, system prompt kept, resent history not doubled,
conversations scoped by owner, and every message shape stored exactly."""

from __future__ import annotations

import hashlib
from typing import Any

import aiohttp

from tests.conftest import Gateway, chat_body, user
from tests.fake_upstream import FakeUpstream, Script
from tests.stored import all_messages, cli_dump, cli_list, conversations, messages, owner_of, stored

PHONE_STORE = (
    "You are a phone-store assistant. Ask the customer, one question at a time, for the screen size "
    "(6.1, 6.5 or 6.7 inch) and then the resolution (2K or 4K)."
)


async def test_stateless_client_gains_memory_phone_store(gateway: Gateway, upstream: FakeUpstream) -> None:
    upstream.script(
        Script(content="Which screen size would you like: 6.1, 6.5 or 6.7 inch?"),
        Script(content="Great. Which resolution: 2K or 4K?"),
        Script(content="A 6.7 inch phone with a 4K screen. Let me find one."),
    )
    client = gateway.sdk("customer-42")
    first = await client.chat.completions.create(
        model="qwen-plus",
        messages=[{"role": "system", "content": PHONE_STORE}, user("I want to buy a phone.")],
    )
    assert first.choices[0].message.content == "Which screen size would you like: 6.1, 6.5 or 6.7 inch?"
    await client.chat.completions.create(model="qwen-plus", messages=[user("6.7 inch")])
    await client.chat.completions.create(model="qwen-plus", messages=[user("4K please")])

    assert upstream.last["messages"] == [
        {"role": "system", "content": PHONE_STORE},
        user("I want to buy a phone."),
        {"role": "assistant", "content": "Which screen size would you like: 6.1, 6.5 or 6.7 inch?"},
        user("6.7 inch"),
        {"role": "assistant", "content": "Great. Which resolution: 2K or 4K?"},
        user("4K please"),
    ]
    assert [m["role"] for m in await stored(gateway, "customer-42")] == ["user", "assistant"] * 3


async def test_every_response_echoes_the_conversation_id(
    gateway: Gateway, upstream: FakeUpstream, http: aiohttp.ClientSession
) -> None:
    upstream.script(Script(), Script(status=500))
    for expected in (200, 500):
        async with http.post(
            f"{gateway.url}/v1/chat/completions", json=chat_body(user("hi")), headers={"X-Conversation-Id": "c-1"}
        ) as resp:
            assert resp.status == expected
            assert resp.headers["X-Conversation-Id"] == "c-1"
    async with http.post(f"{gateway.url}/v1/chat/completions", json={}, headers={"X-Conversation-Id": "c-1"}) as resp:
        assert resp.status == 400
        assert resp.headers["X-Conversation-Id"] == "c-1"


async def test_conversation_id_must_be_printable_ascii_without_spaces(
    gateway: Gateway, upstream: FakeUpstream, http: aiohttp.ClientSession
) -> None:
    for bad in ("", "has space", "tab\there", "x" * 257, "caf\u00e9"):
        async with http.post(
            f"{gateway.url}/v1/chat/completions",
            json=chat_body(user("hi")),
            headers={"X-Conversation-Id": bad.encode().decode("latin-1")},
        ) as resp:
            assert resp.status == 400, bad
            error = (await resp.json())["error"]
            assert error["code"] == "invalid_conversation_id"
            assert "X-Conversation-Id" not in resp.headers
    assert upstream.requests == []
    goods = ("x" * 256, "a", "!~#$%&'()*+,-./:;<=>?@[]^_`{|}")
    for good in goods:
        async with http.post(
            f"{gateway.url}/v1/chat/completions", json=chat_body(user("hi")), headers={"X-Conversation-Id": good}
        ) as resp:
            assert resp.status == 200, good
    # Every owner's conversations: the good ids, of clients without a credential, and none of the bad ones.
    listed = await cli_list(gateway.db_path)
    assert sorted((c.owner, c.id) for c in listed) == sorted((owner_of(None), good) for good in goods)


async def test_two_credentials_never_share_a_conversation(gateway: Gateway, upstream: FakeUpstream) -> None:
    alice, bob = gateway.sdk("shared-id", api_key="key-alice"), gateway.sdk("shared-id", api_key="key-bob")
    await alice.chat.completions.create(model="qwen-plus", messages=[user("alice secret")])
    await bob.chat.completions.create(model="qwen-plus", messages=[user("bob here")])
    assert upstream.last["messages"] == [user("bob here")]
    await alice.chat.completions.create(model="qwen-plus", messages=[user("again")])
    assert [m["content"] for m in upstream.last["messages"]] == ["alice secret", "reply 1", "again"]
    owners = {header["owner"] for header, *_ in await cli_dump(gateway.db_path)}  # every owner's, as stored
    assert owners == {hashlib.sha256(b"key-alice").hexdigest(), hashlib.sha256(b"key-bob").hexdigest()}


async def test_client_without_credential_has_empty_owner(
    gateway: Gateway, upstream: FakeUpstream, http: aiohttp.ClientSession
) -> None:
    for text in ("one", "two"):
        async with http.post(
            f"{gateway.url}/v1/chat/completions", json=chat_body(user(text)), headers={"X-Conversation-Id": "anon"}
        ) as resp:
            assert resp.status == 200
    assert "Authorization" not in upstream.requests[-1].headers
    assert [m["content"] for m in upstream.last["messages"]] == ["one", "reply 1", "two"]
    assert [header["owner"] for header, *_ in await cli_dump(gateway.db_path)] == [""]


async def test_request_system_prompt_replaces_stored_one_for_later_turns(
    gateway: Gateway, upstream: FakeUpstream
) -> None:
    client = gateway.sdk("sys")
    await client.chat.completions.create(
        model="qwen-plus", messages=[{"role": "system", "content": "Be brief."}, user("a")]
    )
    await client.chat.completions.create(model="qwen-plus", messages=[user("b")])
    assert upstream.last["messages"][0] == {"role": "system", "content": "Be brief."}
    await client.chat.completions.create(
        model="qwen-plus", messages=[{"role": "system", "content": "Be verbose."}, user("c")]
    )
    assert upstream.last["messages"][0] == {"role": "system", "content": "Be verbose."}
    assert sum(m["role"] == "system" for m in upstream.last["messages"]) == 1
    await client.chat.completions.create(model="qwen-plus", messages=[user("d")])
    assert upstream.last["messages"][0] == {"role": "system", "content": "Be verbose."}
    assert [m["content"] for m in upstream.last["messages"][1:] if m["role"] == "user"] == ["a", "b", "c", "d"]
    assert all(m["role"] != "system" for m in await stored(gateway, "sys"))


async def test_resent_history_is_not_doubled(gateway: Gateway, upstream: FakeUpstream) -> None:
    """The DashScope guide's loop: append the user message, send everything, append the reply."""
    client = gateway.sdk("full-history")
    messages: list[Any] = [{"role": "system", "content": PHONE_STORE}]
    for text in ("I want a phone", "6.5 inch", "2K"):
        messages.append(user(text))
        completion = await client.chat.completions.create(model="qwen-plus", messages=messages)
        # The SDK's own dump adds refusal/annotations/audio/function_call/tool_calls: still recognised.
        messages.append(completion.choices[0].message.model_dump())
        sent = upstream.last["messages"]
        assert [m["role"] for m in sent] == ["system"] + ["user", "assistant"] * (len(messages) // 2 - 1) + ["user"]
    recorded = await stored(gateway, "full-history")
    assert [m["content"] for m in recorded] == ["I want a phone", "reply 1", "6.5 inch", "reply 2", "2K", "reply 3"]


async def test_partially_resent_tail_is_recognised(gateway: Gateway, upstream: FakeUpstream) -> None:
    client = gateway.sdk("tail")
    await client.chat.completions.create(model="qwen-plus", messages=[user("q1")])
    await client.chat.completions.create(model="qwen-plus", messages=[user("q2")])
    # A client that keeps only its last exchange and resends it with the new question.
    await client.chat.completions.create(
        model="qwen-plus", messages=[user("q2"), {"role": "assistant", "content": "reply 2"}, user("q3")]
    )
    assert [m["content"] for m in upstream.last["messages"]] == ["q1", "reply 1", "q2", "reply 2", "q3"]
    # The same words again as a genuinely new message are stored again.
    await client.chat.completions.create(model="qwen-plus", messages=[user("q3")])
    assert [m["content"] for m in await stored(gateway, "tail")][-4:] == ["q3", "reply 3", "q3", "reply 4"]


async def test_request_of_only_stored_messages_is_rejected(
    gateway: Gateway, upstream: FakeUpstream, http: aiohttp.ClientSession
) -> None:
    await gateway.sdk("dup").chat.completions.create(model="qwen-plus", messages=[user("q1")])
    async with http.post(
        f"{gateway.url}/v1/chat/completions",
        json=chat_body(user("q1"), {"role": "assistant", "content": "reply 1"}),
        headers={"X-Conversation-Id": "dup", "Authorization": "Bearer sk-test"},
    ) as resp:
        assert resp.status == 400
        assert (await resp.json())["error"]["code"] == "no_new_messages"
    assert len(upstream.requests) == 1
    assert [m["content"] for m in await all_messages(gateway.db_path)] == ["q1", "reply 1"]  # of any owner


async def test_other_fields_pass_through_unchanged(gateway: Gateway, upstream: FakeUpstream) -> None:
    tools = [{"type": "function", "function": {"name": "lookup", "parameters": {"type": "object", "properties": {}}}}]
    fields = {
        "model": "qwen3-max",
        "temperature": 0.3,
        "top_p": 0.9,
        "tools": tools,
        "tool_choice": "auto",
        "response_format": {"type": "json_object"},
        "enable_thinking": False,
        "enable_search": True,
        "seed": 7,
        "stop": ["\n\n"],
    }
    client = gateway.sdk("fields")
    await client.chat.completions.create(
        messages=[user("hi")],
        extra_body={"enable_thinking": False, "enable_search": True},
        **{k: v for k, v in fields.items() if k not in ("enable_thinking", "enable_search")},
    )
    await client.chat.completions.create(model="qwen3-max", messages=[user("again")])
    first = upstream.requests[0].body
    assert {k: v for k, v in first.items() if k != "messages"} == fields
    assert [c["model"] for c in await conversations(gateway)] == ["qwen3-max"]


async def test_reasoning_is_stored_but_not_replayed(gateway: Gateway, upstream: FakeUpstream) -> None:
    upstream.script(Script(content="4K is sharper.", reasoning="The user asks about resolution..."))
    client = gateway.sdk("think")
    await client.chat.completions.create(model="qwen3-max", messages=[user("2K or 4K?")])
    await client.chat.completions.create(model="qwen3-max", messages=[user("thanks")])
    assert (await stored(gateway, "think"))[1] == {
        "role": "assistant",
        "content": "4K is sharper.",
        "reasoning_content": "The user asks about resolution...",
    }
    assert upstream.last["messages"][1] == {"role": "assistant", "content": "4K is sharper."}


TOOL_CALL = {"id": "call_1", "type": "function", "function": {"name": "stock", "arguments": '{"size": "6.7"}'}}


async def test_tool_calls_and_results_are_stored_exactly(gateway: Gateway, upstream: FakeUpstream) -> None:
    upstream.script(Script(tool_calls=[TOOL_CALL]), Script(content="We have 3 in stock."))
    client = gateway.sdk("tools")
    first = await client.chat.completions.create(model="qwen-plus", messages=[user("Any 6.7 inch in stock?")])
    assert first.choices[0].message.tool_calls is not None
    tool_result = {"role": "tool", "tool_call_id": "call_1", "content": '{"count": 3}'}
    await client.chat.completions.create(model="qwen-plus", messages=[tool_result])
    assert upstream.last["messages"] == [
        user("Any 6.7 inch in stock?"),
        {"role": "assistant", "content": "", "tool_calls": [TOOL_CALL]},
        tool_result,
    ]
    recorded = await stored(gateway, "tools")
    assert recorded[1]["tool_calls"] == [TOOL_CALL]
    assert recorded[2] == tool_result


async def test_list_content_parts_are_stored_exactly(gateway: Gateway, upstream: FakeUpstream) -> None:
    parts = [
        {"type": "text", "text": "Is this phone 6.1 inch?"},
        {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}},
    ]
    client = gateway.sdk("vision")
    await client.chat.completions.create(model="qwen-vl-max", messages=[{"role": "user", "content": parts}])
    await client.chat.completions.create(model="qwen-vl-max", messages=[user("and the price?")])
    assert (await stored(gateway, "vision"))[0] == {"role": "user", "content": parts}
    assert upstream.last["messages"][0] == {"role": "user", "content": parts}


async def test_usage_is_stored_with_the_turn(gateway: Gateway, upstream: FakeUpstream) -> None:
    usage = {
        "prompt_tokens": 120,
        "completion_tokens": 30,
        "total_tokens": 150,
        "prompt_tokens_details": {"cached_tokens": 100},
    }
    upstream.script(Script(usage=usage))
    await gateway.sdk("usage").chat.completions.create(model="qwen-plus", messages=[user("hi")])
    recorded = await messages(gateway, "usage")
    assert (recorded[0]["role"], recorded[0].get("usage")) == ("user", None)
    assert recorded[1]["usage"] == usage
    totals = [c["usage"] for c in await conversations(gateway)]
    assert totals == [{"prompt_tokens": 120, "completion_tokens": 30, "cached_tokens": 100}]
