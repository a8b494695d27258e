"""HistoryCache: the stored memory of recently active conversations, held in process so a turn skips its read.

Pure bookkeeping, no I/O.  The store decides when entries can be trusted: it drops them all whenever another
connection (the CLI, another gateway process) has written to the database, and after each of its own commits it
tells the cache what the turn appended.  Entries are immutable tuples, so a caller holding one while a later turn
extends the conversation never sees it change.  The bound is on messages, the memory that matters; an entry
counts at least one, so a flood of empty conversations is bounded too.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

from gateway.history import replay
from gateway.protocol import Message

Key = tuple[str, str]  # (owner, external id)


@dataclass(frozen=True)
class Memory:
    """A conversation's stored memory; ``exists`` is False for a conversation not created yet."""

    exists: bool
    system: tuple[Message, ...] | None
    messages: tuple[Message, ...]
    replayed: tuple[Message, ...]  # ``messages`` as sent upstream (history.replay), worked out once per message
    window_start: int = 0  # history before this index is left out upstream (gateway.window)
    summary: Message | None = None  # the summary of what is left out, sent in its place
    last_usage: dict[str, Any] | None = None  # the upstream's usage for the last stored reply, when known

    def truncated(self, length: int) -> Memory:
        """This memory with only its first ``length`` messages, as a turn that replaces the rest plans from it
        (the store does the same cut: ``gateway.turns.cut_statements``)."""
        if length >= len(self.messages):
            return self
        window_kept = self.window_start <= length
        return replace(
            self,
            messages=self.messages[:length],
            replayed=self.replayed[:length],
            window_start=self.window_start if window_kept else 0,
            summary=self.summary if window_kept else None,
            last_usage=None,  # it measured a request this turn no longer continues
        )


class HistoryCache:
    def __init__(self, max_messages: int) -> None:
        self._max = max_messages
        self._entries: OrderedDict[Key, Memory] = OrderedDict()
        self._size = 0

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, key: Key) -> Memory | None:
        memory = self._entries.get(key)
        if memory is not None:
            self._entries.move_to_end(key)
        return memory

    def put(self, key: Key, memory: Memory) -> None:
        self.discard(key)
        weight = _weight(memory)
        if weight > self._max:
            return
        self._entries[key] = memory
        self._size += weight
        while self._size > self._max:
            _, evicted = self._entries.popitem(last=False)
            self._size -= _weight(evicted)

    def extend(
        self,
        key: Key,
        system: Sequence[Message] | None,
        appended: Sequence[Message],
        window: tuple[int, Message | None] | None = None,
        usage: dict[str, Any] | None = None,
    ) -> None:
        """Apply a committed turn to a cached entry (a new system prompt replaces the stored one; a new window
        start and summary replace the stored ones)."""
        memory = self._entries.get(key)
        if memory is None:
            return
        start, summary = window if window is not None else (memory.window_start, memory.summary)
        self.put(
            key,
            Memory(
                exists=True,
                system=tuple(system) if system is not None else memory.system,
                messages=(*memory.messages, *appended),
                replayed=(*memory.replayed, *map(replay, appended)),
                window_start=start,
                summary=summary,
                last_usage=usage,
            ),
        )

    def discard(self, key: Key) -> None:
        memory = self._entries.pop(key, None)
        if memory is not None:
            self._size -= _weight(memory)

    def clear(self) -> None:
        self._entries.clear()
        self._size = 0


def _weight(memory: Memory) -> int:
    return max(1, len(memory.messages))
