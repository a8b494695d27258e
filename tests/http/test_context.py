"""Context windows: long conversations never overflow a model that enforces its limit, cuts keep a stable prefix
for DashScope's cache, and summaries, max_turns, reserves and reasoning policies behave as configured."""

from __future__ import annotations

import itertools
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest

from tests.conftest import Gateway, chat_body, make_config, start_gateway, user
from tests.fake_upstream import FakeUpstream, Script
from tests.stored import cli_dump, stored

SYSTEM = {"role": "system", "content": "You sell phones. Ask one question at a time: screen size, then resolution."}
WINDOW = '[models."qwen-plus"]\ncontext_tokens = 3000\nreserve_tokens = 500\n'
CALL = {"id": "call_1", "type": "function", "function": {"name": "stock", "arguments": '{"size": "6.7"}'}}


def _sentence(turn: int) -> str:
    return f"Turn {turn}: I would like to compare the 6.1, 6.5 and 6.7 inch models in 2K and 4K once more, please."


async def _gateway(tmp_path: Path, upstream: FakeUpstream, toml: str = WINDOW, **flags: Any) -> Gateway:
    upstream.context_limit = 3000
    return await start_gateway(make_config(tmp_path, upstream.url, toml, **flags))


@pytest.fixture
async def windowed(tmp_path: Path, upstream: FakeUpstream) -> AsyncIterator[Gateway]:
    gateway = await _gateway(tmp_path, upstream)
    yield gateway
    await gateway.stop()


async def _say(http: aiohttp.ClientSession, gateway: Gateway, messages: list[dict[str, Any]], **fields: Any) -> Any:
    headers = {"Authorization": "Bearer sk-ctx", "X-Conversation-Id": "long"}
    async with http.post(
        gateway.url + "/v1/chat/completions", json=chat_body(*messages, **fields), headers=headers
    ) as r:
        return r.status, r.headers.get("X-Conversation-Trimmed"), await r.json()


def _check_shape(messages: list[dict[str, Any]]) -> None:
    """System prompt first; history opens on a user message; every tool result follows its tool call."""
    assert messages[0] == SYSTEM
    rest = [m for m in messages[1:] if m["role"] != "system"]
    assert rest[0]["role"] == "user"
    for i, message in enumerate(rest):
        if message["role"] == "tool":
            assert rest[i - 1]["role"] in ("assistant", "tool")
            calls = next(m for m in reversed(rest[:i]) if m["role"] == "assistant")
            assert any(c["id"] == message["tool_call_id"] for c in calls["tool_calls"])


async def test_a_300_turn_conversation_never_overflows_and_keeps_its_shape(
    windowed: Gateway, upstream: FakeUpstream, http: aiohttp.ClientSession
) -> None:
    for turn in range(300):
        if turn % 25 == 7:  # now and then a tool round trip
            upstream.script(Script(tool_calls=[CALL]), Script(content=f"In stock. {_sentence(turn)}"))
            status, _, _ = await _say(http, windowed, [SYSTEM, user(_sentence(turn))])
            assert status == 200
            tool_result = {"role": "tool", "tool_call_id": "call_1", "content": "yes, 12 in stock"}
            status, trimmed, _ = await _say(http, windowed, [SYSTEM, tool_result])
        else:
            upstream.script(Script(content=f"Noted. {_sentence(turn)}"))
            status, trimmed, _ = await _say(http, windowed, [SYSTEM, user(_sentence(turn))])
        assert status == 200, turn
        _check_shape(upstream.last["messages"])
    assert upstream.overflows == 0
    assert int(trimmed) > 500  # most of the history stayed home
    assert len(await stored(windowed, "long", key="sk-ctx")) > 600  # and all of it is stored


async def test_cuts_keep_a_byte_identical_prefix_for_at_least_90_percent_of_turns(
    tmp_path: Path, upstream: FakeUpstream, http: aiohttp.ClientSession
) -> None:
    # DashScope's implicit cache matches byte-identical prefixes: measured without explicit markers, which move
    # to the newest reply every turn (tests/http/test_cache_markers.py checks those).
    windowed = await _gateway(tmp_path, upstream, WINDOW + 'cache = "implicit"\n')
    try:
        for turn in range(200):
            upstream.script(Script(content=f"Noted. {_sentence(turn)}"))
            status, _, _ = await _say(http, windowed, [SYSTEM, user(_sentence(turn))])
            assert status == 200
    finally:
        await windowed.stop()
    sent = [orjson.loads(r.raw)["messages"] for r in upstream.requests]
    stable = cuts = 0
    for previous, current in itertools.pairwise(sent):
        if orjson.dumps(current).startswith(orjson.dumps(previous)[:-1]):
            stable += 1
        else:
            cuts += 1
    share = stable / (len(sent) - 1)
    print(f"prefix-stable turns: {stable}/{len(sent) - 1} = {share:.1%}, cuts: {cuts}")
    assert cuts >= 3  # the window overflowed several times
    assert share >= 0.9


async def test_new_messages_that_cannot_fit_are_400_without_calling_upstream(
    windowed: Gateway, upstream: FakeUpstream, http: aiohttp.ClientSession
) -> None:
    status, _, body = await _say(http, windowed, [user("word " * 4000)])
    assert status == 400 and body["error"]["code"] == "context_length_exceeded"
    status, _, body = await _say(http, windowed, [user("hi")], max_tokens=5000)  # the reserve alone is too big
    assert status == 400 and body["error"]["code"] == "context_length_exceeded"
    assert upstream.requests == []


async def test_the_clients_max_tokens_is_the_reserve(
    windowed: Gateway, upstream: FakeUpstream, http: aiohttp.ClientSession
) -> None:
    for turn in range(20):
        await _say(http, windowed, [user(_sentence(turn))])
    _, kept_default, _ = await _say(http, windowed, [user("and now?")])
    _, kept_big_reply, _ = await _say(http, windowed, [user("and now, at length?")], max_tokens=2000)
    assert int(kept_default) == 0 and int(kept_big_reply) > 0
    assert upstream.overflows == 0


async def test_max_turns_caps_history_with_stable_cuts(
    tmp_path: Path, upstream: FakeUpstream, http: aiohttp.ClientSession
) -> None:
    gateway = await _gateway(tmp_path, upstream, memory__max_turns=4)
    users_sent = []
    for turn in range(12):
        await _say(http, gateway, [user(f"turn {turn}")])
        users_sent.append(sum(m["role"] == "user" for m in upstream.last["messages"]) - 1)  # history's user turns
    assert users_sent == [0, 1, 2, 3, 4, 2, 3, 4, 2, 3, 4, 2]  # grow to 4, cut to 2 (low water), grow again
    await gateway.stop()


async def test_summaries_replace_what_a_cut_leaves_out(
    tmp_path: Path, upstream: FakeUpstream, http: aiohttp.ClientSession
) -> None:
    gateway = await _gateway(tmp_path, upstream, memory__summarize=True, memory__max_turns=4)
    prompt = gateway.config.summary_prompt
    upstream.chooser = lambda body: (
        Script(content="The customer wants a phone.") if body["messages"][0]["content"] == prompt else None
    )
    for turn in range(6):
        await _say(http, gateway, [SYSTEM, user(f"turn {turn}")])
    summary_requests = [r.body for r in upstream.requests if r.body["messages"][0]["content"] == prompt]
    assert len(summary_requests) == 1
    assert "turn 0" in summary_requests[0]["messages"][1]["content"]
    summary = {"role": "system", "content": "Summary of the earlier conversation:\nThe customer wants a phone."}
    assert upstream.last["messages"][:2] == [SYSTEM, summary]
    assert upstream.last["messages"][2] == user("turn 3")  # five turns of history went over 4: two kept
    assert [(header["id"], header["window"]["summary"]) for header, *_ in await cli_dump(gateway.db_path)] == [
        ("long", summary)
    ]
    await gateway.stop()


async def test_a_failed_summary_never_fails_the_turn(
    tmp_path: Path, upstream: FakeUpstream, http: aiohttp.ClientSession
) -> None:
    gateway = await _gateway(tmp_path, upstream, memory__summarize=True, memory__max_turns=2)
    prompt = gateway.config.summary_prompt
    upstream.chooser = lambda body: Script(status=500) if body["messages"][0]["content"] == prompt else None
    for turn in range(4):
        status, _, _ = await _say(http, gateway, [user(f"turn {turn}")])
        assert status == 200
    assert [(header["id"], header["window"]["summary"]) for header, *_ in await cli_dump(gateway.db_path)] == [
        ("long", None)
    ]
    assert upstream.last["messages"][0] == user("turn 2")
    await gateway.stop()


@pytest.mark.parametrize(
    ("policy", "expected"),
    [
        ("never", [None, None]),
        ("tool_loop", [None, "thinking about stock"]),
        ("always", ["thinking first", "thinking about stock"]),
    ],
)
async def test_reasoning_replay_policies(
    tmp_path: Path, upstream: FakeUpstream, http: aiohttp.ClientSession, policy: str, expected: list[str | None]
) -> None:
    toml = f'[models."qwq-plus"]\nreasoning_replay = "{policy}"\n'
    gateway = await _gateway(tmp_path, upstream, toml)
    upstream.context_limit = None
    upstream.script(
        Script(content="Which size?", reasoning="thinking first"),
        Script(tool_calls=[CALL], reasoning="thinking about stock"),
    )
    await _say(http, gateway, [user("a phone")], model="qwq-plus")
    await _say(http, gateway, [user("6.7 inch, in stock?")], model="qwq-plus")
    await _say(http, gateway, [{"role": "tool", "tool_call_id": "call_1", "content": "yes"}], model="qwq-plus")
    replies = [m for m in upstream.last["messages"] if m["role"] == "assistant"]
    assert [m.get("reasoning_content") for m in replies] == expected
    await _say(http, gateway, [user("thanks")], model="qwq-plus")  # the loop is over: tool_loop replays nothing
    replies = [m for m in upstream.last["messages"] if m["role"] == "assistant"]
    assert [m.get("reasoning_content") for m in replies][:2] == (expected if policy == "always" else [None, None])
    await gateway.stop()


async def test_the_upstreams_own_token_count_corrects_a_short_estimate(
    windowed: Gateway, upstream: FakeUpstream, http: aiohttp.ClientSession
) -> None:
    upstream.context_limit = None
    # The model counted far more than the text shows (images, a template): the next turn must make room.
    upstream.script(Script(usage={"prompt_tokens": 2450, "completion_tokens": 40, "total_tokens": 2490}))
    await _say(http, windowed, [SYSTEM, user("here is a photo of my old phone")])
    status, trimmed, _ = await _say(http, windowed, [SYSTEM, user("which new one is like it?")])
    assert status == 200 and trimmed == "2"
    assert upstream.last["messages"] == [SYSTEM, user("which new one is like it?")]
