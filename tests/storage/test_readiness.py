"""/readyz means "a turn could be recorded now": a deleted or replaced database file, a read-only one, a full disk
and a failed write each answer 503 naming the reason, and readiness comes back once the fault is gone; a
read-only database stops start-up with one line.

Read-only is tested as it really happens to a process running as root, which ignores permission bits: an
immutable file (``chattr +i``).  A full disk is a real small tmpfs filled up; a failed write is a real write past
the process's file-size limit (``RLIMIT_FSIZE``, set on the running gateway with ``prlimit``).  Each skips where
the machine does not allow it (not root, a file system without the immutable flag, no mount permission).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import resource
import shutil
import signal
import sqlite3
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from gateway.storage.sqlite.store import ConversationStore
from tests.conftest import REPO, Gateway, chat_body, make_config, run_cli, start_gateway, user
from tests.fake_upstream import FakeUpstream


async def _ready(http: aiohttp.ClientSession, url: str) -> tuple[int, dict[str, Any]]:
    async with http.get(url + "/readyz") as resp:
        return resp.status, await resp.json()


@contextlib.contextmanager
def _immutable(path: Path) -> Iterator[None]:
    """``path`` immutable for the block (skips the test where the flag cannot be set)."""
    if shutil.which("chattr") is None:
        pytest.skip("chattr is not installed")
    if subprocess.run(["chattr", "+i", str(path)], capture_output=True, check=False).returncode != 0:
        pytest.skip("this file system or user cannot set the immutable flag")
    try:
        yield
    finally:
        subprocess.run(["chattr", "-i", str(path)], check=True)


async def test_a_deleted_database_file_makes_readiness_fail(gateway: Gateway, http: aiohttp.ClientSession) -> None:
    assert (await _ready(http, gateway.url))[0] == 200
    gateway.db_path.unlink()
    status, body = await _ready(http, gateway.url)
    assert (status, body["status"], body["database"]) == (503, "unavailable", "database_file_missing")
    assert "restart" in body["detail"]


async def test_a_database_file_replaced_under_the_gateway_makes_readiness_fail(
    gateway: Gateway, http: aiohttp.ClientSession
) -> None:
    other = gateway.db_path.with_name("restored.db")
    sqlite3.connect(other).close()
    os.replace(other, gateway.db_path)
    status, body = await _ready(http, gateway.url)
    assert (status, body["database"]) == (503, "database_file_replaced")


async def test_an_immutable_database_file_makes_readiness_fail_until_it_is_writable_again(
    gateway: Gateway, http: aiohttp.ClientSession
) -> None:
    with _immutable(gateway.db_path):
        status, body = await _ready(http, gateway.url)
        assert (status, body["database"]) == (503, "read_only")
        assert gateway.db_path.name in body["detail"]
    assert (await _ready(http, gateway.url))[0] == 200


async def test_a_read_only_database_at_start_up_stops_it_with_one_line(tmp_path: Path) -> None:
    db = tmp_path / "g.db"
    store = await ConversationStore.open(db)
    await store.close()
    empty = tmp_path / "empty.toml"
    empty.touch()
    with _immutable(db):
        result = await run_cli("serve", "--config", str(empty), "--db", str(db), "--port", "0")
    assert result.status == 2
    lines = result.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(
        f"gateway: error: storage.path: the database {str(db)!r} is read-only"
    )
    assert "Traceback" not in result.err


@contextlib.contextmanager
def _small_disk(where: Path, size: str) -> Iterator[Path]:
    """A real tmpfs of ``size`` mounted at ``where`` for the block (skips the test where mounting is not allowed)."""
    where.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(where)], capture_output=True, check=False
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.decode().strip()}")
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], check=True)


def _fill(directory: Path) -> Path:
    """Write a file until the disk is full; return it."""
    filler = directory / "filler"
    with filler.open("wb") as out, contextlib.suppress(OSError):
        while True:
            out.write(b"\0" * 65536)
            out.flush()
    return filler


async def test_a_full_disk_makes_readiness_fail_until_space_is_freed(
    tmp_path: Path, upstream: FakeUpstream, http: aiohttp.ClientSession
) -> None:
    with _small_disk(tmp_path / "disk", "4m") as disk:
        gateway = await start_gateway(make_config(tmp_path, upstream.url, storage__path=str(disk / "g.db")))
        try:
            assert (await _ready(http, gateway.url))[0] == 200
            filler = _fill(disk)
            status, body = await _ready(http, gateway.url)
            assert (status, body["database"]) == (503, "disk_full")
            big = chat_body(user("x" * 200_000))
            async with http.post(gateway.url + "/v1/chat/completions", json=big, headers={"X-Conversation-Id": "c"}):
                pass  # with the WAL unable to grow, the turn fails (or, with room in the WAL still, is recorded)
            filler.unlink()
            assert (await _ready(http, gateway.url))[0] == 200
        finally:
            await gateway.stop()


def _spawn_ignoring_sigxfsz(tmp_path: Path, upstream: FakeUpstream) -> tuple[subprocess.Popen[bytes], int]:
    """The gateway as a process that ignores SIGXFSZ, so that a write past RLIMIT_FSIZE fails (EFBIG) rather than
    kill it.  Its log goes to a pipe, which no file-size limit applies to; a thread keeps the pipe drained."""
    empty = tmp_path / "empty.toml"
    empty.touch()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("GATEWAY_", "DASHSCOPE_"))}
    args = ["serve", "--config", str(empty), "--port", "0", "--db", str(tmp_path / "g.db")]
    proc = subprocess.Popen(
        [sys.executable, "-m", "gateway", *args, "--upstream-base-url", upstream.url],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        env=env,
        cwd=REPO,
        preexec_fn=lambda: signal.signal(signal.SIGXFSZ, signal.SIG_IGN),
    )
    assert proc.stdout is not None
    for line in proc.stdout:
        if b'"server_started"' in line:
            threading.Thread(target=proc.stdout.read, daemon=True).start()
            return proc, int(json.loads(line)["port"])
    raise AssertionError(f"gateway exited early with status {proc.wait()}")


@pytest.mark.skipif(not hasattr(resource, "prlimit"), reason="needs prlimit (Linux)")
async def test_a_failed_write_is_remembered_until_a_write_succeeds(
    tmp_path: Path, upstream: FakeUpstream, http: aiohttp.ClientSession
) -> None:
    proc, port = await asyncio.wait_for(asyncio.to_thread(_spawn_ignoring_sigxfsz, tmp_path, upstream), 20)
    url = f"http://127.0.0.1:{port}"
    try:
        _, hard = resource.prlimit(proc.pid, resource.RLIMIT_FSIZE)
        resource.prlimit(proc.pid, resource.RLIMIT_FSIZE, (0, hard))  # from now on, every write to a file fails
        headers = {"X-Conversation-Id": "c"}
        async with http.post(url + "/v1/chat/completions", json=chat_body(user("hi")), headers=headers) as resp:
            assert resp.status == 503 and (await resp.json())["error"]["code"] == "storage_unavailable"
        status, body = await _ready(http, url)
        assert (status, body["database"]) == (503, "write_failed")
        assert body["detail"].startswith("the last write failed: disk I/O error")
        await asyncio.sleep(1.1)  # past the probe interval: readiness tries a write again, which fails again
        assert (await _ready(http, url))[0] == 503
        resource.prlimit(proc.pid, resource.RLIMIT_FSIZE, (hard, hard))
        await asyncio.sleep(1.1)
        assert await _ready(http, url) == (200, {"status": "ready", "database": "ok"})
        async with http.post(url + "/v1/chat/completions", json=chat_body(user("hi")), headers=headers) as resp:
            assert resp.status == 200
    finally:
        proc.terminate()
        await asyncio.to_thread(proc.wait, 10)
