"""The cost ledger: what each turn's input and output cost, what the context cache saved, and what a stateless
client resending everything would have paid.

A turn's figures come from two records kept with its reply: the upstream's ``usage`` as received (prompt,
completion and cached tokens; DashScope adds ``prompt_tokens_details.cache_creation_input_tokens`` and
``cache_type: "ephemeral"`` for its explicit cache) and the gateway's own ``ledger`` (the model named, whether the
request carried cache markers, and the tokens of stored history the window cut left out).  Money is derived from
them when asked, at the prices configured now (``gateway.settings.models``), the way DashScope bills: the prompt
at the input price, except tokens written to the explicit cache (125%) and cache hits (explicit 10%, implicit
20%); the reply at the output price.  Pure: no I/O.

The stateless comparison is a client that resends the whole history every turn (the window's cut included) and
has DashScope's implicit cache hit all it sent the turn before, the best case for it: so ``saved_cost`` is what
the gateway saved at least, never the list price's flattering difference.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from gateway.core.records import StoredMessage
from gateway.settings.models import BUILT_IN, ModelTable

CREATION_RATE = 1.25
EXPLICIT_HIT_RATE = 0.10
IMPLICIT_HIT_RATE = 0.20
IMPLICIT_MIN_TOKENS = 256  # DashScope's implicit cache keeps no shorter prefix
PER = 1_000_000  # prices are per million tokens


@dataclass(frozen=True)
class Price:
    """A model's list prices per million tokens."""

    input: float
    output: float
    currency: str


class Pricing:
    """Prices by model name, as the model table resolves names (a dated snapshot takes its alias's)."""

    def __init__(self, models: ModelTable | None = None) -> None:
        self._models = models if models is not None else ModelTable(BUILT_IN)  # None: the built-in prices

    def price(self, model: str | None) -> Price | None:
        settings = self._models[model]
        if settings.input_price is None or settings.output_price is None:
            return None
        return Price(settings.input_price, settings.output_price, settings.currency)


@dataclass(frozen=True)
class TurnTokens:
    """One upstream request's tokens as it was billed."""

    prompt: int
    completion: int
    cached: int  # prompt tokens served from the cache
    creation: int  # prompt tokens written to the explicit cache
    explicit: bool  # the request used the explicit cache (its hits bill at 10%, not 20%)
    unsent: int  # stored history the window left out: a stateless client would have sent it too
    model: str | None

    @property
    def stateless_prompt(self) -> int:
        """The prompt of a client resending the whole history."""
        return self.prompt + self.unsent


def turn_tokens(usage: Mapping[str, Any], ledger: Mapping[str, Any] | None, model: str | None = None) -> TurnTokens:
    """A turn's tokens from its stored usage and ledger; ``model``: the conversation's, for a turn recorded
    without a ledger (before the ledger existed, or imported)."""
    details = usage.get("prompt_tokens_details")
    details = details if isinstance(details, Mapping) else {}
    prompt = token_count(usage.get("prompt_tokens"))
    cached = min(token_count(details.get("cached_tokens")), prompt)
    creation = min(_creation(details), prompt - cached)
    ledger = ledger or {}
    named = ledger.get("model")
    # DashScope says when its explicit cache served a request; markers sent to a model without one are ignored
    # there, and its hits bill as implicit ones.
    explicit = details.get("cache_type") == "ephemeral" or creation > 0
    return TurnTokens(
        prompt=prompt,
        completion=token_count(usage.get("completion_tokens")),
        cached=cached,
        creation=creation,
        explicit=explicit,
        unsent=token_count(ledger.get("unsent_tokens")),
        model=named if isinstance(named, str) else model,
    )


@dataclass(frozen=True)
class TurnCost:
    """One reply's cost, in ``currency``."""

    list_input: float  # every prompt token at the input price
    billed_input: float  # as billed: cache writes at 125%, hits at 10% or 20%
    output: float
    currency: str
    hit_discount: float  # what the cache hits took off the list price
    write_premium: float  # what writing the explicit cache added to it
    unsent: float  # the history the window left out, at the input price

    @property
    def billed(self) -> float:
        return self.billed_input + self.output

    @property
    def list(self) -> float:
        return self.list_input + self.output

    @property
    def saved_gross(self) -> float:
        """What the cache hits and the window's cut took off the list price, before the cache-write premium
        (which ``billed`` includes): a figure that only ever grows, for a counter."""
        return self.hit_discount + self.unsent


def turn_cost(tokens: TurnTokens, price: Price) -> TurnCost:
    """What DashScope bills for one request: the prompt at the input price, but cache writes at 125% and hits at
    10% (explicit) or 20% (implicit); the reply at the output price."""
    hit_rate = EXPLICIT_HIT_RATE if tokens.explicit else IMPLICIT_HIT_RATE
    uncached = tokens.prompt - tokens.cached - tokens.creation
    billed = uncached + tokens.creation * CREATION_RATE + tokens.cached * hit_rate
    per_token = price.input / PER
    return TurnCost(
        list_input=tokens.prompt * per_token,
        billed_input=billed * per_token,
        output=tokens.completion * price.output / PER,
        currency=price.currency,
        hit_discount=tokens.cached * (1 - hit_rate) * per_token,
        write_premium=tokens.creation * (CREATION_RATE - 1) * per_token,
        unsent=tokens.unsent * per_token,
    )


def stateless_input(prompt: int, previous: int, price: Price) -> float:
    """What a stateless client's prompt of ``prompt`` tokens costs when the implicit cache hits the ``previous``
    one it sent (every one of its requests starts with the one before)."""
    hit = previous if IMPLICIT_MIN_TOKENS <= previous <= prompt else 0
    return (prompt - hit + hit * IMPLICIT_HIT_RATE) * price.input / PER


def cost_object(cost: TurnCost | None) -> dict[str, Any]:
    """One turn's cost as the conversations API shows it (null figures when its model has no price)."""
    if cost is None:
        return {name: None for name in _TURN_FIELDS}
    return {
        "list_input_cost": cost.list_input,
        "billed_input_cost": cost.billed_input,
        "output_cost": cost.output,
        "billed_cost": cost.billed,
        "currency": cost.currency,
    }


_TURN_FIELDS = ("list_input_cost", "billed_input_cost", "output_cost", "billed_cost", "currency")


class Ledger:
    """A conversation's turns summed.  Costs add up in one currency, the first priced turn's; a turn of a model
    without a price, or priced in another currency, adds its tokens but no cost (``priced_turns`` says so)."""

    def __init__(self, pricing: Pricing) -> None:
        self._pricing = pricing
        self.turns = self.priced_turns = 0
        self.unmetered_turns = 0  # replies stored without usage (a stream cut short): billed, but by how much?
        kinds = ("input", "cached", "explicit_cached", "implicit_cached", "creation", "output", "stateless_input")
        self.tokens = dict.fromkeys(kinds, 0)
        self.currency: str | None = None
        self.money = {"list_input": 0.0, "billed_input": 0.0, "output": 0.0, "stateless_input": 0.0}
        self._previous = 0  # the stateless client's previous prompt

    def add(self, tokens: TurnTokens) -> TurnCost | None:
        """Count one turn; its cost, when its model is priced."""
        self.turns += 1
        counts = self.tokens
        counts["input"] += tokens.prompt
        counts["cached"] += tokens.cached
        counts["explicit_cached" if tokens.explicit else "implicit_cached"] += tokens.cached
        counts["creation"] += tokens.creation
        counts["output"] += tokens.completion
        counts["stateless_input"] += tokens.stateless_prompt
        previous, self._previous = self._previous, tokens.stateless_prompt
        price = self._pricing.price(tokens.model)
        if price is None:
            return None
        cost = turn_cost(tokens, price)
        if self.currency is None:
            self.currency = price.currency
        if price.currency == self.currency:
            self.priced_turns += 1
            for name, value in (
                ("list_input", cost.list_input),
                ("billed_input", cost.billed_input),
                ("output", cost.output),
                ("stateless_input", stateless_input(tokens.stateless_prompt, previous, price)),
            ):
                self.money[name] += value
        return cost

    def summary(self) -> dict[str, Any]:
        """The ``cost`` object of ``GET /v1/conversations/{id}``."""
        counts, money, priced = self.tokens, self.money, self.currency is not None
        billed = money["billed_input"] + money["output"]
        stateless = money["stateless_input"] + money["output"]

        def amount(value: float) -> float | None:
            return value if priced else None

        return {
            "currency": self.currency,
            "turns": self.turns,
            "priced_turns": self.priced_turns,
            "unmetered_turns": self.unmetered_turns,
            "input_tokens": counts["input"],
            "cached_tokens": counts["cached"],
            "explicit_cached_tokens": counts["explicit_cached"],
            "implicit_cached_tokens": counts["implicit_cached"],
            "cache_creation_tokens": counts["creation"],
            "output_tokens": counts["output"],
            "stateless_input_tokens": counts["stateless_input"],
            "list_input_cost": amount(money["list_input"]),
            "billed_input_cost": amount(money["billed_input"]),
            "output_cost": amount(money["output"]),
            "billed_cost": amount(billed),
            "stateless_cost": amount(stateless),
            "saved_cost": amount(stateless - billed),
        }


def conversation_ledger(pricing: Pricing, messages: Iterable[StoredMessage], model: str | None) -> Ledger:
    """Every reply of a conversation summed; ``model``: the conversation's, for replies stored without a ledger."""
    ledger = Ledger(pricing)
    for message in messages:
        if message.body.get("role") != "assistant":
            continue
        if message.usage is not None:
            ledger.add(turn_tokens(message.usage, message.ledger, model))
        elif message.ledger is not None:
            ledger.unmetered_turns += 1
    return ledger


def reply_cost(pricing: Pricing, message: StoredMessage, model: str | None) -> dict[str, Any] | None:
    """One reply's ``cost`` object; None for a message that is no reply with usage."""
    if message.usage is None or message.body.get("role") != "assistant":
        return None
    tokens = turn_tokens(message.usage, message.ledger, model)
    price = pricing.price(tokens.model)
    return cost_object(turn_cost(tokens, price) if price is not None else None)


def _creation(details: Mapping[str, Any]) -> int:
    """Tokens written to the explicit cache: DashScope's total, else the sum of its per-TTL breakdown."""
    total = details.get("cache_creation_input_tokens")
    if total is not None:
        return token_count(total)
    breakdown = details.get("cache_creation")
    if isinstance(breakdown, Mapping):
        return sum(token_count(value) for value in breakdown.values())
    return 0


def token_count(value: Any) -> int:
    """A usage figure as the ledger and the stored counters trust it: a non-negative integer, else (absent, a
    bool, junk) 0."""
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else 0
