"""The official ``openai`` Python SDK against the real gateway: a stateless client (only its newest message each
turn, streamed or not) gains memory, a client that resends the SDK's own message objects is not doubled, and the
other /v1/ routes the SDK calls (models, embeddings) reach the upstream through the gateway."""

from __future__ import annotations

from typing import Any

import openai
import pytest

from tests.clients.checks import WEATHER_CALL, assert_undoubled
from tests.conftest import Gateway, user
from tests.fake_upstream import MODELS, FakeUpstream, Script


async def test_openai_stateless_turns_gain_memory(gateway: Gateway, upstream: FakeUpstream) -> None:
    client = gateway.sdk("openai-stateless")
    first = await client.chat.completions.create(
        model="qwen-plus", messages=[{"role": "system", "content": "Be brief."}, user("I want a phone")]
    )
    assert first.choices[0].message.content == "reply 1"
    for text in ("6.7 inch", "4K"):
        await client.chat.completions.create(model="qwen-plus", messages=[user(text)])
    assert_undoubled(gateway, upstream, "openai-stateless", turns=3)
    assert [m["content"] for m in upstream.last["messages"]] == [
        "Be brief.", "I want a phone", "reply 1", "6.7 inch", "reply 2", "4K"
    ]  # fmt: skip


async def test_openai_stateless_streaming_turns_gain_memory(gateway: Gateway, upstream: FakeUpstream) -> None:
    client = gateway.sdk("openai-stream")
    texts = []
    for text in ("I want a phone", "6.7 inch", "4K"):
        stream = await client.chat.completions.create(
            model="qwen-plus", messages=[user(text)], stream=True, stream_options={"include_usage": True}
        )
        texts.append("".join([c.choices[0].delta.content or "" async for c in stream if c.choices]))
    assert texts == ["reply 1", "reply 2", "reply 3"]
    assert_undoubled(gateway, upstream, "openai-stream", turns=3)
    assert all(r.body["stream"] is True for r in upstream.requests)


async def test_openai_resent_message_objects_with_a_tool_call_are_not_doubled(
    gateway: Gateway, upstream: FakeUpstream
) -> None:
    """The SDK's function-calling guide: append the returned message object itself, then the tool result, and
    resend everything every turn."""
    upstream.script(Script(tool_calls=[WEATHER_CALL]))
    client = gateway.sdk("openai-tools")
    tools: Any = [
        {
            "type": "function",
            "function": {
                "name": "get_weather",
                "parameters": {
                    "type": "object",
                    "properties": {"city": {"type": "string"}, "unit": {"type": "string"}},
                    "required": ["city"],
                },
            },
        }
    ]
    messages: list[Any] = [user("What's the weather in Hangzhou?")]
    completion = await client.chat.completions.create(model="qwen-plus", messages=messages, tools=tools)
    call = completion.choices[0].message.tool_calls[0]
    messages.append(completion.choices[0].message)
    messages.append({"role": "tool", "tool_call_id": call.id, "content": "24°C, sunny"})
    for text in (None, "And tomorrow?", "Thanks"):
        if text:
            messages.append(user(text))
        completion = await client.chat.completions.create(model="qwen-plus", messages=messages, tools=tools)
        messages.append(completion.choices[0].message)
    assert_undoubled(gateway, upstream, "openai-tools", turns=4)


async def test_openai_resent_message_with_reasoning_content_is_not_doubled(
    gateway: Gateway, upstream: FakeUpstream
) -> None:
    """A thinking model's reply: the SDK's message object keeps ``reasoning_content`` and sends it back."""
    upstream.script(Script(content="4K is sharper.", reasoning="The user asks about resolution."))
    client = gateway.sdk("openai-reasoning")
    messages: list[Any] = [user("2K or 4K?")]
    for text in ("Thanks", "Which phone then?"):
        completion = await client.chat.completions.create(model="qwen3-max", messages=messages)
        messages += [completion.choices[0].message, user(text)]
    await client.chat.completions.create(model="qwen3-max", messages=messages)
    assert_undoubled(gateway, upstream, "openai-reasoning", turns=3)


async def test_openai_models_list_reaches_the_upstream(gateway: Gateway, upstream: FakeUpstream) -> None:
    client = gateway.sdk("openai-models")
    models = [model.id async for model in client.models.list()]
    assert models == list(MODELS)
    assert [(o.method, o.path) for o in upstream.others] == [("GET", "/v1/models")]
    assert upstream.others[0].headers["Authorization"] == "Bearer sk-test"


async def test_openai_models_retrieve_reaches_the_upstream(gateway: Gateway, upstream: FakeUpstream) -> None:
    model = await gateway.sdk().models.retrieve("qwen-plus")
    assert (model.id, model.owned_by) == ("qwen-plus", "system")
    assert [(o.method, o.path) for o in upstream.others] == [("GET", "/v1/models/qwen-plus")]


async def test_openai_unknown_model_is_the_upstreams_not_found(gateway: Gateway, upstream: FakeUpstream) -> None:
    with pytest.raises(openai.NotFoundError) as caught:
        await gateway.sdk().models.retrieve("no-such-model")
    assert caught.value.code == "model_not_found"
    assert [o.path for o in upstream.others] == ["/v1/models/no-such-model"]


async def test_openai_embeddings_reach_the_upstream(gateway: Gateway, upstream: FakeUpstream) -> None:
    client = gateway.sdk("openai-embeddings")
    result = await client.embeddings.create(model="text-embedding-v4", input=["6.7 inch", "4K"])
    assert [d.embedding for d in result.data] == [[0.1, 0.2, 0.0], [0.1, 0.2, 1.0]]
    assert result.usage.prompt_tokens == 2
    assert [(o.method, o.path) for o in upstream.others] == [("POST", "/v1/embeddings")]
    assert upstream.requests == []  # nothing went to chat completions, nothing was stored
    assert gateway.rows("SELECT * FROM conversations") == []
