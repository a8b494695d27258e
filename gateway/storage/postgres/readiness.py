"""Whether a turn could be recorded now on PostgreSQL: the faults ``/readyz`` reports and how they are told.

``PostgresStorage.readiness`` asks the server (one short statement on a pool connection, bounded in time) and
adds what the latest writes of turns said (``WriteWatch``).  A fault is one of:

- ``unreachable``: no connection can be opened or the statement failed on the way (the server is down or
  restarting, the network is gone, the pool has no connection free within the timeout).  The pool reconnects by
  itself once the server is back, so this clears without a restart.
- ``read_only``: the server is a standby (``pg_is_in_recovery()``), or a write was refused as read-only
  (``default_transaction_read_only``, SQLSTATE 25006).
- ``disk_full``: a write failed for want of space or memory on the server (SQLSTATE class 53).
- ``write_failed``: the last write of a turn failed for another reason of the server (an I/O error, say), not
  followed by a successful one.

Constraint violations and the turn fence are not faults: they say something about one turn, not the storage.
No message carries the database URL, so none can carry its password.
"""

from __future__ import annotations

import asyncpg

from gateway.core.ports import StorageFault

# Errors of one turn rather than of the storage: integrity violations (class 23), the gateway's own
# raises (GW...), a query the server cancelled on the gateway's request (57014).
_NOT_FAULTS = ("23", "GW", "57014")


def fault_of(exc: BaseException) -> StorageFault | None:
    """The fault a failed write shows, or None when it shows none."""
    if isinstance(exc, asyncpg.PostgresError):
        state = exc.sqlstate or ""
        if state.startswith(_NOT_FAULTS):
            return None
        if state == "25006":
            return StorageFault("read_only", "the database refused a write: it is read-only")
        if state.startswith("53"):
            return StorageFault("disk_full", f"the last write failed: the server is out of resources ({state})")
        if state.startswith(("08", "57P")):  # connection exceptions, operator intervention (shutdown, restart)
            return StorageFault("unreachable", f"the last write failed: the connection was lost ({state})")
        return StorageFault("write_failed", f"the last write failed: {type(exc).__name__} ({state})")
    return StorageFault("unreachable", f"the last write failed: the connection was lost ({type(exc).__name__})")


class WriteWatch:
    """How the latest writes of turns went: a failure is remembered until a write succeeds."""

    def __init__(self) -> None:
        self.error: StorageFault | None = None

    @property
    def healthy(self) -> bool:
        return self.error is None

    def failed(self, exc: BaseException) -> None:
        fault = fault_of(exc)
        if fault is not None:
            self.error = fault

    def succeeded(self) -> None:
        self.error = None


def unreachable(exc: BaseException) -> StorageFault:
    """The fault of a readiness check that could not ask the server."""
    if isinstance(exc, TimeoutError):
        return StorageFault("unreachable", "the database did not answer in time")
    if isinstance(exc, asyncpg.PostgresError):
        return StorageFault("unreachable", f"the database refused the check: {type(exc).__name__} ({exc.sqlstate})")
    return StorageFault("unreachable", f"the database cannot be reached ({type(exc).__name__})")
