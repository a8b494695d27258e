"""SQLite's cross-process locks (``gateway.storage.sqlite.locks``): a conversation's lock held by another process
(a real one, started here) keeps this one waiting until it is released or that process is killed (the kernel frees
it), a hash collision is counted rather than unlocked early, ``exclusive`` lets one holder in at a time, a
process's liveness is seen by others until it dies, a forked child does not share its parent's locks, the CLI's
edits wait for a turn in flight in the server, a symlink to the database shares its lock file, a block ending after
the locks closed releases nothing, and taking a conversation's lock tells the store to look at the file again.

Two ``FileLocks`` of one file in this process hold two open file descriptions, and so exclude each other exactly
as two processes do: the tests that need no killing use that.
"""

from __future__ import annotations

import asyncio
import io
import os
import sys
import time
from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from pathlib import Path

import pytest

from gateway.cli import admin
from gateway.core.ordering import KeyedLocks
from gateway.storage.sqlite.backend import SqliteStorage
from gateway.storage.sqlite.locks import FileLocks, conversation_byte
from tests.conftest import REPO
from tests.storage.conftest import turn

# Holds what its arguments name until killed: ``conversation OWNER ID``, ``exclusive NAME`` or ``process``, and says
# so on one line ("held", "refused", or the liveness byte).
HOLDER = """
import asyncio, sys
from pathlib import Path
from gateway.storage.sqlite.locks import FileLocks

async def main():
    locks = FileLocks(Path(sys.argv[1]))
    what = sys.argv[2]
    if what == "conversation":
        async with locks.hold((sys.argv[3], sys.argv[4])):
            print("held", flush=True)
            await asyncio.sleep(3600)
    elif what == "exclusive":
        async with locks.exclusive(sys.argv[3]) as mine:
            print("held" if mine else "refused", flush=True)
            await asyncio.sleep(3600)
    else:
        print(locks.process()[1], flush=True)
        await asyncio.sleep(3600)

asyncio.run(main())
"""


@asynccontextmanager
async def holder(db: Path, *args: str) -> AsyncIterator[tuple[asyncio.subprocess.Process, str]]:
    """Another process holding a lock of ``db``'s side file (see ``HOLDER``), and the line it said."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", HOLDER, str(db), *args, cwd=REPO, stdout=asyncio.subprocess.PIPE
    )
    try:
        assert proc.stdout is not None
        said = (await asyncio.wait_for(proc.stdout.readline(), 10)).decode().strip()
        yield proc, said
    finally:
        if proc.returncode is None:
            proc.kill()
        await proc.wait()


def colliding_keys() -> tuple[tuple[str, str], tuple[str, str]]:
    """Two conversations whose locks are the same byte (a birthday search: ~55,000 keys on average)."""
    seen: dict[int, tuple[str, str]] = {}
    for i in range(2_000_000):
        key = ("owner", f"c{i}")
        byte = conversation_byte(key)
        if byte in seen:
            return seen[byte], key
        seen[byte] = key
    raise AssertionError("no collision found")


async def entered(lock: AbstractAsyncContextManager[None], seconds: float = 0.2) -> bool:
    """Whether ``async with lock`` gets in within ``seconds`` (left at once if so)."""
    try:
        await asyncio.wait_for(lock.__aenter__(), seconds)
    except TimeoutError:
        return False
    await lock.__aexit__(None, None, None)
    return True


@pytest.fixture
def db(tmp_path: Path) -> Path:
    return tmp_path / "g.db"


async def test_a_conversation_lock_of_another_process_waits_until_that_process_is_killed(db: Path) -> None:
    locks = FileLocks(db)
    try:
        async with holder(db, "conversation", "owner", "c") as (proc, said):
            assert said == "held"
            waiting = asyncio.create_task(locks.hold(("owner", "c")).__aenter__())
            await asyncio.sleep(0.3)
            assert not waiting.done()
            assert conversation_byte(("owner", "d")) != conversation_byte(("owner", "c"))
            assert await entered(locks.hold(("owner", "d")))  # other conversations are not held up
            killed = time.monotonic()
            proc.kill()  # SIGKILL: the process cannot release anything; the kernel frees its locks
            await asyncio.wait_for(waiting, 2)
            assert time.monotonic() - killed < 1.0
    finally:
        locks.close()


async def test_a_released_lock_is_taken_by_the_waiter_within_milliseconds(db: Path) -> None:
    mine, theirs = FileLocks(db), FileLocks(db)
    try:
        held = theirs.hold(("owner", "c"))
        await held.__aenter__()
        waiting = asyncio.create_task(mine.hold(("owner", "c")).__aenter__())
        await asyncio.sleep(0.2)  # long enough for the pauses between tries to reach their longest
        assert not waiting.done()
        released = time.monotonic()
        await held.__aexit__(None, None, None)
        await asyncio.wait_for(waiting, 1)
        assert time.monotonic() - released < 0.1  # pauses of at most 20 ms (with room for a busy machine)
    finally:
        mine.close()
        theirs.close()


async def test_conversations_sharing_a_byte_are_counted_not_unlocked_early(db: Path) -> None:
    first, second = colliding_keys()
    mine, theirs = FileLocks(db), FileLocks(db)
    try:
        a, b = mine.hold(first), mine.hold(second)
        await a.__aenter__()
        assert await asyncio.wait_for(entered(mine.hold(second)), 1)  # in this process: in at once, counted
        await b.__aenter__()
        await a.__aexit__(None, None, None)
        assert not await entered(theirs.hold(first))  # the byte is still held for ``second``
        await b.__aexit__(None, None, None)
        assert await entered(theirs.hold(first))
    finally:
        mine.close()
        theirs.close()


async def test_exclusive_lets_one_holder_in_at_a_time_and_never_waits(db: Path) -> None:
    mine, theirs = FileLocks(db), FileLocks(db)
    try:
        async with mine.exclusive("purge") as first:
            assert first
            async with mine.exclusive("purge") as again, theirs.exclusive("purge") as elsewhere:
                assert not again and not elsewhere  # this process's other blocks included
            async with theirs.exclusive("other work") as unrelated:
                assert unrelated
        async with theirs.exclusive("purge") as after:
            assert after
        async with holder(db, "exclusive", "purge") as (proc, said):
            assert said == "held"
            async with mine.exclusive("purge") as while_held:
                assert not while_held
            proc.kill()
            await proc.wait()
            async with mine.exclusive("purge") as after_kill:
                assert after_kill
    finally:
        mine.close()
        theirs.close()


async def test_a_process_is_seen_alive_until_it_dies(db: Path) -> None:
    locks = FileLocks(db)
    try:
        me, my_byte = locks.process()
        assert locks.process() == (me, my_byte)  # claimed once
        async with holder(db, "process") as (proc, said):
            byte = int(said)
            assert byte != my_byte and locks.alive(byte)
            proc.kill()
            await proc.wait()
            assert not locks.alive(byte)
    finally:
        locks.close()


@pytest.mark.skipif(not hasattr(os, "fork"), reason="no fork here")
async def test_a_forked_child_does_not_share_its_parents_locks(db: Path) -> None:
    locks = FileLocks(db)
    try:
        async with locks.hold(("owner", "c")):
            pid = os.fork()
            if pid == 0:  # the child: only system calls, no event loop
                refused = not locks._take(conversation_byte(("owner", "c")))
                os._exit(0 if refused else 1)
            _, status = os.waitpid(pid, 0)
            assert os.waitstatus_to_exitcode(status) == 0
    finally:
        locks.close()


async def test_the_lock_file_lies_beside_the_database_and_is_made_on_first_use(db: Path) -> None:
    storage = await SqliteStorage.open(db, synchronous="normal", busy_timeout_ms=1000)
    try:
        assert isinstance(storage.locks, FileLocks)
        side = db.with_name("g.db-locks")
        assert not side.exists()  # reading needs no lock: a read-only directory does not stop it
        async with KeyedLocks(storage.locks).hold(("owner", "c")):
            assert side.exists() and side.stat().st_size == 0
    finally:
        await storage.close()


async def test_a_cli_purge_waits_for_a_turn_in_flight_in_another_process(db: Path) -> None:
    storage = await SqliteStorage.open(db, synchronous="normal", busy_timeout_ms=1000)
    try:
        await storage.turns.append_turn(turn("q1", owner="owner", conversation="c"))
        await asyncio.sleep(0.05)  # idle past the purge's 1e-7 days (9 ms) from here on
        out = io.StringIO()
        async with holder(db, "conversation", "owner", "c") as (proc, said):  # the server, mid-turn
            assert said == "held"
            purge = asyncio.create_task(admin.purge(storage.catalog, out, idle_days=1e-7, locks=storage.locks))
            await asyncio.sleep(0.3)
            assert not purge.done()  # it waits for the turn rather than delete under it
            assert await storage.catalog.get_conversation("owner", "c") is not None
            proc.kill()  # the holder dies: the kernel frees its lock
            await asyncio.wait_for(purge, 2)
        assert await storage.catalog.get_conversation("owner", "c") is None
    finally:
        await storage.close()


async def test_a_symlink_or_another_relative_path_to_the_database_names_the_same_lock_file(
    db: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    await (await SqliteStorage.open(db, synchronous="normal", busy_timeout_ms=1000)).close()
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    link = elsewhere / "link.db"
    link.symlink_to(db)
    monkeypatch.chdir(elsewhere)
    server, cli, relative = FileLocks(db), FileLocks(Path("link.db")), FileLocks(Path("..") / "g.db")
    try:
        assert server.path == cli.path == relative.path == db.resolve().with_name("g.db-locks")
        async with server.hold(("owner", "c")):
            assert not await entered(cli.hold(("owner", "c")))  # the same side file: excluded
            assert not await entered(relative.hold(("owner", "c")))
        assert await entered(cli.hold(("owner", "c")))
        assert not (elsewhere / "link.db-locks").exists()
    finally:
        for locks in (server, cli, relative):
            locks.close()


async def test_a_block_still_holding_a_lock_when_the_locks_close_ends_without_error(db: Path) -> None:
    locks, other = FileLocks(db), FileLocks(db)
    try:
        held, excluded = locks.hold(("owner", "c")), locks.exclusive("purge")
        await held.__aenter__()
        assert await excluded.__aenter__()
        locks.close()  # shutdown after a drain timed out, say: the kernel freed both locks
        assert await entered(other.hold(("owner", "c")))
        await held.__aexit__(None, None, None)  # nothing left to release: no KeyError
        await excluded.__aexit__(None, None, None)
        # Taken again after the close, the byte is not released by the earlier block's end.
        async with locks.hold(("owner", "c")):
            await held.__aexit__(None, None, None)
            assert not await entered(other.hold(("owner", "c")))
        locks._release(conversation_byte(("owner", "unknown")), locks._generation)  # never held: nothing
    finally:
        locks.close()
        other.close()


async def test_taking_a_conversation_lock_but_not_re_entering_it_tells_the_store(db: Path) -> None:
    told: list[bool] = []
    locks, other = FileLocks(db, taken=lambda: told.append(True)), FileLocks(db)
    try:
        async with locks.hold(("owner", "c")):
            assert told == [True]
            async with locks.hold(("owner", "c")):  # re-entered (a colliding key would be): held all along
                assert told == [True]
        async with other.hold(("owner", "c")):
            waiting = asyncio.create_task(locks.hold(("owner", "c")).__aenter__())
            await asyncio.sleep(0.05)
            assert told == [True]
        await asyncio.wait_for(waiting, 1)  # taken after waiting: told again
        assert told == [True, True]
        async with locks.exclusive("purge"):
            assert told == [True, True]
    finally:
        locks.close()
        other.close()
