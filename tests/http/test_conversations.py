"""The conversations API: list, read, page and delete stored conversations, always scoped to the caller's owner."""

from __future__ import annotations

import asyncio
from typing import Any
from urllib.parse import quote

import aiohttp
import pytest

from tests.conftest import Gateway, turn_in_flight, user
from tests.fake_upstream import FakeUpstream
from tests.stored import cli_dump, cli_list

A = {"Authorization": "Bearer key-a"}
B = {"Authorization": "Bearer key-b"}


async def _turn(gateway: Gateway, conversation: str, text: str, api_key: str = "key-a") -> None:
    client = gateway.sdk(conversation, api_key=api_key)
    await client.chat.completions.create(model="qwen-plus", messages=[user(text)])


async def _get(http: aiohttp.ClientSession, url: str, headers: dict[str, str] = A) -> tuple[int, Any]:
    async with http.get(url, headers=headers) as resp:
        return resp.status, await resp.json()


async def test_list_is_newest_first_paged_and_scoped_to_the_owner(
    gateway: Gateway, http: aiohttp.ClientSession
) -> None:
    for name in ("first", "second", "third"):
        await _turn(gateway, name, f"hello {name}")
    await _turn(gateway, "someone-elses", "hi", api_key="key-b")
    status, page = await _get(http, gateway.url + "/v1/conversations?limit=2")
    assert status == 200
    assert page["object"] == "list"
    assert [c["id"] for c in page["data"]] == ["third", "second"]
    assert page["has_more"] is True
    assert (page["first_id"], page["last_id"]) == ("third", "second")
    _, rest = await _get(http, gateway.url + f"/v1/conversations?limit=2&after={page['last_id']}")
    assert [c["id"] for c in rest["data"]] == ["first"] and rest["has_more"] is False
    _, ascending = await _get(http, gateway.url + "/v1/conversations?order=asc")
    assert [c["id"] for c in ascending["data"]] == ["first", "second", "third"]
    item = page["data"][0]
    assert item["object"] == "conversation" and item["message_count"] == 2 and item["model"] == "qwen-plus"
    assert item["metadata"] == {}
    assert item["usage"] == {"prompt_tokens": 10, "completion_tokens": 5, "cached_tokens": 0}
    assert isinstance(item["created_at"], int) and item["updated_at"] >= item["created_at"]


async def test_get_and_page_messages(gateway: Gateway, http: aiohttp.ClientSession) -> None:
    for text in ("one", "two", "three"):
        await _turn(gateway, "paged", text)
    status, conversation = await _get(http, gateway.url + "/v1/conversations/paged")
    assert status == 200 and conversation["id"] == "paged" and conversation["message_count"] == 6
    assert conversation["usage"]["prompt_tokens"] == 30
    _, first = await _get(http, gateway.url + "/v1/conversations/paged/messages?limit=4")
    assert [m["content"] for m in first["data"]] == ["one", "reply 1", "two", "reply 2"]
    assert first["has_more"] is True
    _, second = await _get(http, gateway.url + f"/v1/conversations/paged/messages?limit=4&after={first['last_id']}")
    assert [m["content"] for m in second["data"]] == ["three", "reply 3"] and second["has_more"] is False
    _, again = await _get(http, gateway.url + "/v1/conversations/paged/messages")
    assert [m["id"] for m in again["data"]] == [m["id"] for m in first["data"] + second["data"]]  # stable ids
    reply = again["data"][1]
    assert reply["role"] == "assistant" and reply["object"] == "conversation.message"
    assert reply["interrupted"] is False and reply["usage"]["completion_tokens"] == 5
    assert "usage" not in again["data"][0]
    _, newest = await _get(http, gateway.url + "/v1/conversations/paged/messages?order=desc&limit=1")
    assert [m["content"] for m in newest["data"]] == ["reply 3"]


async def test_delete_removes_every_row_and_the_next_turn_starts_fresh(
    gateway: Gateway, upstream: FakeUpstream, http: aiohttp.ClientSession
) -> None:
    await _turn(gateway, "gone", "remember me")
    await _turn(gateway, "kept", "keep me")
    async with http.delete(gateway.url + "/v1/conversations/gone", headers=A) as resp:
        assert resp.status == 200
        assert await resp.json() == {"id": "gone", "object": "conversation.deleted", "deleted": True}
    assert [c.id for c in await cli_list(gateway.db_path)] == ["kept"]  # no "gone" of any owner
    assert gateway.rows("SELECT count(*) FROM messages") == [(2,)]  # only "kept"'s turn is left
    async with http.delete(gateway.url + "/v1/conversations/gone", headers=A) as resp:
        assert resp.status == 404
    await _turn(gateway, "gone", "who am I?")
    assert upstream.last["messages"] == [user("who am I?")]  # nothing remembered, not even from a cache


async def test_another_owner_gets_the_same_404_as_a_missing_id_and_changes_nothing(
    gateway: Gateway, http: aiohttp.ClientSession
) -> None:
    await _turn(gateway, "private", "my secret plan")
    before = await cli_dump(gateway.db_path)  # every conversation of every owner, exactly
    answers = []
    for conversation in ("private", "does-not-exist"):
        for method, path in (
            ("GET", f"/v1/conversations/{conversation}"),
            ("GET", f"/v1/conversations/{conversation}/messages"),
            ("DELETE", f"/v1/conversations/{conversation}"),
            ("PATCH", f"/v1/conversations/{conversation}"),
            ("POST", f"/v1/conversations/{conversation}/rewind"),
            ("POST", f"/v1/conversations/{conversation}/fork"),
        ):
            body = {"metadata": {"k": "v"}} if method == "PATCH" else None
            async with http.request(method, gateway.url + path, headers=B, json=body) as resp:
                body = await resp.json()
                answers.append((resp.status, body["error"]["type"], body["error"]["code"]))
                if conversation == "private":
                    assert body["error"]["message"] == f"No conversation found with id '{conversation}'."
    assert set(answers) == {(404, "not_found_error", "conversation_not_found")}
    _, listing = await _get(http, gateway.url + "/v1/conversations", headers=B)
    assert listing["data"] == []
    assert await cli_dump(gateway.db_path) == before  # no fork, patch, rewind or delete took, of any owner
    assert [(header["id"], header["metadata"]) for header, *_ in before] == [("private", {})]


@pytest.mark.parametrize(
    ("query", "param"),
    [
        ("limit=0", "limit"),
        ("limit=101", "limit"),
        ("limit=ten", "limit"),
        ("order=sideways", "order"),
        ("after=nope", "after"),
        ("limit=\u00b2", "limit"),  # a digit to str.isdigit, not to int()
        ("after=msg_99999999999999999999", "after"),  # past SQLite's integers
    ],
)
async def test_bad_paging_parameters_are_400(
    gateway: Gateway, http: aiohttp.ClientSession, query: str, param: str
) -> None:
    await _turn(gateway, "p", "hi")
    for path in ("/v1/conversations", "/v1/conversations/p/messages"):
        status, body = await _get(http, f"{gateway.url}{path}?{query}")
        assert status == 400
        assert body["error"]["type"] == "invalid_request_error" and body["error"]["param"] == param


async def test_ids_with_slashes_and_spaces_rejected(gateway: Gateway, http: aiohttp.ClientSession) -> None:
    await _turn(gateway, "shop/2026#1", "hi")
    status, conversation = await _get(http, gateway.url + "/v1/conversations/" + quote("shop/2026#1", safe=""))
    assert status == 200 and conversation["id"] == "shop/2026#1"
    status, _ = await _get(http, gateway.url + "/v1/conversations/" + quote("shop/2026#1", safe="") + "/messages")
    assert status == 200
    status, body = await _get(http, gateway.url + "/v1/conversations/has%20space")
    assert status == 400 and body["error"]["code"] == "invalid_conversation_id"


async def test_delete_waits_for_the_turn_in_flight(
    gateway: Gateway, upstream: FakeUpstream, http: aiohttp.ClientSession
) -> None:
    async with turn_in_flight(gateway, upstream, "busy", "hi"):
        delete = asyncio.create_task(http.delete(gateway.url + "/v1/conversations/busy", headers=A))
        await asyncio.sleep(0.2)
        assert not delete.done()  # ordered behind the turn, not interleaved with it
    async with await delete as resp:
        assert resp.status == 200
    assert await cli_list(gateway.db_path) == []  # no conversation, of any owner


async def test_patch_replaces_metadata_and_it_shows_in_lists(gateway: Gateway, http: aiohttp.ClientSession) -> None:
    await _turn(gateway, "tagged", "hi")
    url = gateway.url + "/v1/conversations/tagged"
    async with http.patch(url, json={"metadata": {"topic": "phones", "store": "berlin"}}, headers=A) as resp:
        assert resp.status == 200
        assert (await resp.json())["metadata"] == {"topic": "phones", "store": "berlin"}
    async with http.patch(url, json={"metadata": {"topic": "tablets"}}, headers=A) as resp:
        assert (await resp.json())["metadata"] == {"topic": "tablets"}  # replaced, not merged
    _, listing = await _get(http, gateway.url + "/v1/conversations")
    assert listing["data"][0]["metadata"] == {"topic": "tablets"}
    async with http.patch(url, json={"metadata": {"x": "y"}}, headers=B) as resp:
        assert resp.status == 404
    _, still = await _get(http, url)
    assert still["metadata"] == {"topic": "tablets"} and still["message_count"] == 2


@pytest.mark.parametrize(
    "body",
    [
        b'{"metadata": {"k": 1}}',
        b'{"metadata": ["a"]}',
        b"{}",
        b'{"metadata": {"' + b"k" * 65 + b'": "v"}}',
        b'{"metadata": {"k": "' + b"v" * 513 + b'"}}',
        b'{"metadata": {' + b",".join(b'"k%d": "v"' % i for i in range(17)) + b"}}",
        b"not json",
    ],
)
async def test_bad_metadata_is_400_and_changes_nothing(
    gateway: Gateway, http: aiohttp.ClientSession, body: bytes
) -> None:
    await _turn(gateway, "m", "hi")
    headers = {**A, "Content-Type": "application/json"}
    async with http.patch(gateway.url + "/v1/conversations/m", data=body, headers=headers) as resp:
        assert resp.status == 400
        assert (await resp.json())["error"]["type"] == "invalid_request_error"
    assert [(header["id"], header["metadata"]) for header, *_ in await cli_dump(gateway.db_path)] == [("m", {})]
