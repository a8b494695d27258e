"""The server's shutdown state, shared by the serve loop, the readiness probe and the chat use case.

SIGTERM starts draining: ``/readyz`` answers 503 at once, new connections stop being accepted after
``server.drain_grace_seconds``, in-flight requests and streams get until ``server.drain_seconds`` to finish.  When
that deadline passes the state is ``expired``, and streams still open end with an error event rather than just
stopping.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class Drain:
    started: bool = False
    expired: bool = False

    def start(self) -> None:
        self.started = True

    def expire(self) -> None:
        self.expired = True
