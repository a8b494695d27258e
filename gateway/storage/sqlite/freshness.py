"""Freshness: what other connections to the file (worker processes, the CLI, this process's waiting connection)
wrote since this process last looked, and what of the memory held in process that puts in doubt.

``PRAGMA data_version`` on the inline connection (a few microseconds) changes whenever another connection
committed, never for the inline connection's own commits, which the history cache is told about as they happen.
When it moved, nothing is dropped: the cache doubts every entry (``HistoryCache.doubt``) and checks each one by its
conversation's stamp (``turns.STAMP``: its incarnation and version, one indexed read) the next time it is used, so
a worker that commits turns on its own conversations no longer costs every other worker its whole cache.  (Every
write of this backend that changes a conversation moves its version on; an edit made by hand in SQL must too:
``UPDATE conversations SET version = version + 1 ...``, or running gateways may go on serving what it replaced.)
And the keys' counter (``gateway_meta.keys_version``, moved by key creates and revokes only) is read again, so the
key store re-reads the keys only when keys changed.
"""

from __future__ import annotations

import asyncio
import sqlite3
from typing import Any

from gateway.core.ports import Memory
from gateway.storage.cache import HistoryCache, Key
from gateway.storage.sqlite.turns import STAMP

KEYS_VERSION = "SELECT value FROM gateway_meta WHERE name = 'keys_version'"


class Freshness:
    """Looks at most once per event-loop iteration: another process's write can land at any moment, so one look
    per iteration is as good as one per read, and the turns of one iteration share it.  Except after this process
    took a conversation's cross-process lock (``locks.FileLocks``, which calls ``forget``): the process that held
    it may have committed and released it since this iteration's look, and a turn taking the lock and loading in
    the same iteration must see that commit, or it would be planned from the history it replaced (and refused by
    the fence)."""

    def __init__(self, loop: asyncio.AbstractEventLoop, inline: sqlite3.Connection, cache: HistoryCache) -> None:
        self._loop = loop
        self._inline = inline
        self._cache = cache
        self._data_version: int | None = None
        self._looked = False
        self._forgetting = False  # ``_forget`` is scheduled
        self._keys_version = 0

    def look(self) -> None:
        """Notice other connections' commits since the last look (raises ``sqlite3.Error``)."""
        if self._looked:
            return
        (version,) = self._inline.execute("PRAGMA data_version").fetchone()
        if version != self._data_version:
            row = self._inline.execute(KEYS_VERSION).fetchone()
            self._cache.doubt()
            self._data_version = version
            self._keys_version = int(row[0]) if row is not None else 0
        self._looked = True
        if not self._forgetting:
            self._forgetting = True
            self._loop.call_soon(self._forget)

    def forget(self) -> None:
        """Have the next look really look, even within this iteration."""
        self._looked = False

    def _forget(self) -> None:
        self._looked = False
        self._forgetting = False

    def keys_version(self) -> int:
        """The keys' counter as of the last look (raises ``sqlite3.Error``)."""
        self.look()
        return self._keys_version


def still_current(inline: sqlite3.Connection, key: Key, memory: Memory, stamp: Any) -> bool:
    """The history cache's check of a doubted entry (``HistoryCache(check=partial(still_current, inline))``): the
    database holds the conversation as cached (the same incarnation and version), or still holds none when none was
    cached.  Raises ``sqlite3.Error``."""
    row = inline.execute(STAMP, key).fetchone()
    if not memory.exists:
        return row is None
    return row is not None and row[0] == stamp and row[1] == memory.version
