"""Changing stored conversations through the API: create, rewind, fork and retention, each followed by the chat
turns that must see the edited history."""

from __future__ import annotations

import asyncio
import sqlite3
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from gateway.http.state import CONVERSATIONS
from tests.conftest import Gateway, make_config, start_gateway, turn_in_flight, user
from tests.fake_upstream import FakeUpstream, Script
from tests.stored import cli_dump, cli_list, conversation_ids, owner_of

A = {"Authorization": "Bearer key-a"}
B = {"Authorization": "Bearer key-b"}
SYSTEM = {"role": "system", "content": "You sell phones. Ask one question at a time."}


async def _turn(gateway: Gateway, conversation: str, text: str) -> None:
    client = gateway.sdk(conversation, api_key="key-a")
    await client.chat.completions.create(model="qwen-plus", messages=[user(text)])


async def _post(
    http: aiohttp.ClientSession, url: str, body: Any = None, headers: dict[str, str] = A
) -> tuple[int, Any]:
    async with http.post(url, json=body, headers=headers) as resp:
        return resp.status, await resp.json()


async def _messages(http: aiohttp.ClientSession, gateway: Gateway, conversation: str) -> list[dict[str, Any]]:
    async with http.get(f"{gateway.url}/v1/conversations/{conversation}/messages", headers=A) as resp:
        assert resp.status == 200
        return list((await resp.json())["data"])


def _contents(messages: list[dict[str, Any]]) -> list[Any]:
    return [m["content"] for m in messages]


async def test_create_with_id_metadata_and_messages_then_chat_continues_it(
    gateway: Gateway, upstream: FakeUpstream, http: aiohttp.ClientSession
) -> None:
    seeded = [SYSTEM, user("I want a phone"), {"role": "assistant", "content": "What screen size?"}]
    status, created = await _post(
        http, gateway.url + "/v1/conversations", {"id": "shop-1", "metadata": {"store": "berlin"}, "messages": seeded}
    )
    assert status == 200
    assert created["id"] == "shop-1" and created["object"] == "conversation"
    assert created["metadata"] == {"store": "berlin"} and created["message_count"] == 2
    assert _contents(await _messages(http, gateway, "shop-1")) == ["I want a phone", "What screen size?"]
    await _turn(gateway, "shop-1", "6.1 inch")
    assert upstream.last["messages"] == [*seeded, user("6.1 inch")]


async def test_create_without_a_body_makes_an_empty_conversation_with_a_new_id(
    gateway: Gateway, http: aiohttp.ClientSession
) -> None:
    async with http.post(gateway.url + "/v1/conversations", headers=A) as resp:
        assert resp.status == 200
        created = await resp.json()
    assert created["id"].startswith("conv_") and created["message_count"] == 0 and created["metadata"] == {}
    _, again = await _post(http, gateway.url + "/v1/conversations", {})
    assert again["id"] != created["id"]
    listed = await cli_list(gateway.db_path)  # every owner's: these two, key-a's, and nothing else
    assert sorted((c.owner, c.id, c.messages) for c in listed) == sorted(
        (owner_of("key-a")[:12], c["id"], 0) for c in (created, again)
    )


async def test_create_of_an_existing_id_is_409_and_changes_nothing(
    gateway: Gateway, http: aiohttp.ClientSession
) -> None:
    await _turn(gateway, "taken", "hello")
    before = await cli_dump(gateway.db_path)  # every conversation, exactly: times, totals, messages
    status, body = await _post(http, gateway.url + "/v1/conversations", {"id": "taken", "messages": [user("x")]})
    assert status == 409
    assert body["error"]["code"] == "conversation_exists" and body["error"]["param"] == "id"
    assert await cli_dump(gateway.db_path) == before
    status, _ = await _post(http, gateway.url + "/v1/conversations", {"id": "taken"}, headers=B)
    assert status == 200  # ids are per owner


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"id": "has space"}, "id"),
        ({"id": 7}, "id"),
        ({"metadata": {"k": 1}}, "metadata"),
        ({"messages": [{"role": "robot", "content": "x"}]}, "messages[0].role"),
        ({"messages": "hello"}, "messages"),
        ({"title": "x"}, "title"),
        ([1, 2], None),
    ],
)
async def test_bad_create_is_400_and_stores_nothing(
    gateway: Gateway, http: aiohttp.ClientSession, body: Any, param: str | None
) -> None:
    status, answer = await _post(http, gateway.url + "/v1/conversations", body)
    assert status == 400
    assert answer["error"]["type"] == "invalid_request_error" and answer["error"]["param"] == param
    assert await cli_list(gateway.db_path) == []  # no conversation, of any owner


async def test_rewind_removes_the_last_turns_and_the_next_turn_sees_the_rest(
    gateway: Gateway, upstream: FakeUpstream, http: aiohttp.ClientSession
) -> None:
    for text in ("one", "two", "three"):
        await _turn(gateway, "r", text)
    status, rewound = await _post(http, gateway.url + "/v1/conversations/r/rewind")
    assert status == 200
    assert rewound["message_count"] == 4 and rewound["usage"]["prompt_tokens"] == 20  # recounted
    await _turn(gateway, "r", "three, again")
    assert _contents(upstream.last["messages"]) == ["one", "reply 1", "two", "reply 2", "three, again"]
    status, rewound = await _post(http, gateway.url + "/v1/conversations/r/rewind", {"turns": 2})
    assert status == 200 and rewound["message_count"] == 2
    assert _contents(await _messages(http, gateway, "r")) == ["one", "reply 1"]
    assert gateway.rows("SELECT count(*) FROM messages") == [(2,)]  # rows gone, not hidden
    await _turn(gateway, "r", "two, again")
    assert _contents(upstream.last["messages"]) == ["one", "reply 1", "two, again"]
    seqs = gateway.rows("SELECT seq FROM messages ORDER BY seq")
    assert seqs == [(0,), (1,), (2,), (3,)]  # positions stay dense after a rewind


async def test_rewind_counts_user_turns_not_messages(
    gateway: Gateway, upstream: FakeUpstream, http: aiohttp.ClientSession
) -> None:
    call = {"id": "call_1", "type": "function", "function": {"name": "stock", "arguments": "{}"}}
    upstream.script(Script(tool_calls=[call]))
    await _turn(gateway, "tools", "is the 6.7 inch in stock?")
    client = gateway.sdk("tools", api_key="key-a")
    await client.chat.completions.create(
        model="qwen-plus", messages=[{"role": "tool", "tool_call_id": "call_1", "content": "yes"}]
    )
    assert len(await _messages(http, gateway, "tools")) == 4
    status, rewound = await _post(http, gateway.url + "/v1/conversations/tools/rewind", {"turns": 1})
    assert status == 200 and rewound["message_count"] == 0  # the tool round trip belonged to that user turn


@pytest.mark.parametrize("turns", [0, -1, "1", True, 1.5, 3])
async def test_bad_rewind_is_400_and_changes_nothing(gateway: Gateway, http: aiohttp.ClientSession, turns: Any) -> None:
    await _turn(gateway, "r", "one")
    await _turn(gateway, "r", "two")
    before = await cli_dump(gateway.db_path)  # every conversation of every owner, exactly
    status, body = await _post(http, gateway.url + "/v1/conversations/r/rewind", {"turns": turns})
    assert status == 400 and body["error"]["param"] == "turns"
    assert await cli_dump(gateway.db_path) == before


async def test_fork_copies_history_up_to_a_message_and_both_go_their_own_way(
    gateway: Gateway, upstream: FakeUpstream, http: aiohttp.ClientSession
) -> None:
    status, _ = await _post(http, gateway.url + "/v1/conversations", {"id": "main", "messages": [SYSTEM]})
    for text in ("6.1 inch", "4K"):
        await _turn(gateway, "main", text)
    first_reply = (await _messages(http, gateway, "main"))[1]
    status, fork = await _post(
        http,
        gateway.url + "/v1/conversations/main/fork",
        {"new_id": "alt", "at_message_id": first_reply["id"], "metadata": {"why": "try 2K"}},
    )
    assert status == 200
    assert fork["id"] == "alt" and fork["message_count"] == 2
    assert fork["metadata"] == {"why": "try 2K", "forked_from": "main"}
    assert fork["usage"]["prompt_tokens"] == 10  # the copied reply's usage only
    await _turn(gateway, "alt", "2K")
    reply_1 = {"role": "assistant", "content": "reply 1"}
    assert upstream.last["messages"] == [SYSTEM, user("6.1 inch"), reply_1, user("2K")]
    await _turn(gateway, "main", "done")
    assert _contents(upstream.last["messages"][1:]) == ["6.1 inch", "reply 1", "4K", "reply 2", "done"]
    status, whole = await _post(http, gateway.url + "/v1/conversations/main/fork", {})
    assert status == 200 and whole["id"].startswith("conv_") and whole["message_count"] == 6


async def test_fork_errors(gateway: Gateway, http: aiohttp.ClientSession) -> None:
    await _turn(gateway, "src", "hi")
    await _turn(gateway, "other", "hi")
    foreign = (await _messages(http, gateway, "other"))[0]["id"]
    before = await cli_dump(gateway.db_path)  # every conversation of every owner, exactly
    url = gateway.url + "/v1/conversations/src/fork"
    cases = [
        ({"new_id": "other"}, A, 409, "conversation_exists"),
        ({"at_message_id": foreign}, A, 400, "invalid_message_id"),
        ({"at_message_id": "msg_nope"}, A, 400, "invalid_message_id"),
        ({"new_id": "x y"}, A, 400, "invalid_conversation_id"),
        ({"metadata": {f"k{i}": "v" for i in range(16)}}, A, 400, "invalid_metadata"),  # 17 with forked_from
        ({}, B, 404, "conversation_not_found"),
    ]
    for body, headers, status, code in cases:
        got, answer = await _post(http, url, body, headers=headers)
        assert (got, answer["error"]["code"]) == (status, code), body
    assert await cli_dump(gateway.db_path) == before  # no fork of any owner, and src and other as they were


async def test_rewind_waits_for_the_turn_in_flight(
    gateway: Gateway, upstream: FakeUpstream, http: aiohttp.ClientSession
) -> None:
    await _turn(gateway, "busy", "first")
    async with turn_in_flight(gateway, upstream, "busy", "second"):
        rewind = asyncio.create_task(_post(http, gateway.url + "/v1/conversations/busy/rewind"))
        await asyncio.sleep(0.2)
        assert not rewind.done()
    status, rewound = await rewind
    assert status == 200 and rewound["message_count"] == 2  # it removed the turn that was in flight
    assert _contents(await _messages(http, gateway, "busy")) == ["first", "reply 1"]


@pytest.fixture
async def expiring(tmp_path: Path, upstream: FakeUpstream) -> AsyncIterator[Gateway]:
    config = make_config(tmp_path, upstream.url, retention__idle_days=1, retention__purge_interval_seconds=0.1)
    gw = await start_gateway(config)
    yield gw
    await gw.stop()


def _backdate(db_path: Path, conversation: str, days: float) -> None:
    with sqlite3.connect(db_path) as db:
        db.execute(
            "UPDATE conversations SET updated_at = ? WHERE external_id = ?", (time.time() - days * 86400, conversation)
        )


async def test_the_server_purges_idle_conversations_and_their_rows(expiring: Gateway, upstream: FakeUpstream) -> None:
    for name in ("stale", "fresh"):
        await _turn(expiring, name, "hello")
    _backdate(expiring.db_path, "stale", 2)
    deadline = time.monotonic() + 5
    while len(await conversation_ids(expiring, "key-a")) != 1 and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    assert [c.id for c in await cli_list(expiring.db_path)] == ["fresh"]  # of every owner's
    assert expiring.rows("SELECT count(*) FROM messages") == [(2,)]
    await _turn(expiring, "stale", "hello again")  # starts over: the cached history went with the rows
    assert upstream.last["messages"] == [user("hello again")]


async def test_purge_skips_a_conversation_with_a_turn_in_flight(
    gateway: Gateway, upstream: FakeUpstream, http: aiohttp.ClientSession
) -> None:
    await _turn(gateway, "old-but-busy", "first")
    await _turn(gateway, "old", "first")
    for name in ("old-but-busy", "old"):
        _backdate(gateway.db_path, name, 30)
    async with turn_in_flight(gateway, upstream, "old-but-busy", "second"):
        assert await gateway.runner.app[CONVERSATIONS].purge(86400) == 1
    assert _contents(await _messages(http, gateway, "old-but-busy")) == ["first", "reply 1", "second", "reply 3"]
    assert [c.id for c in await cli_list(gateway.db_path)] == ["old-but-busy"]  # of every owner's
