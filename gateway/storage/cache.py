"""HistoryCache: the stored memory (``core.ports.Memory``) of recently active conversations, held in process so a
turn skips its read.

Pure bookkeeping, no I/O and no backend of its own: any store may hold one.  The store decides when entries can be
trusted.  Each entry carries its conversation's ``Memory.version`` and an optional backend *stamp* (what else tells
one stored row from another, e.g. SQLite's incarnation of a conversation created anew).  A store whose file others
write (SQLite: workers, the CLI) calls ``doubt()`` when it notices that someone did: O(1), nothing is dropped; each
entry is then checked once, the next time it is asked for, by the ``check`` function the store gave (its stored
version still the cached one?), and kept or dropped.  A store that validates every load itself (PostgreSQL, whose
load query carries the cached version) never doubts.  After each of its own commits the store tells the cache what
the turn appended and the version it made (``extend``): applied only to the entry the turn was planned from.

Entries are immutable tuples, so a caller holding one while a later turn extends the conversation never sees it
change.  Two bounds: messages (an entry counts at least one, so a flood of empty conversations is bounded too) and
bytes of stored JSON (``storage.cache_bytes``), since a few huge messages hold more memory than many small ones.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Sequence
from typing import Any

from gateway.core.history import replay
from gateway.core.ports import Memory
from gateway.protocols.openai_chat import Message

Key = tuple[str, str]  # (owner, external id)
# The store's check of a doubted entry: (key, cached memory, its stamp) -> whether the database still holds it.
Check = Callable[[Key, Memory, Any], bool]
_Entry = tuple[Memory, Any, int]  # the memory, its stamp, the epoch it was last known current in


class HistoryCache:
    """Bounded twice: in messages and in bytes (stored JSON), whichever is met first; an entry over either bound
    alone is not kept at all.  ``check``: how a doubted entry is confirmed (see the module docstring)."""

    def __init__(self, max_messages: int, max_bytes: int | None = None, *, check: Check | None = None) -> None:
        self._max = max_messages
        self._max_bytes = max_bytes if max_bytes is not None else 1 << 62
        self._check = check
        self._entries: OrderedDict[Key, _Entry] = OrderedDict()
        self._size = 0
        self._bytes = 0
        # Moves on with each doubt(): an entry last known current in an older epoch is checked before it is used.
        self.epoch = 0

    def __len__(self) -> int:
        return len(self._entries)

    @property
    def bytes(self) -> int:
        return self._bytes

    def doubt(self) -> None:
        """Someone else may have changed any conversation: check each entry before it is used next."""
        self.epoch += 1

    def get(self, key: Key) -> Memory | None:
        """The cached memory, checked first if it was doubted since it was last known current (dropped when the
        check fails; the check's errors propagate, the entry kept for a later check)."""
        entry = self._entries.get(key)
        if entry is None:
            return None
        memory, stamp, epoch = entry
        if epoch != self.epoch:
            if self._check is None or not self._check(key, memory, stamp):
                self.discard(key)
                return None
            self._entries[key] = (memory, stamp, self.epoch)
        self._entries.move_to_end(key)
        return memory

    def put(self, key: Key, memory: Memory, stamp: Any = None, *, epoch: int | None = None) -> None:
        """Cache ``memory`` as read from the database; ``epoch``: the one current when that read began (default:
        now), so that a write noticed while the read was under way still has the entry checked."""
        self.discard(key)
        weight = _weight(memory)
        if weight > self._max or memory.size > self._max_bytes:
            return
        self._entries[key] = (memory, stamp, self.epoch if epoch is None else epoch)
        self._size += weight
        self._bytes += memory.size
        while self._size > self._max or self._bytes > self._max_bytes:
            _, (evicted, _, _) = self._entries.popitem(last=False)
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
        *,
        version: int | None = None,
        stamp: Any = None,
    ) -> None:
        """Apply a committed turn to a cached entry (a new system prompt replaces the stored one; a new window
        start and summary replace the stored ones); ``size``: what the turn added to the stored JSON.

        ``version``: the conversation's version after the turn.  The entry is extended only when it is the state
        the turn was written on (its version one less, and its ``stamp`` the same when one is given and the entry
        was of a stored conversation); any other entry is dropped.  None: extend whatever is cached (a store
        without versions)."""
        entry = self._entries.get(key)
        if entry is None:
            return
        memory, cached_stamp, epoch = entry
        if version is not None and (
            memory.version != version - 1 or (stamp is not None and memory.exists and stamp != cached_stamp)
        ):
            self.discard(key)
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
                version=memory.version if version is None else version,
            ),
            cached_stamp if stamp is None else stamp,
            epoch=epoch,
        )

    def discard(self, key: Key) -> None:
        entry = self._entries.pop(key, None)
        if entry is not None:
            memory = entry[0]
            self._size -= _weight(memory)
            self._bytes -= memory.size

    def clear(self) -> None:
        self._entries.clear()
        self._size = 0
        self._bytes = 0


def _weight(memory: Memory) -> int:
    return max(1, len(memory.messages))
