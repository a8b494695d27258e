"""Where the upstream request's history starts: pure logic over per-message token counts, and reasoning replay.

The store always keeps everything; what goes upstream is the system prompt, the summary of what was cut (if any),
the history from ``start`` on, and the request's new messages.  ``start`` only ever points at a user message (or
past the end), so a window never opens on an assistant or tool message and never separates an assistant's
``tool_calls`` from their results, which follow it within the same turn.

Cache-stable cuts: ``start`` stays where it is while everything fits.  Only when the request would exceed the
window (context minus reply reserve), or ``max_turns``, does it move, and then far enough that what is left fills
``low_water`` of the window: the following turns append to a byte-identical prefix until the window fills again.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from gateway.errors import InvalidRequest
from gateway.protocols.openai_chat import Message


@dataclass(frozen=True)
class Budget:
    limit: int  # tokens the request may hold: the context window minus the reply reserve
    low_water: float  # share of ``limit`` kept after a cut
    max_turns: int  # most user turns of history (0: no cap)


def place_window(
    roles: Sequence[str | None],
    counts: Sequence[int],
    fixed: int,
    start: int,
    budget: Budget,
    *,
    loop_open: bool = False,
) -> int:
    """The history index the request starts at.  ``roles`` and ``counts`` describe the stored history; ``fixed``
    is everything sent whatever the cut (system prompt, summary, new messages, tools).  ``loop_open``: the
    request continues the last user turn (it brings tool results), so the window may not open after that turn's
    user message, or the results would go upstream without the tool calls they answer.  Raises
    ``InvalidRequest`` (context_length_exceeded) when what must be sent does not fit."""
    if fixed > budget.limit:
        raise _too_long(fixed, budget)
    n = len(roles)
    starts = [i for i in range(n) if roles[i] == "user"] + [n]  # where a window may open
    if loop_open and len(starts) > 1:
        starts.pop()  # the current turn stays whole
    tail_tokens = [0] * (n + 1)
    for i in range(n - 1, -1, -1):
        tail_tokens[i] = tail_tokens[i + 1] + counts[i]
    # starts[k] opens a window holding ``turns(k)`` user turns of history
    ends_empty = starts[-1] == n

    def turns(k: int) -> int:
        return len(starts) - k - (1 if ends_empty else 0)

    j = next((k for k, s in enumerate(starts) if s >= min(start, n)), len(starts) - 1)

    def fits(k: int, tokens: float, max_turns: int) -> bool:
        return fixed + tail_tokens[starts[k]] <= tokens and not (max_turns and turns(k) > max_turns)

    if fits(j, budget.limit, budget.max_turns):
        return starts[j]
    # Over: cut down to the low-water mark, so the following turns share this prefix; failing that (the current
    # turn alone is bigger), keep as much as fits.
    keep_turns = max(1, math.floor(budget.max_turns * budget.low_water)) if budget.max_turns else 0
    for tokens, max_turns in ((budget.low_water * budget.limit, keep_turns), (budget.limit, budget.max_turns)):
        for k in range(j, len(starts)):
            if fits(k, tokens, max_turns):
                return starts[k]
    raise _too_long(fixed + tail_tokens[starts[-1]], budget)


def _too_long(tokens: int, budget: Budget) -> InvalidRequest:
    return InvalidRequest(
        f"The new messages need about {tokens} tokens with the system prompt (and the turn they continue), more "
        f"than the {budget.limit} this model's context window leaves after the reply reserve.",
        code="context_length_exceeded",
        param="messages",
    )


def with_reasoning(
    history: Sequence[Message], replayed: Sequence[Message], policy: str, *, loop_open: bool
) -> Sequence[Message]:
    """The replayed history with stored ``reasoning_content`` put back where ``policy`` asks for it: ``always``,
    or ``tool_loop``, for the assistant tool-call messages after the last user message while that tool loop is
    still running (``loop_open``: the request brings tool results, not a new user message), as some thinking
    models need to see their reasoning again mid-loop."""
    if policy == "never" or (policy == "tool_loop" and not loop_open):
        return replayed
    loop_from = 0
    if policy == "tool_loop":
        loop_from = next((i + 1 for i in range(len(history) - 1, -1, -1) if history[i].get("role") == "user"), 0)
    result = list(replayed)
    for i in range(loop_from, len(history)):
        reasoning = history[i].get("reasoning_content")
        if reasoning and (policy == "always" or history[i].get("tool_calls")):
            result[i] = {**replayed[i], "reasoning_content": reasoning}
    return result
