"""``GET /v1/conversations?q=``: full-text search over the caller's conversations (words in any order, across
messages, case-insensitive, Chinese without spaces), each result with highlighted snippets; scoped to the owner;
paged like the list.  And what the console reads besides: ``context`` (the stored cut) on one conversation, and
``GET /v1/conversations/{id}/export``."""

from __future__ import annotations

import json
from typing import Any

import aiohttp
import pytest

from tests.conftest import Gateway, make_config, start_gateway, user
from tests.fake_upstream import FakeUpstream, Script

SHOP = "sk-shop"
OTHER = "sk-other"
SYSTEM = {"role": "system", "content": "你是手机店的店员,一次只问一个问题。"}


async def _say(gateway: Gateway, upstream: FakeUpstream, key: str, conversation: str, text: str, reply: str) -> None:
    upstream.script(Script(content=reply))
    messages: list[Any] = [SYSTEM, user(text)]
    await gateway.sdk(conversation, api_key=key).chat.completions.create(model="qwen-plus", messages=messages)


async def _search(
    http: aiohttp.ClientSession, gateway: Gateway, q: str, key: str = SHOP, **params: str
) -> tuple[int, dict[str, Any]]:
    async with http.get(
        gateway.url + "/v1/conversations", params={"q": q, **params}, headers={"Authorization": f"Bearer {key}"}
    ) as response:
        return response.status, await response.json()


@pytest.fixture
async def shop(gateway: Gateway, upstream: FakeUpstream) -> Gateway:
    await _say(gateway, upstream, SHOP, "phones", "我想买一部手机", "您想要6.1、6.5还是6.7英寸的屏幕?")
    await _say(gateway, upstream, SHOP, "phones", "我想要6.7英寸的", "Which resolution: 2K or 4K?")
    await _say(gateway, upstream, SHOP, "laptops", "A laptop with a 4K screen, please", "Which size, 14 or 16 inch?")
    await _say(gateway, upstream, OTHER, "theirs", "我也想要6.7英寸的 4K", "好的")
    return gateway


async def test_chinese_and_short_words_find_the_conversation(shop: Gateway, http: aiohttp.ClientSession) -> None:
    status, found = await _search(http, shop, "英寸")
    assert status == 200 and [c["id"] for c in found["data"]] == ["phones"]
    assert found["object"] == "list" and found["has_more"] is False
    matches = found["data"][0]["matches"]
    assert [m["role"] for m in matches] == ["assistant", "user"]  # in conversation order
    for match in matches:
        assert all(match["snippet"][a:b] == "英寸" for a, b in match["highlights"]) and match["highlights"]
        assert match["id"].startswith("msg_")
    _, found = await _search(http, shop, "4K")
    assert [c["id"] for c in found["data"]] == ["laptops", "phones"]  # newest activity first


async def test_words_match_in_any_order_across_messages_and_case(shop: Gateway, http: aiohttp.ClientSession) -> None:
    _, found = await _search(http, shop, "4k 6.7")  # "6.7" in the user's message, "4K" in the reply
    assert [c["id"] for c in found["data"]] == ["phones"]
    _, found = await _search(http, shop, "resol")  # the last word as a prefix
    assert [c["id"] for c in found["data"]] == ["phones"]
    _, found = await _search(http, shop, "4K tablet")
    assert found["data"] == []


async def test_another_owners_conversations_never_appear(shop: Gateway, http: aiohttp.ClientSession) -> None:
    _, theirs = await _search(http, shop, "6.7英寸", key=OTHER)
    assert [c["id"] for c in theirs["data"]] == ["theirs"]
    _, mine = await _search(http, shop, "6.7英寸")
    assert [c["id"] for c in mine["data"]] == ["phones"]


async def test_results_page_like_the_list(shop: Gateway, http: aiohttp.ClientSession) -> None:
    _, first = await _search(http, shop, "4K", limit="1")
    assert [c["id"] for c in first["data"]] == ["laptops"] and first["has_more"] is True
    _, second = await _search(http, shop, "4K", limit="1", after="laptops")
    assert [c["id"] for c in second["data"]] == ["phones"] and second["has_more"] is False
    _, oldest = await _search(http, shop, "4K", order="asc")
    assert [c["id"] for c in oldest["data"]] == ["phones", "laptops"]


@pytest.mark.parametrize("q", ["", "   ", "x" * 257, " ".join(["w"] * 9), "y" * 65])
async def test_a_bad_query_is_a_clear_400(shop: Gateway, http: aiohttp.ClientSession, q: str) -> None:
    status, body = await _search(http, shop, q)
    assert status == 400 and body["error"]["code"] == "invalid_query" and body["error"]["param"] == "q"


async def test_export_downloads_what_the_cli_writes(shop: Gateway, http: aiohttp.ClientSession) -> None:
    headers = {"Authorization": f"Bearer {SHOP}"}
    async with http.get(shop.url + "/v1/conversations/phones/export", headers=headers) as response:
        assert response.status == 200 and response.content_type == "application/x-ndjson"
        assert response.headers["Content-Disposition"] == 'attachment; filename="phones.jsonl"'
        lines = [json.loads(line) for line in (await response.text()).splitlines()]
    assert lines[0]["object"] == "conversation" and lines[0]["id"] == "phones" and len(lines) == 5
    async with http.get(shop.url + "/v1/conversations/phones/export?format=openai", headers=headers) as response:
        exported = json.loads(await response.text())
    assert [m["role"] for m in exported["messages"]] == ["system", "user", "assistant", "user", "assistant"]
    async with http.get(shop.url + "/v1/conversations/phones/export?format=csv", headers=headers) as response:
        assert response.status == 400 and (await response.json())["error"]["code"] == "invalid_format"
    async with http.get(shop.url + "/v1/conversations/theirs/export", headers=headers) as response:
        assert response.status == 404  # another owner's


async def test_one_conversation_tells_where_the_window_is_cut(
    tmp_path: Any, upstream: FakeUpstream, http: aiohttp.ClientSession
) -> None:
    window = '[models."qwen-plus"]\ncontext_tokens = 2000\nreserve_tokens = 500\n'
    gateway = await start_gateway(make_config(tmp_path, upstream.url, window))
    try:
        headers = {"Authorization": f"Bearer {SHOP}"}
        async with http.get(gateway.url + "/v1/conversations/long", headers=headers) as response:
            assert response.status == 404
        for turn in range(12):
            await _say(gateway, upstream, SHOP, "long", f"turn {turn}: " + "a phone, please. " * 30, "Noted. " * 40)
        async with http.get(gateway.url + "/v1/conversations/long", headers=headers) as response:
            context = (await response.json())["context"]
    finally:
        await gateway.stop()
    assert context["window_start"] > 0 and context["summary"] is None  # summaries are off by default
