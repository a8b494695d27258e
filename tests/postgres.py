"""A throwaway PostgreSQL server for the tests: a fresh cluster (initdb) in a temp directory, on a free loopback
port, run from the distribution's binaries as the ``postgres`` user when the tests run as root (initdb refuses
root), stopped at the end.  ``.ci/run`` installs the packages when they are missing; without them the tests that
need a server skip, saying why.

``create_database`` gives each test its own empty database; ``kill`` (SIGKILL of the postmaster and its
children) and ``start`` again model a crash of the database server.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

PG_BIN_DIRS = sorted(Path("/usr/lib/postgresql").glob("*/bin"), reverse=True)


def pg_bin() -> Path | None:
    """The newest installed PostgreSQL server's bin directory, or None."""
    for directory in PG_BIN_DIRS:
        if (directory / "postgres").is_file() and (directory / "initdb").is_file():
            return directory
    return None


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _group_alive(group: int) -> bool:
    """Whether a process of process group ``group`` still runs (zombies, dead but not yet reaped, do not)."""
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue  # exited meanwhile
        if fields[0] != "Z" and int(fields[2]) == group:
            return True
    return False


class PostgresServer:
    """One cluster: ``start`` once, ``url(database)`` to connect, ``stop`` at the end."""

    def __init__(self, bin_dir: Path) -> None:
        self.bin = bin_dir
        self.root = Path(tempfile.mkdtemp(prefix="gateway-pg-"))
        self.data = self.root / "data"
        self.port = _free_port()
        self._user = "postgres" if os.geteuid() == 0 else None
        self._databases = 0
        self.process: subprocess.Popen[bytes] | None = None

    def _run(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[bytes]:
        command = list(args)
        if self._user is not None:
            command = ["runuser", "-u", self._user, "--", *command]
        return subprocess.run(command, check=check, capture_output=True, timeout=60)

    def init(self) -> None:
        if self._user is not None:
            shutil.chown(self.root, self._user)
        self._run(
            str(self.bin / "initdb"),
            "-D",
            str(self.data),
            "-U",
            "postgres",
            "--auth=trust",
            "--no-sync",
            "-E",
            "UTF8",
            "--locale=C.UTF-8",
        )

    def start(self) -> None:
        """Start the server (again, after ``kill``) and wait until it accepts connections."""
        command = [
            str(self.bin / "postgres"),
            "-D",
            str(self.data),
            "-p",
            str(self.port),
            "-c",
            "listen_addresses=127.0.0.1",
            "-c",
            f"unix_socket_directories={self.root}",
            "-c",
            "max_connections=400",
            # A process crash (kill -9 of PostgreSQL or of the gateway) loses nothing the OS was given: what the
            # tests kill is processes, never the machine, so fsync would only slow them.
            "-c",
            "fsync=off",
            "-c",
            "full_page_writes=off",
            "-c",
            "shared_buffers=64MB",
        ]
        if self._user is not None:
            command = ["runuser", "-u", self._user, "--", *command]
        log = open(self.root / "server.log", "ab")  # noqa: SIM115 - the server writes it while it runs
        self.process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        log.close()
        deadline = time.monotonic() + 30
        while True:
            ready = subprocess.run(
                [str(self.bin / "pg_isready"), "-h", "127.0.0.1", "-p", str(self.port), "-U", "postgres", "-q"],
                check=False,
            )
            if ready.returncode == 0:
                return
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"PostgreSQL did not start: {(self.root / 'server.log').read_text()[-2000:]}")
            time.sleep(0.05)

    def kill(self) -> None:
        """SIGKILL the whole server (postmaster and backends), as a crash would, and clear what a crashed
        postmaster leaves behind so that ``start`` works at once (on the same port, so URLs stay valid)."""
        if self.process is None:
            return
        shared_memory = self._shared_memory_id()
        group = self.process.pid  # start_new_session: the postmaster and all its children are in this group
        deadline = time.monotonic() + 10
        while _group_alive(group):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(group, signal.SIGKILL)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.process.wait(timeout=0.01)
            if time.monotonic() > deadline:
                raise RuntimeError("PostgreSQL's processes did not exit after SIGKILL")
        self.process.wait(timeout=10)
        self.process = None
        self._remove_leftovers(shared_memory)

    def _shared_memory_id(self) -> str | None:
        """The System V segment the running postmaster holds (line 7 of postmaster.pid: key and id)."""
        try:
            lines = (self.data / "postmaster.pid").read_text().splitlines()
        except OSError:
            return None
        fields = lines[6].split() if len(lines) > 6 else []
        return fields[1] if len(fields) == 2 else None

    def _remove_leftovers(self, shared_memory: str | None) -> None:
        # A stale postmaster.pid would be taken for a live server if its pid has been reused meanwhile, and the
        # socket lock file likewise; the System V segment (a few bytes) would otherwise stay until reboot.
        (self.data / "postmaster.pid").unlink(missing_ok=True)
        (self.root / f".s.PGSQL.{self.port}.lock").unlink(missing_ok=True)
        (self.root / f".s.PGSQL.{self.port}").unlink(missing_ok=True)
        if shared_memory is not None:
            subprocess.run(["ipcrm", "-m", shared_memory], check=False, capture_output=True)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGINT)  # the postmaster's fast shutdown (runuser forwards none)
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.kill()
        self.process = None
        shutil.rmtree(self.root, ignore_errors=True)

    def url(self, database: str = "postgres") -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{database}"

    def psql(self, sql: str, database: str = "postgres") -> str:
        done = subprocess.run(
            [str(self.bin / "psql"), "-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-c", sql, self.url(database)],
            check=True,
            capture_output=True,
            timeout=60,
        )
        return done.stdout.decode()

    def create_database(self) -> str:
        """A new empty database; its URL."""
        self._databases += 1
        name = f"test_{os.getpid()}_{self._databases}"
        self.psql(f"CREATE DATABASE {name}")
        return self.url(name)

    def drop_database(self, url: str) -> None:
        name = url.rsplit("/", 1)[1]
        self.psql(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


def missing_server(reason: str) -> None:
    """Skip the test for want of a server package, or fail it where the run requires every server
    (``REQUIRE_TEST_SERVERS=1``, as ``.ci/run`` sets: CI must not pass with these suites skipped)."""
    if os.environ.get("REQUIRE_TEST_SERVERS") == "1":
        pytest.fail(f"{reason}, and REQUIRE_TEST_SERVERS=1")
    pytest.skip(reason)
