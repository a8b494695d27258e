"""HistoryCache: the stored memory of recently active conversations, held in process so a turn skips its read.

Pure bookkeeping, no I/O.  The store decides when entries can be trusted: it drops them all whenever another
connection (the CLI, another gateway process) has written to the database, and after each of its own commits it
tells the cache what the turn appended.  Entries are immutable tuples, so a caller holding one while a later turn
extends the conversation never sees it change.  Two bounds: messages (an entry counts at least one, so a flood of
empty conversations is bounded too) and bytes of stored JSON (``storage.cache_bytes``), since a few huge messages
hold more memory than many small ones.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

from gateway.core.history import replay
from gateway.protocols.openai_chat import Message, encode

Key = tuple[str, str]  # (owner, external id)


@dataclass(frozen=True)
class Memory:
    """A conversation's stored memory; ``exists`` is False for a conversation not created yet."""

    exists: bool
    system: tuple[Message, ...] | None
    messages: tuple[Message, ...]
    replayed: tuple[Message, ...]  # ``messages`` as sent upstream (history.replay), worked out once per message
    window_start: int = 0  # history before this index is left out upstream (gateway.core.window)
    summary: Message | None = None  # the summary of what is left out, sent in its place
    last_usage: dict[str, Any] | None = None  # the upstream's usage for the last stored reply, when known
    size: int = 0  # the stored JSON size of ``messages`` (UTF-8 bytes), as the store counts it

    def truncated(self, length: int) -> Memory:
        """This memory with only its first ``length`` messages, as a turn that replaces the rest plans from it
        (the store does the same cut: ``gateway.storage.sqlite.turns.cut_statements``)."""
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
            size=max(0, self.size - sum(len(encode(m)) for m in self.messages[length:])),
        )


class HistoryCache:
    """Bounded twice: in messages and in bytes (stored JSON), whichever is met first; an entry over either bound
    alone is not kept at all."""

    def __init__(self, max_messages: int, max_bytes: int | None = None) -> None:
        self._max = max_messages
        self._max_bytes = max_bytes if max_bytes is not None else 1 << 62
        self._entries: OrderedDict[Key, Memory] = OrderedDict()
        self._size = 0
        self._bytes = 0

    def __len__(self) -> int:
        return len(self._entries)

    @property
    def bytes(self) -> int:
        return self._bytes

    def get(self, key: Key) -> Memory | None:
        memory = self._entries.get(key)
        if memory is not None:
            self._entries.move_to_end(key)
        return memory

    def put(self, key: Key, memory: Memory) -> None:
        self.discard(key)
        weight = _weight(memory)
        if weight > self._max or memory.size > self._max_bytes:
            return
        self._entries[key] = memory
        self._size += weight
        self._bytes += memory.size
        while self._size > self._max or self._bytes > self._max_bytes:
            _, evicted = self._entries.popitem(last=False)
            self._size -= _weight(evicted)
            self._bytes -= evicted.size

    def extend(
        self,
        key: Key,
        system: Sequence[Message] | None,
        appended: Sequence[Message],
        window: tuple[int, Message | None] | None = None,
        usage: dict[str, Any] | None = None,
        size: int = 0,
    ) -> None:
        """Apply a committed turn to a cached entry (a new system prompt replaces the stored one; a new window
        start and summary replace the stored ones); ``size``: what the turn added to the stored JSON."""
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
                size=memory.size + size,
            ),
        )

    def discard(self, key: Key) -> None:
        memory = self._entries.pop(key, None)
        if memory is not None:
            self._size -= _weight(memory)
            self._bytes -= memory.size

    def clear(self) -> None:
        self._entries.clear()
        self._size = 0
        self._bytes = 0


def _weight(memory: Memory) -> int:
    return max(1, len(memory.messages))
