"""The OpenAI Agents SDK (``openai-agents``) on ``OpenAIChatCompletionsModel`` over an ``AsyncOpenAI`` client pointed
at the real gateway: the runner's own tool loop, and follow-up turns built from ``result.to_input_list()`` plus the
new user message, which the SDK converts from its Responses-style items back into chat messages and resends."""

from __future__ import annotations

from typing import Any

from agents import Agent, OpenAIChatCompletionsModel, Runner, function_tool, set_tracing_disabled

from tests.clients.checks import WEATHER_CALL, assert_undoubled
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
