"""Streaming: chunks relayed as they arrive, the reply assembled and recorded before [DONE], and every way a
stream can fail shown to the client as an error, never as success."""

from __future__ import annotations

import asyncio
import json
import sqlite3
import time

import aiohttp
import openai
import pytest

from tests.conftest import Gateway, chat_body, read_sse, user
from tests.fake_upstream import FakeUpstream, Script
from tests.stored import all_messages_count, cli_list, messages, stored

HEADERS = {"X-Conversation-Id": "s-1", "Authorization": "Bearer sk-test"}


async def test_sdk_streaming_turns_gain_memory(gateway: Gateway, upstream: FakeUpstream) -> None:
    upstream.script(Script(content="Which size: 6.1, 6.5 or 6.7 inch?"), Script(content="And 2K or 4K?"))
    client = gateway.sdk("stream-mem")
    for text in ("I need a phone", "6.1"):
        stream = await client.chat.completions.create(model="qwen-plus", messages=[user(text)], stream=True)
        pieces = [c.choices[0].delta.content or "" async for c in stream if c.choices]
    assert "".join(pieces) == "And 2K or 4K?"
    assert upstream.last["messages"] == [
        user("I need a phone"),
        {"role": "assistant", "content": "Which size: 6.1, 6.5 or 6.7 inch?"},
        user("6.1"),
    ]
    assert upstream.last["stream"] is True


async def test_chunks_reach_the_client_before_the_upstream_finishes(
    gateway: Gateway, upstream: FakeUpstream, http: aiohttp.ClientSession
) -> None:
    gate = asyncio.Event()  # the upstream sends its first chunk, then waits until the client has seen it
    upstream.script(Script(content="streamed unbuffered", gate=gate))
    async with http.post(
        f"{gateway.url}/v1/chat/completions", json=chat_body(user("hi"), stream=True), headers=HEADERS
    ) as resp:
        assert resp.headers["X-Accel-Buffering"] == "no"
        assert resp.headers["Content-Type"].startswith("text/event-stream")
        first = await asyncio.wait_for(resp.content.readuntil(b"\n\n"), timeout=5)
        assert json.loads(first.decode().removeprefix("data: "))["choices"][0]["delta"]["role"] == "assistant"
        gate.set()
        rest = (await resp.read()).decode()
    assert rest.endswith("data: [DONE]\n\n")


async def test_stream_assembles_content_reasoning_and_tool_calls(gateway: Gateway, upstream: FakeUpstream) -> None:
    calls = [
        {
            "id": "call_a",
            "type": "function",
            "function": {"name": "stock", "arguments": '{"size": "6.7", "res": "4K"}'},
        },
        {"id": "call_b", "type": "function", "function": {"name": "price", "arguments": '{"model": "X"}'}},
    ]
    upstream.script(Script(content="Checking both.", reasoning="Need stock and price.", tool_calls=calls, chunk_size=3))
    client = gateway.sdk("assemble")
    stream = await client.chat.completions.create(
        model="qwen3-max", messages=[user("6.7 4K?")], stream=True, stream_options={"include_usage": True}
    )
    async for _ in stream:
        pass
    assert (await stored(gateway, "assemble"))[1] == {
        "role": "assistant",
        "content": "Checking both.",
        "reasoning_content": "Need stock and price.",
        "tool_calls": calls,
    }
    usage = next(m["usage"] for m in await messages(gateway, "assemble") if m["role"] == "assistant")
    assert usage["total_tokens"] == 15


async def test_stream_options_pass_through(gateway: Gateway, upstream: FakeUpstream) -> None:
    stream = await gateway.sdk().chat.completions.create(
        model="qwen-plus", messages=[user("hi")], stream=True, stream_options={"include_usage": True}
    )
    chunks = [c async for c in stream]
    assert chunks[-1].usage is not None and chunks[-1].usage.total_tokens == 15
    assert upstream.last["stream_options"] == {"include_usage": True}


def _hold_write_lock(path: str) -> sqlite3.Connection:
    db = sqlite3.connect(path, isolation_level=None, timeout=0)
    db.execute("BEGIN IMMEDIATE")
    return db


async def test_turn_is_committed_before_done_is_relayed(
    gateway: Gateway, upstream: FakeUpstream, http: aiohttp.ClientSession
) -> None:
    await gateway.sdk("s-1").chat.completions.create(model="qwen-plus", messages=[user("create")])
    locker = _hold_write_lock(str(gateway.db_path))  # another process holds the write lock: the commit waits
    async with http.post(
        f"{gateway.url}/v1/chat/completions", json=chat_body(user("hi"), stream=True), headers=HEADERS
    ) as resp:
        received = b""
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(1.0):
                async for data in resp.content.iter_any():
                    received += data
        assert b"finish_reason" in received and b"[DONE]" not in received
        locker.execute("ROLLBACK")
        received += await resp.read()
    assert received.endswith(b"data: [DONE]\n\n")
    assert [m["content"] for m in await stored(gateway, "s-1")][-2:] == ["hi", "reply 2"]


async def test_non_streaming_body_is_sent_after_commit(
    gateway: Gateway, upstream: FakeUpstream, http: aiohttp.ClientSession
) -> None:
    await gateway.sdk("s-1").chat.completions.create(model="qwen-plus", messages=[user("create")])
    locker = _hold_write_lock(str(gateway.db_path))
    request = asyncio.create_task(
        http.post(f"{gateway.url}/v1/chat/completions", json=chat_body(user("hi")), headers=HEADERS)
    )
    await asyncio.sleep(1.0)
    assert not request.done()
    locker.execute("ROLLBACK")
    async with await request as resp:
        assert resp.status == 200
    assert len(await stored(gateway, "s-1")) == 4


FAILURES = {
    "cut": Script(content="a long answer that never ends", cut_after=3),
    "error_chunk": Script(content="a long answer that never ends", error_chunk_after=3),
    "no_done": Script(content="short", omit_done=True),
    "no_finish_reason": Script(content="short", omit_finish=True),
}


@pytest.mark.parametrize("failure", FAILURES)
async def test_mid_stream_failure_is_an_error_event_and_nothing_is_stored(
    gateway: Gateway, upstream: FakeUpstream, http: aiohttp.ClientSession, failure: str
) -> None:
    upstream.script(FAILURES[failure])
    async with http.post(
        f"{gateway.url}/v1/chat/completions", json=chat_body(user("hi"), stream=True), headers=HEADERS
    ) as resp:
        assert resp.status == 200
        events = await read_sse(resp)
    assert "[DONE]" not in events
    error = json.loads(events[-1])["error"]
    assert error["message"] and error["type"] and error["code"]
    assert await all_messages_count(gateway.db_path) == 0  # of any owner


async def test_sdk_raises_on_a_cut_stream(gateway: Gateway, upstream: FakeUpstream) -> None:
    upstream.script(Script(content="a long answer that never ends", cut_after=2))
    stream = await gateway.sdk("cut").chat.completions.create(model="qwen-plus", messages=[user("hi")], stream=True)
    with pytest.raises(openai.APIError):
        async for _ in stream:
            pass
    assert await all_messages_count(gateway.db_path) == 0  # of any owner


async def test_stalled_stream_times_out_with_an_error_event(
    tmp_path, upstream: FakeUpstream, http: aiohttp.ClientSession
) -> None:
    from tests.conftest import make_config, start_gateway

    gw = await start_gateway(make_config(tmp_path, upstream.url, upstream__idle_timeout=0.5))
    try:
        upstream.script(Script(content="stalls after one chunk", gate=asyncio.Event()))
        started = time.monotonic()
        async with http.post(
            f"{gw.url}/v1/chat/completions", json=chat_body(user("hi"), stream=True), headers=HEADERS
        ) as resp:
            events = await read_sse(resp)
        assert time.monotonic() - started < 5
        assert json.loads(events[-1])["error"]["code"] == "upstream_timeout"
        assert await all_messages_count(gw.db_path) == 0  # of any owner
    finally:
        await gw.stop()


async def test_client_disconnect_aborts_upstream_and_records_what_was_seen(
    gateway: Gateway, upstream: FakeUpstream
) -> None:
    text = "The 6.7 inch model comes in 2K and 4K variants, and the 4K one costs more. " * 5
    upstream.script(Script(content=text, chunk_delay=0.05, chunk_size=5))
    received = ""
    async with aiohttp.ClientSession() as session:
        resp = await session.post(
            f"{gateway.url}/v1/chat/completions", json=chat_body(user("tell me"), stream=True), headers=HEADERS
        )
        while received.count("data:") < 6:
            received += (await resp.content.readuntil(b"\n\n")).decode()
        hung_up = time.monotonic()
        resp.close()  # the client goes away mid-stream
    await asyncio.wait_for(upstream.aborted_event.wait(), timeout=3)
    assert upstream.aborted[0] - hung_up < 1.0
    assert upstream.completed_streams == 0
    seen = "".join(
        json.loads(line.removeprefix("data: "))["choices"][0]["delta"].get("content", "")
        for line in received.split("\n\n")
        if line.startswith("data: ")
    )
    for _ in range(50):  # the interrupted turn is written as the handler unwinds
        recorded = await messages(gateway, "s-1")
        if len(recorded) == 2:
            break
        await asyncio.sleep(0.05)
    assert [(m["role"], m["interrupted"]) for m in recorded] == [("user", False), ("assistant", True)]
    stored_reply = recorded[1]["content"]
    assert stored_reply.startswith(seen) and len(stored_reply) < len(text)
    # The model next sees what the user saw.
    await gateway.sdk("s-1").chat.completions.create(model="qwen-plus", messages=[user("go on")])
    assert upstream.last["messages"][1] == {"role": "assistant", "content": stored_reply}


async def test_transparent_stream_is_relayed_and_not_stored(
    gateway: Gateway, upstream: FakeUpstream, http: aiohttp.ClientSession
) -> None:
    async with http.post(f"{gateway.url}/v1/chat/completions", json=chat_body(user("hi"), stream=True)) as resp:
        events = await read_sse(resp)
        assert "X-Conversation-Id" not in resp.headers
    assert events[-1] == "[DONE]"
    assert "".join(json.loads(e)["choices"][0]["delta"].get("content", "") for e in events[:-1]) == "reply 1"
    assert await cli_list(gateway.db_path) == []  # no conversation, of any owner


async def test_failed_commit_is_an_error_not_success(
    tmp_path, upstream: FakeUpstream, http: aiohttp.ClientSession
) -> None:
    from tests.conftest import make_config, start_gateway

    gw = await start_gateway(make_config(tmp_path, upstream.url, storage__busy_timeout_ms=50))
    try:
        locker = _hold_write_lock(str(gw.db_path))  # held past the busy timeout: the commit fails
        async with http.post(
            f"{gw.url}/v1/chat/completions", json=chat_body(user("hi"), stream=True), headers=HEADERS
        ) as resp:
            events = await read_sse(resp)
        assert "[DONE]" not in events
        assert json.loads(events[-1])["error"]["code"] == "storage_unavailable"
        async with http.post(f"{gw.url}/v1/chat/completions", json=chat_body(user("hi")), headers=HEADERS) as resp:
            assert resp.status == 503
            assert (await resp.json())["error"]["code"] == "storage_unavailable"
        locker.execute("ROLLBACK")
        assert await all_messages_count(gw.db_path) == 0  # of any owner
    finally:
        await gw.stop()
