"""The ``litellm`` SDK as a client of the real gateway (``acompletion`` with ``model="openai/..."``, ``api_base`` and
``extra_headers``): stateless turns gain memory, a stream too, and a client that appends litellm's own response
messages (text and tool calls) and resends everything is not doubled.

litellm reads LITELLM_LOCAL_MODEL_COST_MAP and LITELLM_OFFLINE_MODE at import (tests/clients/conftest.py sets
them): without them it would fetch its model-cost map from GitHub."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import litellm
import pytest

from tests.clients.checks import WEATHER_CALL, assert_undoubled
from tests.conftest import Gateway, user
from tests.fake_upstream import FakeUpstream, Script

# litellm's lazily imported types trip a pydantic warning about ``ReadOnly`` TypedDict items: not ours to fix.
pytestmark = pytest.mark.filterwarnings("ignore:Item.* using the `ReadOnly` qualifier:UserWarning")

TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "The current weather in a city.",
            "parameters": {
                "type": "object",
                "properties": {"city": {"type": "string"}, "unit": {"type": "string"}},
                "required": ["city"],
            },
        },
    }
]


@pytest.fixture(autouse=True)
async def _quiet_litellm() -> AsyncIterator[None]:
    """No logging callbacks during the test; litellm's cached HTTP clients closed after it (they belong to this
    test's event loop)."""
    litellm.success_callback, litellm.failure_callback, litellm.callbacks = [], [], []
    litellm.suppress_debug_info = True
    yield
    await litellm.close_litellm_async_clients()
    litellm.in_memory_llm_clients_cache.flush_cache()


async def _complete(gateway: Gateway, conversation: str, messages: list[Any], **kwargs: Any) -> Any:
    return await litellm.acompletion(
        model="openai/qwen-plus",
        messages=messages,
        api_base=gateway.url + "/v1",
        api_key="sk-litellm",
        extra_headers={"X-Conversation-Id": conversation},
        num_retries=0,
        **kwargs,
    )


async def test_litellm_stateless_turns_gain_memory(gateway: Gateway, upstream: FakeUpstream) -> None:
    for text in ("I want a phone", "6.7 inch", "4K"):
        response = await _complete(gateway, "litellm-stateless", [user(text)])
    assert response.choices[0].message.content == "reply 3"
    assert_undoubled(gateway, upstream, "litellm-stateless", turns=3)
    assert upstream.requests[0].headers["Authorization"] == "Bearer sk-litellm"


async def test_litellm_resent_history_is_not_doubled(gateway: Gateway, upstream: FakeUpstream) -> None:
    """litellm's docs: append ``response.choices[0].message`` (a litellm ``Message``) and resend the list."""
    messages: list[Any] = [{"role": "system", "content": "Be brief."}]
    for text in ("I want a phone", "6.7 inch", "4K"):
        messages.append(user(text))
        response = await _complete(gateway, "litellm-history", messages)
        messages.append(response.choices[0].message)
    assert_undoubled(gateway, upstream, "litellm-history", turns=3)


async def test_litellm_resent_message_with_reasoning_content_is_not_doubled(
    gateway: Gateway, upstream: FakeUpstream
) -> None:
    """A thinking model's reply: litellm's ``Message`` keeps ``reasoning_content`` and sends it back."""
    upstream.script(Script(content="4K is sharper.", reasoning="The user asks about resolution."))
    messages: list[Any] = [user("2K or 4K?")]
    for text in ("Thanks", "Which phone then?"):
        response = await _complete(gateway, "litellm-reasoning", messages)
        messages += [response.choices[0].message, user(text)]
    await _complete(gateway, "litellm-reasoning", messages)
    assert_undoubled(gateway, upstream, "litellm-reasoning", turns=3)


async def test_litellm_streamed_turns_gain_memory(gateway: Gateway, upstream: FakeUpstream) -> None:
    texts = []
    for text in ("I want a phone", "6.7 inch", "4K"):
        stream = await _complete(gateway, "litellm-stream", [user(text)], stream=True)
        texts.append("".join([chunk.choices[0].delta.content or "" async for chunk in stream if chunk.choices]))
    assert texts == ["reply 1", "reply 2", "reply 3"]
    assert all(r.body["stream"] is True for r in upstream.requests)
    assert_undoubled(gateway, upstream, "litellm-stream", turns=3)


async def test_litellm_tool_round_trip_is_not_doubled(gateway: Gateway, upstream: FakeUpstream) -> None:
    """litellm's function-calling guide: append the response message, then a tool message per call."""
    upstream.script(Script(tool_calls=[WEATHER_CALL]))
    messages: list[Any] = [user("What's the weather in Hangzhou?")]
    response = await _complete(gateway, "litellm-tools", messages, tools=TOOLS)
    message = response.choices[0].message
    messages.append(message)
    for call in message.tool_calls:
        messages.append({"role": "tool", "tool_call_id": call.id, "name": call.function.name, "content": "24°C"})
    for text in (None, "And tomorrow?", "Thanks"):
        if text:
            messages.append(user(text))
        response = await _complete(gateway, "litellm-tools", messages, tools=TOOLS)
        messages.append(response.choices[0].message)
    assert_undoubled(gateway, upstream, "litellm-tools", turns=4)
