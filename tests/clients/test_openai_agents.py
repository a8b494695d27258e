"""The OpenAI Agents SDK (``openai-agents``) against the real gateway, two ways.

On ``OpenAIChatCompletionsModel`` over an ``AsyncOpenAI`` client: the runner's own tool loop, and follow-up turns
built from ``result.to_input_list()`` plus the new user message, which the SDK converts from its Responses-style
items back into chat messages and resends.

On its default model (the Responses API, ``POST /v1/responses``), with its default client pointed at the gateway
(``set_default_openai_client``): turns chained with ``previous_response_id=result.last_response_id``, the gateway
holding the history, and a function tool whose call and output go through the gateway as Responses items; and
with ``OpenAIConversationsSession``, the SDK keeping the history in a gateway conversation through OpenAI's
Conversations items API (``conversations.create``, ``items.list``, ``items.create``, ``items.delete``)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from agents import (
    Agent,
    OpenAIChatCompletionsModel,
    OpenAIConversationsSession,
    OpenAIResponsesModel,
    Runner,
    function_tool,
    set_default_openai_api,
    set_default_openai_client,
    set_tracing_disabled,
)
from agents.models import _openai_shared
from agents.models.default_models import get_default_model

from tests.clients.checks import WEATHER_CALL, assert_undoubled, meaning
from tests.conftest import Gateway
from tests.fake_upstream import FakeUpstream, Script

set_tracing_disabled(True)  # the SDK would otherwise export traces to api.openai.com

CALLS: list[tuple[str, str]] = []


@function_tool
def get_weather(city: str, unit: str = "celsius") -> str:
    """The current weather in a city."""
    CALLS.append((city, unit))
    return f"24 degrees {unit} in {city}, sunny"


@function_tool
def local_time() -> str:
    """The local time."""
    CALLS.append(("local_time", ""))
    return "12:00"


def weather_agent(gateway: Gateway, conversation: str) -> Agent[Any]:
    """The client is closed with the gateway fixture."""
    model = OpenAIChatCompletionsModel(model="qwen-plus", openai_client=gateway.sdk(conversation, api_key="sk-agents"))
    return Agent(name="Weather", instructions="Answer with the weather.", model=model, tools=[get_weather, local_time])


async def test_agents_tool_loop_is_not_doubled(gateway: Gateway, upstream: FakeUpstream) -> None:
    upstream.script(Script(tool_calls=[WEATHER_CALL]))
    CALLS.clear()
    result = await Runner.run(weather_agent(gateway, "agents-tool"), "What's the weather in Hangzhou?")
    assert CALLS == [("杭州", "celsius")]
    assert result.final_output == "reply 2"
    assert_undoubled(gateway, upstream, "agents-tool", turns=2)


async def test_agents_follow_up_turns_from_to_input_list_are_not_doubled(
    gateway: Gateway, upstream: FakeUpstream
) -> None:
    upstream.script(Script(tool_calls=[WEATHER_CALL]))
    agent = weather_agent(gateway, "agents-follow-up")
    result = await Runner.run(agent, "What's the weather in Hangzhou?")
    for text in ("And tomorrow?", "Thanks"):
        result = await Runner.run(agent, [*result.to_input_list(), {"role": "user", "content": text}])
    assert result.final_output == "reply 4"
    assert_undoubled(gateway, upstream, "agents-follow-up", turns=4)


async def test_agents_tool_call_with_empty_arguments_is_not_doubled(gateway: Gateway, upstream: FakeUpstream) -> None:
    """An upstream that sends ``""`` as the arguments of a call without parameters: the SDK resends ``"{}"``."""
    upstream.script(Script(tool_calls=[{**WEATHER_CALL, "function": {"name": "local_time", "arguments": ""}}]))
    CALLS.clear()
    agent = weather_agent(gateway, "agents-empty-arguments")
    result = await Runner.run(agent, "What time is it?")
    assert CALLS == [("local_time", "")]
    result = await Runner.run(agent, [*result.to_input_list(), {"role": "user", "content": "Thanks"}])
    assert_undoubled(gateway, upstream, "agents-empty-arguments", turns=3)


async def test_agents_streamed_follow_up_turns_are_not_doubled(gateway: Gateway, upstream: FakeUpstream) -> None:
    upstream.script(Script(tool_calls=[WEATHER_CALL]))
    agent = weather_agent(gateway, "agents-stream")
    items: list[Any] = [{"role": "user", "content": "What's the weather in Hangzhou?"}]
    for text in (None, "And tomorrow?"):
        if text:
            items.append({"role": "user", "content": text})
        streamed = Runner.run_streamed(agent, items)
        async for _ in streamed.stream_events():
            pass
        items = streamed.to_input_list()
    assert streamed.final_output == "reply 3"
    assert all(r.body["stream"] is True for r in upstream.requests)
    assert_undoubled(gateway, upstream, "agents-stream", turns=3)


@pytest.fixture
def default_client(gateway: Gateway) -> Iterator[None]:
    """The SDK's default client and API (the Responses API, its default) pointed at the gateway, for the test."""
    set_default_openai_client(gateway.sdk(api_key="sk-agents"), use_for_tracing=False)
    set_default_openai_api("responses")
    yield
    _openai_shared.set_default_openai_client(None)  # type: ignore[arg-type]


def _history(upstream: FakeUpstream) -> list[tuple[Any, ...]]:
    """The meaning of every message of the upstream's last request, its system prompt included."""
    return [meaning(m) for m in upstream.last["messages"]]


async def test_agents_default_responses_model_chains_previous_response_id_with_a_tool(
    gateway: Gateway, upstream: FakeUpstream, default_client: None
) -> None:
    upstream.script(Script(tool_calls=[WEATHER_CALL]))
    CALLS.clear()
    agent = Agent(name="Weather", instructions="Answer with the weather.", tools=[get_weather, local_time])
    result = await Runner.run(agent, "What's the weather in Hangzhou?")
    assert CALLS == [("杭州", "celsius")]
    assert result.final_output == "reply 2"
    assert result.last_response_id is not None and result.last_response_id.startswith("resp_")
    for text in ("And tomorrow?", "Thanks"):
        result = await Runner.run(agent, text, previous_response_id=result.last_response_id)
    assert result.final_output == "reply 4"
    assert all(r.headers["Authorization"] == "Bearer sk-agents" for r in upstream.requests)
    # The third turn's request carried the whole history, each message once, though the SDK sent only "Thanks".
    assert _history(upstream) == [
        ("system", "Answer with the weather.", (), None),
        ("user", "What's the weather in Hangzhou?", (), None),
        ("assistant", "", (("call_1", "get_weather", '{"city": "杭州", "unit": "celsius"}'),), None),
        ("tool", "24 degrees celsius in 杭州, sunny", (), "call_1"),
        ("assistant", "reply 2", (), None),
        ("user", "And tomorrow?", (), None),
        ("assistant", "reply 3", (), None),
        ("user", "Thanks", (), None),
    ]
    # The SDK's default model and its settings (GPT-5 reasoning effort, text verbosity) are accepted as they come.
    assert upstream.last["model"] == get_default_model()


async def test_agents_responses_model_streams_a_tool_loop_within_a_previous_response_id_chain(
    gateway: Gateway, upstream: FakeUpstream
) -> None:
    """``OpenAIResponsesModel`` named explicitly, streamed: within a run begun from a previous response, the SDK
    chains each model call on the last one and sends only the new items (the tool's output)."""
    model = OpenAIResponsesModel(model="qwen-plus", openai_client=gateway.sdk(api_key="sk-agents"))
    agent = Agent(name="Weather", instructions="Answer with the weather.", model=model, tools=[get_weather])
    first = await Runner.run(agent, "Hello")
    upstream.script(Script(tool_calls=[WEATHER_CALL], chunk_size=5))
    CALLS.clear()
    streamed = Runner.run_streamed(agent, "Weather in Hangzhou?", previous_response_id=first.last_response_id)
    async for _ in streamed.stream_events():
        pass
    assert CALLS == [("杭州", "celsius")]
    assert streamed.final_output == "reply 3"
    assert all(r.body["stream"] is True for r in upstream.requests[1:])
    # The tool's output went alone, on a previous_response_id: the gateway supplied the rest.
    assert [m["role"] for m in upstream.last["messages"]] == [
        "system",
        "user",
        "assistant",
        "user",
        "assistant",
        "tool",
    ]
    assert _history(upstream)[1:3] == [("user", "Hello", (), None), ("assistant", "reply 1", (), None)]


async def test_agents_openai_conversations_session_keeps_the_history_in_a_gateway_conversation(
    gateway: Gateway, upstream: FakeUpstream, default_client: None
) -> None:
    """The session reads the conversation's items before each run (sending them whole as the input) and appends
    the run's new items after it; ``pop_item`` deletes the newest item."""
    upstream.script(Script(), Script(tool_calls=[WEATHER_CALL]))
    CALLS.clear()
    session = OpenAIConversationsSession()
    agent = Agent(name="Weather", instructions="Answer with the weather.", tools=[get_weather])
    result = await Runner.run(agent, "Hello", session=session)
    assert result.final_output == "reply 1"
    result = await Runner.run(agent, "What's the weather in Hangzhou?", session=session)
    assert CALLS == [("杭州", "celsius")] and result.final_output == "reply 3"
    result = await Runner.run(agent, "Thanks", session=session)
    assert result.final_output == "reply 4"
    assert _history(upstream) == [
        ("system", "Answer with the weather.", (), None),
        ("user", "Hello", (), None),
        ("assistant", "reply 1", (), None),
        ("user", "What's the weather in Hangzhou?", (), None),
        ("assistant", "", (("call_1", "get_weather", '{"city": "杭州", "unit": "celsius"}'),), None),
        ("tool", "24 degrees celsius in 杭州, sunny", (), "call_1"),
        ("assistant", "reply 3", (), None),
        ("user", "Thanks", (), None),
    ]
    # The gateway's conversation holds the session: the same messages, the reply to the last turn included.
    client = gateway.sdk(api_key="sk-agents")
    stored = [item async for item in client.conversations.items.list(session.session_id, order="asc")]
    assert [item.type for item in stored] == [
        "message",
        "message",
        "message",
        "function_call",
        "function_call_output",
        "message",
        "message",
        "message",
    ]
    assert len(await session.get_items()) == 8
    popped = await session.pop_item()
    assert popped is not None and popped["id"] == stored[-1].id
    assert [item["id"] for item in await session.get_items(limit=2)] == [stored[-3].id, stored[-2].id]
