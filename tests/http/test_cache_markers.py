"""DashScope's explicit cache markers on the wire: on the stable prefix of each upstream request, in array form
there only, on the compatible and the native upstream protocol, never over the client's own."""

from __future__ import annotations

import itertools
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.conftest import Gateway, chat_body, make_config, start_gateway, user
from tests.fake_upstream import FakeUpstream, Script
from tests.stored import stored

# Long enough for DashScope to cache (1,024 tokens and more), as a real shop assistant's instructions are.
SYSTEM = {"role": "system", "content": "You sell phones. Ask one question at a time, then recommend. " * 120}
KEY = "sk-cache"
MARKER = {"type": "ephemeral"}


async def _say(
    http: aiohttp.ClientSession, gateway: Gateway, *messages: dict[str, Any], model: str = "qwen-plus"
) -> None:
    headers = {"Authorization": f"Bearer {KEY}", "X-Conversation-Id": "shop"}
    async with http.post(
        gateway.url + "/v1/chat/completions", json=chat_body(*messages, model=model), headers=headers
    ) as response:
        assert response.status == 200, await response.text()


def _sent(upstream: FakeUpstream) -> list[list[dict[str, Any]]]:
    """The messages of every upstream request, from either protocol's body."""
    return [r.body["input"]["messages"] if "input" in r.body else r.body["messages"] for r in upstream.requests]


def _text(message: dict[str, Any]) -> dict[str, Any]:
    """A message as the model reads it: array-form text back to a string."""
    content = message["content"]
    if isinstance(content, list):
        assert len(content) == 1 and content[0]["type"] == "text"
        return {**message, "content": content[0]["text"]}
    return message


async def _conversation(http: aiohttp.ClientSession, gateway: Gateway, upstream: FakeUpstream, turns: int) -> None:
    for turn in range(turns):
        upstream.script(Script(content=f"Noted, turn {turn}. Which screen size, 6.1 or 6.7 inch?"))
        await _say(http, gateway, SYSTEM, user(f"Turn {turn}: a phone with a good camera, please."))


@pytest.fixture(params=["compatible", "native"])
async def served(request: pytest.FixtureRequest, tmp_path: Path, upstream: FakeUpstream) -> AsyncIterator[Gateway]:
    """A gateway whose upstream speaks OpenAI's protocol, or DashScope's native one."""
    flags = {"upstream__protocol": request.param, "upstream__native_base_url": upstream.native_url}
    gateway = await start_gateway(make_config(tmp_path, upstream.url, **flags))
    yield gateway
    await gateway.stop()


async def test_each_request_marks_the_end_of_the_stable_prefix_and_the_store_keeps_strings(
    served: Gateway, upstream: FakeUpstream, http: aiohttp.ClientSession
) -> None:
    await _conversation(http, served, upstream, 6)
    sent = _sent(upstream)
    assert len(sent) == 6
    for messages in sent[1:]:  # the first request repeats nothing: no prefix to mark
        marked = [i for i, m in enumerate(messages) if isinstance(m["content"], list)]
        assert marked == [len(messages) - 2]  # the previous reply (the system prompt on the first turn)
        assert messages[-2]["content"][0]["cache_control"] == MARKER
    history = await stored(served, "shop", key=KEY)
    assert all(isinstance(m["content"], str) for m in history) and len(history) == 12
    assert [_text(m) for m in sent[-1]][1:] == history[:-1]  # the model reads exactly what is stored


async def test_the_marked_prefix_is_byte_stable_from_turn_to_turn(
    served: Gateway, upstream: FakeUpstream, http: aiohttp.ClientSession
) -> None:
    await _conversation(http, served, upstream, 5)
    sent = _sent(upstream)
    for previous, current in itertools.pairwise(sent):
        # What the model reads of one request is the start of the next: the cache it created is found.
        assert [_text(m) for m in current][: len(previous)] == [_text(m) for m in previous]
    # A message marked on one turn is converted to the same bytes on any other (here: the system prompt as the
    # first turn marked it, and as a fresh conversation marks it again).
    first_system = upstream.requests[0].raw
    upstream.requests.clear()
    headers = {"Authorization": f"Bearer {KEY}", "X-Conversation-Id": "again"}
    async with http.post(served.url + "/v1/chat/completions", json=chat_body(SYSTEM, user("hi")), headers=headers):
        pass
    assert upstream.requests[0].raw.split(b'"user"')[0] == first_system.split(b'"user"')[0]


async def test_the_clients_own_marker_is_left_alone(
    gateway: Gateway, upstream: FakeUpstream, http: aiohttp.ClientSession
) -> None:
    own = {"role": "system", "content": [{"type": "text", "text": SYSTEM["content"], "cache_control": MARKER}]}
    for turn in range(3):
        await _say(http, gateway, own, user(f"question {turn}"))
    for messages in _sent(upstream):
        markers = [m for m in messages if isinstance(m["content"], list)]
        assert markers == [own]


async def test_a_model_without_explicit_cache_gets_no_markers(
    gateway: Gateway, upstream: FakeUpstream, http: aiohttp.ClientSession
) -> None:
    for turn in range(3):
        await _say(http, gateway, SYSTEM, user(f"question {turn}"), model="qwen-turbo")
    assert all(isinstance(m["content"], str) for messages in _sent(upstream) for m in messages)


async def test_a_short_conversation_gets_no_markers(
    gateway: Gateway, upstream: FakeUpstream, http: aiohttp.ClientSession
) -> None:
    for turn in range(3):
        await _say(http, gateway, {"role": "system", "content": "You sell phones."}, user(f"question {turn}"))
    assert all(isinstance(m["content"], str) for messages in _sent(upstream) for m in messages)


async def test_a_cut_moves_the_marker_to_the_new_stable_prefix(
    tmp_path: Path, upstream: FakeUpstream, http: aiohttp.ClientSession
) -> None:
    window = '[models."qwen-plus"]\ncontext_tokens = 3000\nreserve_tokens = 500\ncache = "explicit"\n'
    gateway = await start_gateway(make_config(tmp_path, upstream.url, window))
    try:
        for turn in range(40):
            upstream.script(Script(content=f"Noted, turn {turn}. " + "Which screen size, 6.1 or 6.7 inch? " * 8))
            await _say(http, gateway, user(f"Turn {turn}: a phone with a good camera. " * 6))
    finally:
        await gateway.stop()
    sent = _sent(upstream)
    cuts = [i for i in range(1, len(sent)) if _text(sent[i][0]) != _text(sent[i - 1][0])]
    assert cuts  # the window moved
    for messages in sent[1:]:  # the first request repeats nothing: no prefix to mark
        marked = [i for i, m in enumerate(messages) if isinstance(m["content"], list)]
        assert marked[-1] == len(messages) - 2 and len(marked) <= 4  # the end of the (new) prefix, and checkpoints
