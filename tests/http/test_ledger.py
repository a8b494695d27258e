"""The cost ledger against a fake upstream that bills as DashScope's context cache does (``tests.fake_dashscope``):
``GET /v1/conversations/{id}`` and each reply's ``cost`` match the bill to the token, over both client protocols
(OpenAI's SDK, streamed or not, and DashScope's native one), both upstream protocols, the implicit and the
explicit cache, a window that cuts, and in the metrics and the canonical log line."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import structlog
from structlog.testing import capture_logs

from tests.conftest import Gateway, make_config, start_gateway, user
from tests.fake_dashscope import DashScopeBilling, Prices
from tests.fake_upstream import FakeUpstream, Script

KEY = "sk-ledger"
NATIVE = "/api/v1/services/aigc/text-generation/generation"
SYSTEM = {"role": "system", "content": "You sell phones. Ask about screen size, then resolution. " * 100}


@pytest.fixture
def billing(upstream: FakeUpstream) -> DashScopeBilling:
    upstream.billing = DashScopeBilling(Prices(0.4, 1.2))  # the built-in qwen-plus prices
    return upstream.billing


async def _gateway(tmp_path: Path, upstream: FakeUpstream, models: str, protocol: str = "compatible") -> Gateway:
    flags = {"upstream__protocol": protocol, "upstream__native_base_url": upstream.native_url}
    return await start_gateway(make_config(tmp_path, upstream.url, f'[models."qwen-plus"]\n{models}\n', **flags))


@pytest.fixture(params=["compatible", "native"])
async def explicit(request: pytest.FixtureRequest, tmp_path: Path, upstream: FakeUpstream) -> AsyncIterator[Gateway]:
    """A gateway placing explicit markers, its upstream speaking OpenAI's protocol or DashScope's native one."""
    gateway = await _gateway(tmp_path, upstream, 'cache = "explicit"', request.param)
    yield gateway
    await gateway.stop()


async def _sdk_turns(gateway: Gateway, upstream: FakeUpstream, turns: int, *, stream: bool) -> list[Any]:
    """Turns through the official SDK, sending only the newest message; the usage each reply showed the client."""
    client = gateway.sdk("shop", api_key=KEY)
    seen = []
    for turn in range(turns):
        upstream.script(Script(content=f"Noted ({turn}). Which screen size: 6.1, 6.5 or 6.7 inch? " * 6))
        messages: list[Any] = [SYSTEM, user(f"Turn {turn}: I want a phone.")] if turn == 0 else [user(f"{turn}")]
        if stream:
            chunks = [c async for c in await client.chat.completions.create(
                model="qwen-plus", messages=messages, stream=True
            )]  # fmt: skip
            seen.append([c.usage for c in chunks if c.usage is not None])
        else:
            seen.append((await client.chat.completions.create(model="qwen-plus", messages=messages)).usage)
    return seen


async def _native_turns(http: aiohttp.ClientSession, gateway: Gateway, upstream: FakeUpstream, turns: int) -> None:
    for turn in range(turns):
        upstream.script(Script(content=f"好的({turn})。您想要6.1、6.5还是6.7英寸的屏幕? " * 6))
        messages = [SYSTEM, user("我想买手机")] if turn == 0 else [user(f"第{turn}轮")]
        body = {"model": "qwen-plus", "input": {"messages": messages}, "parameters": {"result_format": "message"}}
        headers = {"Authorization": f"Bearer {KEY}", "X-Conversation-Id": "shop"}
        if turn % 2:  # every other turn streamed, as DashScope's SDK does with stream=True
            body["parameters"]["incremental_output"] = True
            headers["X-DashScope-SSE"] = "enable"
        async with http.post(gateway.url + NATIVE, json=body, headers=headers) as response:
            assert response.status == 200, await response.text()
            text = await response.text()
        events = [json.loads(line[5:]) for line in text.splitlines() if line.startswith("data:")] or [json.loads(text)]
        details = events[-1]["usage"]["prompt_tokens_details"]
        line = upstream.billing.lines[-1] if upstream.billing else None
        assert line is not None and details["cached_tokens"] == line.cached  # the native client sees the cache too
        assert details.get("cache_creation_input_tokens", 0) == line.creation


async def _cost(http: aiohttp.ClientSession, gateway: Gateway) -> dict[str, Any]:
    async with http.get(gateway.url + "/v1/conversations/shop", headers={"Authorization": f"Bearer {KEY}"}) as r:
        assert r.status == 200
        cost: dict[str, Any] = (await r.json())["cost"]
        return cost


async def _reply_costs(http: aiohttp.ClientSession, gateway: Gateway) -> list[dict[str, Any]]:
    url = gateway.url + "/v1/conversations/shop/messages?limit=100"
    async with http.get(url, headers={"Authorization": f"Bearer {KEY}"}) as r:
        return [m["cost"] for m in (await r.json())["data"] if m["role"] == "assistant"]


async def _matches_the_bill(http: aiohttp.ClientSession, gateway: Gateway, billing: DashScopeBilling) -> dict[str, Any]:
    cost = await _cost(http, gateway)
    assert cost["turns"] == cost["priced_turns"] == len(billing.lines)
    assert (cost["input_tokens"], cost["cached_tokens"], cost["cache_creation_tokens"], cost["output_tokens"]) == (
        billing.total_prompt_tokens,
        billing.total_cached_tokens,
        billing.total_creation_tokens,
        billing.total_completion_tokens,
    )
    assert cost["billed_input_cost"] == pytest.approx(billing.total_input_cost, abs=1e-12)
    assert cost["output_cost"] == pytest.approx(billing.total_output_cost, abs=1e-12)
    assert cost["billed_cost"] == pytest.approx(billing.total_cost, abs=1e-12)
    per_reply = await _reply_costs(http, gateway)
    assert [c["billed_cost"] for c in per_reply] == pytest.approx([line.cost for line in billing.lines], abs=1e-12)
    assert cost["currency"] == "USD" and all(c["currency"] == "USD" for c in per_reply)
    return cost


@pytest.mark.parametrize("stream", [False, True], ids=["json", "stream"])
async def test_the_ledger_matches_the_bill_of_an_explicit_cache_conversation(
    explicit: Gateway, upstream: FakeUpstream, billing: DashScopeBilling, http: aiohttp.ClientSession, stream: bool
) -> None:
    seen = await _sdk_turns(explicit, upstream, 6, stream=stream)
    if stream:  # the gateway asked for the usage chunk for its ledger; the client, which did not, never saw it
        assert seen == [[]] * 6
    assert all(line.explicit for line in billing.lines)
    assert billing.total_creation_tokens > 1024 and billing.total_cached_tokens > 4 * 1024  # written, then hit
    cost = await _matches_the_bill(http, explicit, billing)
    assert cost["explicit_cached_tokens"] == cost["cached_tokens"] and cost["implicit_cached_tokens"] == 0
    assert cost["stateless_input_tokens"] == cost["input_tokens"]  # nothing cut: a stateless client sends the same
    assert cost["saved_cost"] == pytest.approx(cost["stateless_cost"] - cost["billed_cost"])
    assert 0 < cost["billed_input_cost"] < cost["list_input_cost"]


async def test_the_ledger_matches_the_bill_on_the_native_protocol(
    explicit: Gateway, upstream: FakeUpstream, billing: DashScopeBilling, http: aiohttp.ClientSession
) -> None:
    await _native_turns(http, explicit, upstream, 6)
    assert billing.total_creation_tokens > 1024 and billing.total_cached_tokens > 0
    await _matches_the_bill(http, explicit, billing)


async def test_implicit_hits_bill_at_20_percent_and_the_ledger_says_so(
    tmp_path: Path, upstream: FakeUpstream, billing: DashScopeBilling, http: aiohttp.ClientSession
) -> None:
    gateway = await _gateway(tmp_path, upstream, 'cache = "implicit"')
    try:
        await _sdk_turns(gateway, upstream, 5, stream=False)
        assert not any(line.explicit for line in billing.lines) and billing.total_creation_tokens == 0
        cost = await _matches_the_bill(http, gateway, billing)
    finally:
        await gateway.stop()
    assert cost["implicit_cached_tokens"] == cost["cached_tokens"] > 0 and cost["explicit_cached_tokens"] == 0


async def test_after_a_cut_the_cache_is_written_again_and_the_ledger_still_matches(
    tmp_path: Path, upstream: FakeUpstream, billing: DashScopeBilling, http: aiohttp.ClientSession
) -> None:
    gateway = await _gateway(tmp_path, upstream, 'context_tokens = 5000\nreserve_tokens = 500\ncache = "explicit"')
    try:
        trimmed = []
        for turn in range(24):
            upstream.script(Script(content=f"Noted, turn {turn}. " + "Which screen size, 6.1 or 6.7 inch? " * 12))
            headers = {"Authorization": f"Bearer {KEY}", "X-Conversation-Id": "shop"}
            body = {"model": "qwen-plus", "messages": [user(f"Turn {turn}: a phone with a good camera. " * 10)]}
            async with http.post(gateway.url + "/v1/chat/completions", json=body, headers=headers) as response:
                assert response.status == 200, await response.text()
                trimmed.append(int(response.headers["X-Conversation-Trimmed"]))
        cost = await _matches_the_bill(http, gateway, billing)
    finally:
        await gateway.stop()
    cuts = [i for i in range(1, len(trimmed)) if trimmed[i] > trimmed[i - 1]]
    assert len(cuts) >= 2
    for cut in cuts:  # a cut moves the prefix: the turn after it writes the cache anew, the next one hits it
        assert billing.lines[cut].creation > 0
        if cut + 1 < len(billing.lines) and cut + 1 not in cuts:
            assert billing.lines[cut + 1].cached >= billing.lines[cut].cached + billing.lines[cut].creation
    # What the window left out, a stateless client would have sent as well (the gateway's own estimate of it).
    assert cost["stateless_input_tokens"] > cost["input_tokens"]
    assert cost["saved_cost"] > 0


async def test_metrics_and_the_log_line_carry_cache_creation_and_cost(
    explicit: Gateway, upstream: FakeUpstream, billing: DashScopeBilling, http: aiohttp.ClientSession
) -> None:
    await _sdk_turns(explicit, upstream, 3, stream=False)
    async with http.get(explicit.url + "/metrics") as response:
        text = await response.text()
    samples = {line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line[:1] != "#"}
    assert samples['gateway_tokens_total{kind="cache_creation"}'] == billing.total_creation_tokens
    assert samples['gateway_tokens_total{kind="cached"}'] == billing.total_cached_tokens
    assert samples['gateway_cost_total{currency="USD",kind="billed"}'] == pytest.approx(billing.total_cost)
    listed = samples['gateway_cost_total{currency="USD",kind="list"}']
    assert listed == pytest.approx((billing.total_prompt_tokens * 0.4 + billing.total_completion_tokens * 1.2) / 1e6)
    premium = samples['gateway_cost_total{currency="USD",kind="cache_write_premium"}']
    saved = samples['gateway_cost_saved_total{currency="USD"}']
    assert saved - premium == pytest.approx(listed - billing.total_cost)  # the net saving (nothing cut)
    assert premium == pytest.approx(billing.total_creation_tokens * 0.25 * 0.4 / 1e6)


async def test_a_model_without_a_price_gets_tokens_but_no_cost(
    tmp_path: Path, upstream: FakeUpstream, billing: DashScopeBilling, http: aiohttp.ClientSession
) -> None:
    gateway = await start_gateway(make_config(tmp_path, upstream.url))
    try:
        client = gateway.sdk("shop", api_key=KEY)
        upstream.script(Script(content="Which size?"))
        await client.chat.completions.create(model="my-fine-tune", messages=[user("a phone")])
        cost = await _cost(http, gateway)
        assert (cost["turns"], cost["priced_turns"], cost["currency"], cost["billed_cost"]) == (1, 0, None, None)
        assert cost["input_tokens"] == billing.total_prompt_tokens
        assert (await _reply_costs(http, gateway))[0]["billed_cost"] is None
    finally:
        await gateway.stop()


async def test_every_path_into_a_conversation_is_in_its_ledger_and_its_log_lines(
    explicit: Gateway, upstream: FakeUpstream, billing: DashScopeBilling, http: aiohttp.ClientSession
) -> None:
    """A Responses API turn, a stream whose client asked for the usage (and sees it), a repeat answered from the
    Idempotency-Key's kept reply (not billed again, not counted again), and store: false (billed and metered, not
    recorded)."""
    client = explicit.sdk("shop", api_key=KEY)
    with capture_logs(processors=[structlog.contextvars.merge_contextvars]) as logs:
        upstream.script(Script(content="Which screen size? " * 40))
        await client.responses.create(
            model="qwen-plus", instructions=SYSTEM["content"], input="I want a phone", conversation="shop"
        )
        upstream.script(Script(content="2K or 4K? " * 40))
        chunks = [c async for c in await client.chat.completions.create(
            model="qwen-plus", messages=[user("6.7 inch")], stream=True, stream_options={"include_usage": True}
        )]  # fmt: skip
        assert [c.usage.prompt_tokens for c in chunks if c.usage] == [billing.lines[-1].prompt]
        for _ in range(2):  # the second is a replay
            upstream.script(Script(content="Black or white? " * 40))
            await client.chat.completions.create(
                model="qwen-plus", messages=[user("4K")], extra_headers={"Idempotency-Key": "k1"}
            )
        upstream.script(Script(content="Not kept."))
        await client.responses.create(model="qwen-plus", input="just asking", conversation="shop", store=False)
    assert len(billing.lines) == 4
    lines = [e for e in logs if e["event"] == "request" and e.get("upstream_status") == 200]
    assert [e["cache_creation_tokens"] for e in lines] == [line.creation for line in billing.lines]
    assert [e["billed_cost"] for e in lines] == pytest.approx([line.cost for line in billing.lines], abs=1e-9)
    cost = await _cost(http, explicit)
    recorded = billing.lines[:3]
    assert cost["turns"] == 3 and cost["input_tokens"] == sum(line.prompt for line in recorded)
    assert cost["billed_cost"] == pytest.approx(sum(line.cost for line in recorded), abs=1e-12)


async def test_a_stream_cut_short_is_counted_as_unmetered(
    explicit: Gateway, upstream: FakeUpstream, billing: DashScopeBilling, http: aiohttp.ClientSession
) -> None:
    await _sdk_turns(explicit, upstream, 1, stream=False)
    upstream.script(Script(content="A long answer. " * 200, chunk_size=2, chunk_delay=0.01))
    headers = {"Authorization": f"Bearer {KEY}", "X-Conversation-Id": "shop"}
    body = {"model": "qwen-plus", "messages": [user("tell me everything")], "stream": True}
    async with http.post(explicit.url + "/v1/chat/completions", json=body, headers=headers) as response:
        await response.content.readany()  # the client hangs up after the first bytes
    for _ in range(100):
        cost = await _cost(http, explicit)
        if cost["unmetered_turns"]:
            break
        await asyncio.sleep(0.05)
    assert (cost["turns"], cost["unmetered_turns"]) == (1, 1)


async def test_a_native_upstreams_usage_reaches_only_clients_that_ask_for_it(
    tmp_path: Path, upstream: FakeUpstream, billing: DashScopeBilling
) -> None:
    """Without memory too: OpenAI's streams send a usage chunk (``choices: []``) only on include_usage."""
    gateway = await _gateway(tmp_path, upstream, 'cache = "implicit"', "native")
    try:
        client = gateway.sdk(None, api_key=KEY)
        for asked in (False, True):
            upstream.script(Script(content="Which screen size?"))
            options = {"stream_options": {"include_usage": True}} if asked else {}
            chunks = [c async for c in await client.chat.completions.create(
                model="qwen-plus", messages=[user("a phone")], stream=True, **options
            )]  # fmt: skip
            assert [c for c in chunks if not c.choices] == ([chunks[-1]] if asked else [])
            assert all(c.usage is None for c in chunks[:-1]) and (chunks[-1].usage is not None) == asked
    finally:
        await gateway.stop()
