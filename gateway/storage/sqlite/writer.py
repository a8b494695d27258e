"""TurnWriter: the inline connection's commits of turns, one at a time or grouped, and the cache kept in step.

The SQLite-side decision the chat use case does not make: a turn shares a commit (group commit: one WAL append
and one lock cycle for every turn that finishes in the same event-loop iteration) only while other turns are in
flight, as ``turns_in_flight`` counts them; alone, it commits at once rather than pay for the extra loop iteration.
A commit that meets another connection's lock reports it (False) so the store can take the waiting path.

After a commit the cache is told the version the turn made: ``expected_version + 1`` for a fenced turn (the trigger
checked the stored one), else the stamp read back inside the turn's transaction (a few microseconds, and only for
a conversation's first turn, which is not fenced), so that the entry is extended only when it is exactly the state
the turn was written on.
"""

from __future__ import annotations

import asyncio
import sqlite3
import time
from collections.abc import Callable
from typing import Any

from gateway.core.ports import Turn
from gateway.storage.cache import HistoryCache
from gateway.storage.sqlite.readiness import is_busy
from gateway.storage.sqlite.turns import STAMP, turn_size, turn_statements

_Queued = tuple[Turn, tuple[Any, ...], asyncio.Future[bool]]
_Stamp = tuple[int, int] | None  # (incarnation, version) after a turn, when read back; None: fenced or cut


def _alone() -> int:
    return 1


class TurnWriter:
    """``turns_in_flight``: how many turns (and conversation edits) are under way, the caller's own included."""

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        inline: sqlite3.Connection,
        cache: HistoryCache,
        turns_in_flight: Callable[[], int] | None = None,
    ) -> None:
        self._loop = loop
        self._inline = inline
        self._cache = cache
        self._turns_in_flight = turns_in_flight or _alone
        self._batch: list[_Queued] = []
        self.observe: Callable[[float], None] | None = None  # told each commit's duration, in seconds
        self.dirty = False  # written since the checkpointer last looked

    def should_share(self) -> bool:
        return self._turns_in_flight() > 1

    def queue(self, turn: Turn, params: tuple[Any, ...]) -> asyncio.Future[bool]:
        """Queue a turn for the next group commit, which runs once the current loop iteration is done, so turns
        finishing together share one transaction.  The future says whether it was recorded; False means another
        connection holds the write lock."""
        future: asyncio.Future[bool] = self._loop.create_future()
        self._batch.append((turn, params, future))
        if len(self._batch) == 1:
            self._loop.call_soon(self._commit_batch)
        return future

    def record_now(self, turn: Turn, params: tuple[Any, ...]) -> bool:
        """Commit one turn at once; False when another connection holds the write lock."""
        try:
            (stamp,) = self._commit([(turn, params)])
        except sqlite3.Error as exc:
            if is_busy(exc):
                return False
            raise
        self.committed(turn, params, stamp)
        return True

    def _commit_batch(self) -> None:
        batch, self._batch = self._batch, []
        self._settle(batch)

    def _settle(self, batch: list[_Queued]) -> None:
        try:
            stamps = self._commit([(turn, params) for turn, params, _ in batch])
        except sqlite3.Error as exc:
            busy = is_busy(exc)
            if len(batch) > 1 and not busy:
                for item in batch:  # one bad turn must not fail the others
                    self._settle([item])
                return
            for _, _, future in batch:
                if future.cancelled():
                    continue
                if busy:
                    future.set_result(False)
                else:
                    future.set_exception(exc)
            return
        for (turn, params, future), stamp in zip(batch, stamps, strict=True):
            self.committed(turn, params, stamp)
            if not future.cancelled():
                future.set_result(True)

    def committed(self, turn: Turn, params: tuple[Any, ...], stamp: _Stamp) -> None:
        """A turn committed (here, or on the waiting connection): the cached history follows it."""
        self.dirty = True
        key, appended = (turn.owner, turn.external_id), (*turn.messages, turn.reply)
        if stamp is not None:
            incarnation, version = stamp
        elif turn.replace_from is None and turn.expected_version is not None:
            incarnation, version = None, turn.expected_version + 1
        else:
            self._cache.discard(key)  # rare (a retried turn): read the conversation afresh next time
            return
        size = turn_size(params)
        self._cache.extend(
            key, turn.system, appended, turn.window, turn.usage, size, version=version, stamp=incarnation
        )

    def _commit(self, batch: list[tuple[Turn, tuple[Any, ...]]]) -> list[_Stamp]:
        """Commit the batch in one transaction; each turn's stamp, read back when it was not fenced."""
        started = time.perf_counter()
        stamps: list[_Stamp] = []
        try:
            for turn, params in batch:
                for sql, values in turn_statements(turn, params):
                    self._inline.execute(sql, values)
                stamp = None
                if turn.expected_version is None and turn.replace_from is None:
                    stamp = self._inline.execute(STAMP, (turn.owner, turn.external_id)).fetchone()
                stamps.append(stamp)
            self._inline.commit()
        except BaseException:
            self._inline.rollback()
            raise
        if self.observe is not None:
            self.observe(time.perf_counter() - started)
        return stamps
