"""What every client-matrix test checks once its turns are done: the upstream saw each message exactly once per
request, later requests carried the whole history, and the stored conversation holds no message twice."""

from __future__ import annotations

import json
from typing import Any

from tests.conftest import Gateway
from tests.fake_upstream import FakeUpstream

_SYSTEM = ("system", "developer")

# What the fake upstream answers a tool round trip's first turn with: irregular spacing and non-ASCII on purpose, so
# that every client's re-serialization (compact JSON, json.dumps with spaces, \uXXXX escapes) differs from these bytes.
WEATHER_CALL: dict[str, Any] = {
    "id": "call_1",
    "type": "function",
    "function": {"name": "get_weather", "arguments": '{"city":"杭州", "unit": "celsius"}'},
}


def meaning(message: dict[str, Any]) -> tuple[Any, ...]:
    """A message as a test compares it: role, text, tool-call ids, names and parsed arguments, tool_call_id."""
    content = message.get("content")
    if isinstance(content, list):
        content = "".join(p.get("text", "") for p in content if isinstance(p, dict))
    calls = tuple(
        (
            c.get("id"),
            c["function"]["name"],
            json.dumps(json.loads(c["function"]["arguments"] or "{}"), sort_keys=True, ensure_ascii=False),
        )
        for c in message.get("tool_calls") or ()
    )
    return (message["role"], content or "", calls, message.get("tool_call_id"))


def conversation_requests(upstream: FakeUpstream) -> list[list[dict[str, Any]]]:
    """The non-system messages of every chat request the upstream received (a matrix test drives one
    conversation per upstream)."""
    return [[m for m in r.body["messages"] if m.get("role") not in _SYSTEM] for r in upstream.requests]


def assert_undoubled(gateway: Gateway, upstream: FakeUpstream, conversation: str, *, turns: int) -> None:
    """``turns`` upstream calls were made for ``conversation``; each carried the previous one's messages and reply
    as its prefix, no message (system prompt included) appeared twice in any of them, system messages only led,
    and what is stored is exactly the last request's messages plus the last reply, each once."""
    for n, request in enumerate(upstream.requests):
        roles = [m.get("role") for m in request.body["messages"]]
        lead = next((i for i, role in enumerate(roles) if role not in _SYSTEM), len(roles))
        assert not any(role in _SYSTEM for role in roles[lead:]), f"upstream request {n}: a system message mid-way"
        system = [meaning(m) for m in request.body["messages"][:lead]]
        assert len(system) == len(set(system)), f"upstream request {n} carried a system message twice: {system}"
    requests = conversation_requests(upstream)
    assert len(requests) == turns, f"expected {turns} upstream calls, got {len(requests)}"
    stored = gateway.stored(conversation)
    stored_meaning = [meaning(m) for m in stored]
    assert len(stored_meaning) == len(set(stored_meaning)), f"a stored message is duplicated: {stored_meaning}"
    for n, messages in enumerate(requests):
        seen = [meaning(m) for m in messages]
        assert len(seen) == len(set(seen)), f"upstream request {n} carried a message twice: {seen}"
        if n:
            previous = [meaning(m) for m in requests[n - 1]]
            assert seen[: len(previous)] == previous, f"request {n} does not carry request {n - 1}'s history"
            assert len(seen) > len(previous) + 1, f"request {n} lacks the previous reply or a new message"
            assert seen[len(previous)][0] == "assistant", f"request {n} lacks request {n - 1}'s reply"
    assert stored_meaning[:-1] == [meaning(m) for m in requests[-1]], "stored history differs from what was sent"
    assert stored[-1]["role"] == "assistant"
