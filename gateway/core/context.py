"""ContextPlanner: per turn, which stored history goes upstream so the request fits the model's context window.

Cheap first: a request whose JSON is smaller, in bytes, than the token budget fits for certain (a byte-level BPE
token covers at least one byte; media parts are added at ``tokens.MEDIA_TOKENS`` each), so most turns never count
a token.  Only a request that might not fit has its history counted (incrementally, see ``TokenCounter.history``)
and its window placed (``window.place_window``); when that moves the cut and ``memory.summarize`` is on, the
dropped turns are summarized before the request goes out.  Knows no SQL and no HTTP server types.
"""

from __future__ import annotations

import asyncio
from collections.abc import Hashable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from gateway.core.ports import Memory
from gateway.core.summaries import Summarizer
from gateway.core.tokens import MEDIA_TOKENS, TokenCounter
from gateway.core.window import Budget, place_window, with_reasoning
from gateway.errors import InvalidRequest
from gateway.protocols.openai_chat import Message
from gateway.settings.config import Config

# Chat-template text the upstream wraps around tools and roles, beyond what the JSON shows.
TEMPLATE_MARGIN_TOKENS = 256
# Past either, fit() counts in a worker thread: about a millisecond of work on the event loop at these sizes.
OFF_LOOP_BYTES = 256 * 1024
OFF_LOOP_MESSAGES = 5000
_MEDIA_MARKERS = (b'"image_url"', b'"input_audio"', b'"video_url"', b'"video"')


@dataclass(frozen=True)
class Window:
    """What of the stored history goes upstream this turn."""

    lead: list[Message]  # the summary message, when there is one
    replayed: Sequence[Message]  # the whole stored history as it would be sent (reasoning as the policy says)
    start: int  # messages of history left out (X-Conversation-Trimmed)
    summary: Message | None
    limit: int  # tokens the request may hold
    loop_open: bool  # the request continues the last user turn (it brings tool results)
    changed: bool  # start or summary differ from what is stored: record them with the turn

    @property
    def history(self) -> Sequence[Message]:
        """The history that goes upstream."""
        return self.replayed[self.start :]


class ContextPlanner:
    def __init__(self, config: Config, counter: TokenCounter, summarizer: Summarizer | None) -> None:
        self._config = config
        self._counter = counter
        self._summarizer = summarizer

    def current(self, stored: Memory, new: Sequence[Message], fields: Mapping[str, Any]) -> Window:
        """The window as it stands (the stored cut), before anything is counted."""
        model = _model(fields)
        settings = self._config.models[model]
        reserve = _reserve(fields) or settings.reserve_tokens
        limit = settings.context_tokens - reserve
        if limit <= 0:
            raise InvalidRequest(
                f"max_tokens {reserve} leaves no room for input in this model's {settings.context_tokens}-token "
                "context window.",
                code="context_length_exceeded",
                param="max_tokens",
            )
        start = min(stored.window_start, len(stored.messages))
        loop_open = not any(m.get("role") == "user" for m in new)
        replayed = with_reasoning(stored.messages, stored.replayed, settings.reasoning_replay, loop_open=loop_open)
        lead = [stored.summary] if stored.summary is not None else []
        return Window(lead, replayed, start, stored.summary, limit, loop_open, changed=False)

    def fits_for_certain(self, window: Window, payload: bytes, stored: Memory, new_bytes: int) -> bool:
        """``new_bytes``: the JSON size of the request's new messages."""
        if len(payload) + TEMPLATE_MARGIN_TOKENS > window.limit:
            return False  # already too large at a byte a token: no need to look further (megabytes, for some)
        media = sum(payload.count(marker) for marker in _MEDIA_MARKERS)
        within_turns = not self._config.max_turns or (
            sum(1 for m in window.history if m.get("role") == "user") <= self._config.max_turns
        )
        # What the upstream itself counted last turn, plus the reply and the new messages at a byte a token.
        measured = _measured(stored, new_bytes)
        bound = max(len(payload) + media * MEDIA_TOKENS + TEMPLATE_MARGIN_TOKENS, measured or 0)
        return within_turns and bound <= window.limit

    async def fit(
        self,
        key: Hashable,
        stored: Memory,
        window: Window,
        system: Sequence[Message],
        new: Sequence[Message],
        fields: Mapping[str, Any],
        *,
        payload_bytes: int,
        authorization: str | None,
        headers: Mapping[str, str],
    ) -> Window:
        """The window counted and placed; raises ``InvalidRequest`` (context_length_exceeded) when the new messages
        cannot fit even alone.  ``payload_bytes``: the size of the request as it stands."""
        model = _model(fields)
        await self._counter.prepare(model)
        args = (key, model, stored, window, system, new, fields)
        # CPU work that grows with the request or the history (tokenizing megabytes takes seconds) runs in a
        # worker thread, so that one large request does not stall everyone else's.
        if payload_bytes > OFF_LOOP_BYTES or len(stored.messages) > OFF_LOOP_MESSAGES:
            counted = await asyncio.to_thread(self._count, *args)
        else:
            counted = self._count(*args)
        roles, counts, fixed, start = counted
        budget = Budget(window.limit, self._config.low_water, self._config.max_turns)
        summary = window.summary
        loop_open = window.loop_open
        if start > window.start and self._summarizer is not None:
            written = await self._summarizer.summarize(
                summary,
                stored.messages[window.start : start],
                model=model,
                input_limit=window.limit,
                authorization=authorization,
                headers=headers,
            )
            if written is not None:
                try:
                    placed = place_window(
                        roles,
                        counts,
                        fixed + self._counter.message(model, written, window.limit),
                        start,
                        budget,
                        loop_open=loop_open,
                    )
                except InvalidRequest:
                    pass  # no room for the summary: go without it rather than fail a request that fits
                else:
                    summary, start = written, placed
        lead = [summary] if summary is not None else []
        changed = start != window.start or summary is not window.summary
        return Window(lead, window.replayed, start, summary, window.limit, loop_open, changed)

    async def unsent_tokens(self, key: Hashable, stored: Memory, window: Window, model: str | None) -> int:
        """Tokens of the stored history the window leaves out of this request, less the summary sent in its
        place: what a stateless client resending everything would have sent besides (the cost ledger's
        comparison).  The per-message counts are the ones ``fit`` keeps between turns, so a turn counts only what
        it added; a large history is counted in a worker thread, as ``fit`` does."""
        if not window.start:
            return 0
        await self._counter.prepare(model)

        def count() -> int:
            left_out = sum(self._counter.history(key, model, window.replayed)[: window.start])
            return max(0, left_out - self._counter.messages(model, window.lead))

        if stored.size > OFF_LOOP_BYTES or len(stored.messages) > OFF_LOOP_MESSAGES:
            return await asyncio.to_thread(count)
        return count()

    def _count(
        self,
        key: Hashable,
        model: str | None,
        stored: Memory,
        window: Window,
        system: Sequence[Message],
        new: Sequence[Message],
        fields: Mapping[str, Any],
    ) -> tuple[list[str | None], list[int], int, int]:
        """Roles and token counts of the history, the tokens sent whatever the cut (everything but the history
        and the stored summary), and where the window opens with the stored summary.  Counting stops past the
        window's limit: what is longer cannot fit however it is cut."""
        cap = window.limit + 1
        counts = self._counter.history(key, model, window.replayed, cap)
        roles = [m.get("role") for m in stored.messages]
        new_tokens = self._counter.messages(model, new, cap)
        fixed = (
            self._counter.messages(model, system, cap)
            + new_tokens
            + sum(self._counter.value(model, fields.get(name)) for name in ("tools", "response_format"))
            + TEMPLATE_MARGIN_TOKENS
        )
        lead_tokens = self._counter.messages(model, window.lead, cap)
        # The upstream's own count of the last request, where known, corrects ours when ours falls short.
        measured = _measured(stored, new_tokens)
        fixed += max(0, (measured or 0) - (fixed + lead_tokens + sum(counts[window.start :])))
        budget = Budget(window.limit, self._config.low_water, self._config.max_turns)
        start = place_window(roles, counts, fixed + lead_tokens, window.start, budget, loop_open=window.loop_open)
        return roles, counts, fixed, start


def _measured(stored: Memory, new_tokens: int) -> int | None:
    """This request's size by the upstream's own count: the last request's prompt tokens, plus its reply (now
    history, less any reasoning, which is not sent back) and ``new_tokens``; None when the last reply's usage is
    unknown.  Valid for the stored window: the last turn sent exactly that."""
    usage = stored.last_usage
    if not usage:
        return None
    prompt, completion = usage.get("prompt_tokens"), usage.get("completion_tokens")
    if not isinstance(prompt, int) or not isinstance(completion, int):
        return None
    details = usage.get("completion_tokens_details")
    reasoning = details.get("reasoning_tokens") if isinstance(details, dict) else None
    return prompt + completion - (reasoning if isinstance(reasoning, int) else 0) + new_tokens


def _model(fields: Mapping[str, Any]) -> str | None:
    model = fields.get("model")
    return model if isinstance(model, str) else None


def _reserve(fields: Mapping[str, Any]) -> int | None:
    """The client's own reply budget, which replaces the configured reserve for this request."""
    for name in ("max_completion_tokens", "max_tokens"):
        value = fields.get(name)
        if isinstance(value, int) and not isinstance(value, bool) and value > 0:
            return value
    return None
