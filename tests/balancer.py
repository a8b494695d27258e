"""A real load balancer in front of gateway replicas: HAProxy from the distribution (``.ci/run`` installs it), in
HTTP mode, round-robin over the given loopback ports, with a health check on ``/readyz``.

Streams pass through as they come (HAProxy never buffers a response body; ``http-no-delay`` sends each chunk at
once) and the server and client timeouts are long enough for any streamed reply.  A connection refused by a
dead replica is retried on another one at once (``redispatch``), as a client of a real deployment would expect;
a request the replica had accepted is never retried (only ``conn-failure``), so no turn runs twice.  Every
response carries ``X-Replica`` (the server's name, ``r0``, ``r1``, ...), so that a test knows which replica
serves a request.  Without haproxy the tests that need it skip, saying why.
"""

from __future__ import annotations

import contextlib
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

from tests.postgres import missing_server


def haproxy_bin() -> str | None:
    return shutil.which("haproxy") or next((p for p in ("/usr/sbin/haproxy",) if Path(p).is_file()), None)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def config_text(port: int, backends: Sequence[int], *, check_interval_ms: int = 300) -> str:
    servers = "\n".join(
        f"    server r{n} 127.0.0.1:{backend} check inter {check_interval_ms}ms fall 2 rise 1"
        " observe layer4 error-limit 1 on-error mark-down"
        for n, backend in enumerate(backends)
    )
    return f"""\
global
    maxconn 4096
    log stderr format short local0 notice

defaults
    mode http
    log global
    option dontlognull
    option http-no-delay
    retries 3
    option redispatch 1
    retry-on conn-failure
    timeout connect 1s
    timeout client 300s
    timeout server 300s
    timeout http-request 10s
    timeout http-keep-alive 10s
    timeout queue 10s

frontend gateway
    bind 127.0.0.1:{port}
    default_backend replicas

backend replicas
    balance roundrobin
    option httpchk GET /readyz
    http-check expect status 200
    http-response set-header X-Replica %s
{servers}
"""


class Balancer:
    """``start()`` runs ``haproxy -f <config> -db`` on a free loopback port; ``stop()`` ends it."""

    def __init__(self, backends: Sequence[int], *, check_interval_ms: int = 300) -> None:
        binary = haproxy_bin()
        if binary is None:
            missing_server("haproxy is not installed (apt-get install haproxy; make test does it as root)")
        self.binary = binary
        self.backends = list(backends)
        self.check_interval_ms = check_interval_ms
        self.root = Path(tempfile.mkdtemp(prefix="gateway-haproxy-"))
        self.config = self.root / "haproxy.cfg"
        self.log = self.root / "haproxy.log"
        self.port = 0
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> Balancer:
        for _ in range(5):  # the free port may be taken between choosing it and haproxy binding it
            self.port = _free_port()
            self.config.write_text(config_text(self.port, self.backends, check_interval_ms=self.check_interval_ms))
            with self.log.open("ab") as log:
                self.process = subprocess.Popen(
                    [self.binary, "-f", str(self.config), "-db"], stdout=log, stderr=subprocess.STDOUT
                )
            if self._wait_listening():
                return self
            self._end()
        raise RuntimeError(f"haproxy did not start: {self.log.read_text()[-2000:]}")

    def _wait_listening(self) -> bool:
        assert self.process is not None
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                return False
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                return True
            time.sleep(0.02)
        return False

    def _end(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()  # SIGTERM: haproxy's hard stop
            try:
                self.process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process = None

    def stop(self) -> None:
        self._end()
        shutil.rmtree(self.root, ignore_errors=True)


@contextlib.contextmanager
def balancer(backends: Sequence[int], *, check_interval_ms: int = 300) -> Iterator[Balancer]:
    """HAProxy round-robin over ``backends`` (loopback ports) for the body of the block."""
    running = Balancer(backends, check_interval_ms=check_interval_ms).start()
    try:
        yield running
    finally:
        running.stop()
