"""The Node half of the client matrix: the official `openai` npm package and the Vercel AI SDK (`ai` with
`@ai-sdk/openai-compatible` on chat completions, and with its default provider `@ai-sdk/openai`, whose
`openai(model)` calls the Responses API) talk to the real gateway in front of the fake upstream, each run as a Node
script from tests/clients/node/ (pinned in its package.json and package-lock.json; `npm ci` there installs them).

Each test scripts the upstream, runs one script as a subprocess (without blocking the event loop the gateway serves
on), and checks what reached the upstream and what the gateway stored: a stateless client gains its history, a
client that resends its whole history, tool calls re-serialized its own way, is not doubled, and a Responses API
client chaining turns by `previousResponseId` has the whole conversation reach the upstream.  The module is skipped
only when there is no `node` on PATH."""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
from pathlib import Path
from typing import Any

import pytest

from tests.clients.checks import assert_undoubled, meaning
from tests.conftest import Gateway
from tests.fake_upstream import MODELS, FakeUpstream, Script
from tests.stored import find_conversation

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


# A second call to the same tool, in a later turn of the Responses API tests.
FAHRENHEIT_CALL = {
    "id": "call_2",
    "type": "function",
    "function": {"name": "get_weather", "arguments": '{"city": "杭州","unit":"fahrenheit"}'},
}


def user(text: str) -> dict[str, Any]:
    return {"role": "user", "content": text}


def assistant(text: str) -> dict[str, Any]:
    return {"role": "assistant", "content": text}


def assistant_call(call: dict[str, Any], text: str | None = None) -> dict[str, Any]:
    return {"role": "assistant", "content": text, "tool_calls": [call]}


def tool_result(call_id: str, result: dict[str, Any]) -> dict[str, Any]:
    """A tool message as the AI SDK's output reaches the upstream: compact JSON."""
    return {
        "role": "tool",
        "tool_call_id": call_id,
        "content": json.dumps(result, ensure_ascii=False, separators=(",", ":")),
    }


@pytest.fixture
def node() -> str:
    """The node executable, once the pinned packages are installed."""
    assert NODE is not None
    if not (NODE_DIR / "node_modules").is_dir():
        pytest.fail("tests/clients/node/node_modules is missing: run `npm ci` in tests/clients/node (`make test` does)")
    return NODE


async def run_script(node: str, script: str, gateway: Gateway, conversation: str, *args: str) -> dict[str, Any]:
    """Run ``tests/clients/node/SCRIPT GATEWAY_URL CONVERSATION [ARGS...]`` and return the JSON summary it
    prints."""
    return await _run_node(node, script, [str(NODE_DIR / script)], gateway, conversation, *args)


async def run_module(node: str, code: str, gateway: Gateway, conversation: str, *args: str) -> dict[str, Any]:
    """Run ``code`` as an ES module in tests/clients/node (its imports resolve there, as a script's do) with
    ``GATEWAY_URL CONVERSATION [ARGS...]`` as its arguments, and return the JSON summary it prints."""
    # With --eval, process.argv[1] is the first argument: "inline" takes the script path's place.
    argv = ["--input-type=module", "--eval", code, "--", "inline"]
    return await _run_node(node, "an inline module", argv, gateway, conversation, *args)


async def _run_node(
    node: str, script: str, argv: list[str], gateway: Gateway, conversation: str, *args: str
) -> dict[str, Any]:
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("OPENAI_", "AI_SDK_")) and key not in ("GATEWAY_URL", "CONVERSATION_ID")
    }
    proc = await asyncio.create_subprocess_exec(
        node,
        *argv,
        gateway.url,
        conversation,
        *args,
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


# The Vercel AI SDK's default OpenAI provider (`@ai-sdk/openai`): `openai(model)` on POST /v1/responses, turns chained
# by `providerOptions.openai.previousResponseId` with no X-Conversation-Id (the response ids carry the memory); the
# tool tests also run it with the header, and with `providerOptions.openai.conversation` instead of response ids.

AI_SDK_OPENAI_KEY = "sk-node-ai-sdk-openai"  # the key ai_sdk_openai.mjs sends: its owner holds the conversations


def input_text(text: str) -> dict[str, Any]:
    """A user message as the AI SDK's Responses provider sends it: one input_text part."""
    return {"role": "user", "content": [{"type": "input_text", "text": text}]}


def decode_output(item: dict[str, Any]) -> dict[str, Any]:
    """A Responses input item with a function_call_output's JSON text parsed, to compare by meaning."""
    if item.get("type") == "function_call_output":
        return {**item, "output": json.loads(item["output"])}
    return item


def assert_chained(summary: dict[str, Any], prompts: list[str], *, system: str) -> str:
    """Every request went to /v1/responses and was answered 200; the first sent the system prompt and its prompt,
    each later one only its new prompt and the previous turn's response id as ``previous_response_id``; and every
    response named the same conversation, which is returned."""
    requests = summary["requests"]
    assert [(r["path"], r["status"]) for r in requests] == [("/v1/responses", 200)] * len(prompts)
    assert requests[0]["body"]["input"] == [{"role": "system", "content": system}, input_text(prompts[0])]
    assert "previous_response_id" not in requests[0]["body"]
    for n, (request, prompt) in enumerate(zip(requests[1:], prompts[1:], strict=True), 1):
        assert request["body"]["input"] == [input_text(prompt)]
        assert request["body"]["previous_response_id"] == summary["responseIds"][n - 1]
    conversations = {r["conversation"] for r in requests}
    assert len(conversations) == 1, f"the chain spread over conversations: {conversations}"
    (conversation,) = conversations
    assert conversation.startswith("conv_")
    return conversation


async def test_vercel_ai_sdk_openai_provider_chains_turns_by_previous_response_id(
    node: str, gateway: Gateway, upstream: FakeUpstream
) -> None:
    summary = await run_script(node, "ai_sdk_openai_generate_text.mjs", gateway, "node-ai-sdk-openai-generate")

    assert summary["texts"] == ["reply 1", "reply 2", "reply 3"]
    assert summary["finishReasons"] == ["stop", "stop", "stop"]
    assert summary["warnings"] == []
    assert len(set(summary["responseIds"])) == 3
    assert all(response_id.startswith("resp_") for response_id in summary["responseIds"])
    prompts = ["My name is Ada.", "What is my name?", "Thanks, bye."]
    conversation = assert_chained(summary, prompts, system="You are a concise assistant.")
    assert not any(r.body.get("stream") for r in upstream.requests)
    # The last turn sent one message; the upstream saw the whole conversation.
    assert upstream.requests[2].body["messages"] == [
        {"role": "system", "content": "You are a concise assistant."},
        user("My name is Ada."),
        assistant("reply 1"),
        user("What is my name?"),
        assistant("reply 2"),
        user("Thanks, bye."),
    ]
    assert_undoubled(gateway, upstream, conversation, turns=3)


async def test_vercel_ai_sdk_openai_provider_streams_text_with_memory(
    node: str, gateway: Gateway, upstream: FakeUpstream
) -> None:
    first = "The 6.7 inch phones: the Aurora Max and the Nimbus Pro, both with 2K or 4K screens."
    second = "In 4K: the Nimbus Pro, 1299 dollars."
    upstream.script(Script(content=first), Script(content=second))
    summary = await run_script(node, "ai_sdk_openai_stream_text.mjs", gateway, "node-ai-sdk-openai-stream")

    for turn, reply in zip(summary["turns"], [first, second], strict=True):
        # The text streamed, delta by delta, is the reply, and the result's text is the same.
        assert len(turn["deltas"]) > 1
        assert "".join(turn["deltas"]) == reply
        assert turn["text"] == reply
        assert turn["finishReason"] == turn["resultFinishReason"] == "stop"
        assert turn["warnings"] == []
        assert turn["parts"] == [
            "start",
            "start-step",
            "text-start",
            "text-delta",
            "text-end",
            "finish-step",
            "finish",
        ]
    summary["responseIds"] = [turn["responseId"] for turn in summary["turns"]]
    prompts = ["Tell me about the 6.7 inch phones.", "And in 4K?"]
    conversation = assert_chained(summary, prompts, system="You are a phone-store assistant.")
    assert all(r["body"]["stream"] is True for r in summary["requests"])
    assert all(r.body.get("stream") for r in upstream.requests)
    assert upstream.requests[1].body["messages"] == [
        {"role": "system", "content": "You are a phone-store assistant."},
        user("Tell me about the 6.7 inch phones."),
        assistant(first),
        user("And in 4K?"),
    ]
    assert_undoubled(gateway, upstream, conversation, turns=2)


@pytest.mark.parametrize("memory", ["ids", "header"])
@pytest.mark.parametrize("mode", ["generate", "stream"])
async def test_vercel_ai_sdk_openai_provider_runs_a_function_tool(
    node: str, gateway: Gateway, upstream: FakeUpstream, mode: str, memory: str
) -> None:
    """Two turns that each call the tool; ``memory`` ``header``: the provider sends X-Conversation-Id too."""
    upstream.script(Script(tool_calls=[WEATHER_CALL]), Script(), Script(tool_calls=[FAHRENHEIT_CALL]))
    named = f"node-ai-sdk-openai-tool-{mode}-{memory}"
    summary = await run_script(node, "ai_sdk_openai_tool.mjs", gateway, named, mode, memory)

    fahrenheit = {**WEATHER_RESULT, "unit": "fahrenheit"}
    assert summary["toolCalls"] == [
        {"name": "get_weather", "input": {"city": "杭州", "unit": "celsius"}},
        {"name": "get_weather", "input": {"city": "杭州", "unit": "fahrenheit"}},
    ]
    assert summary["toolResults"] == [WEATHER_RESULT, fahrenheit]
    assert summary["texts"] == ["reply 2", "reply 4"]
    assert summary["finishReasons"] == [["tool-calls", "stop"], ["tool-calls", "stop"]]
    assert summary["warnings"] == []
    requests = summary["requests"]
    assert [(r["path"], r["status"]) for r in requests] == [("/v1/responses", 200)] * 4
    bodies = [r["body"] for r in requests]
    assert all([t["name"] for t in b["tools"]] == ["get_weather"] for b in bodies)
    assert [b.get("stream", False) for b in bodies] == [mode == "stream"] * 4
    assert [r.body.get("stream", False) for r in upstream.requests] == [mode == "stream"] * 4

    # Each tool step resends its turn's input with the call, re-serialized as compact JSON, and the tool's output.
    def tool_step(call_id: str, arguments: str, output: dict[str, Any]) -> list[dict[str, Any]]:
        call = {"type": "function_call", "call_id": call_id, "name": "get_weather", "arguments": arguments}
        return [call, {"type": "function_call_output", "call_id": call_id, "output": output}]

    system = {"role": "system", "content": AI_SDK_SYSTEM["content"]}
    first, second = input_text("What is the weather in Hangzhou?"), input_text("Thanks! And tomorrow?")
    assert [[decode_output(item) for item in b["input"]] for b in bodies] == [
        [system, first],
        [system, first, *tool_step("call_1", '{"city":"杭州","unit":"celsius"}', WEATHER_RESULT)],
        [second],
        [second, *tool_step("call_2", '{"city":"杭州","unit":"fahrenheit"}', fahrenheit)],
    ]
    # The SDK chains the turn, not its steps: both steps of turn 2 name turn 1's last response.
    assert [b.get("previous_response_id") for b in bodies] == [None, None, *[summary["responseIds"][0]] * 2]

    # So without the header the first step, sent with no previous_response_id, starts a conversation of its own
    # (holding only the call), and the second, resending it all, another; with it both go to the named one, the
    # resent input recognized.  Turn 2 appends to that conversation, and its second step, continuing a response
    # that is no longer the latest, forks (the chain never mixes turns; previous_response_id wins over the header).
    conversations = [r["conversation"] for r in requests]
    assert conversations[1] == conversations[2]
    if memory == "header":
        assert conversations[:3] == [named] * 3
        assert conversations[3].startswith("conv_")
    else:
        assert len(set(conversations)) == 3
        assert [meaning(m) for m in gateway.stored(conversations[0])] == [
            meaning(m) for m in [user("What is the weather in Hangzhou?"), assistant_call(WEATHER_CALL)]
        ]
    fork = await find_conversation(gateway, conversations[3], key=AI_SDK_OPENAI_KEY)
    assert fork is not None
    assert fork["metadata"] == {"forked_from": conversations[1], "forked_from_response": summary["responseIds"][0]}

    # The upstream saw the whole history once on the last step: both calls and both results.
    last = upstream.requests[3].body["messages"]
    assert [meaning(m) for m in last] == [
        meaning(m)
        for m in [
            AI_SDK_SYSTEM,
            user("What is the weather in Hangzhou?"),
            assistant_call(WEATHER_CALL),
            tool_result("call_1", WEATHER_RESULT),
            assistant("reply 2"),
            user("Thanks! And tomorrow?"),
            assistant_call(FAHRENHEIT_CALL),
            tool_result("call_2", fahrenheit),
        ]
    ]
    # Each step resent its history: the upstream saw it once, and the last conversation holds it once.
    assert_undoubled(gateway, upstream, conversations[3], turns=4)


@pytest.mark.parametrize("mode", ["generate", "stream"])
async def test_vercel_ai_sdk_openai_provider_runs_a_tool_after_text(
    node: str, gateway: Gateway, upstream: FakeUpstream, mode: str
) -> None:
    """A model that says something before its call (Qwen often does): the tool step resends that text as
    ``{"type": "item_reference", "id": "msg_..."}``, the id of the gateway's own output item, which the gateway
    looks up and uses as if the text had been sent."""
    upstream.script(Script(tool_calls=[WEATHER_CALL], content="Let me check."), Script(), Script())
    summary = await run_script(node, "ai_sdk_openai_tool.mjs", gateway, f"node-ai-sdk-openai-tool-text-{mode}", mode)

    assert summary["texts"] == ["reply 2", "reply 3"]  # the last step's text
    requests = summary["requests"]
    assert [(r["path"], r["status"]) for r in requests] == [("/v1/responses", 200)] * 3
    step = requests[1]["body"]["input"]
    kinds = [item.get("type") for item in step]
    assert kinds == [None, None, "item_reference", "function_call", "function_call_output"]
    assert re.fullmatch(r"msg_[0-9a-f]{32}_0", step[2]["id"])  # the first step's message, output_index 0
    # The upstream saw the text and the call as one assistant message, as the model sent them.
    assert [meaning(m) for m in upstream.requests[1].body["messages"]] == [
        meaning(m)
        for m in [
            AI_SDK_SYSTEM,
            user("What is the weather in Hangzhou?"),
            assistant_call(WEATHER_CALL, "Let me check."),
            tool_result("call_1", WEATHER_RESULT),
        ]
    ]
    # Turn 2 continues turn 1's last response, and its history holds the text once.
    last = upstream.requests[2].body["messages"]
    assert [meaning(m) for m in last][2:] == [
        meaning(m)
        for m in [
            assistant_call(WEATHER_CALL, "Let me check."),
            tool_result("call_1", WEATHER_RESULT),
            assistant("reply 2"),
            user("Thanks! And tomorrow?"),
        ]
    ]
    assert_undoubled(gateway, upstream, requests[2]["conversation"], turns=3)


# Three generateText turns of `openai('qwen-plus')`, each sending the whole history as `messages`, grown with the
# previous turn's `result.response.messages` (the AI SDK docs' way to keep a chat going), no response ids; given a
# third argument `header`, the provider sends X-Conversation-Id too.
RESEND_RESPONSE_MESSAGES = """
import { generateText } from 'ai';
import { openaiProvider, requests } from './ai_sdk_openai.mjs';
import { run } from './cli.mjs';

await run(async (target) => {
  const headers = process.argv[4] === 'header' ? { 'X-Conversation-Id': target.conversation } : undefined;
  const openai = openaiProvider(target, headers);
  const messages = [];
  const texts = [];
  for (const prompt of ['My name is Ada.', 'What is my name?', 'Thanks, bye.']) {
    messages.push({ role: 'user', content: prompt });
    const result = await generateText({ model: openai('qwen-plus'), messages, maxRetries: 0 });
    texts.push(result.text);
    messages.push(...result.response.messages);
  }
  return { texts, requests };
});
"""


@pytest.mark.parametrize("memory", ["none", "header"])
async def test_vercel_ai_sdk_openai_provider_resending_response_messages_is_not_doubled(
    node: str, gateway: Gateway, upstream: FakeUpstream, memory: str
) -> None:
    """Each earlier reply goes back as an item_reference to the gateway's output message, which the gateway
    looks up: the upstream sees the history once, and with the header the named conversation recognises it as
    what it holds."""
    named = f"node-ai-sdk-openai-resend-{memory}"
    summary = await run_module(node, RESEND_RESPONSE_MESSAGES, gateway, named, memory)

    assert summary["texts"] == ["reply 1", "reply 2", "reply 3"]
    requests = summary["requests"]
    assert [r["status"] for r in requests] == [200] * 3
    assert [[item.get("type") for item in r["body"]["input"]] for r in requests] == [
        [None],
        [None, "item_reference", None],
        [None, "item_reference", None, "item_reference", None],
    ]
    history = [user("My name is Ada."), assistant("reply 1"), user("What is my name?"), assistant("reply 2")]
    assert [meaning(m) for m in upstream.requests[2].body["messages"]] == [
        meaning(m) for m in [*history, user("Thanks, bye.")]
    ]
    conversations = [r["conversation"] for r in requests]
    if memory == "header":
        assert conversations == [named] * 3
    else:  # no response ids and no header: each turn a conversation of its own
        assert len(set(conversations)) == 3
    assert_undoubled(gateway, upstream, conversations[2], turns=3)


@pytest.mark.xfail(
    strict=True,
    reason="in a named conversation the SDK's tool step resends the turn's user message but not the call the server "
    "holds, and the gateway (gateway/core/history.py, match_history) takes it as new: a user message lands between "
    "the tool call and its result",
)
@pytest.mark.parametrize("mode", ["generate", "stream"])
async def test_vercel_ai_sdk_openai_provider_runs_a_function_tool_in_a_named_conversation(
    node: str, gateway: Gateway, upstream: FakeUpstream, mode: str
) -> None:
    """``providerOptions.openai.conversation`` on every turn: the SDK leaves out of each step's input what the
    server holds (the calls: items with an id) and sends the rest, the turn's user message again included."""
    upstream.script(Script(tool_calls=[WEATHER_CALL]), Script(), Script(tool_calls=[FAHRENHEIT_CALL]))
    named = f"node-ai-sdk-openai-tool-conversation-{mode}"
    summary = await run_script(node, "ai_sdk_openai_tool.mjs", gateway, named, mode, "conversation")

    assert summary["texts"] == ["reply 2", "reply 4"]
    assert [r["conversation"] for r in summary["requests"]] == [named] * 4
    assert [meaning(m) for m in upstream.requests[1].body["messages"]] == [
        meaning(m)
        for m in [
            AI_SDK_SYSTEM,
            user("What is the weather in Hangzhou?"),
            assistant_call(WEATHER_CALL),
            tool_result("call_1", WEATHER_RESULT),
        ]
    ]
    assert_undoubled(gateway, upstream, named, turns=4)
