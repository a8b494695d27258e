"""``langchain-openai``'s ``ChatOpenAI`` against the real gateway, used as LangChain users do: the whole message list
is resent every turn (invoke, stream, and a ``bind_tools`` round trip with a ``ToolMessage``), and the gateway must
recognise what it already stored instead of doubling it."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import httpx2
import pytest
from langchain_core.messages import AIMessage, BaseMessage, HumanMessage, SystemMessage
from langchain_core.tools import tool
from langchain_openai import ChatOpenAI

from tests.clients.checks import WEATHER_CALL, assert_undoubled
from tests.conftest import Gateway
from tests.fake_upstream import FakeUpstream, Script

SYSTEM = SystemMessage("You sell phones. Ask one question at a time.")


@tool
def get_weather(city: str, unit: str = "celsius") -> str:
    """The current weather in a city."""
    return f"24 degrees {unit} in {city}, sunny"


@pytest.fixture
async def chat_model(gateway: Gateway) -> AsyncIterator[Any]:
    """A ``ChatOpenAI`` per conversation, on HTTP clients the test closes (LangChain's default ones are cached per
    base URL for the life of the process)."""
    made: list[tuple[httpx2.Client, httpx2.AsyncClient]] = []

    def make(conversation: str) -> ChatOpenAI:
        clients = (httpx2.Client(), httpx2.AsyncClient())
        made.append(clients)
        return ChatOpenAI(
            model="qwen-plus",
            base_url=gateway.url + "/v1",
            api_key="sk-langchain",
            default_headers={"X-Conversation-Id": conversation},
            max_retries=0,
            http_client=clients[0],
            http_async_client=clients[1],
        )

    yield make
    for sync, async_ in made:
        sync.close()
        await async_.aclose()


async def test_langchain_invoke_with_resent_history_is_not_doubled(
    gateway: Gateway, upstream: FakeUpstream, chat_model: Any
) -> None:
    llm = chat_model("lc-invoke")
    messages: list[BaseMessage] = [SYSTEM]
    for text in ("I want a phone", "6.7 inch", "4K"):
        messages.append(HumanMessage(text))
        messages.append(await llm.ainvoke(messages))
    assert [m.content for m in messages[2::2]] == ["reply 1", "reply 2", "reply 3"]
    assert_undoubled(gateway, upstream, "lc-invoke", turns=3)


async def test_langchain_stream_with_resent_history_is_not_doubled(
    gateway: Gateway, upstream: FakeUpstream, chat_model: Any
) -> None:
    llm = chat_model("lc-stream")
    messages: list[BaseMessage] = [SYSTEM]
    for text in ("I want a phone", "6.7 inch", "4K"):
        messages.append(HumanMessage(text))
        full = None
        async for chunk in llm.astream(messages):
            full = chunk if full is None else full + chunk
        assert full is not None
        messages.append(full)
    assert [m.content for m in messages[2::2]] == ["reply 1", "reply 2", "reply 3"]
    assert_undoubled(gateway, upstream, "lc-stream", turns=3)


async def test_langchain_tool_round_trip_is_not_doubled(
    gateway: Gateway, upstream: FakeUpstream, chat_model: Any
) -> None:
    upstream.script(Script(tool_calls=[WEATHER_CALL]))
    llm = chat_model("lc-tools").bind_tools([get_weather])
    messages: list[BaseMessage] = [SYSTEM, HumanMessage("What's the weather in Hangzhou?")]
    ai = await llm.ainvoke(messages)
    assert isinstance(ai, AIMessage)
    assert ai.tool_calls == [
        {"name": "get_weather", "args": {"city": "杭州", "unit": "celsius"}, "id": "call_1", "type": "tool_call"}
    ]
    messages.append(ai)
    messages.extend([await get_weather.ainvoke(call) for call in ai.tool_calls])  # ToolMessages
    messages.append(await llm.ainvoke(messages))
    for text in ("And tomorrow?", "Thanks"):
        messages.append(HumanMessage(text))
        messages.append(await llm.ainvoke(messages))
    assert_undoubled(gateway, upstream, "lc-tools", turns=4)


async def test_langchain_streamed_tool_round_trip_is_not_doubled(
    gateway: Gateway, upstream: FakeUpstream, chat_model: Any
) -> None:
    """The same round trip streamed: the tool call arrives in fragments and LangChain assembles it."""
    upstream.script(Script(tool_calls=[WEATHER_CALL]))
    llm = chat_model("lc-stream-tools").bind_tools([get_weather])
    messages: list[BaseMessage] = [SYSTEM, HumanMessage("What's the weather in Hangzhou?")]
    for text in (None, None, "And tomorrow?"):
        if text:
            messages.append(HumanMessage(text))
        full: Any = None
        async for chunk in llm.astream(messages):
            full = chunk if full is None else full + chunk
        messages.append(full)
        messages.extend([await get_weather.ainvoke(call) for call in full.tool_calls])
    assert messages[2].tool_calls[0]["args"] == {"city": "杭州", "unit": "celsius"}
    assert_undoubled(gateway, upstream, "lc-stream-tools", turns=3)
