"""Contract tests of cross-process coordination: the conversation locks (``ConversationLocks``), the shared request
limits (``LimitStore``) and ``Storage.exclusive``, on every backend.  Each "process" below is a storage opened on
its own (its own connections, its own lock file descriptor), as another worker or replica would open it; the tests
that need a process to die spawn a real one and SIGKILL it.

A backend without cross-process locks, or (SQLite, with several workers) shared limits, skips those tests.

Run as a module (``python -m tests.storage.test_contract_coordination LOCATION WHAT``), this file is the
process that is killed: it opens the storage, takes a lock or limit slots, says "ready" and waits to be killed.
"""

from __future__ import annotations

import asyncio
import dataclasses
import statistics
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from pathlib import Path

import asyncpg
import pytest

from gateway.core.ordering import KeyedLocks
from gateway.core.ports import Admission, ConversationLocks, LimitStore
from gateway.errors import StorageUnavailable
from gateway.settings.config import Config
from gateway.storage.open import open_storage
from gateway.storage.postgres import locks as locks_module
from gateway.storage.postgres.locks import PostgresConversationLocks
from tests.conftest import REPO, make_config
from tests.storage.conftest import UNUSED_UPSTREAM, Backend

KEY = ("owner-a", "conversation")
# Hand-over: from the holder leaving its block to the waiter in another process entering its own.  PostgreSQL
# wakes the waiter by a notification (a couple of round trips); SQLite's waiter polls with a back-off up to 20 ms.
HANDOVER_MEDIAN = {"postgres": 0.015, "sqlite": 0.025}
FREED_WITHIN = 2.0  # seconds from SIGKILL of a holder until another process has its lock or its slots


@dataclass
class Process:
    """One process's view of the coordination over the shared database."""

    locks: ConversationLocks
    shared_limits: LimitStore | None
    exclusive: Callable[[str], AbstractAsyncContextManager[bool]]

    @property
    def limits(self) -> LimitStore:
        if self.shared_limits is None:
            pytest.skip("this backend does not count limits across processes yet")
        return self.shared_limits


Opener = Callable[[], Awaitable[Process]]


async def _open_process(config: Config, closers: list[Callable[[], Awaitable[None]]]) -> Process:
    """A process's coordination, as ``open_storage`` gives it to a server of several workers (SQLite counts the
    limits in the file only then)."""
    storage = await open_storage(dataclasses.replace(config, workers=2), cache=False)
    closers.append(storage.close)
    if storage.locks is None:
        pytest.skip("this backend does not provide cross-process locks yet")
    return Process(storage.locks, storage.limits, storage.exclusive)


@pytest.fixture
async def opener(backend: Backend) -> AsyncIterator[Opener]:
    """Opens another process's coordination on the backend's database at each call; all closed afterwards."""
    closers: list[Callable[[], Awaitable[None]]] = []

    async def open_one() -> Process:
        return await _open_process(backend.config, closers)

    try:
        yield open_one
    finally:
        for close in reversed(closers):
            await close()


async def entered(block: AbstractAsyncContextManager[None], seconds: float) -> bool:
    """Whether ``block`` can be entered within ``seconds`` (left again at once when it was)."""
    try:
        async with asyncio.timeout(seconds):
            await block.__aenter__()
    except TimeoutError:
        return False
    await block.__aexit__(None, None, None)
    return True


# --- conversation locks ---------------------------------------------------------------------------------------


async def test_a_held_lock_excludes_other_processes_until_released(opener: Opener) -> None:
    first, second = await opener(), await opener()
    async with first.locks.hold(KEY):
        assert not await entered(second.locks.hold(KEY), 0.6)  # past the 250 ms poll of PostgreSQL's waiter
    assert await entered(second.locks.hold(KEY), 2.0)


async def test_other_conversations_do_not_wait(opener: Opener) -> None:
    first, second = await opener(), await opener()
    async with first.locks.hold(KEY):
        assert await entered(second.locks.hold(("owner-a", "another")), 1.0)
        assert await entered(second.locks.hold(("owner-b", KEY[1])), 1.0)  # same id, another owner


async def test_a_waiter_gets_the_lock_promptly_after_release(opener: Opener, backend: Backend) -> None:
    first, second = await opener(), await opener()
    handovers = [await handover(first.locks, second.locks) for _ in range(15)]
    median = statistics.median(handovers)
    print(f"\nhand-over ({backend.name}): median {median * 1000:.1f} ms, max {max(handovers) * 1000:.1f} ms")
    assert median <= HANDOVER_MEDIAN[backend.name], handovers


async def handover(holder: ConversationLocks, waiter: ConversationLocks) -> float:
    """Seconds from ``holder`` leaving its block on ``KEY`` to ``waiter`` (already waiting) entering its own."""
    holding = asyncio.Event()
    released = 0.0

    async def hold_briefly() -> None:
        nonlocal released
        async with holder.hold(KEY):
            holding.set()
            await asyncio.sleep(0.03)  # long enough for the waiter to have tried and begun waiting
            released = time.perf_counter()

    async def wait_for_it() -> float:
        await holding.wait()
        async with waiter.hold(KEY):
            return time.perf_counter()

    _, got = await asyncio.gather(hold_briefly(), wait_for_it())
    return got - released


async def test_turns_of_several_processes_on_one_conversation_never_overlap(opener: Opener) -> None:
    # As the server takes them: each process's in-process lock first (``ConversationLocks`` assumes one holder
    # per process at a time), then the shared one.
    ordering = [KeyedLocks((await opener()).locks) for _ in range(3)]
    inside: list[int] = []
    overlaps = 0

    async def turn(locks: KeyedLocks, n: int) -> None:
        nonlocal overlaps
        async with locks.hold(KEY):
            inside.append(n)
            overlaps += len(inside) > 1
            await asyncio.sleep(0.002)
            inside.remove(n)

    await asyncio.gather(*(turn(ordering[n % 3], n) for n in range(30)))
    assert overlaps == 0


async def test_a_cancelled_waiter_leaves_nothing_held(opener: Opener) -> None:
    first, second, third = await opener(), await opener(), await opener()
    async with first.locks.hold(KEY):
        waiter = asyncio.ensure_future(entered(second.locks.hold(KEY), 30))
        await asyncio.sleep(0.3)
        waiter.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiter
    assert await entered(third.locks.hold(KEY), 2.0)


async def test_a_lock_of_a_killed_process_is_freed(opener: Opener, backend: Backend) -> None:
    survivor = await opener()
    child = await _spawn(backend, "lock")
    try:
        assert not await entered(survivor.locks.hold(KEY), 0.5)
        waiting = asyncio.ensure_future(entered(survivor.locks.hold(KEY), 10))
        await asyncio.sleep(0.1)
        killed = time.perf_counter()
        child.kill()
        assert await waiting
        freed = time.perf_counter() - killed
    finally:
        await _reap(child)
    print(f"\nlock of a killed process freed after ({backend.name}): {freed * 1000:.0f} ms")
    assert freed < FREED_WITHIN


# --- exclusive --------------------------------------------------------------------------------------------------


async def test_exclusive_is_true_for_exactly_one_process_at_a_time(opener: Opener) -> None:
    processes = [await opener() for _ in range(3)]
    results: list[bool] = []
    inside = asyncio.Event()
    done = asyncio.Event()

    async def try_purge(process: Process) -> None:
        async with process.exclusive("purge") as mine:
            results.append(mine)
            if mine:
                inside.set()
                await done.wait()

    winners = [asyncio.ensure_future(try_purge(p)) for p in processes]
    await inside.wait()
    await asyncio.sleep(0.1)  # the others have answered by now
    assert sorted(results) == [False, False, True]
    async with processes[0].exclusive("purge") as again:  # in the holder's own process too
        assert not again
    async with processes[0].exclusive("another job") as other:
        assert other
    done.set()
    await asyncio.gather(*winners)
    async with processes[1].exclusive("purge") as later:
        assert later


# --- limits -----------------------------------------------------------------------------------------------------


async def test_parallel_admissions_across_processes_admit_exactly_the_rate(opener: Opener) -> None:
    processes = [await opener() for _ in range(3)]
    answers = await asyncio.gather(
        *(processes[n % 3].limits.admit("key-1", concurrent=0, per_minute=5) for n in range(20))
    )
    admitted = [a for a in answers if a.refused is None]
    refused = [a for a in answers if a.refused is not None]
    assert len(admitted) == 5
    assert {a.refused for a in refused} == {"rate_limit_exceeded"}
    assert all(0 < a.retry_after <= 60 for a in refused)
    assert all(a.slot is None for a in admitted)  # no concurrency limit: nothing to release
    other = await processes[0].limits.admit("key-2", concurrent=0, per_minute=5)  # another key's own window
    assert other.refused is None


async def test_the_concurrency_limit_holds_across_processes(opener: Opener) -> None:
    processes = [await opener() for _ in range(3)]
    answers = await asyncio.gather(
        *(processes[n % 3].limits.admit("key-1", concurrent=3, per_minute=0) for n in range(12))
    )
    admitted = [a for a in answers if a.refused is None]
    assert len(admitted) == 3
    assert len({a.slot for a in admitted}) == 3
    assert {a.refused for a in answers if a.refused is not None} == {"concurrency_limit_exceeded"}


async def test_a_released_slot_admits_the_next_request(opener: Opener) -> None:
    first, second = await opener(), await opener()
    held = [await first.limits.admit("key-1", concurrent=2, per_minute=0) for _ in range(2)]
    assert (await second.limits.admit("key-1", concurrent=2, per_minute=0)).refused == "concurrency_limit_exceeded"
    slot = held[0].slot
    assert slot is not None
    await first.limits.release("key-1", slot)
    assert (await second.limits.admit("key-1", concurrent=2, per_minute=0)).refused is None


async def test_a_refused_request_is_not_counted(opener: Opener) -> None:
    process = await opener()
    one = await process.limits.admit("key-1", concurrent=1, per_minute=2)
    assert (await process.limits.admit("key-1", concurrent=1, per_minute=2)).refused == "concurrency_limit_exceeded"
    assert one.slot is not None
    await process.limits.release("key-1", one.slot)
    two = await process.limits.admit("key-1", concurrent=1, per_minute=2)
    assert two.refused is None  # the refusal took no place in the minute's log
    assert two.slot is not None
    await process.limits.release("key-1", two.slot)
    assert (await process.limits.admit("key-1", concurrent=1, per_minute=2)).refused == "rate_limit_exceeded"


async def test_slots_of_a_killed_process_stop_counting(opener: Opener, backend: Backend) -> None:
    limits = (await opener()).limits
    child = await _spawn(backend, "slots")
    try:
        refused = await limits.admit("key-1", concurrent=2, per_minute=0)
        assert refused.refused == "concurrency_limit_exceeded"
        killed = time.perf_counter()
        child.kill()
        await child.wait()
        answer: Admission = refused
        while answer.refused is not None and time.perf_counter() - killed < 10:
            await asyncio.sleep(0.01)
            answer = await limits.admit("key-1", concurrent=2, per_minute=0)
        healed = time.perf_counter() - killed
    finally:
        await _reap(child)
    print(f"\nslots of a killed process healed after ({backend.name}): {healed * 1000:.0f} ms")
    assert answer.refused is None
    assert healed < FREED_WITHIN


# --- PostgreSQL only: the connections ---------------------------------------------------------------------------


async def test_postgres_locks_say_unavailable_when_the_server_cannot_be_reached() -> None:
    async def refused() -> asyncpg.Connection:
        return await asyncpg.connect("postgresql://postgres@127.0.0.1:9/none", timeout=2)

    locks = PostgresConversationLocks(refused)
    with pytest.raises(StorageUnavailable):
        await locks.start()
    with pytest.raises(StorageUnavailable):
        async with locks.hold(KEY):
            pass
    await locks.close()


async def test_postgres_locks_and_limits_come_back_after_their_connections_are_cut(
    postgres_url: str, tmp_path: Path
) -> None:
    closers: list[Callable[[], Awaitable[None]]] = []
    config = make_config(tmp_path, UNUSED_UPSTREAM, storage__path=postgres_url)
    try:
        first, second = [await _open_process(config, closers) for _ in range(2)]
        slot = await first.limits.admit("key-1", concurrent=1, per_minute=0)
        admin = await asyncpg.connect(postgres_url)
        try:
            # What a PostgreSQL restart does to every gateway connection, without waiting for one.
            await admin.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                "WHERE datname = current_database() AND pid <> pg_backend_pid()"
            )
        finally:
            await admin.close()
        async with first.locks.hold(KEY):  # a new lock connection, at once
            assert not await entered(second.locks.hold(KEY), 0.6)
        assert await entered(second.locks.hold(KEY), 2.0)
        # The listener is back under the same number (at once), so the slot admitted before the cut counts again.
        answer = await second.limits.admit("key-1", concurrent=1, per_minute=0)
        assert answer.refused == "concurrency_limit_exceeded"
        assert slot.slot is not None
        await first.limits.release("key-1", slot.slot)
    finally:
        for close in reversed(closers):
            await close()


async def test_postgres_colliding_lock_ids_re_enter_rather_than_deadlock(
    opener: Opener, backend: Backend, monkeypatch: pytest.MonkeyPatch
) -> None:
    if backend.name != "postgres":
        pytest.skip("PostgreSQL's lock ids")
    monkeypatch.setattr(locks_module, "conversation_lock_id", lambda key: 42)  # every conversation collides
    first, second = await opener(), await opener()
    ordering = KeyedLocks(first.locks)
    async with ordering.hold(("owner-a", "one")):
        assert await entered(ordering.hold(("owner-a", "two")), 1.0)  # the same id, in the same process
        async with ordering.hold(("owner-a", "two")):
            pass
        assert not await entered(second.locks.hold(("owner-a", "three")), 0.6)  # still held by the first
    assert await entered(second.locks.hold(("owner-a", "three")), 2.0)


async def test_postgres_a_try_cancelled_in_flight_never_leaves_its_lock_held(opener: Opener, backend: Backend) -> None:
    if backend.name != "postgres":
        pytest.skip("PostgreSQL's lock statements")
    first, second = await opener(), await opener()
    for step in range(8):  # cancelled before, during and after the statement's round trip
        hold = first.locks.hold(KEY)
        attempt = asyncio.ensure_future(hold.__aenter__())
        for _ in range(step):
            await asyncio.sleep(0)
        attempt.cancel()
        try:
            await attempt
        except asyncio.CancelledError:
            pass
        else:  # it got there first: leave it as a holder would
            await hold.__aexit__(None, None, None)
        assert await entered(second.locks.hold(KEY), 2.0), step


# --- the process that is killed ---------------------------------------------------------------------------------


async def _spawn(backend: Backend, what: str) -> asyncio.subprocess.Process:
    location = backend.config.db_url or str(backend.config.db_path)
    child = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "tests.storage.test_contract_coordination",
        location,
        what,
        cwd=REPO,
        stdout=asyncio.subprocess.PIPE,
    )
    assert child.stdout is not None
    try:
        line = await asyncio.wait_for(child.stdout.readline(), 30)
    except TimeoutError:
        line = b""
    if line.strip() != b"ready":
        await _reap(child)
        raise AssertionError(f"the child process did not get ready: {line!r}")
    return child


async def _reap(child: asyncio.subprocess.Process) -> None:
    if child.returncode is None:
        child.kill()
    await child.wait()


async def _child(location: str, what: str) -> None:
    closers: list[Callable[[], Awaitable[None]]] = []
    with tempfile.TemporaryDirectory() as scratch:
        process = await _open_process(make_config(Path(scratch), UNUSED_UPSTREAM, storage__path=location), closers)
        if what == "lock":
            await process.locks.hold(KEY).__aenter__()
        else:
            for _ in range(2):
                admitted = await process.limits.admit("key-1", concurrent=2, per_minute=0)
                assert admitted.refused is None
        print("ready", flush=True)
        await asyncio.Event().wait()  # until killed


if __name__ == "__main__":
    asyncio.run(_child(*sys.argv[1:3]))
