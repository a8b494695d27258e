"""Metering: each upstream reply's usage and cost, into the request's canonical log line and the metrics.

The chat use case hands every reply's usage here, with the turn's ledger (``gateway.core.ledger``), whether the
turn is recorded or not and whether it has memory or not, so what Prometheus counts is what the upstream billed.
A streamed turn with memory always asks the upstream for its usage (``asking_usage``): DashScope bills a stream
whether or not its client wanted the figures.  What the ledger cannot see: a stream cut before its usage arrived
(counted as ``unmetered_turns``), and the summary calls of ``memory.summarize``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from gateway.core.ledger import Pricing, turn_cost, turn_tokens
from gateway.observability.logs import note
from gateway.observability.metrics import Metrics
from gateway.protocols.openai_chat import ChatBody


class Meter:
    """Usage and cost of upstream replies, into the log line and the metrics."""

    def __init__(self, metrics: Metrics, pricing: Pricing) -> None:
        self._metrics = metrics
        self._pricing = pricing

    def reply(self, usage: Mapping[str, Any] | None, ledger: Mapping[str, Any]) -> None:
        """One reply, recorded or not, with memory or without."""
        if not usage:
            return
        tokens = turn_tokens(usage, ledger)
        self._metrics.note_usage(tokens.prompt, tokens.completion, tokens.cached, tokens.creation)
        price = self._pricing.price(tokens.model)
        cost = turn_cost(tokens, price) if price is not None else None
        note(
            prompt_tokens=usage.get("prompt_tokens"),
            completion_tokens=usage.get("completion_tokens"),
            cached_tokens=tokens.cached,
            cache_creation_tokens=tokens.creation,
            billed_cost=round(cost.billed, 9) if cost is not None else None,
        )
        if cost is not None:
            self._metrics.note_cost(
                cost.currency, billed=cost.billed, listed=cost.list, premium=cost.write_premium, saved=cost.saved_gross
            )


def wants_usage(fields: Mapping[str, Any]) -> bool:
    """Whether a streaming client asked for the usage chunk (``stream_options.include_usage``)."""
    options = fields.get("stream_options")
    return isinstance(options, dict) and options.get("include_usage") is True


def asking_usage(fields: dict[str, Any]) -> tuple[dict[str, Any], bool]:
    """The request's fields, a stream asking for its usage chunk; and whether the client did not ask for it (the
    chunk is then kept from it)."""
    if fields.get("stream") is not True or wants_usage(fields):
        return fields, False
    options = fields.get("stream_options")
    return {**fields, "stream_options": {**(options if isinstance(options, dict) else {}), "include_usage": True}}, True


@dataclass(frozen=True)
class Accounting:
    """What metering a turn needs besides its usage."""

    ledger: dict[str, Any]  # stored with the reply (gateway.core.ledger)
    hide_usage: bool  # a stream's usage chunk is the gateway's, not for the client, who did not ask for it


def passthrough(body: ChatBody) -> Accounting:
    """A request without memory, sent as the client wrote it: nothing is recorded, so its ledger only names the
    model to price.  A native upstream reports a stream's usage all the same: relayed only to a client that asked
    for it, as OpenAI's streams do."""
    return Accounting({"model": body.model, "unsent_tokens": 0}, asking_usage(body.fields)[1])
