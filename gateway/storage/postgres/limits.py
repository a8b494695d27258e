"""PostgresLimitStore: per-key request limits counted in PostgreSQL, so that they hold across every process and
replica (``core.ports.LimitStore``).

One admission is one round trip: ``gateway_admit`` (``coordination_schema``) takes a transaction advisory lock on
the key, so the decision and the count are one step for every process, then checks the concurrency slots and the
exact sliding 60-second log of starts, and records the start and the slot.  A slot is recorded under this
process's number (``PostgresConversationLocks.process``) and counts only while that process's liveness lock is
held: a replica that is SIGKILLed stops counting as soon as PostgreSQL has closed its connections (at once, for a
process that died: the kernel closes its sockets).  Old starts of keys no longer asked about, and the slots of
dead processes, are swept every ``SWEEP_SECONDS``.  The price of liveness by lock: while a process's listening
connection is down (it reconnects at once), another process at a limit takes its slots for a dead one's and drops
them, so until those requests end the key may run over its concurrency limit by that many.

``backend`` creates one after the locks: ``PostgresLimitStore(database, locks)``, ``start()`` (the sweep) once
``locks.start()`` has claimed the process number, ``await close()`` before the locks close.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid

import asyncpg
import structlog

from gateway.core.ports import Admission
from gateway.errors import StorageUnavailable
from gateway.storage.postgres.database import DRIVER_ERRORS, Database
from gateway.storage.postgres.locks import STATEMENT_TIMEOUT_SECONDS, PostgresConversationLocks

log = structlog.get_logger("gateway")

SWEEP_SECONDS = 60.0
_ADMIT = "SELECT refused, retry_after, slot FROM gateway_admit($1, $2, $3, $4)"
_RELEASE = "DELETE FROM limit_slots WHERE id = $1 AND key = $2"
_SWEEP = "SELECT gateway_sweep_limits()"
# Raised by the driver before a statement left: "connection is closed", "another operation is in progress".
_NOT_SENT: tuple[type[Exception], ...] = (asyncpg.InterfaceError, asyncpg.InternalClientError)
FAILED = "The request limits cannot be checked: the conversation store cannot be reached."


class PostgresLimitStore:
    """Limits shared through the database (see the module docstring)."""

    def __init__(self, database: Database, locks: PostgresConversationLocks) -> None:
        self._database = database
        self._locks = locks
        self._sweeper: asyncio.Task[None] | None = None

    def start(self) -> None:
        """Start the background sweep (on the running loop)."""
        self._sweeper = asyncio.get_running_loop().create_task(self._sweep_periodically())

    async def close(self) -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sweeper
            self._sweeper = None

    async def admit(self, key: str, *, concurrent: int, per_minute: int) -> Admission:
        """Count a request start for ``key`` under the limits (0: no limit of that kind), or refuse it."""
        # On a pool connection directly rather than Database.fetchrow, which retries any lost connection: an
        # admission whose first try committed unseen would leave a slot counted for the life of this process.
        # Retried here only when the driver refused before sending anything (a pooled connection that died
        # with a PostgreSQL restart).
        args = (key, concurrent, per_minute, self._locks.process)
        try:
            for attempt in (1, 2):
                try:
                    async with self._database.pool.acquire() as conn:
                        row = await conn.fetchrow(_ADMIT, *args, timeout=STATEMENT_TIMEOUT_SECONDS)
                    break
                except _NOT_SENT:
                    if attempt == 2:
                        raise
        except (*DRIVER_ERRORS, *_NOT_SENT) as exc:
            raise StorageUnavailable(FAILED, code="storage_unavailable") from exc
        assert row is not None  # a function with OUT parameters returns exactly one row
        refused, retry_after, slot = row
        if refused is not None:
            return Admission(refused, retry_after=float(retry_after))
        return Admission(None, slot=None if slot is None else str(slot))

    async def release(self, key: str, slot: str) -> None:
        """The request admitted into ``slot`` has ended: its slot goes (a slot that is gone already is no error)."""
        try:
            slot_id = uuid.UUID(slot)
        except ValueError:
            return  # not one this store handed out
        await self._database.execute(_RELEASE, slot_id, key)

    async def sweep(self) -> None:
        """Delete starts older than the window and slots of dead processes, of every key."""
        await self._database.execute(_SWEEP)

    async def _sweep_periodically(self) -> None:
        while True:
            await asyncio.sleep(SWEEP_SECONDS)
            try:
                await self.sweep()
            except StorageUnavailable as exc:  # the next round tries again; admissions prune their own key
                log.warning("limits_sweep_failed", error=exc.code)
