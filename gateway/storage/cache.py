"""HistoryCache: the stored memory (``core.ports.Memory``) of recently active conversations, held in process so a
turn skips its read.

Pure bookkeeping, no I/O and no backend of its own: any store may hold one.  The store decides when entries can be
trusted: it drops them all whenever another connection (the CLI, another gateway process) has written to the
database, and after each of its own commits it tells the cache what the turn appended.  Entries are immutable
tuples, so a caller holding one while a later turn extends the conversation never sees it change.  Two bounds:
messages (an entry counts at least one, so a flood of empty conversations is bounded too) and bytes of stored JSON
(``storage.cache_bytes``), since a few huge messages hold more memory than many small ones.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from typing import Any

from gateway.core.history import replay
from gateway.core.ports import Memory
from gateway.protocols.openai_chat import Message

Key = tuple[str, str]  # (owner, external id)


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
