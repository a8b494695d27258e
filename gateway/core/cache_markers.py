"""Where DashScope's explicit context cache markers go on an upstream request: pure placement, no I/O.

DashScope's explicit cache (Alibaba Cloud Model Studio, "Context cache",
https://www.alibabacloud.com/help/en/model-studio/context-cache, last updated Mar 31, 2026; the Chinese page
https://help.aliyun.com/zh/model-studio/context-cache says the same): a ``cache_control: {"type": "ephemeral"}``
marker on a *content block* (so the message's content must be in array form) caches the prefix of ``messages`` up
to that block for 5 minutes, renewed on every hit; a hit is looked up by searching back at most 20 content blocks
from each marker; at most 4 markers per request; a cached block holds at least 1,024 tokens. Creation is billed
at 125% of the input price, hits at 10%; the implicit cache (automatic, hits not guaranteed) bills hits at 20%,
and one request uses one of the two, never both. The models that support it (Qwen Cloud's context cache page,
https://docs.qwencloud.com/developer-guides/text-generation/context-cache, read with the page above):
qwen3-max; qwen3.6-plus, qwen3.5-plus, qwen-plus; qwen3.5-flash, qwen-flash; qwen3-coder-plus, qwen3-coder-flash.
The page's own example sends a cached system prompt as a plain string the second time and still hits, so what is
cached is the text, not the JSON shape of its content: a message may carry a marker on one turn and not the next.

What is marked: the end of the stable prefix, everything before the request's new messages (system prompt,
summary, the window's history up to and including the previous reply), which is exactly what the next request
will repeat. Since a marker only finds a cached prefix within 20 blocks behind it, a prefix that grew by more
than that since the last request (a long tool loop, a first request with much history) would miss; so the
message that crosses each multiple of 20 blocks, counted from the start of the request, is marked too (the
newest of them, up to 4 markers in all). These positions follow from the history alone, so they stay put from
turn to turn and each request's markers find the caches the last one created. The marked message is converted
the same way every time (``[{"type": "text", "text": ..., "cache_control": ...}]``), so the bytes match too.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from gateway.core.tokens import TokenCounter
from gateway.protocols.openai_chat import Message
from gateway.settings.models import ModelTable

MARKER: dict[str, str] = {"type": "ephemeral"}
MIN_CACHE_TOKENS = 1024  # DashScope caches no shorter block
LOOK_BACK_BLOCKS = 20  # how far back from a marker DashScope looks for a cached prefix
MAX_MARKERS = 4  # DashScope's limit per request


class CacheMarkers:
    """``place_markers`` with each model's ``cache`` policy (``[models."NAME"]``) and Qwen's token counts."""

    def __init__(self, models: ModelTable, counter: TokenCounter) -> None:
        self._models = models
        self._counter = counter

    def mark(self, messages: Sequence[Message], prefix_end: int, model: str | None) -> list[Message]:
        policy = self._models[model].cache
        # Counted with Qwen's vocabulary once the context planner has loaded it, else estimated from the bytes
        # (on the high side): a marker on a prefix just short of the minimum only caches nothing.
        return place_markers(
            messages, prefix_end, policy, lambda m: self._counter.message(model, m, cap=MIN_CACHE_TOKENS)
        )


def place_markers(
    messages: Sequence[Message], prefix_end: int, policy: str, count: Callable[[Message], int]
) -> list[Message]:
    """``messages`` with cache markers at the stable prefix ``messages[:prefix_end]``, as the upstream gets them.

    ``policy``: ``"explicit"`` marks any prefix, ``"auto"`` only one of at least ``MIN_CACHE_TOKENS`` (``count``
    gives a message's tokens), ``"implicit"`` none. A client that placed any ``cache_control`` of its own gets
    none either: its markers win, and together they could pass the limit of 4. The messages given are never
    changed (they are the stored ones); a marked message is a new dict.
    """
    prefix_end = min(prefix_end, len(messages))
    if policy == "implicit" or prefix_end <= 0 or any(_has_marker(m) for m in messages):
        return list(messages)
    if policy == "auto" and not _at_least(messages[:prefix_end], MIN_CACHE_TOKENS, count):
        return list(messages)
    marked = list(messages)
    for index in marker_positions(messages[:prefix_end]):
        marked[index] = _marked(messages[index])
    return marked


def marker_positions(prefix: Sequence[Message]) -> list[int]:
    """Indexes of the messages of ``prefix`` to mark, ascending: the last markable one, and before it the ones
    that cross a multiple of ``LOOK_BACK_BLOCKS`` content blocks, the newest first, ``MAX_MARKERS`` in all."""
    crossings: list[int] = []
    blocks = 0
    for index, message in enumerate(prefix):
        before, blocks = blocks, blocks + _blocks(message)
        if blocks // LOOK_BACK_BLOCKS > before // LOOK_BACK_BLOCKS:
            crossings.append(index)
    chosen: list[int] = []
    for index in [len(prefix) - 1, *reversed(crossings)]:
        # A message without text (an assistant's bare tool calls) cannot carry a marker: the nearest earlier one
        # that can takes it, which the history alone decides as well.
        found = next((i for i in range(index, -1, -1) if _markable(prefix[i])), None)
        if found is not None and found not in chosen:
            chosen.append(found)
        if len(chosen) == MAX_MARKERS:
            break
    return sorted(chosen)


def _blocks(message: Message) -> int:
    """Content blocks DashScope counts for a message: one per part of array content, one for anything else."""
    content = message.get("content")
    return len(content) if isinstance(content, list) and content else 1


def _markable(message: Message) -> bool:
    content = message.get("content")
    if isinstance(content, str):
        return bool(content)  # an empty string as a text block might read differently: leave it as it is
    return isinstance(content, list) and bool(content) and isinstance(content[-1], dict)


def _marked(message: Message) -> Message:
    """The message with a marker on its last content block; only the wire copy is array-form."""
    content = message["content"]
    if isinstance(content, str):
        blocks: list[Any] = [{"type": "text", "text": content, "cache_control": dict(MARKER)}]
    else:
        blocks = [*content[:-1], {**content[-1], "cache_control": dict(MARKER)}]
    return {**message, "content": blocks}


def carries_markers(messages: Sequence[Message]) -> bool:
    """Whether any content block carries a marker: DashScope uses its explicit cache for the request (a marker on
    a message's own fields does nothing)."""
    return any(
        isinstance(part, dict) and "cache_control" in part
        for message in messages
        if isinstance(content := message.get("content"), list)
        for part in content
    )


def _has_marker(message: Message) -> bool:
    if "cache_control" in message:
        return True
    content = message.get("content")
    return isinstance(content, list) and any(isinstance(part, dict) and "cache_control" in part for part in content)


def _at_least(messages: Sequence[Message], tokens: int, count: Callable[[Message], int]) -> bool:
    """Whether ``messages`` hold ``tokens`` or more, counting only until they do."""
    total = 0
    for message in messages:
        total += count(message)
        if total >= tokens:
            return True
    return False
