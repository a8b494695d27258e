"""DashScope's native protocol, with the real ``dashscope`` SDK as the client: memory, streaming in both framings,
protocols mixed within one conversation, errors in the native shape, and a native upstream."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import openai
import pytest
from dashscope import AioGeneration
from dashscope.api_entities.aio_session import close_shared_aio_session

from tests.conftest import Gateway, make_config, read_sse, start_gateway, user
from tests.fake_upstream import FakeUpstream, Script
from tests.stored import all_messages_count, stored

SYSTEM = {"role": "system", "content": "You sell phones. Ask one question at a time."}


@pytest.fixture(autouse=True)
async def _sdk_session() -> AsyncIterator[None]:
    """The SDK shares one aiohttp session per process; each test has its own event loop, so close it after each."""
    yield
    await close_shared_aio_session()


NATIVE = "/api/v1/services/aigc/text-generation/generation"


async def _call(gateway: Gateway, conversation: str, messages: list[dict[str, Any]], **kwargs: Any) -> Any:
    return await AioGeneration.call(
        model="qwen-plus",
        messages=messages,
        api_key=kwargs.pop("api_key", "sk-native"),
        base_address=gateway.url + "/api/v1",
        headers={"X-Conversation-Id": conversation},
        **kwargs,
    )


async def test_a_stateless_native_client_gains_memory(gateway: Gateway, upstream: FakeUpstream) -> None:
    upstream.script(Script(content="Which screen size?"), Script(content="2K or 4K?"), Script(content="Done."))
    first = await _call(gateway, "shop", [SYSTEM, user("I want a phone")], result_format="message")
    assert first.status_code == 200
    assert first.output.choices[0].message.content == "Which screen size?"
    assert first.usage.input_tokens == 10 and first.usage.output_tokens == 5
    await _call(gateway, "shop", [user("6.7 inch")], result_format="message")
    third = await _call(gateway, "shop", [user("4K")], result_format="message")
    assert third.output.choices[0].message.content == "Done."
    assert [m["content"] for m in upstream.last["messages"]] == [
        SYSTEM["content"], "I want a phone", "Which screen size?", "6.7 inch", "2K or 4K?", "4K"
    ]  # fmt: skip
    assert upstream.last["model"] == "qwen-plus" and "input" not in upstream.last


async def test_text_result_format_is_the_default(gateway: Gateway, upstream: FakeUpstream) -> None:
    answer = await _call(gateway, "text", [user("hi")])
    assert answer.output.text == "reply 1" and answer.output.finish_reason == "stop"


@pytest.mark.parametrize("incremental", [False, True])
async def test_streams_in_both_framings_are_assembled_and_stored(
    gateway: Gateway, upstream: FakeUpstream, incremental: bool
) -> None:
    upstream.script(Script(content="The 6.7 inch one comes in 2K and 4K.", chunk_size=5))
    responses = await _call(
        gateway, "stream", [user("tell me")], stream=True, incremental_output=incremental, result_format="message"
    )
    texts = [r.output.choices[0].message.content async for r in responses]
    if incremental:
        assert "".join(texts) == "The 6.7 inch one comes in 2K and 4K."
    else:
        assert texts[-1] == "The 6.7 inch one comes in 2K and 4K." and texts[1].startswith(texts[0])
    assert (await stored(gateway, "stream", key="sk-native"))[-1]["content"] == "The 6.7 inch one comes in 2K and 4K."


async def test_one_conversation_moves_between_protocols(gateway: Gateway, upstream: FakeUpstream) -> None:
    client = gateway.sdk("mixed", api_key="sk-native")
    await client.chat.completions.create(model="qwen-plus", messages=[user("one (openai)")])
    await _call(gateway, "mixed", [user("two (native)")], result_format="message")
    await client.chat.completions.create(model="qwen-plus", messages=[user("three (openai)")])
    assert [m["content"] for m in upstream.last["messages"]] == [
        "one (openai)", "reply 1", "two (native)", "reply 2", "three (openai)"
    ]  # fmt: skip


async def test_errors_come_back_in_the_native_shape(
    gateway: Gateway, upstream: FakeUpstream, http: aiohttp.ClientSession
) -> None:
    upstream.script(
        Script(status=400, error_body={"error": {"message": "bad temperature", "code": "InvalidParameter"}})
    )
    answer = await _call(gateway, "err", [user("hi")], result_format="message")
    assert (answer.status_code, answer.code, answer.message) == (400, "InvalidParameter", "bad temperature")
    assert answer.request_id
    async with http.post(gateway.url + NATIVE, json={"model": "qwen-plus", "input": "nope"}) as resp:
        assert resp.status == 400
        body = await resp.json()
    assert set(body) == {"code", "message", "request_id"} and body["code"] == "InvalidParameter"
    assert await all_messages_count(gateway.db_path) == 0  # of any owner


@pytest.fixture
async def keyed(tmp_path: Path, upstream: FakeUpstream) -> AsyncIterator[Gateway]:
    gateway = await start_gateway(
        make_config(tmp_path, upstream.url, auth__mode="keys", upstream__api_key="sk-native-upstream")
    )
    yield gateway
    await gateway.stop()


async def test_keys_mode_refuses_the_native_endpoint_without_a_key(keyed: Gateway, upstream: FakeUpstream) -> None:
    answer = await _call(keyed, "k", [user("hi")], api_key="gw-not-a-key", result_format="message")
    assert (answer.status_code, answer.code) == (401, "invalid_api_key")
    assert upstream.requests == []


@pytest.fixture
async def native_upstream(tmp_path: Path, upstream: FakeUpstream) -> AsyncIterator[Gateway]:
    config = make_config(
        tmp_path, upstream.url, upstream__protocol="native", upstream__native_base_url=upstream.native_url
    )
    gateway = await start_gateway(config)
    yield gateway
    await gateway.stop()


async def test_a_native_upstream_serves_both_protocols_with_one_memory(
    native_upstream: Gateway, upstream: FakeUpstream
) -> None:
    upstream.script(Script(content="Which screen size?"), Script(content="2K or 4K?", chunk_size=3))
    first = await _call(native_upstream, "nat", [SYSTEM, user("I want a phone")], result_format="message")
    assert first.output.choices[0].message.content == "Which screen size?"
    assert first.usage.input_tokens == 12
    sent = upstream.last
    assert sent["input"]["messages"] == [SYSTEM, user("I want a phone")]
    assert sent["parameters"]["result_format"] == "message"
    client = native_upstream.sdk("nat", api_key="sk-native")
    stream = await client.chat.completions.create(model="qwen-plus", messages=[user("6.7 inch")], stream=True)
    text = "".join([c.choices[0].delta.content or "" async for c in stream if c.choices])
    assert text == "2K or 4K?"
    assert upstream.requests[-1].headers["X-DashScope-SSE"] == "enable"
    assert upstream.last["parameters"]["incremental_output"] is True
    assert [m["content"] for m in upstream.last["input"]["messages"]][1:] == [
        "I want a phone",
        "Which screen size?",
        "6.7 inch",
    ]
    assert (await stored(native_upstream, "nat", key="sk-native"))[-1] == {"role": "assistant", "content": "2K or 4K?"}


async def test_native_upstream_errors_map_to_both_shapes(native_upstream: Gateway, upstream: FakeUpstream) -> None:
    upstream.script(Script(status=400), Script(status=400))
    answer = await _call(native_upstream, "e", [user("hi")], result_format="message")
    assert (answer.status_code, answer.code) == (400, "InvalidParameter")
    client = native_upstream.sdk("e", api_key="sk-native")
    with pytest.raises(openai.BadRequestError, match="scripted native failure") as raised:
        await client.chat.completions.create(model="qwen-plus", messages=[user("hi")])
    assert raised.value.status_code == 400


async def test_prompt_input_and_parameters_pass_through(
    gateway: Gateway, upstream: FakeUpstream, http: aiohttp.ClientSession
) -> None:
    tools = [{"type": "function", "function": {"name": "stock", "parameters": {"type": "object"}}}]
    body = {
        "model": "qwen-plus",
        "input": {"prompt": "Is the 6.7 inch in stock?"},
        "parameters": {"result_format": "message", "enable_thinking": False, "temperature": 0.2, "tools": tools},
    }
    async with http.post(gateway.url + NATIVE, json=body, headers={"X-Conversation-Id": "p"}) as resp:
        assert resp.status == 200
        answer = await resp.json()
    assert answer["output"]["choices"][0]["message"]["content"] == "reply 1"
    sent = upstream.last
    assert sent["messages"] == [user("Is the 6.7 inch in stock?")]
    assert (sent["enable_thinking"], sent["temperature"], sent["tools"]) == (False, 0.2, tools)
    assert "result_format" not in sent and "parameters" not in sent


async def test_a_garbled_native_stream_ends_with_an_error_event_not_a_broken_response(
    native_upstream: Gateway, upstream: FakeUpstream, http: aiohttp.ClientSession
) -> None:
    upstream.script(Script(content="some words and then garbage", chunk_size=4, bad_chunk_after=2))
    headers = {"Authorization": "Bearer sk-native", "X-Conversation-Id": "garbled"}
    body = {"model": "qwen-plus", "messages": [user("hi")], "stream": True}
    async with http.post(native_upstream.url + "/v1/chat/completions", json=body, headers=headers) as resp:
        assert resp.status == 200
        events = await read_sse(resp)
    assert json.loads(events[-1])["error"]["code"] == "upstream_invalid_response"
    assert await all_messages_count(native_upstream.db_path) == 0  # of any owner
    answer = await _call(native_upstream, "garbled", [user("again")], result_format="message")
    assert answer.status_code == 200
