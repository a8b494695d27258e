"""Simon Willison's ``llm`` CLI against the real gateway, run as a separate process with its own ``LLM_USER_PATH``:
a model defined in ``extra-openai-models.yaml`` (``api_base`` = the gateway, the conversation header, a key set
with ``llm keys set``), ``llm openai endpoint --models`` listing the upstream's models, stateless prompts, ``-c``
continuations (llm resends the history it logged) and a ``--functions`` tool call, whose arguments llm
re-serializes with ``\\uXXXX`` escapes when it resends them."""

from __future__ import annotations

import asyncio
import json
import os
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest

from tests.clients.checks import WEATHER_CALL, assert_undoubled
from tests.conftest import Gateway
from tests.fake_upstream import MODELS, FakeUpstream, Script

MODEL = "gateway-qwen"
FUNCTIONS = '''
def get_weather(city: str, unit: str = "celsius") -> str:
    """The current weather in a city."""
    return f"24 degrees {unit} in {city}, sunny"
'''

Llm = Callable[..., Awaitable[str]]


async def run_llm(home: Path, *args: str) -> str:
    """``llm ARGS`` as a child process (never blocking the event loop the gateway serves on); its stdout."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OPENAI_", "LLM_"))}
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "llm",
        *args,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env={**env, "LLM_USER_PATH": str(home)},
    )
    try:
        out, err = await asyncio.wait_for(proc.communicate(), 30)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise
    assert proc.returncode == 0, f"llm {' '.join(args)} exited {proc.returncode}: {err.decode()}"
    return out.decode()


@pytest.fixture
async def llm_for(tmp_path: Path, gateway: Gateway) -> Callable[[str], Awaitable[Llm]]:
    """An llm home whose ``gateway-qwen`` model talks to the gateway with ``X-Conversation-Id: <conversation>``."""

    async def make(conversation: str) -> Llm:
        home = tmp_path / "llm"
        home.mkdir()
        # A YAML flow mapping per model: JSON is valid YAML.
        model = {
            "model_id": MODEL,
            "model_name": "qwen-plus",
            "api_base": gateway.url + "/v1",
            "api_key_name": "gateway",
            "headers": {"X-Conversation-Id": conversation},
            "supports_tools": True,
        }
        (home / "extra-openai-models.yaml").write_text(f"- {json.dumps(model)}\n")
        await run_llm(home, "keys", "set", "gateway", "--value", "sk-llm")

        async def llm(*args: str) -> str:
            return await run_llm(home, *args)

        return llm

    return make


async def test_llm_endpoint_models_lists_the_upstreams_models(
    gateway: Gateway, upstream: FakeUpstream, tmp_path: Path
) -> None:
    """``llm openai models`` asks api.openai.com only; ``llm openai endpoint URL --models`` asks any endpoint."""
    out = await run_llm(
        tmp_path,
        *("openai", "endpoint", gateway.url + "/v1", "--models"),
        *("--key", "sk-llm", "-H", "X-Conversation-Id", "llm-models"),
    )
    assert out.split() == list(MODELS)
    assert [(o.method, o.path) for o in upstream.others] == [("GET", "/v1/models")]
    assert upstream.others[0].headers["Authorization"] == "Bearer sk-llm"
    assert gateway.rows("SELECT * FROM conversations") == []


async def test_llm_stateless_prompts_gain_memory(
    gateway: Gateway, upstream: FakeUpstream, llm_for: Callable[[str], Awaitable[Llm]]
) -> None:
    llm = await llm_for("llm-stateless")
    outputs = [await llm("-m", MODEL, text) for text in ("I want a phone", "6.7 inch", "4K")]
    assert [out.strip() for out in outputs] == ["reply 1", "reply 2", "reply 3"]
    assert all(r.body["stream"] is True for r in upstream.requests)  # llm streams unless told not to
    assert upstream.requests[0].headers["Authorization"] == "Bearer sk-llm"
    assert_undoubled(gateway, upstream, "llm-stateless", turns=3)


async def test_llm_continuation_resends_history_without_doubling(
    gateway: Gateway, upstream: FakeUpstream, llm_for: Callable[[str], Awaitable[Llm]]
) -> None:
    llm = await llm_for("llm-continue")
    await llm("-m", MODEL, "-s", "You sell phones.", "I want a phone")
    for text in ("6.7 inch", "4K"):
        await llm("-c", text)
    assert_undoubled(gateway, upstream, "llm-continue", turns=3)


async def test_llm_function_tool_round_trip_is_not_doubled(
    gateway: Gateway, upstream: FakeUpstream, llm_for: Callable[[str], Awaitable[Llm]]
) -> None:
    upstream.script(Script(tool_calls=[WEATHER_CALL]))
    llm = await llm_for("llm-tools")
    # One invocation, two upstream calls: the tool call, then the answer to its result.
    out = await llm("-m", MODEL, "--functions", FUNCTIONS, "What's the weather in Hangzhou?")
    assert out.strip() == "reply 2"
    assert upstream.last["messages"][-1]["content"] == "24 degrees celsius in 杭州, sunny"
    await llm("-c", "--functions", FUNCTIONS, "And tomorrow?")
    assert_undoubled(gateway, upstream, "llm-tools", turns=3)
