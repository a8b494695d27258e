"""``pydantic-ai`` agents on ``OpenAIChatModel`` against the real gateway: ``run`` and ``run_stream`` with the
previous result's ``all_messages()`` as ``message_history`` (pydantic-ai resends the whole conversation, rebuilt
from its own message parts), and a function tool whose call and return it re-serializes on every later turn."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable

import httpx2
import pytest
from pydantic_ai import Agent
from pydantic_ai.models.openai import OpenAIChatModel
from pydantic_ai.providers.openai import OpenAIProvider

from tests.clients.checks import WEATHER_CALL, assert_undoubled
from tests.conftest import Gateway
from tests.fake_upstream import FakeUpstream, Script

INSTRUCTIONS = "You sell phones. Ask one question at a time."

MakeAgent = Callable[[str], Agent[None, str]]


@pytest.fixture
async def make_agent(gateway: Gateway) -> AsyncIterator[MakeAgent]:
    """An agent per conversation; the header rides on the HTTP client pydantic-ai is given (its documented way to
    customise requests), closed after the test."""
    clients: list[httpx2.AsyncClient] = []

    def make(conversation: str) -> Agent[None, str]:
        http_client = httpx2.AsyncClient(headers={"X-Conversation-Id": conversation})
        clients.append(http_client)
        provider = OpenAIProvider(base_url=gateway.url + "/v1", api_key="sk-pydantic", http_client=http_client)
        return Agent(OpenAIChatModel("qwen-plus", provider=provider), instructions=INSTRUCTIONS, retries=0)

    yield make
    for client in clients:
        await client.aclose()


async def test_pydantic_ai_run_with_message_history_is_not_doubled(
    gateway: Gateway, upstream: FakeUpstream, make_agent: MakeAgent
) -> None:
    agent = make_agent("pai-run")
    result = await agent.run("I want a phone")
    for text in ("6.7 inch", "4K"):
        result = await agent.run(text, message_history=result.all_messages())
    assert result.output == "reply 3"
    assert_undoubled(gateway, upstream, "pai-run", turns=3)


async def test_pydantic_ai_run_stream_with_message_history_is_not_doubled(
    gateway: Gateway, upstream: FakeUpstream, make_agent: MakeAgent
) -> None:
    agent = make_agent("pai-stream")
    history = None
    outputs = []
    for text in ("I want a phone", "6.7 inch", "4K"):
        async with agent.run_stream(text, message_history=history) as result:
            outputs.append(await result.get_output())
        history = result.all_messages()
    assert outputs == ["reply 1", "reply 2", "reply 3"]
    assert all(r.body["stream"] is True for r in upstream.requests)
    assert_undoubled(gateway, upstream, "pai-stream", turns=3)


async def test_pydantic_ai_function_tool_round_trip_is_not_doubled(
    gateway: Gateway, upstream: FakeUpstream, make_agent: MakeAgent
) -> None:
    upstream.script(Script(tool_calls=[WEATHER_CALL]))
    agent = make_agent("pai-tools")
    calls = []

    @agent.tool_plain
    def get_weather(city: str, unit: str = "celsius") -> str:
        """The current weather in a city."""
        calls.append((city, unit))
        return f"24 degrees {unit} in {city}, sunny"

    result = await agent.run("What's the weather in Hangzhou?")  # two upstream calls: the tool call, the answer
    assert calls == [("杭州", "celsius")]
    for text in ("And tomorrow?", "Thanks"):
        result = await agent.run(text, message_history=result.all_messages())
    assert_undoubled(gateway, upstream, "pai-tools", turns=4)


async def test_pydantic_ai_resent_reasoning_content_is_not_doubled(
    gateway: Gateway, upstream: FakeUpstream, make_agent: MakeAgent
) -> None:
    """A thinking model's reply becomes a ThinkingPart, which pydantic-ai sends back as ``reasoning_content``."""
    upstream.script(Script(content="4K is sharper.", reasoning="The user asks about resolution."))
    agent = make_agent("pai-reasoning")
    result = await agent.run("2K or 4K?")
    for text in ("Thanks", "Which phone then?"):
        result = await agent.run(text, message_history=result.all_messages())
    assert_undoubled(gateway, upstream, "pai-reasoning", turns=3)
