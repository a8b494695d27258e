"""``gateway serve --workers 2`` as real processes (gateway.cli.workers): both workers serve on the parent's one
socket, a killed worker is restarted, SIGTERM drains them all, and turns on one conversation stay in order across
the workers on one SQLite file, also when the worker holding a turn is killed.

Which worker serves a request is the kernel's choice, made once per connection.  Tests that need a given worker
keep a connection open (``Pinned``) and learn which worker accepted it from the canonical ``request`` line of a
first request on it, which, like every line a worker writes, names the worker's pid.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import sqlite3
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from gateway.cli.workers import STABLE_SECONDS, restart_delay
from tests.conftest import GatewayProcess, chat_body, run_cli, spawn_gateway, user
from tests.fake_upstream import FakeUpstream, Script
from tests.stored import SDK_KEY, stored

WORKERS = 2
KEY = {"Authorization": f"Bearer {SDK_KEY}"}


async def _eventually(check: Callable[[], Any], what: str, timeout: float = 20.0) -> Any:
    """``check()``'s first truthy value, polled; fails naming ``what`` after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if value := check():
            return value
        await asyncio.sleep(0.02)
    raise AssertionError(f"timed out waiting for {what}")


def _events(gp: GatewayProcess, name: str) -> list[dict[str, Any]]:
    return [e for e in gp.log_events() if e["event"] == name]


def _serving(gp: GatewayProcess) -> dict[int, int]:
    """Worker index → pid of each worker that has started serving and not exited since."""
    exited = {e["pid"] for e in _events(gp, "worker_exited")}
    return {e["worker"]: e["pid"] for e in _events(gp, "server_started") if "worker" in e and e["pid"] not in exited}


async def _spawn(
    tmp_path: Path, upstream: FakeUpstream, processes: list[GatewayProcess], db: str = ""
) -> GatewayProcess:
    """``--workers 2`` on ``db`` (an SQLite file in tmp_path by default), returned once both workers serve."""
    gp = await spawn_gateway(
        tmp_path,
        "--db",
        db or str(tmp_path / "workers.db"),
        "--upstream-base-url",
        upstream.url,
        "--workers",
        str(WORKERS),
    )
    processes.append(gp)
    await _eventually(lambda: len(_serving(gp)) == WORKERS, "both workers to serve")
    return gp


class Pinned:
    """One kept-alive connection to the gateway, and the pid of the worker that accepted it.  Every request goes
    over that same connection (checked: a replaced connection could reach another worker)."""

    def __init__(self, gp: GatewayProcess) -> None:
        self.gp = gp
        self.pid = 0
        self.connects = 0  # connections this client opened: stays 1
        trace = aiohttp.TraceConfig()
        trace.on_connection_create_end.append(self._connected)
        self.http = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=1), trace_configs=[trace])

    async def _connected(self, *_: Any) -> None:
        self.connects += 1

    async def pin(self) -> Pinned:
        async with self.http.get(self.gp.url + "/metrics") as resp:
            request_id = resp.headers["X-Gateway-Request-Id"]
            await resp.read()
        line = await _eventually(
            lambda: next((e for e in _events(self.gp, "request") if e.get("request_id") == request_id), None),
            "the probe's request line",
        )
        self.pid = line["pid"]
        return self

    async def turn(self, conversation: str, text: str) -> tuple[int, dict[str, Any]]:
        headers = {**KEY, "X-Conversation-Id": conversation}
        url = self.gp.url + "/v1/chat/completions"
        async with self.http.post(url, json=chat_body(user(text)), headers=headers) as resp:
            assert self.connects == 1, "the pinned connection was replaced"
            return resp.status, await resp.json()

    async def stream(self, conversation: str, text: str) -> aiohttp.ClientResponse:
        """A streamed turn whose response is returned as soon as its headers arrive (the caller reads and
        releases it)."""
        headers = {**KEY, "X-Conversation-Id": conversation}
        url = self.gp.url + "/v1/chat/completions"
        resp = await self.http.post(url, json=chat_body(user(text), stream=True), headers=headers)
        assert self.connects == 1, "the pinned connection was replaced"
        return resp

    async def close(self) -> None:
        await self.http.close()


@pytest.fixture
async def pinned() -> AsyncIterator[list[Pinned]]:
    """Pinned connections a test opened; closed at the end."""
    opened: list[Pinned] = []
    yield opened
    for connection in opened:
        await connection.close()


async def _pin(gp: GatewayProcess, opened: list[Pinned], per_worker: int) -> dict[int, list[Pinned]]:
    """``per_worker`` pinned connections to each serving worker (by pid), opened a batch at a time until the
    kernel has handed each worker enough; the surplus is closed."""
    want = set(_serving(gp).values())
    by_pid: dict[int, list[Pinned]] = {pid: [] for pid in want}
    for attempt in range(60):
        if all(len(by_pid[pid]) >= per_worker for pid in want):
            break
        if attempt:
            # Every worker is woken for each new connection and the first to accept it wins: on a loaded machine
            # a worker that has just started can lose many rounds in a row to a warm one.
            await asyncio.sleep(0.05)
        batch = [Pinned(gp) for _ in range(2 * per_worker * WORKERS)]
        opened.extend(batch)
        for connection in await asyncio.gather(*(c.pin() for c in batch)):
            if connection.pid in want and len(by_pid[connection.pid]) < per_worker:
                by_pid[connection.pid].append(connection)
            else:
                await connection.close()
    assert all(len(by_pid[pid]) >= per_worker for pid in want), {pid: len(c) for pid, c in by_pid.items()}
    return by_pid


@pytest.fixture(params=["sqlite", "postgres"])
def database(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """The workers' shared database: an SQLite file, or a fresh PostgreSQL database."""
    if request.param == "sqlite":
        return str(tmp_path / "workers.db")
    return str(request.getfixturevalue("postgres_url"))


def _texts(messages: list[dict[str, Any]]) -> list[tuple[str, str]]:
    return [(m["role"], m["content"]) for m in messages]


def _check_in_order(upstream: FakeUpstream, history: list[dict[str, Any]], prefix: str, turns: int) -> None:
    """``history`` is ``turns`` user/assistant pairs whose user texts start with ``prefix``, and the upstream
    request of each turn carried exactly the history before it: each turn saw the previous one, none was lost."""
    assert [m["role"] for m in history] == ["user", "assistant"] * turns
    asked = [r.body["messages"] for r in upstream.requests if r.body["messages"][-1]["content"].startswith(prefix)]
    assert sorted(len(m) for m in asked) == [2 * n + 1 for n in range(turns)]
    for messages in asked:
        assert _texts(messages) == _texts(history[: len(messages)])


async def test_both_workers_serve_on_the_parents_socket(
    tmp_path: Path, upstream: FakeUpstream, processes: list[GatewayProcess], pinned: list[Pinned]
) -> None:
    gp = await _spawn(tmp_path, upstream, processes)
    parent = next(e for e in _events(gp, "server_started") if "workers" in e)
    assert parent["workers"] == WORKERS and parent["pid"] == gp.proc.pid
    workers = [e for e in _events(gp, "server_started") if "worker" in e]
    assert sorted(e["worker"] for e in workers) == list(range(WORKERS))
    assert len({e["pid"] for e in workers}) == WORKERS and {e["port"] for e in workers} == {gp.port}
    for pid, (connection,) in (await _pin(gp, pinned, per_worker=1)).items():
        status, reply = await connection.turn(f"served-by-{pid}", "hello")
        assert status == 200 and reply["choices"][0]["message"]["content"].startswith("reply")


async def test_a_killed_worker_is_restarted_and_the_service_continues(
    tmp_path: Path, upstream: FakeUpstream, processes: list[GatewayProcess], pinned: list[Pinned]
) -> None:
    gp = await _spawn(tmp_path, upstream, processes)
    by_pid = await _pin(gp, pinned, per_worker=1)
    index, victim = next(iter(_serving(gp).items()))
    survivor = next(c for pid, (c,) in by_pid.items() if pid != victim)
    assert (await by_pid[victim][0].turn("kept", "before the kill"))[0] == 200

    os.kill(victim, signal.SIGKILL)
    assert (await survivor.turn("kept", "while it restarts"))[0] == 200
    exited = await _eventually(lambda: [e for e in _events(gp, "worker_exited") if e["pid"] == victim], "the exit")
    assert exited[0]["signal"] == "SIGKILL" and exited[0]["worker"] == index
    assert any(e["worker"] == index for e in await _eventually(lambda: _events(gp, "worker_restarting"), "it"))
    restarted = await _eventually(lambda: _serving(gp).get(index), "the restarted worker")
    assert restarted != victim
    (fresh,) = (await _pin(gp, pinned, per_worker=1))[restarted]
    assert (await fresh.turn("kept", "after the restart"))[0] == 200
    history = await stored(gp, "kept")
    assert [m["content"] for m in history if m["role"] == "user"] == [
        "before the kill",
        "while it restarts",
        "after the restart",
    ]
    assert [m["role"] for m in history] == ["user", "assistant"] * 3


async def test_sigterm_drains_every_worker_and_the_parent_exits_0(
    tmp_path: Path, upstream: FakeUpstream, processes: list[GatewayProcess], pinned: list[Pinned]
) -> None:
    gp = await _spawn(tmp_path, upstream, processes)
    by_pid = await _pin(gp, pinned, per_worker=1)
    content = "a reply that takes a moment to stream"
    upstream.script(*(Script(content=content, chunk_delay=0.05) for _ in by_pid))
    streams = [await c.stream(f"drain-{pid}", "hi") for pid, (c,) in by_pid.items()]
    for resp in streams:
        await resp.content.readline()  # the first event (the role): the turn is under way on its worker
    gp.proc.send_signal(signal.SIGTERM)
    for resp in streams:
        body = (await resp.read()).decode()
        chunks = [json.loads(line[5:]) for line in body.splitlines() if line.startswith("data:") and "{" in line]
        assert "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"]) == content
        assert body.rstrip().endswith("data: [DONE]")
        resp.release()
    assert await asyncio.to_thread(gp.proc.wait, 30) == 0
    stopped = _events(gp, "server_stopped")
    assert sorted(e["pid"] for e in stopped if "worker" in e) == sorted(by_pid)
    assert stopped[-1] == {**stopped[-1], "pid": gp.proc.pid, "status": 0}
    assert all(e["status"] == 0 for e in _events(gp, "worker_exited"))
    with sqlite3.connect(tmp_path / "workers.db") as db:  # each drained turn was recorded
        rows = db.execute(
            "SELECT c.external_id, m.role FROM messages m JOIN conversations c ON c.id = m.conversation_id "
            "ORDER BY c.external_id, m.seq"
        ).fetchall()
    assert rows == [(f"drain-{pid}", role) for pid in sorted(by_pid, key=str) for role in ("user", "assistant")]


async def test_workers_stop_when_the_parent_is_killed(
    tmp_path: Path, upstream: FakeUpstream, processes: list[GatewayProcess]
) -> None:
    gp = await _spawn(tmp_path, upstream, processes)
    workers = set(_serving(gp).values())
    gp.proc.kill()
    gp.proc.wait()

    def stopped() -> bool:
        gone = {e["pid"] for e in _events(gp, "parent_exited")} & {e["pid"] for e in _events(gp, "server_stopped")}
        return gone == workers

    await _eventually(stopped, "the orphaned workers to drain and stop")


async def test_concurrent_turns_on_one_conversation_run_one_after_another_across_workers(
    tmp_path: Path, upstream: FakeUpstream, processes: list[GatewayProcess], pinned: list[Pinned], database: str
) -> None:
    gp = await _spawn(tmp_path, upstream, processes, database)
    connections = [c for group in (await _pin(gp, pinned, per_worker=10)).values() for c in group]
    results = await asyncio.gather(*(c.turn("hot", f"hot-{n}") for n, c in enumerate(connections)))
    assert [status for status, _ in results] == [200] * 20, [reply for status, reply in results if status != 200]
    history = await stored(gp, "hot")
    assert sorted(m["content"] for m in history if m["role"] == "user") == sorted(f"hot-{n}" for n in range(20))
    _check_in_order(upstream, history, "hot-", 20)
    served = Counter(e["pid"] for e in _events(gp, "request") if e.get("path") == "/v1/chat/completions")
    assert sorted(served.values()) == [10, 10]  # half the turns queued in each worker


async def test_300_turns_over_30_conversations_keep_each_conversations_order(
    tmp_path: Path, upstream: FakeUpstream, processes: list[GatewayProcess]
) -> None:
    gp = await _spawn(tmp_path, upstream, processes)
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=32, force_close=True)) as http:

        async def turn(n: int) -> int:
            headers = {**KEY, "X-Conversation-Id": f"c{n % 30}"}
            body = chat_body(user(f"c{n % 30}-{n}"))
            async with http.post(gp.url + "/v1/chat/completions", json=body, headers=headers) as resp:
                await resp.read()
                return resp.status

        assert await asyncio.gather(*(turn(n) for n in range(300))) == [200] * 300
    for c in range(30):
        _check_in_order(upstream, await stored(gp, f"c{c}"), f"c{c}-", 10)
    served = Counter(e["pid"] for e in _events(gp, "request") if e.get("path") == "/v1/chat/completions")
    assert len(served) == WORKERS, served  # fresh connections each time: the kernel gave both workers some


async def test_killing_the_worker_holding_a_turn_frees_its_conversation(
    tmp_path: Path, upstream: FakeUpstream, processes: list[GatewayProcess], pinned: list[Pinned]
) -> None:
    gp = await _spawn(tmp_path, upstream, processes)
    by_pid = await _pin(gp, pinned, per_worker=1)
    (victim, (holder,)), (_, (other,)) = by_pid.items()
    assert (await holder.turn("crash", "crash-1"))[0] == 200
    assert (await other.turn("crash", "crash-2"))[0] == 200
    gate = asyncio.Event()
    upstream.script(Script(content="never finished", gate=gate))
    resp = await holder.stream("crash", "crash-3")
    await resp.content.readline()  # the first chunk: worker `victim` holds the conversation now
    os.kill(victim, signal.SIGKILL)
    with pytest.raises(aiohttp.ClientError):
        await resp.read()
    resp.release()
    gate.set()
    started = time.monotonic()
    status, _ = await other.turn("crash", "crash-4")
    assert status == 200 and time.monotonic() - started < 1.0
    history = await stored(gp, "crash")
    assert [m["content"] for m in history if m["role"] == "user"] == ["crash-1", "crash-2", "crash-4"]
    assert [m["role"] for m in history] == ["user", "assistant"] * 3 and not any(m.get("interrupted") for m in history)
    assert len(upstream.last["messages"]) == 5  # the next turn saw every acknowledged turn, not the killed one
    await _eventually(lambda: [e for e in _events(gp, "worker_exited") if e["pid"] == victim], "the exit")


def test_a_worker_dying_on_start_is_restarted_ever_more_slowly() -> None:
    delays, quick = [], 0
    for _ in range(10):
        delay, quick = restart_delay(0.5, quick)
        delays.append(delay)
    assert delays == [0.25, 0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 30.0, 30.0, 30.0]
    assert restart_delay(STABLE_SECONDS, quick) == (0.0, 0)  # one that ran a while: at once, and forgiven


@pytest.mark.parametrize("problem", ["database", "address"])
async def test_what_stops_start_up_stops_the_parent_before_any_worker_starts(tmp_path: Path, problem: str) -> None:
    config = tmp_path / "empty.toml"
    config.touch()
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = str(taken.getsockname()[1]) if problem == "address" else "0"
        db = "/proc/forbidden/gateway.db" if problem == "database" else str(tmp_path / "x.db")
        result = await run_cli("serve", "--config", str(config), "--port", port, "--workers", "2", "--db", db)
    assert result.status == 2
    (line,) = result.err.strip().splitlines()
    assert line.startswith("gateway: error: ")
    assert ("storage.path" if problem == "database" else "cannot listen on") in line
    assert "worker_started" not in result.out and "Traceback" not in result.err
