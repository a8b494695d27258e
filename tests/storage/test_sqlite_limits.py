"""SQLite's shared limits (``gateway.storage.sqlite.limits``, for ``server.workers`` > 1): concurrency slots and
the sliding minute hold across processes, parallel processes together admit exactly the limit, a refused request
counts nothing, a killed process's slots stop counting, and an admission waits out another process's write lock.

Two ``SqliteLimits`` in this process, each with its own ``FileLocks``, behave as two processes; real processes
are started where one must die or where they must race.
"""

from __future__ import annotations

import asyncio
import sqlite3
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from gateway.storage.sqlite.backend import SqliteStorage
from gateway.storage.sqlite.limits import SqliteLimits
from gateway.storage.sqlite.locks import FileLocks
from gateway.storage.sqlite.store import ConversationStore
from tests.conftest import REPO

# ``hold``: admit one request under a concurrency limit of 1 and keep it in flight; ``burst N``: try N requests
# under 5 per minute at once and say how many were admitted.
LIMITED = """
import asyncio, sys
from pathlib import Path
from gateway.storage.sqlite.limits import SqliteLimits
from gateway.storage.sqlite.locks import FileLocks

async def main():
    db = Path(sys.argv[1])
    limits = SqliteLimits.open(db, FileLocks(db), busy_timeout_ms=5000)
    if sys.argv[2] == "hold":
        admission = await limits.admit("key", concurrent=1, per_minute=0)
        print(admission.refused or "admitted", flush=True)
        await asyncio.sleep(3600)
    else:
        sys.stdin.readline()  # go
        tries = [limits.admit("key", concurrent=0, per_minute=5) for _ in range(int(sys.argv[3]))]
        print(sum(a.refused is None for a in await asyncio.gather(*tries)), flush=True)

asyncio.run(main())
"""


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
async def db(tmp_path: Path) -> Path:
    path = tmp_path / "g.db"
    await (await ConversationStore.open(path)).close()  # created and migrated
    return path


@pytest.fixture
async def processes(db: Path) -> AsyncIterator[list[SqliteLimits]]:
    """Two processes' limits on ``db`` (on one clock: ``processes[0]._clock``)."""
    clock = Clock()
    opened = [SqliteLimits.open(db, FileLocks(db), busy_timeout_ms=2000, clock=clock) for _ in range(2)]
    yield opened
    for limits in opened:
        await limits.close()


async def _spawn(db: Path, *args: str) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        LIMITED,
        str(db),
        *args,
        cwd=REPO,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
    )


async def test_concurrency_slots_count_across_processes(processes: list[SqliteLimits]) -> None:
    a, b = processes
    first = await a.admit("key", concurrent=2, per_minute=0)
    second = await b.admit("key", concurrent=2, per_minute=0)
    assert first.refused is None and second.refused is None and first.slot and second.slot
    refused = await a.admit("key", concurrent=2, per_minute=0)
    assert (refused.refused, refused.retry_after) == ("concurrency_limit_exceeded", 1.0)
    assert (await b.admit("other key", concurrent=2, per_minute=0)).refused is None
    await b.release("key", second.slot)
    assert (await a.admit("key", concurrent=2, per_minute=0)).refused is None


async def test_the_sliding_minute_counts_across_processes(processes: list[SqliteLimits]) -> None:
    a, b = processes
    clock = a._clock
    assert isinstance(clock, Clock)
    for limits in (a, b, a):
        assert (await limits.admit("key", concurrent=0, per_minute=3)).refused is None
        clock.now += 10
    refused = await b.admit("key", concurrent=0, per_minute=3)
    assert refused.refused == "rate_limit_exceeded" and refused.retry_after == pytest.approx(30.0)
    assert refused.slot is None
    clock.now += 30  # the first start is a minute old: one place again, and only one
    assert (await b.admit("key", concurrent=0, per_minute=3)).refused is None
    assert (await a.admit("key", concurrent=0, per_minute=3)).refused == "rate_limit_exceeded"


async def test_a_request_refused_for_concurrency_counts_no_start(processes: list[SqliteLimits]) -> None:
    a, b = processes
    held = await a.admit("key", concurrent=1, per_minute=2)
    assert held.refused is None and held.slot is not None
    assert (await b.admit("key", concurrent=1, per_minute=2)).refused == "concurrency_limit_exceeded"
    await a.release("key", held.slot)
    assert (await b.admit("key", concurrent=1, per_minute=2)).refused is None  # the second of two starts


async def test_parallel_processes_together_admit_exactly_the_limit(db: Path) -> None:
    procs = [await _spawn(db, "burst", "10") for _ in range(3)]
    try:
        for proc in procs:
            assert proc.stdin is not None
            proc.stdin.write(b"go\n")
        admitted = []
        for proc in procs:
            out, _ = await asyncio.wait_for(proc.communicate(), 30)
            assert proc.returncode == 0
            admitted.append(int(out))
        assert sum(admitted) == 5
    finally:
        for proc in procs:
            if proc.returncode is None:
                proc.kill()
                await proc.communicate()


async def test_opening_waits_out_another_connection_holding_the_database(db: Path) -> None:
    """Workers starting together: the first read of a connection can meet another's lock (WAL recovery, here an
    exclusive-mode connection); opening waits for it, as a write would, instead of failing at start-up."""
    holder = sqlite3.connect(db, isolation_level=None, check_same_thread=False)
    holder.execute("PRAGMA locking_mode = EXCLUSIVE")
    holder.execute("BEGIN EXCLUSIVE")
    holder.execute("COMMIT")  # the lock stays with the connection until it closes
    loop = asyncio.get_running_loop()
    loop.call_later(0.3, holder.close)
    limits = await asyncio.to_thread(SqliteLimits.open, db, FileLocks(db), busy_timeout_ms=5000)
    try:
        assert (await limits.admit("key", concurrent=0, per_minute=1)).refused is None  # and never waits again
    finally:
        await limits.close()


async def test_the_slots_of_a_killed_process_stop_counting(db: Path, processes: list[SqliteLimits]) -> None:
    mine, _ = processes
    proc = await _spawn(db, "hold")
    try:
        assert proc.stdout is not None
        assert (await asyncio.wait_for(proc.stdout.readline(), 10)).strip() == b"admitted"
        assert (await mine.admit("key", concurrent=1, per_minute=0)).refused == "concurrency_limit_exceeded"
        proc.kill()  # kill -9: its slot is never released
        await proc.wait()
        admission = await mine.admit("key", concurrent=1, per_minute=0)
        assert admission.refused is None
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    with sqlite3.connect(db) as conn:  # the dead slot is gone, not just skipped
        assert conn.execute("SELECT count(*) FROM limit_slots").fetchone() == (1,)


async def test_an_admission_waits_out_another_process_holding_the_write_lock(
    db: Path, processes: list[SqliteLimits]
) -> None:
    other = sqlite3.connect(db, isolation_level=None)
    try:
        other.execute("BEGIN IMMEDIATE")
        pending = asyncio.create_task(processes[0].admit("key", concurrent=1, per_minute=1))
        await asyncio.sleep(0.2)
        assert not pending.done()
        other.execute("COMMIT")
        assert (await asyncio.wait_for(pending, 5)).refused is None
    finally:
        other.close()


async def test_only_several_workers_count_limits_in_the_file(db: Path) -> None:
    alone = await SqliteStorage.open(db, synchronous="normal", busy_timeout_ms=1000)
    shared = await SqliteStorage.open(db, synchronous="normal", busy_timeout_ms=1000, shared_limits=True)
    try:
        assert alone.limits is None  # one process: its own limiter is exact
        assert isinstance(shared.limits, SqliteLimits)
        assert (await shared.limits.admit("key", concurrent=1, per_minute=1)).refused is None
    finally:
        await shared.close()
        await alone.close()
