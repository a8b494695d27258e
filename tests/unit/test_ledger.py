"""The cost ledger (``gateway.core.ledger``): DashScope's billing of cache writes and hits, turn by turn and summed,
the stateless comparison, prices per model (built-in and configured), and junk usage figures."""

from __future__ import annotations

from typing import Any

import pytest

from gateway.core.ledger import Ledger, Pricing, conversation_ledger, turn_cost, turn_tokens
from gateway.core.records import StoredMessage
from gateway.settings.config import ConfigError
from gateway.settings.models import parse_models

PLUS = Pricing(parse_models({}, ConfigError))  # qwen-plus: 0.4 in, 1.2 out (USD per million)


def usage(prompt: int, completion: int, cached: int = 0, creation: int | None = None) -> dict[str, Any]:
    details: dict[str, Any] = {"cached_tokens": cached}
    if creation is not None:  # DashScope's explicit cache
        details.update(
            cache_creation={"ephemeral_5m_input_tokens": creation},
            cache_creation_input_tokens=creation,
            cache_type="ephemeral",
        )
    return {"prompt_tokens": prompt, "completion_tokens": completion, "prompt_tokens_details": details}


def test_an_explicit_turn_bills_writes_at_125_percent_and_hits_at_10() -> None:
    tokens = turn_tokens(usage(10_000, 500, cached=8_000, creation=1_500), {"model": "qwen-plus", "cache": "explicit"})
    assert (tokens.cached, tokens.creation, tokens.explicit) == (8_000, 1_500, True)
    cost = turn_cost(tokens, price("qwen-plus"))
    # 500 uncached at 100%, 1,500 written at 125%, 8,000 hit at 10%
    assert cost.billed_input == pytest.approx((500 + 1_500 * 1.25 + 8_000 * 0.10) * 0.4 / 1e6)
    assert cost.list_input == pytest.approx(10_000 * 0.4 / 1e6)
    assert cost.output == pytest.approx(500 * 1.2 / 1e6)
    assert cost.billed == pytest.approx(cost.billed_input + cost.output)
    assert cost.write_premium == pytest.approx(1_500 * 0.25 * 0.4 / 1e6)
    assert cost.hit_discount == pytest.approx(8_000 * 0.9 * 0.4 / 1e6)
    assert cost.list - cost.billed == pytest.approx(cost.saved_gross - cost.write_premium)  # nothing cut


def test_an_implicit_hit_bills_at_20_percent() -> None:
    tokens = turn_tokens(usage(4_000, 100, cached=3_000), {"model": "qwen-plus", "cache": "implicit"})
    assert not tokens.explicit
    assert turn_cost(tokens, price("qwen-plus")).billed_input == pytest.approx((1_000 + 3_000 * 0.2) * 0.4 / 1e6)


def test_the_usage_decides_how_hits_bill_not_the_markers_sent() -> None:
    # DashScope said ephemeral: its explicit cache served the request (here a full hit, nothing written) ...
    assert turn_tokens(usage(2_000, 1, cached=1_500, creation=0), {"cache": "implicit"}).explicit
    # ... and markers sent to a model without an explicit cache are ignored there: its hits bill as implicit ones
    assert not turn_tokens(usage(2_000, 1, cached=1_500), {"cache": "explicit"}).explicit


def test_the_window_cut_counts_toward_what_a_stateless_client_would_have_sent() -> None:
    tokens = turn_tokens(usage(3_000, 10), {"model": "qwen-plus", "cache": "implicit", "unsent_tokens": 7_000})
    assert tokens.stateless_prompt == 10_000
    assert turn_cost(tokens, price("qwen-plus")).saved_gross == pytest.approx(7_000 * 0.4 / 1e6)


def test_the_stateless_client_is_given_the_implicit_cache_at_its_best() -> None:
    # It resends everything; each request starts with the one before, which the implicit cache hits at 20%.
    ledger = Ledger(PLUS)
    for prompt, unsent in ((200, 0), (1_000, 0), (1_500, 0), (900, 1_200)):  # the last one after a cut
        ledger.add(turn_tokens(usage(prompt, 0), {"model": "qwen-plus", "unsent_tokens": unsent}))
    summary = ledger.summary()
    assert summary["stateless_input_tokens"] == 200 + 1_000 + 1_500 + 2_100
    # 200 is below the implicit cache's 256 tokens: the second request hits nothing
    expected = (200 + 1_000 + (500 + 1_000 * 0.2) + (600 + 1_500 * 0.2)) * 0.4 / 1e6
    assert summary["stateless_cost"] == pytest.approx(expected)
    assert summary["saved_cost"] == pytest.approx(expected - summary["billed_cost"])


@pytest.mark.parametrize(
    "junk",
    [
        {"prompt_tokens": "many", "completion_tokens": None},
        {"prompt_tokens": True, "completion_tokens": -3, "prompt_tokens_details": "no"},
        {"prompt_tokens": 10, "prompt_tokens_details": {"cached_tokens": 50, "cache_creation_input_tokens": 70}},
    ],
)
def test_junk_usage_figures_count_as_nothing_and_never_exceed_the_prompt(junk: dict[str, Any]) -> None:
    tokens = turn_tokens(junk, None, "qwen-plus")
    assert tokens.cached + tokens.creation <= tokens.prompt
    assert turn_cost(tokens, price("qwen-plus")).billed_input >= 0


def test_a_conversation_sums_its_replies_and_falls_back_to_its_model() -> None:
    messages = [
        stored("user", None),
        stored("assistant", usage(2_000, 100, creation=1_800), {"model": "qwen-plus", "cache": "explicit"}),
        stored("user", None),
        stored("assistant", usage(2_300, 100, cached=1_800, creation=400), None),  # before the ledger: its model
        stored("tool", usage(1, 1), None),  # only replies count
    ]
    summary = conversation_ledger(PLUS, messages, "qwen-plus").summary()
    assert summary["turns"] == summary["priced_turns"] == 2
    assert (summary["input_tokens"], summary["cached_tokens"], summary["cache_creation_tokens"]) == (
        4_300,
        1_800,
        2_200,
    )
    assert summary["explicit_cached_tokens"] == 1_800 and summary["implicit_cached_tokens"] == 0
    billed_input = ((200 + 1_800 * 1.25) + (100 + 400 * 1.25 + 1_800 * 0.1)) * 0.4 / 1e6
    assert summary["billed_input_cost"] == pytest.approx(billed_input)
    assert summary["billed_cost"] == pytest.approx(billed_input + 200 * 1.2 / 1e6)
    assert summary["saved_cost"] == pytest.approx(summary["stateless_cost"] - summary["billed_cost"])
    assert summary["currency"] == "USD"


def test_a_reply_stored_without_usage_is_counted_as_unmetered() -> None:
    cut_short = stored("assistant", None, {"model": "qwen-plus", "cache": "implicit", "unsent_tokens": 0})
    summary = conversation_ledger(PLUS, [stored("user", None), cut_short], "qwen-plus").summary()
    assert (summary["turns"], summary["unmetered_turns"]) == (0, 1)


def test_a_model_without_a_price_counts_tokens_but_no_cost() -> None:
    ledger = Ledger(PLUS)
    assert ledger.add(turn_tokens(usage(100, 10), {"model": "my-own-model"})) is None
    summary = ledger.summary()
    assert summary["turns"] == 1 and summary["priced_turns"] == 0 and summary["input_tokens"] == 100
    assert summary["currency"] is None and summary["billed_cost"] is None and summary["saved_cost"] is None


def test_configured_prices_and_currency_replace_the_built_in_ones() -> None:
    models = parse_models({"qwen-plus": {"input_price": 0.8, "output_price": 2, "currency": "cny"}}, ConfigError)
    pricing = Pricing(models)
    assert pricing.price("qwen-plus-2025-07-28") == pricing.price("qwen-plus")  # a snapshot takes its alias's
    found = pricing.price("qwen-plus")
    assert found is not None and (found.input, found.output, found.currency) == (0.8, 2.0, "CNY")
    assert Pricing().price("qwen-max") is not None and Pricing().price("unknown-model") is None


def test_a_snapshot_table_keeps_its_aliases_prices_and_window() -> None:
    models = parse_models({"qwen-plus-2025-07-28": {"cache": "implicit"}}, ConfigError)
    snapshot, alias = models["qwen-plus-2025-07-28"], models["qwen-plus"]
    assert (snapshot.input_price, snapshot.context_tokens, snapshot.cache) == (0.4, alias.context_tokens, "implicit")


@pytest.mark.parametrize(
    ("table", "says"),
    [
        ({"currency": "CNY"}, "currency: set input_price and output_price"),  # would relabel USD prices
        ({"input_price": -1, "output_price": 1}, "input_price"),
        ({"input_price": "cheap", "output_price": 1}, "input_price"),
        ({"input_price": 1}, "set both"),
        ({"input_price": 1, "output_price": 1, "currency": "US$"}, "currency"),
    ],
)
def test_bad_prices_are_refused_at_start_up(table: dict[str, Any], says: str) -> None:
    with pytest.raises(ConfigError, match=says):
        parse_models({"my-model": table}, ConfigError)


def price(model: str) -> Any:
    found = PLUS.price(model)
    assert found is not None
    return found


def stored(role: str, usage: dict[str, Any] | None, ledger: dict[str, Any] | None = None) -> StoredMessage:
    return StoredMessage(1, 0, {"role": role, "content": "x"}, 0.0, False, usage, ledger=ledger)
