"""The server's shutdown state, shared by the serve loop, the readiness probe and the chat use case.

SIGTERM starts draining: ``/readyz`` answers 503 at once, new connections stop being accepted after
``server.drain_grace_seconds``, in-flight requests and streams get until ``server.drain_seconds`` to finish.  When
that deadline passes the state is ``expired``, and streams still open end with an error event rather than just
stopping.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field


@dataclass
class Drain:
    started: bool = False
    expired: bool = False
    streams: set[asyncio.Task[object]] = field(default_factory=set)  # tasks relaying a stream right now

    def start(self) -> None:
        self.started = True

    def expire(self) -> None:
        """The deadline: stop the streams still open (their tasks are told by cancellation, while the connection
        is still up to carry an error event; aiohttp's own cancellation comes a moment later and closes it)."""
        self.expired = True
        for task in list(self.streams):
            task.cancel()
