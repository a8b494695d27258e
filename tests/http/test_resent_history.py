"""Full-history clients through the real gateway: a retried or regenerated last turn replaces the stored one (and
says so), an earlier divergence is refused with 409 and changes nothing, on both protocols."""

from __future__ import annotations

import asyncio
from typing import Any

import aiohttp

from tests.conftest import Gateway, chat_body, user
from tests.fake_upstream import FakeUpstream, Script
from tests.stored import cli_dump, conversations, messages, stored

URL = "/v1/chat/completions"


def headers(conversation: str) -> dict[str, str]:
    return {"X-Conversation-Id": conversation, "Authorization": "Bearer sk-test"}


def reply(text: str) -> dict[str, Any]:
    return {"role": "assistant", "content": text}


async def post(http: aiohttp.ClientSession, gateway: Gateway, conversation: str, *messages: Any) -> Any:
    async with http.post(gateway.url + URL, json=chat_body(*messages), headers=headers(conversation)) as resp:
        return resp.status, dict(resp.headers), await resp.json()


async def test_a_retried_turn_replaces_the_reply_the_client_never_saw(
    gateway: Gateway, upstream: FakeUpstream, http: aiohttp.ClientSession
) -> None:
    usage = {"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15}
    upstream.script(Script(content="a1", usage=usage), Script(content="a2", usage=usage), Script(content="a2 again"))
    await post(http, gateway, "retry", user("q1"))
    await post(http, gateway, "retry", user("q1"), reply("a1"), user("q2"))
    status, response_headers, body = await post(http, gateway, "retry", user("q1"), reply("a1"), user("q2"))

    assert status == 200 and body["choices"][0]["message"]["content"] == "a2 again"
    assert response_headers["X-Conversation-Replaced"] == "1"
    assert upstream.last["messages"] == [user("q1"), reply("a1"), user("q2")]
    assert [m["content"] for m in await stored(gateway, "retry")] == ["q1", "a1", "q2", "a2 again"]
    # The totals are those of the turns that remain: a1's usage and the fake's default for "a2 again".
    totals = [
        (c["message_count"], c["usage"]["prompt_tokens"], c["usage"]["completion_tokens"])
        for c in await conversations(gateway)
    ]
    assert totals == [(4, 20, 10)]
    # And the conversation carries on from there.
    await post(http, gateway, "retry", user("q3"))
    assert upstream.last["messages"] == [user("q1"), reply("a1"), user("q2"), reply("a2 again"), user("q3")]


async def test_a_turn_without_replacement_has_no_replaced_header(
    gateway: Gateway, upstream: FakeUpstream, http: aiohttp.ClientSession
) -> None:
    _, first, _ = await post(http, gateway, "plain", user("q1"))
    _, second, _ = await post(http, gateway, "plain", user("q1"), reply("reply 1"), user("q2"))
    assert "X-Conversation-Replaced" not in first and "X-Conversation-Replaced" not in second
    assert len(await stored(gateway, "plain")) == 4


async def test_a_resend_after_a_cut_stream_replaces_the_interrupted_reply(
    gateway: Gateway, upstream: FakeUpstream, http: aiohttp.ClientSession
) -> None:
    text = "The 6.7 inch model comes in 2K and 4K. " * 5
    upstream.script(Script(content="a1"), Script(content=text, chunk_delay=0.05, chunk_size=5), Script(content="a2"))
    await post(http, gateway, "cut", user("q1"))
    transcript = chat_body(user("q1"), reply("a1"), user("which phone?"), stream=True)
    async with aiohttp.ClientSession() as session:
        resp = await session.post(gateway.url + URL, json=transcript, headers=headers("cut"))
        await resp.content.readuntil(b"\n\n")
        await resp.content.readuntil(b"\n\n")
        resp.close()  # the client gives up mid-stream; the partial reply is recorded as interrupted
    for _ in range(100):
        if len(await stored(gateway, "cut")) == 4:
            break
        await asyncio.sleep(0.05)
    assert [m["interrupted"] for m in await messages(gateway, "cut")] == [False, False, False, True]

    async with http.post(gateway.url + URL, json=transcript, headers=headers("cut")) as resp:  # the retry
        assert resp.headers["X-Conversation-Replaced"] == "1"
        assert (await resp.read()).endswith(b"data: [DONE]\n\n")
    assert upstream.last["messages"] == [user("q1"), reply("a1"), user("which phone?")]
    assert [m["content"] for m in await stored(gateway, "cut")] == ["q1", "a1", "which phone?", "a2"]
    assert [m["interrupted"] for m in await messages(gateway, "cut")] == [False, False, False, False]


async def test_an_edited_last_message_replaces_the_last_turn(
    gateway: Gateway, upstream: FakeUpstream, http: aiohttp.ClientSession
) -> None:
    await post(http, gateway, "edit", user("6.1 inch"))
    await post(http, gateway, "edit", user("6.1 inch"), reply("reply 1"), user("2K"))
    status, response_headers, _ = await post(http, gateway, "edit", user("6.1 inch"), reply("reply 1"), user("4K"))
    assert status == 200 and response_headers["X-Conversation-Replaced"] == "2"
    assert [m["content"] for m in await stored(gateway, "edit")] == ["6.1 inch", "reply 1", "4K", "reply 3"]


async def test_an_earlier_divergence_is_refused_and_changes_nothing(
    gateway: Gateway, upstream: FakeUpstream, http: aiohttp.ClientSession
) -> None:
    await post(http, gateway, "diverge", user("q1"))
    await post(http, gateway, "diverge", user("q1"), reply("reply 1"), user("q2"))
    before = await cli_dump(gateway.db_path)  # every conversation of every owner, exactly
    calls = len(upstream.requests)

    system = {"role": "system", "content": "You sell phones."}
    edited = (system, user("q1, edited"), reply("reply 1"), user("q2"), reply("reply 2"), user("q3"))
    status, _, body = await post(http, gateway, "diverge", *edited)
    assert status == 409
    assert body["error"]["code"] == "history_mismatch" and body["error"]["param"] == "messages[1]"
    assert "rewind" in body["error"]["message"]
    status, _, body = await post(http, gateway, "diverge", user("q1"), user("q2"), reply("reply 2"), user("q3"))
    assert status == 409 and body["error"]["param"] == "messages[1]"

    assert len(upstream.requests) == calls
    assert await cli_dump(gateway.db_path) == before


async def test_the_native_route_refuses_a_divergence_in_dashscopes_shape(
    gateway: Gateway, upstream: FakeUpstream, http: aiohttp.ClientSession
) -> None:
    await post(http, gateway, "native", user("q1"))
    await post(http, gateway, "native", user("q1"), reply("reply 1"), user("q2"))
    native = {"model": "qwen-plus", "input": {"messages": [user("q0"), reply("reply 1"), user("q2"), user("q3")]}}
    path = "/api/v1/services/aigc/text-generation/generation"
    async with http.post(gateway.url + path, json=native, headers=headers("native")) as resp:
        assert resp.status == 409
        body = await resp.json()
    assert body["code"] == "history_mismatch" and body["request_id"]
