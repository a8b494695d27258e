"""Benchmark server processes: inside one, bind an ephemeral loopback port, announce it and serve until SIGTERM
(``run_until_signalled``, in one process or several sharing the socket, as the gateway's ``--workers`` does);
from the runner, start one and learn its port and pid (``server``)."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from aiohttp import web

REPO = Path(__file__).resolve().parent.parent


async def _serve(app: web.Application, sock: socket.socket, announce: bool) -> None:
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.SockSite(runner, sock)
    await site.start()
    if announce:
        print(f"port {sock.getsockname()[1]}", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await runner.cleanup()


def run_until_signalled(app: web.Application, processes: int = 1) -> None:
    """Serve ``app`` until SIGTERM; ``processes`` > 1: that many processes accept on one socket (forked before any
    event loop exists, like a pre-fork server), the first one announcing the port once all are up."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    sock.listen(1024)
    children = []
    for _ in range(processes - 1):
        pid = os.fork()
        if pid == 0:
            asyncio.run(_serve(app, sock, announce=False))
            os._exit(0)
        children.append(pid)
    try:  # the runner's SIGTERM ends the first process's loop; it then stops the others
        asyncio.run(_serve(app, sock, announce=True))
    finally:
        for pid in children:
            os.kill(pid, signal.SIGTERM)
            os.waitpid(pid, 0)


def processes_flag(argv: list[str]) -> int:
    """``--processes N`` from a benchmark server's command line (1 without it)."""
    return int(argv[argv.index("--processes") + 1]) if "--processes" in argv else 1


@contextmanager
def server(
    args: list[str],
    log: Path,
    marker: str,
    *,
    env: dict[str, str] | None = None,
    preexec_fn: Callable[[], object] | None = None,
) -> Iterator[tuple[int, int]]:
    """Start a server process; yield (port, pid) once it logged ``marker``; stop it with SIGTERM at the end.
    ``env`` adds variables (``GATEWAY_*`` of the caller's own are never passed on); ``preexec_fn`` runs in the
    child before it starts (``bench.slowloris`` lowers its open-file limit there)."""
    full_env = {k: v for k, v in os.environ.items() if not k.startswith(("GATEWAY_", "DASHSCOPE_"))}
    full_env.update(env or {})
    with log.open("wb") as out:
        proc = subprocess.Popen(
            args, stdout=out, stderr=subprocess.STDOUT, env=full_env, cwd=REPO, preexec_fn=preexec_fn
        )
    try:
        yield _await_port(proc, log, marker), proc.pid
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=35)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _await_port(proc: subprocess.Popen[bytes], log: Path, marker: str) -> int:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        for line in log.read_text().splitlines():
            if marker in line:
                return int(line.split()[1]) if line.startswith("port ") else int(json.loads(line)["port"])
        if proc.poll() is not None:
            raise SystemExit(f"bench: a server exited early:\n{log.read_text()}")
        time.sleep(0.05)
    raise SystemExit(f"bench: a server did not start:\n{log.read_text()}")
