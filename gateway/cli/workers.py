"""``serve --workers N`` (N > 1): a pre-fork parent and N worker processes sharing one listening socket.

The parent (``run``):

- **binds the socket itself** (``server.host``/``server.port``; port 0 picks one), so the real port is known
  before any worker exists, and connections that arrive while a worker starts or restarts wait in the shared
  accept queue rather than being refused.  One queue, not ``SO_REUSEPORT``: with a queue per process the kernel
  keeps handing a stalled worker its share of new connections; with one, whichever worker is free accepts.
- **runs the app's start-up once** (``_start_up_once``: migrations and the start-up checks, exactly as a single
  process runs them, without listening), so a bad setting or database ends here with one line and status 2
  before any worker starts, and two workers never race to migrate a fresh database.
- **starts each worker as a fresh interpreter**, ``python -m gateway serve <the same arguments> --listen-fd FD
  ...``, the socket passed by descriptor (``pass_fds``), rather than with ``os.fork``.  By then the parent has
  run an event loop and opened and closed the database (SQLite connections and the threads that carry them must
  not cross a fork), and a restart happens much later still: a new process inherits nothing but the socket and
  one pipe, whatever the parent has done.  The price: each worker imports the gateway itself (about a second here)
  when it starts and restarts.
- **restarts a worker that exits** while it is not stopping: at once after a worker that ran for a while,
  with a doubling delay (up to ``MAX_DELAY``) after one that died soon after starting, so a crash loop does not
  spin.  Every exit and restart is logged.
- **on SIGTERM or SIGINT** forwards SIGTERM to every worker (each drains as a single process does: readiness
  fails for ``server.drain_grace_seconds``, then in-flight requests get ``server.drain_seconds``), waits for
  them that long plus ``STOP_MARGIN``, SIGKILLs any still running, and exits 0 when every worker exited 0.

A worker (``serve_worker``) is an ordinary gateway (``app.serve``) on the inherited socket; every log line it
writes carries ``worker`` (its index, kept across restarts) and ``pid``.  It stops, with the same drain, when
its parent dies, even by SIGKILL: it holds the read end of a pipe whose only write end is the parent's, and the
kernel closes that end when the parent goes, so the read end reports end-of-file.  Unlike ``PR_SET_PDEATHSIG``
this is portable, has no window before it takes effect (a parent gone before the worker even started has left
the end-of-file already), and it needs no polling.

The parent is deliberately synchronous (no event loop): it only waits for signals (SIGCHLD among them), through
``signal.set_wakeup_fd`` and ``select``, and for the next restart or kill deadline.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import select
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from types import FrameType

import structlog
from aiohttp import web

from gateway.app import create_app, serve
from gateway.http.connections import accept_backlog, connection_limit, raise_open_file_limit
from gateway.settings.config import Config

log = structlog.get_logger("gateway")

STOP_MARGIN = 5.0  # seconds past drain_grace + drain_seconds before a worker still running is killed
STABLE_SECONDS = 10.0  # a worker that ran this long before exiting is restarted at once
FIRST_DELAY = 0.25  # the delay after the first of a run of quick exits, doubling with each further one
MAX_DELAY = 30.0
_SAFETY_WAKE = 1.0  # the longest the parent sleeps without looking at its workers (should a wake-up be lost)


def run(config: Config, argv: Sequence[str]) -> int:
    """Run the parent: bind, start up once, then supervise ``config.workers`` workers until told to stop.
    ``argv``: the command line's arguments (``serve ...``), which every worker is started with.  Raises what a
    single process's start-up raises (``ConfigError``, storage errors, ``OSError`` for the address)."""
    sockets = bind(config)
    try:
        asyncio.run(_start_up_once(config))
        return _Supervisor(config, argv, sockets).run()
    finally:
        for sock in sockets:
            sock.close()


def bind(config: Config) -> list[socket.socket]:
    """Listening sockets on every address ``server.host`` resolves to (as aiohttp's own site binds), all on one
    port: with port 0, the one the first address was given."""
    soft = raise_open_file_limit()[1]  # inherited by the workers; the backlog below is the one each would pick
    backlog = accept_backlog(connection_limit(config, soft))
    found = socket.getaddrinfo(config.host, config.port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    addresses = list(dict.fromkeys((family, address) for family, _, _, _, address in found))
    sockets: list[socket.socket] = []
    port = config.port
    try:
        for family, address in addresses:
            sock = socket.socket(family, socket.SOCK_STREAM)
            sockets.append(sock)
            # As asyncio does: a restarted gateway must not wait for the old one's connections in TIME_WAIT,
            # and an IPv6 socket must not also claim the IPv4 port its IPv4 sibling binds.
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            sock.bind((address[0], port, *address[2:]))
            sock.listen(backlog)
            port = sock.getsockname()[1]
    except BaseException:
        for sock in sockets:
            sock.close()
        raise
    return sockets


async def _start_up_once(config: Config) -> None:
    """The app's start-up without listening: storage opened (created and migrated if need be), the start-up
    checks, then everything closed again."""
    runner = web.AppRunner(create_app(config))
    await runner.setup()
    await runner.cleanup()


def serve_worker(config: Config, fds: Sequence[int], index: int, parent_fd: int | None) -> None:
    """Serve as worker ``index`` on the inherited listening sockets ``fds`` until SIGTERM/SIGINT, or until the
    parent is gone (end-of-file on ``parent_fd``)."""
    structlog.contextvars.bind_contextvars(worker=index, pid=os.getpid())  # on every line this process writes
    sockets = [socket.socket(fileno=fd) for fd in fds]
    asyncio.run(_serve_until_orphaned(config, sockets, parent_fd))


async def _serve_until_orphaned(config: Config, sockets: Sequence[socket.socket], parent_fd: int | None) -> None:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()

    def parent_gone(fd: int) -> None:
        loop.remove_reader(fd)  # end-of-file stays readable: without this the loop would spin on it
        log.warning("parent_exited")
        stop.set()

    if parent_fd is not None:
        loop.add_reader(parent_fd, parent_gone, parent_fd)
    await serve(config, sockets, stop)


def restart_delay(ran: float, quick_exits: int) -> tuple[float, int]:
    """How long to wait before restarting a worker that exited after running ``ran`` seconds, having exited
    quickly ``quick_exits`` times in a row before; and the new count.  A worker that ran ``STABLE_SECONDS`` is
    restarted at once; one that keeps dying on start waits FIRST_DELAY, then twice as long each time, up to
    MAX_DELAY, so that a crash loop costs little and says so in the log without filling it."""
    if ran >= STABLE_SECONDS:
        return 0.0, 0
    return min(MAX_DELAY, FIRST_DELAY * 2**quick_exits), quick_exits + 1


@dataclass
class _Worker:
    index: int
    proc: subprocess.Popen[bytes] | None = None
    started: float = 0.0  # monotonic
    due: float = 0.0  # when to start it next (monotonic), while it is not running
    quick_exits: int = 0  # exits in a row each within STABLE_SECONDS of starting
    killed: bool = False


class _Supervisor:
    """The parent's loop: keep ``config.workers`` workers running; on a stop signal, drain them all."""

    def __init__(self, config: Config, argv: Sequence[str], sockets: list[socket.socket]) -> None:
        self._config = config
        self._argv = list(argv)
        self._sockets = sockets
        self._port = sockets[0].getsockname()[1]
        self._workers = [_Worker(index) for index in range(config.workers)]
        self._stop_signal: int | None = None
        self._failed = False  # a worker that did not exit 0 once stopping began

    def run(self) -> int:
        # Workers watch the read end; the write end never leaves this process (os.pipe's ends are not
        # inheritable, and only the read end is passed), so it closes exactly when this process ends.
        self._orphan_r, orphan_w = os.pipe()
        wake_r, wake_w = os.pipe()
        os.set_blocking(wake_r, False)
        os.set_blocking(wake_w, False)
        previous_fd = signal.set_wakeup_fd(wake_w, warn_on_full_buffer=False)
        previous = {sig: signal.signal(sig, self._on_signal) for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGCHLD)}
        try:
            return self._supervise(wake_r)
        finally:
            signal.set_wakeup_fd(previous_fd)
            for sig, handler in previous.items():
                signal.signal(sig, handler)
            for fd in (self._orphan_r, orphan_w, wake_r, wake_w):
                os.close(fd)

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        # Runs between bytecodes of the loop below; the wakeup fd has already ended its select.  SIGCHLD needs
        # a handler (not SIG_DFL) for the wakeup fd to be written at all.
        if signum != signal.SIGCHLD and self._stop_signal is None:
            self._stop_signal = signum

    def _supervise(self, wake_r: int) -> int:
        now = time.monotonic()
        self._start_due(now)
        log.info(
            "server_started",
            host=self._config.host,
            port=self._port,
            workers=len(self._workers),
            pid=os.getpid(),
            upstream=self._config.upstream_base_url,
        )
        deadline: float | None = None
        while True:
            now = time.monotonic()
            if self._stop_signal is not None and deadline is None:
                deadline = now + self._config.drain_grace + self._config.drain_seconds + STOP_MARGIN
                self._begin_stop(deadline - now)
            self._reap(now, stopping=deadline is not None)
            if deadline is None:
                self._start_due(now)
            elif not any(w.proc for w in self._workers):
                break
            elif now >= deadline:
                self._kill_remaining()
            _wait(wake_r, self._timeout(now, deadline))
        status = 1 if self._failed else 0
        log.info("server_stopped", pid=os.getpid(), status=status)
        return status

    def _timeout(self, now: float, deadline: float | None) -> float:
        if deadline is not None:
            # Past the deadline the workers have been killed: wait for their SIGCHLD rather than spin.
            return min(deadline - now, _SAFETY_WAKE) if deadline > now else _SAFETY_WAKE
        waits = [w.due - now for w in self._workers if w.proc is None]
        return max(0.0, min([_SAFETY_WAKE, *waits]))

    def _start_due(self, now: float) -> None:
        for worker in self._workers:
            if worker.proc is None and worker.due <= now:
                self._start(worker, now)

    def _start(self, worker: _Worker, now: float) -> None:
        fds = [sock.fileno() for sock in self._sockets]
        command = [sys.executable, "-m", "gateway", *self._argv]
        for fd in fds:
            command += ["--listen-fd", str(fd)]
        command += ["--worker-index", str(worker.index), "--parent-fd", str(self._orphan_r)]
        try:
            # S603: the command is this interpreter and the arguments this process was itself started with.
            worker.proc = subprocess.Popen(command, pass_fds=[*fds, self._orphan_r])  # noqa: S603
        except OSError as exc:  # out of processes or memory, for now: try again later, as after a quick exit
            log.error("worker_start_failed", worker=worker.index, error=exc.strerror)
            self._schedule(worker, now, ran=0.0)
            return
        worker.started, worker.killed = now, False
        log.info("worker_started", worker=worker.index, pid=worker.proc.pid)

    def _reap(self, now: float, *, stopping: bool) -> None:
        for worker in self._workers:
            proc = worker.proc
            if proc is None or (code := proc.poll()) is None:
                continue
            worker.proc = None
            ran = now - worker.started
            exit_fields = {"signal": signal.Signals(-code).name} if code < 0 else {"status": code}
            level = log.info if stopping and code in (0, -signal.SIGTERM) else log.warning
            level("worker_exited", worker=worker.index, pid=proc.pid, seconds=round(ran, 3), **exit_fields)
            if stopping:
                # Ended by the forwarded SIGTERM itself: it came before the worker had started serving (and
                # installed its handler), so nothing was in flight.
                self._failed = self._failed or code not in (0, -signal.SIGTERM)
            else:
                self._schedule(worker, now, ran)

    def _schedule(self, worker: _Worker, now: float, ran: float) -> None:
        delay, worker.quick_exits = restart_delay(ran, worker.quick_exits)
        worker.due = now + delay
        log.info("worker_restarting", worker=worker.index, delay_seconds=delay)

    def _begin_stop(self, wait_seconds: float) -> None:
        assert self._stop_signal is not None
        log.info("server_stopping", signal=signal.Signals(self._stop_signal).name, wait_seconds=round(wait_seconds, 3))
        for worker in self._workers:
            if worker.proc is not None:
                with contextlib.suppress(ProcessLookupError):
                    worker.proc.send_signal(signal.SIGTERM)
        # Nothing will be restarted: let go of the socket, so that once every worker has closed its own copy
        # (when its drain begins) new connections are refused instead of queueing where no one accepts them.
        for sock in self._sockets:
            sock.close()

    def _kill_remaining(self) -> None:
        for worker in self._workers:
            if worker.proc is not None and not worker.killed:
                log.error("worker_killed", worker=worker.index, pid=worker.proc.pid, reason="drain_timeout")
                with contextlib.suppress(ProcessLookupError):
                    worker.proc.kill()
                worker.killed = True
                self._failed = True


def _wait(wake_r: int, timeout: float) -> None:
    """Sleep until a signal arrives (its number is written to ``wake_r``) or ``timeout`` passes."""
    select.select([wake_r], [], [], timeout)
    with contextlib.suppress(BlockingIOError):
        while os.read(wake_r, 512):
            pass
