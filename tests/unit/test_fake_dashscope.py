"""The fake DashScope bill (tests.fake_dashscope): each context-cache rule, and the usage a FakeUpstream reports."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest

from tests.fake_dashscope import (
    FRAMING_TOKENS,
    BillLine,
    DashScopeBilling,
    MarkerLimitExceeded,
    Prices,
    count_tokens,
    usage_of,
)
from tests.fake_upstream import FakeUpstream, Script, count_prompt

MARKER = {"type": "ephemeral"}
# One token a unit: input costs 1 per token, output 2, so a cost reads as a weighted token count.
UNIT = Prices(input=1e6, output=2e6)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def words(tokens: int) -> str:
    """Text of exactly ``tokens`` tokens in Qwen's vocabulary."""
    return "word" + " word" * (tokens - 1)


def message(role: str, text: str, *, marked: bool = False, array: bool = False) -> dict[str, Any]:
    if not marked and not array:
        return {"role": role, "content": text}
    part: dict[str, Any] = {"type": "text", "text": text}
    if marked:
        part["cache_control"] = MARKER
    return {"role": role, "content": [part]}


def body(*messages: dict[str, Any], model: str = "qwen-plus") -> dict[str, Any]:
    return {"model": model, "messages": list(messages)}


def history(system_tokens: int, turns: int) -> list[dict[str, Any]]:
    """A system prompt of ``system_tokens`` (with framing) and ``turns`` short one-block messages after it."""
    chat = [message("user" if n % 2 == 0 else "assistant", f"m{n}") for n in range(turns)]
    return [message("system", words(system_tokens - FRAMING_TOKENS)), *chat]


def mark(messages: list[dict[str, Any]], *indexes: int) -> list[dict[str, Any]]:
    out = list(messages)
    for index in indexes:
        out[index] = message(out[index]["role"], out[index]["content"], marked=True)
    return out


def billing(clock: Clock | None = None, prices: Prices = UNIT) -> DashScopeBilling:
    return DashScopeBilling(prices, clock=clock or Clock())


def charge(bill: DashScopeBilling, messages: list[dict[str, Any]], model: str = "qwen-plus") -> BillLine:
    bill.charge(body(*messages, model=model), 10)
    return bill.lines[-1]


def test_a_message_costs_its_text_and_four_tokens_of_framing_like_count_prompt() -> None:
    calls = [{"id": "c1", "type": "function", "function": {"name": "stock", "arguments": '{"model": "X"}'}}]
    request = body(
        message("system", words(50)),
        message("user", "6.1 寸还是 6.7 寸?"),
        {"role": "assistant", "content": None, "tool_calls": calls},
        {"role": "tool", "tool_call_id": "c1", "content": "in stock"},
    )
    assert billing().prompt_tokens(request) == count_prompt(request)
    assert billing().prompt_tokens(body(message("system", words(50)))) == 50 + FRAMING_TOKENS


def test_a_cache_marker_never_changes_the_token_count() -> None:
    plain = history(1500, 6)
    marked = mark(plain, 0, 3)
    array = [message(m["role"], m["content"], array=True) for m in plain]
    bill = billing()
    assert bill.prompt_tokens(body(*marked)) == bill.prompt_tokens(body(*plain)) == bill.prompt_tokens(body(*array))
    assert charge(bill, marked).prompt == charge(billing(), plain).prompt


@pytest.mark.parametrize(("system_tokens", "created"), [(1023, 0), (1024, 1024)])
def test_an_explicit_cache_needs_1024_tokens(system_tokens: int, created: int) -> None:
    bill = billing()
    messages = mark(history(system_tokens, 2), 0)
    assert charge(bill, messages).creation == created
    assert charge(bill, messages).cached == created


@pytest.mark.parametrize(("distance", "hit"), [(19, True), (20, False), (25, False)])
def test_a_marker_looks_back_twenty_blocks_its_own_included(distance: int, hit: bool) -> None:
    """A cache ending at block 0 is found from a marker on block 19 (20 blocks, both ends counted), not block 20."""
    bill = billing()
    messages = history(1100, 30)
    charge(bill, mark(messages, 0))
    line = charge(bill, mark(messages, distance))
    assert line.cached == (1100 if hit else 0)
    assert line.creation == bill.prompt_tokens(body(*messages[: distance + 1])) - line.cached


def test_a_hit_counts_only_the_cached_prefix_and_the_longest_hit_wins() -> None:
    bill = billing()
    messages = history(1100, 40)
    charge(bill, mark(messages, 0))
    charge(bill, mark(messages, 10))
    line = charge(bill, mark(messages, 0, 12, 25))  # 12 finds 10; 25 looks back to 6 and finds 10 too
    assert line.cached == bill.prompt_tokens(body(*messages[:11]))
    assert line.creation == bill.prompt_tokens(body(*messages[:26])) - line.cached


def test_creation_runs_to_the_furthest_new_marker_and_is_never_negative() -> None:
    bill = billing()
    messages = history(1100, 30)
    charge(bill, mark(messages, 20))
    line = charge(bill, mark(messages, 0, 20))  # 0 is new but lies inside the hit at 20
    assert line.cached == bill.prompt_tokens(body(*messages[:21]))
    assert line.creation == 0
    assert charge(bill, mark(messages, 0)).cached == 1100  # ...and was created all the same


def test_an_explicit_cache_lives_five_minutes() -> None:
    clock = Clock()
    bill = billing(clock)
    messages = mark(history(1100, 2), 0)
    charge(bill, messages)
    clock.now += 300
    line = charge(bill, messages)
    assert (line.cached, line.creation) == (0, 1100)


def test_a_hit_renews_the_five_minutes() -> None:
    clock = Clock()
    bill = billing(clock)
    messages = mark(history(1100, 2), 0)
    charge(bill, messages)
    clock.now += 299
    assert charge(bill, messages).cached == 1100
    clock.now += 299  # 598 s after creation, 299 after the hit
    assert charge(bill, messages).cached == 1100
    clock.now += 300
    assert charge(bill, messages).cached == 0


def test_more_than_four_markers_are_refused_and_not_billed() -> None:
    bill = billing()
    messages = history(1100, 10)
    charge(bill, mark(messages, 0, 2, 4, 6))
    with pytest.raises(MarkerLimitExceeded) as refused:
        charge(bill, mark(messages, 0, 2, 4, 6, 8))
    assert refused.value.status == 400
    assert refused.value.body["error"]["code"] == "invalid_parameter_error"
    assert len(bill.lines) == 1


def test_markers_are_ignored_for_a_model_without_explicit_cache() -> None:
    bill = billing()
    messages = mark(history(1100, 10), 0, 2, 4, 6, 8)  # five: refused if they counted
    first = charge(bill, messages, model="qwen-max")
    second = charge(bill, messages, model="qwen-max")
    assert not first.explicit
    assert (first.cached, first.creation) == (0, 0)
    assert second.cached == second.prompt  # the implicit cache, every boundary of the first request
    assert "cache_type" not in usage_of(second)["prompt_tokens_details"]


def test_a_string_and_a_one_part_array_are_the_same_cached_prefix() -> None:
    bill = billing()
    messages = history(1100, 6)
    charge(bill, mark(messages, 0))  # the system prompt cached in array form
    line = charge(bill, mark(messages, 5))  # now a plain string
    assert line.cached == 1100
    assert charge(bill, [message("system", messages[0]["content"], array=True), *mark(messages[1:], 4)]).cached > 1100


def test_each_model_has_its_own_cache() -> None:
    bill = billing()
    messages = mark(history(1100, 2), 0)
    charge(bill, messages)
    assert charge(bill, messages, model="qwen3.6-plus").cached == 0


@pytest.mark.parametrize(("system_tokens", "hit"), [(255, 0), (256, 256)])
def test_an_implicit_hit_needs_256_tokens_at_a_message_boundary(system_tokens: int, hit: int) -> None:
    bill = billing()
    charge(bill, [*history(system_tokens, 0), message("user", "6.1 inch?")])
    line = charge(bill, [*history(system_tokens, 0), message("user", "6.7 inch?")])
    assert line.cached == hit
    assert not line.explicit


def test_an_implicit_hit_is_the_longest_message_boundary_prefix_and_renews() -> None:
    clock = Clock()
    bill = billing(clock)
    messages = history(300, 6)
    cached = bill.prompt_tokens(body(*messages[:4]))
    charge(bill, messages[:4])
    clock.now += 250
    assert charge(bill, messages[:5]).cached == cached
    clock.now += 250  # 500 s after the prefix was cached, 250 after it was hit
    assert charge(bill, [*messages[:4], message("user", "something else")]).cached == cached
    clock.now += 300
    assert charge(bill, messages[:4]).cached == 0


def test_an_explicit_request_gets_no_implicit_hit() -> None:
    bill = billing()
    messages = history(1100, 6)
    charge(bill, messages)
    assert charge(bill, messages).cached > 0  # implicitly cached
    line = charge(bill, mark(messages, 6))
    assert line.explicit
    assert (line.cached, line.creation) == (0, line.prompt)


def test_the_bill_weighs_creation_125_explicit_hits_10_implicit_hits_20() -> None:
    bill = billing()
    messages = history(1100, 10)
    charge(bill, mark(messages, 0))
    explicit = charge(bill, mark(messages, 8))
    assert explicit.cached == 1100
    created = explicit.creation
    rest = explicit.prompt - 1100 - created
    assert explicit.input_cost == pytest.approx(rest + created * 1.25 + 1100 * 0.10)
    assert explicit.output_cost == pytest.approx(10 * 2)
    other = billing()
    charge(other, messages)
    implicit = charge(other, messages)
    assert implicit.input_cost == pytest.approx(implicit.prompt * 0.20)
    assert bill.total_input_cost == pytest.approx(sum(line.input_cost for line in bill.lines))
    assert bill.total_creation_tokens == 1100 + created


def test_the_bill_is_per_million_tokens() -> None:
    bill = billing(prices=Prices(input=0.4, output=1.2))
    line = charge(bill, history(2000, 0))
    assert line.input_cost == pytest.approx(2000 * 0.4 / 1e6)
    assert line.output_cost == pytest.approx(10 * 1.2 / 1e6)


def test_usage_has_dashscope_s_shape() -> None:
    bill = billing()
    messages = history(1100, 2)
    prompt = bill.prompt_tokens(body(*messages))
    explicit = bill.charge(body(*mark(messages, 0)), 7)
    assert explicit == {
        "prompt_tokens": prompt,
        "completion_tokens": 7,
        "total_tokens": prompt + 7,
        "prompt_tokens_details": {
            "cached_tokens": 0,
            "cache_creation": {"ephemeral_5m_input_tokens": 1100},
            "cache_creation_input_tokens": 1100,
            "cache_type": "ephemeral",
        },
    }
    hit = bill.charge(body(*mark(messages, 0)), 7)["prompt_tokens_details"]
    assert (hit["cached_tokens"], hit["cache_creation_input_tokens"]) == (1100, 0)
    assert bill.charge(body(*messages), 7)["prompt_tokens_details"] == {"cached_tokens": 0}


@pytest.fixture
async def billed() -> AsyncIterator[tuple[FakeUpstream, aiohttp.ClientSession]]:
    fake = await FakeUpstream().start()
    fake.billing = DashScopeBilling(Prices(input=0.4, output=1.2))
    async with aiohttp.ClientSession() as http:
        yield fake, http
    await fake.close()


async def test_a_billed_upstream_reports_the_bill_as_usage(billed: tuple[FakeUpstream, aiohttp.ClientSession]) -> None:
    fake, http = billed
    assert fake.billing is not None
    request = body(*mark(history(1100, 4), 0))
    fake.script(Script(content="The 6.7 inch model, in 4K."))
    async with http.post(fake.url + "/chat/completions", json=request) as response:
        reply = await response.json()
    line = fake.billing.lines[-1]
    assert reply["usage"] == usage_of(line)
    assert (line.creation, line.completion) == (1100, count_tokens("The 6.7 inch model, in 4K."))

    streamed = {**request, "stream": True, "stream_options": {"include_usage": True}}
    async with http.post(fake.url + "/chat/completions", json=streamed) as response:
        events = [raw.decode().removeprefix("data: ").strip() async for raw in response.content]
    chunks = [json.loads(e) for e in events if e and e != "[DONE]"]
    assert chunks[-1]["usage"] == usage_of(fake.billing.lines[-1])
    assert fake.billing.lines[-1].cached == 1100

    async with http.post(fake.url + "/chat/completions", json={**request, "stream": True}) as response:
        events = [raw.decode() async for raw in response.content]
    assert not any('"usage"' in e for e in events)  # as without billing: usage only when asked for
    assert len(fake.billing.lines) == 3  # billed all the same


async def test_a_billed_upstream_refuses_five_markers(billed: tuple[FakeUpstream, aiohttp.ClientSession]) -> None:
    fake, http = billed
    request = body(*mark(history(1100, 10), 0, 2, 4, 6, 8))
    async with http.post(fake.url + "/chat/completions", json=request) as response:
        assert response.status == 400
        assert (await response.json())["error"]["type"] == "invalid_request_error"
    assert fake.billing is not None
    assert fake.billing.lines == []
