"""The server's shutdown state, shared by the serve loop, the readiness probe and the chat use case, and the
bound on requests going upstream at once (``upstream.max_in_flight``), shared by chat and the pass-through.

SIGTERM starts draining: ``/readyz`` answers 503 at once, new connections stop being accepted after
``server.drain_grace_seconds``, in-flight requests and streams get until ``server.drain_seconds`` to finish.  When
that deadline passes the state is ``expired``, and streams still open end with an error event rather than just
stopping.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

from gateway.errors import Overloaded


@dataclass
class Drain:
    started: bool = False
    expired: bool = False
    streams: set[asyncio.Task[object]] = field(default_factory=set)  # tasks relaying a stream right now

    def start(self) -> None:
        self.started = True

    def expire(self) -> None:
        """The deadline: stop the streams still open (their tasks are told by cancellation, while the connection
        is still up to carry an error event; the web server's own cancellation comes a moment later and closes it)."""
        self.expired = True
        for task in list(self.streams):
            task.cancel()


class InFlight:
    """Requests on their way upstream right now; past the limit a request is refused at once (503) rather than
    queued behind the others."""

    def __init__(self, limit: int) -> None:
        self._limit = limit
        self._count = 0

    def __enter__(self) -> None:
        if self._count >= self._limit:
            raise Overloaded("The gateway has too many requests in flight; retry shortly.", code="overloaded")
        self._count += 1

    def __exit__(self, *exc_info: object) -> None:
        self._count -= 1
