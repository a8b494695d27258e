"""The Node half of the client matrix: the official `openai` npm package and the Vercel AI SDK (`ai` with
`@ai-sdk/openai-compatible`) talk to the real gateway in front of the fake upstream, each run as a Node script from
tests/clients/node/ (pinned in its package.json and package-lock.json; `npm ci` there installs them).

Each test scripts the upstream, runs one script as a subprocess (without blocking the event loop the gateway serves
on), and checks what reached the upstream and what the gateway stored: a stateless client gains its history, and a
client that resends its whole history, tool calls re-serialized its own way, is not doubled.  The module is skipped
only when there is no `node` on PATH."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
from pathlib import Path
from typing import Any

import pytest

from tests.clients.checks import assert_undoubled
from tests.conftest import Gateway
from tests.fake_upstream import MODELS, FakeUpstream, Script

NODE_DIR = Path(__file__).resolve().parent / "node"
NODE = shutil.which("node")
TIMEOUT = 20.0  # seconds for one script; each takes well under one

pytestmark = pytest.mark.skipif(NODE is None, reason="no `node` on PATH: the Node client matrix needs Node.js 20+")

# Irregular spacing and non-ASCII on purpose: the AI SDK resends this call as compact JSON, which differs from the
# text the upstream sent.
WEATHER_CALL = {
    "id": "call_1",
    "type": "function",
    "function": {"name": "get_weather", "arguments": '{"city":"杭州", "unit": "celsius"}'},
}
WEATHER_RESULT = {"city": "杭州", "unit": "celsius", "temperature": 21, "condition": "sunny"}
AI_SDK_SYSTEM = {"role": "system", "content": "You are a weather assistant. Use get_weather for current conditions."}


def user(text: str) -> dict[str, Any]:
    return {"role": "user", "content": text}


def assistant(text: str) -> dict[str, Any]:
    return {"role": "assistant", "content": text}


@pytest.fixture
def node() -> str:
    """The node executable, once the pinned packages are installed."""
    assert NODE is not None
    if not (NODE_DIR / "node_modules").is_dir():
        pytest.fail("tests/clients/node/node_modules is missing: run `npm ci` in tests/clients/node (`make test` does)")
    return NODE


async def run_script(node: str, script: str, gateway: Gateway, conversation: str) -> dict[str, Any]:
    """Run ``tests/clients/node/SCRIPT GATEWAY_URL CONVERSATION`` and return the JSON summary it prints."""
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("OPENAI_", "AI_SDK_")) and key not in ("GATEWAY_URL", "CONVERSATION_ID")
    }
    proc = await asyncio.create_subprocess_exec(
        node,
        str(NODE_DIR / script),
        gateway.url,
        conversation,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        cwd=NODE_DIR,
        env=env,
    )
    try:
        out, err = await asyncio.wait_for(proc.communicate(), TIMEOUT)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        pytest.fail(f"{script} did not finish within {TIMEOUT} s")
    assert proc.returncode == 0, f"{script} exited with {proc.returncode}:\n{err.decode()}"
    return json.loads(out)


async def test_openai_node_stateless_turns_gain_memory(node: str, gateway: Gateway, upstream: FakeUpstream) -> None:
    summary = await run_script(node, "openai_stateless.mjs", gateway, "node-openai-stateless")

    assert summary["texts"] == ["reply 1", "reply 2", "reply 3"]
    assert [r.body.get("stream", False) for r in upstream.requests] == [False, True, False]
    first_two = [user("My name is Ada."), assistant("reply 1"), user("What is my name?")]
    assert upstream.requests[1].body["messages"] == first_two
    assert upstream.requests[2].body["messages"] == [*first_two, assistant("reply 2"), user("Thanks, bye.")]
    assert_undoubled(gateway, upstream, "node-openai-stateless", turns=3)


async def test_openai_node_lists_models_through_the_gateway(
    node: str, gateway: Gateway, upstream: FakeUpstream
) -> None:
    summary = await run_script(node, "openai_models.mjs", gateway, "node-openai-models")

    assert summary["models"] == list(MODELS)
    assert [(o.method, o.path) for o in upstream.others] == [("GET", "/v1/models")]
    assert upstream.others[0].headers.get("Authorization") == "Bearer sk-node-openai"


async def test_openai_node_tool_loop_resending_history_is_not_doubled(
    node: str, gateway: Gateway, upstream: FakeUpstream
) -> None:
    upstream.script(Script(tool_calls=[WEATHER_CALL]))
    summary = await run_script(node, "openai_tool_loop.mjs", gateway, "node-openai-tools")

    assert summary["texts"] == ["reply 2", "reply 3"]
    tool_message = upstream.requests[1].body["messages"][-1]
    assert tool_message["role"] == "tool"
    assert tool_message["tool_call_id"] == "call_1"
    assert json.loads(tool_message["content"]) == WEATHER_RESULT
    assert_undoubled(gateway, upstream, "node-openai-tools", turns=3)


def assert_ai_sdk_tool_round_trip(summary: dict[str, Any], upstream: FakeUpstream) -> None:
    """The SDK ran get_weather with the parsed arguments, resent the call re-serialized as compact JSON, and the
    tool result reached the upstream; every request kept the one system prompt at its head."""
    assert summary["toolCalls"] == [{"name": "get_weather", "input": {"city": "杭州", "unit": "celsius"}}]
    assert summary["texts"] == ["reply 2", "reply 3", "reply 4"]
    resent_call = summary["sent"][1][2]
    assert resent_call["role"] == "assistant"
    # What makes this a test of matching by meaning: the SDK's text differs from the upstream's.
    assert resent_call["tool_calls"][0]["function"]["arguments"] == '{"city":"杭州","unit":"celsius"}'
    tool_message = upstream.requests[1].body["messages"][-1]
    assert tool_message["role"] == "tool"
    assert tool_message["tool_call_id"] == "call_1"
    assert json.loads(tool_message["content"]) == WEATHER_RESULT
    for request in upstream.requests:
        messages = request.body["messages"]
        assert messages[0] == AI_SDK_SYSTEM
        assert sum(m["role"] == "system" for m in messages) == 1


async def test_vercel_ai_sdk_tool_round_trip_is_not_doubled(
    node: str, gateway: Gateway, upstream: FakeUpstream
) -> None:
    upstream.script(Script(tool_calls=[WEATHER_CALL]))
    summary = await run_script(node, "ai_sdk_generate_text.mjs", gateway, "node-ai-sdk-generate")

    assert_ai_sdk_tool_round_trip(summary, upstream)
    assert not any(r.body.get("stream") for r in upstream.requests)
    assert_undoubled(gateway, upstream, "node-ai-sdk-generate", turns=4)


async def test_vercel_ai_sdk_streamed_tool_round_trip_is_not_doubled(
    node: str, gateway: Gateway, upstream: FakeUpstream
) -> None:
    upstream.script(Script(tool_calls=[WEATHER_CALL]))
    summary = await run_script(node, "ai_sdk_stream_text.mjs", gateway, "node-ai-sdk-stream")

    assert_ai_sdk_tool_round_trip(summary, upstream)
    assert all(r.body.get("stream") for r in upstream.requests)
    assert_undoubled(gateway, upstream, "node-ai-sdk-stream", turns=4)


async def test_vercel_ai_sdk_resent_reasoning_is_not_doubled(
    node: str, gateway: Gateway, upstream: FakeUpstream
) -> None:
    upstream.script(
        Script(tool_calls=[WEATHER_CALL], content="Let me check.", reasoning="I should call the tool."),
        Script(content="Sunny, 21 degrees.", reasoning="The tool says sunny."),
    )
    summary = await run_script(node, "ai_sdk_generate_text.mjs", gateway, "node-ai-sdk-reasoning")

    assert summary["texts"] == ["Sunny, 21 degrees.", "reply 3", "reply 4"]
    # The SDK resends the reasoning it received as `reasoning_content` on each assistant message.
    assert [m.get("reasoning_content") for m in summary["sent"][2] if m["role"] == "assistant"] == [
        "I should call the tool.",
        "The tool says sunny.",
    ]
    assert_undoubled(gateway, upstream, "node-ai-sdk-reasoning", turns=4)
