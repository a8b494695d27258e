"""Three ``gateway serve`` replicas as real processes on one PostgreSQL database, behind a real load balancer
(HAProxy, round-robin): every guarantee of one process holds across them.

Turns on one conversation arriving at different replicas run one after another, each seeing the previous; a
SIGKILLed replica's conversation lock is freed and none of its acknowledged turns is lost; PostgreSQL killed and
restarted loses no acknowledged turn; per-key limits and key revocation hold across replicas; the operator's CLI
works against the PostgreSQL URL while they serve.

The fake upstream answers each turn ``re:<its user text>`` (``_echo``), so that the history a turn was sent shows
exactly which turns it saw.  Every response passing the balancer names its replica in ``X-Replica``.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import random
import signal
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.balancer import Balancer, haproxy_bin
from tests.conftest import CliResult, GatewayProcess, chat_body, run_cli, spawn_gateway, user
from tests.fake_upstream import FakeUpstream, Script, request_texts
from tests.postgres import PostgresServer
from tests.stored import stored

if haproxy_bin() is None:
    pytest.skip("haproxy is not installed (apt-get install haproxy; .ci/run does it)", allow_module_level=True)

REPLICAS = 3
# In every URL the replicas and the CLI are given (the test cluster trusts loopback connections, so it is never
# checked): it must appear in no log line and no output.
PASSWORD = "pw-never-logged-7f3a"
KEY = "sk-replicas"  # the client credential in open mode: its hash owns the conversations
UPSTREAM_KEY = "sk-replicas-upstream"  # the gateways' own upstream key, for keys mode


@dataclass
class Reply:
    status: int
    replica: str | None  # X-Replica: which replica served it (through the balancer)
    content: str
    code: str | None = None  # the error code of a refusal or a failed stream
    done: bool = False  # a stream ended with [DONE]

    @property
    def acknowledged(self) -> bool:
        """The client saw the turn complete: a 200 body, or a stream that reached [DONE] without an error."""
        return self.status == 200 and self.code is None and self.done


@dataclass
class Cluster:
    """The replicas (``r0``.. in the balancer), the balancer, and the database they share."""

    replicas: list[GatewayProcess]
    balancer: Balancer
    db_url: str
    server: PostgresServer
    upstream: FakeUpstream
    tmp_path: Path
    http: aiohttp.ClientSession = field(init=False)

    @property
    def url(self) -> str:
        return self.balancer.url

    def replica(self, name: str | None) -> GatewayProcess:
        assert name is not None and name.startswith("r"), name
        return self.replicas[int(name[1:])]

    async def turn(
        self, conversation: str, text: str, *, stream: bool = False, key: str = KEY, base: str | None = None
    ) -> Reply:
        return await post_turn(self.http, base or self.url, conversation, text, stream=stream, key=key)

    async def cli(self, *args: str) -> CliResult:
        """``gateway ARGS --db <the PostgreSQL URL>`` as a separate process."""
        empty = self.tmp_path / "cli.toml"
        empty.touch()
        return await run_cli(*args, "--config", str(empty), "--db", self.db_url)

    def sql(self, query: str) -> str:
        return self.server.psql(query, database=self.db_url.rsplit("/", 1)[1]).strip()


def _echo(upstream: FakeUpstream) -> Callable[[dict[str, Any]], Script | None]:
    """Answer each turn ``re:<its last user text>`` after a short pause (so that turns overlapping by mistake
    would show), unless a test queued scripts of its own."""

    def choose(body: dict[str, Any]) -> Script | None:
        if upstream.scripts:
            return None
        text = request_texts(body)[-1][1]
        return Script(content=f"re:{text}", delay=0.005, chunk_delay=0.002)

    return choose


async def post_turn(
    http: aiohttp.ClientSession, base: str, conversation: str, text: str, *, stream: bool = False, key: str = KEY
) -> Reply:
    headers = {"Authorization": f"Bearer {key}", "X-Conversation-Id": conversation}
    try:
        async with http.post(
            base + "/v1/chat/completions", json=chat_body(user(text), stream=stream), headers=headers
        ) as resp:
            replica = resp.headers.get("X-Replica")
            if resp.status != 200 or not stream:
                raw = await resp.read()
                try:
                    body = json.loads(raw)
                except ValueError:
                    return Reply(resp.status, replica, raw.decode(errors="replace"), code="not_json")
                if resp.status != 200:
                    return Reply(resp.status, replica, "", code=(body.get("error") or {}).get("code"))
                return Reply(200, replica, body["choices"][0]["message"]["content"], done=True)
            return await _read_stream(resp, replica)
    except (TimeoutError, aiohttp.ClientError) as exc:
        return Reply(0, None, "", code=type(exc).__name__)


async def _read_stream(resp: aiohttp.ClientResponse, replica: str | None) -> Reply:
    content: list[str] = []
    code = None
    done = False
    try:
        async for line in resp.content:
            data = line.decode().strip()
            if not data.startswith("data:"):
                continue
            data = data.removeprefix("data:").strip()
            if data == "[DONE]":
                done = True
                continue
            event = json.loads(data)
            if "error" in event:
                code = event["error"].get("code") or "error"
            for choice in event.get("choices") or ():
                content.append(choice["delta"].get("content") or "")
    except (TimeoutError, aiohttp.ClientError) as exc:
        code = type(exc).__name__
    return Reply(200, replica, "".join(content), code=code, done=done)


async def _start_replicas(
    tmp_path: Path, db_url: str, upstream: FakeUpstream, env: dict[str, str], count: int, into: list[GatewayProcess]
) -> list[GatewayProcess]:
    """``count`` replicas started at once (which also checks that their migrations do not collide), each added to
    ``into`` (the ``processes`` fixture, which kills them at the end) as soon as it runs."""
    args = ("--db", db_url, "--upstream-base-url", upstream.url)

    async def one() -> GatewayProcess:
        replica = await spawn_gateway(tmp_path, *args, env=env)
        into.append(replica)
        return replica

    started = await asyncio.gather(*(one() for _ in range(count)), return_exceptions=True)
    for result in started:
        if isinstance(result, BaseException):
            raise result
    return [r for r in started if isinstance(r, GatewayProcess)]


StartCluster = Callable[..., Awaitable[Cluster]]


@pytest.fixture
async def start_cluster(
    tmp_path: Path,
    upstream: FakeUpstream,
    processes: list[GatewayProcess],
    postgres_server: PostgresServer,
    postgres_url: str,
) -> AsyncIterator[StartCluster]:
    """``await start_cluster(env={...})``: the replicas (with these extra environment variables) and the
    balancer in front of them, on this test's database; all stopped at the end."""
    upstream.chooser = _echo(upstream)
    db_url = with_password(postgres_url)
    started: list[Cluster] = []
    connector = aiohttp.TCPConnector(limit=200)
    http = aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=60))

    async def start(env: dict[str, str] | None = None, count: int = REPLICAS) -> Cluster:
        replicas = await _start_replicas(tmp_path, db_url, upstream, env or {}, count, processes)
        lb = await asyncio.to_thread(Balancer([r.port for r in replicas]).start)
        cluster = Cluster(replicas, lb, db_url, postgres_server, upstream, tmp_path)
        cluster.http = http
        started.append(cluster)
        return cluster

    try:
        yield start
    finally:
        await http.close()
        for cluster in started:
            cluster.balancer.stop()
    for cluster in started:
        for replica in cluster.replicas:
            assert PASSWORD not in replica.log_path.read_text()


def with_password(url: str) -> str:
    return url.replace("://postgres@", f"://postgres:{PASSWORD}@", 1)


def _histories(upstream: FakeUpstream, conversation: str) -> list[list[tuple[str, str]]]:
    """The (role, text) histories the upstream was sent for a conversation's turns, shortest first."""
    prefix = f"{conversation}:"
    found = [request_texts(r.body) for r in upstream.requests]
    return sorted((h for h in found if h[-1][1].startswith(prefix)), key=len)


def _sent(upstream: FakeUpstream, text: str) -> list[tuple[str, str]]:
    """The history sent upstream for the turn whose user text was ``text``."""
    (history,) = [h for h in map(request_texts, (r.body for r in upstream.requests)) if h[-1][1] == text]
    return history


def assert_one_after_another(upstream: FakeUpstream, conversation: str, turns: int) -> None:
    """The conversation's turns ran strictly one after another: the k-th saw exactly the k-1 before it, each
    with its reply."""
    histories = _histories(upstream, conversation)
    assert [len(h) for h in histories] == list(range(1, 2 * turns, 2)), [len(h) for h in histories]
    for before, after in itertools.pairwise(histories):
        assert after[: len(before)] == before
        assert after[len(before)] == ("assistant", f"re:{before[-1][1]}")


def _texts(messages: list[dict[str, Any]]) -> list[tuple[str, str]]:
    return [(m["role"], m["content"]) for m in messages]


# --- ordering ----------------------------------------------------------------------------------------------------


async def test_twenty_concurrent_turns_on_one_conversation_run_one_after_another_across_replicas(
    start_cluster: StartCluster, upstream: FakeUpstream
) -> None:
    cluster = await start_cluster()
    replies = await asyncio.gather(*(cluster.turn("hot", f"hot:{i}", stream=i % 2 == 1) for i in range(20)))
    assert [r.status for r in replies] == [200] * 20, [(r.status, r.code) for r in replies]
    assert all(r.acknowledged for r in replies), [r.code for r in replies]
    assert [r.content for r in replies] == [f"re:hot:{i}" for i in range(20)]
    assert {r.replica for r in replies} == {f"r{n}" for n in range(REPLICAS)}  # the balancer spread them
    assert_one_after_another(upstream, "hot", 20)
    history = _texts(await stored(cluster.balancer, "hot", key=KEY))
    assert len(history) == 40
    assert [role for role, _ in history] == ["user", "assistant"] * 20  # strict alternation, none lost
    assert history == _histories(upstream, "hot")[-1] + [("assistant", f"re:{history[-2][1]}")]


async def test_three_hundred_turns_over_thirty_conversations_keep_every_order(
    start_cluster: StartCluster, upstream: FakeUpstream
) -> None:
    cluster = await start_cluster()
    work = [(f"c{c}", f"c{c}:{t}", t % 3 == 0) for c in range(30) for t in range(10)]
    random.Random(16).shuffle(work)
    replies = await asyncio.gather(*(cluster.turn(conv, text, stream=streamed) for conv, text, streamed in work))
    failed = [(text, r.status, r.code) for (_, text, _), r in zip(work, replies, strict=True) if not r.acknowledged]
    assert failed == []
    assert {r.replica for r in replies} == {f"r{n}" for n in range(REPLICAS)}
    for c in range(30):
        assert_one_after_another(upstream, f"c{c}", 10)
    for c in random.Random(7).sample(range(30), 5):
        assert len(await stored(cluster.balancer, f"c{c}", key=KEY)) == 20


# --- crashes -----------------------------------------------------------------------------------------------------


async def test_sigkill_of_the_replica_holding_a_turn_frees_its_lock_and_loses_no_acknowledged_turn(
    start_cluster: StartCluster, upstream: FakeUpstream
) -> None:
    cluster = await start_cluster()
    for i in range(3):
        assert (await cluster.turn("crash", f"crash:{i}", stream=i == 1)).acknowledged
    gate = asyncio.Event()
    upstream.script(Script(content="a reply that never finishes", gate=gate))
    headers = {"Authorization": f"Bearer {KEY}", "X-Conversation-Id": "crash"}
    body = chat_body(user("crash:half"), stream=True)
    try:
        async with cluster.http.post(cluster.url + "/v1/chat/completions", json=body, headers=headers) as held:
            await held.content.readline()  # the first chunk: the turn holds the conversation
            victim = cluster.replica(held.headers.get("X-Replica"))
            # A turn on another replica queues behind it, waiting for the lock the victim holds.
            other = next(r for r in cluster.replicas if r is not victim)
            waiter = asyncio.create_task(cluster.turn("crash", "crash:waiter", base=other.url))
            await asyncio.sleep(0.3)
            assert not waiter.done()
            victim.proc.send_signal(signal.SIGKILL)
            await asyncio.to_thread(victim.proc.wait, 10)
            killed_at = time.monotonic()
            waited = await asyncio.wait_for(waiter, 5)
            handed_over = time.monotonic() - killed_at
            rest = b""
            try:
                rest = await held.content.read()
            except aiohttp.ClientError:
                pass  # the balancer cut the stream of the dead replica
            assert b"[DONE]" not in rest  # the client never saw the half-done turn complete
    finally:
        gate.set()
    assert waited.acknowledged, waited
    assert handed_over < 1.0, f"the waiting turn ran {handed_over:.3f} s after the holder died"
    print(f"the waiting turn finished {handed_over * 1000:.0f} ms after the holder was SIGKILLed")
    started = time.monotonic()
    after = await cluster.turn("crash", "crash:after")  # through the balancer, which may try the dead replica first
    assert after.acknowledged and time.monotonic() - started < 1.0, after
    acknowledged = [f"crash:{i}" for i in range(3)]
    waiter_saw = [text for role, text in _sent(upstream, "crash:waiter") if role == "user"]
    assert waiter_saw == [*acknowledged, "crash:waiter"]  # all acknowledged turns, not the half-done one
    history = _texts(await stored(cluster.balancer, "crash", key=KEY))
    assert [text for role, text in history if role == "user"] == [*acknowledged, "crash:waiter", "crash:after"]
    assert "a reply that never finishes" not in json.dumps(history)


async def test_postgresql_killed_and_restarted_loses_no_acknowledged_turn(
    start_cluster: StartCluster, postgres_server: PostgresServer
) -> None:
    cluster = await start_cluster()
    acknowledged: dict[str, list[str]] = {f"pg{n}": [] for n in range(6)}
    failures: list[tuple[str, int, str | None]] = []
    restarted_at: list[float] = []
    recovered: dict[str, float] = {}
    stop = asyncio.Event()

    async def load(conversation: str) -> None:
        n = 0
        while not stop.is_set():
            text = f"{conversation}:{n}"
            n += 1
            reply = await cluster.turn(conversation, text, stream=n % 2 == 0)
            if reply.acknowledged:
                assert reply.content == f"re:{text}"
                acknowledged[conversation].append(text)
                if restarted_at and conversation not in recovered:
                    recovered[conversation] = time.monotonic() - restarted_at[0]
            else:
                failures.append((text, reply.status, reply.code))
                await asyncio.sleep(0.05)

    loads = [asyncio.create_task(load(conversation)) for conversation in acknowledged]
    try:
        await asyncio.sleep(0.8)
        before = sum(map(len, acknowledged.values()))
        await asyncio.to_thread(postgres_server.kill)
        await asyncio.sleep(0.5)
    finally:
        await asyncio.to_thread(postgres_server.start)  # shared by the whole session: always back up
        restarted_at.append(time.monotonic())
    try:
        deadline = time.monotonic() + 20
        while len(recovered) < len(acknowledged) and time.monotonic() < deadline:
            await asyncio.sleep(0.1)
        await asyncio.sleep(0.5)  # a few more turns on the restarted server
    finally:
        stop.set()
        await asyncio.gather(*loads)
    assert before > 0
    assert sorted(recovered) == sorted(acknowledged), f"not serving again: {failures[-5:]}"
    assert max(recovered.values()) < 5.0, recovered
    print(f"served again {max(recovered.values()):.2f} s after the restart; {len(failures)} refused meanwhile")
    for conversation, texts in acknowledged.items():
        history = _texts(await stored(cluster.balancer, conversation, key=KEY))
        users = [text for role, text in history if role == "user"]
        assert [text for text in users if text in texts] == texts  # every acknowledged turn, in order
        assert [role for role, _ in history] == ["user", "assistant"] * len(users)
        for (_, asked), (_, answered) in zip(history[::2], history[1::2], strict=True):
            assert answered == f"re:{asked}"


# --- limits and keys across replicas -----------------------------------------------------------------------------


async def _tenant_key(cluster_cli: Callable[..., Awaitable[CliResult]], tenant: str) -> tuple[str, str]:
    """A gateway key made with the CLI against the PostgreSQL URL: (secret, key id)."""
    created = await cluster_cli("keys", "create", "--tenant", tenant)
    assert created.status == 0, created.err
    key_id = next(word for word in created.err.split() if word.startswith("key_"))
    return created.out.strip(), key_id


async def _cli_on(tmp_path: Path, db_url: str, *args: str) -> CliResult:
    empty = tmp_path / "cli.toml"
    empty.touch()
    return await run_cli(*args, "--config", str(empty), "--db", with_password(db_url))


async def test_requests_per_minute_hold_exactly_across_replicas(
    start_cluster: StartCluster, upstream: FakeUpstream, tmp_path: Path, postgres_url: str
) -> None:
    secret, _ = await _tenant_key(lambda *a: _cli_on(tmp_path, postgres_url, *a), "metered")
    env = {"DASHSCOPE_API_KEY": UPSTREAM_KEY, "GATEWAY_LIMITS_REQUESTS_PER_MINUTE": "5"}
    cluster = await start_cluster(env=env)
    replies = await asyncio.gather(*(cluster.turn(f"rpm{i}", f"rpm{i}:0", key=secret) for i in range(20)))
    assert sorted(r.status for r in replies) == [200] * 5 + [429] * 15, [(r.status, r.code) for r in replies]
    assert {r.code for r in replies if r.status == 429} == {"rate_limit_exceeded"}
    assert {r.replica for r in replies} == {f"r{n}" for n in range(REPLICAS)}  # every replica decided some
    assert len(upstream.requests) == 5


async def test_concurrency_limit_holds_across_replicas_and_a_dead_replicas_slots_heal(
    start_cluster: StartCluster, upstream: FakeUpstream
) -> None:
    cluster = await start_cluster(env={"GATEWAY_LIMITS_CONCURRENT_REQUESTS": "2"})
    gates = [asyncio.Event() for _ in range(3)]
    headers = {"Authorization": f"Bearer {KEY}"}
    held: list[aiohttp.ClientResponse] = []

    async def hold(n: int) -> str | None:
        """A stream held open, taking a slot; tried again for a moment while refused, as a request that ended just
        before may still count: a replica counts a request out in the background once its response is sent."""
        upstream.script(Script(content=f"held {n}", gate=gates[n]))
        body = chat_body(user(f"held{n}:0"), stream=True)
        deadline = time.monotonic() + 1
        while True:
            resp = await cluster.http.post(
                cluster.url + "/v1/chat/completions", json=body, headers={**headers, "X-Conversation-Id": f"held{n}"}
            )
            if resp.status != 429 or time.monotonic() > deadline:
                break
            resp.release()
            await asyncio.sleep(0.02)
        assert resp.status == 200, await resp.text()
        held.append(resp)
        await resp.content.readline()
        return resp.headers.get("X-Replica")

    try:
        first = await hold(0)
        second = await hold(1)
        assert first != second  # round-robin: the two slots are taken on two replicas
        refused = await asyncio.gather(*(cluster.turn(f"extra{i}", f"extra{i}:0") for i in range(REPLICAS)))
        assert [r.status for r in refused] == [429] * REPLICAS, refused  # on every replica, the third replica too
        victim = cluster.replica(first)
        victim.proc.send_signal(signal.SIGKILL)
        await asyncio.to_thread(victim.proc.wait, 10)
        killed_at = time.monotonic()
        healed = None
        while time.monotonic() - killed_at < 10:
            reply = await cluster.turn("heal", f"heal:{time.monotonic_ns()}")
            if reply.status == 200:
                healed = time.monotonic() - killed_at
                break
            assert reply.status == 429, reply
            await asyncio.sleep(0.05)
        assert healed is not None, "the dead replica's slot still counts after 10 s"
        print(f"the dead replica's slot healed after {healed:.2f} s")
        await hold(2)  # the freed slot: two in flight again (the second and this one) ...
        again = await asyncio.gather(*(cluster.turn(f"more{i}", f"more{i}:0") for i in range(REPLICAS - 1)))
        assert [r.status for r in again] == [429] * (REPLICAS - 1)  # ... and no more than two
    finally:
        for gate in gates:
            gate.set()
        for resp in held:
            try:
                await resp.read()
            except aiohttp.ClientError:
                pass  # the stream of the killed replica
            resp.release()


async def test_a_key_revoked_with_the_cli_is_refused_by_every_replica_within_two_seconds(
    start_cluster: StartCluster, tmp_path: Path, postgres_url: str
) -> None:
    secret, key_id = await _tenant_key(lambda *a: _cli_on(tmp_path, postgres_url, *a), "revoked")
    cluster = await start_cluster(env={"DASHSCOPE_API_KEY": UPSTREAM_KEY})
    for replica in cluster.replicas:
        assert (await cluster.turn("keyed", "keyed:0", key=secret, base=replica.url)).status == 200

    async def until(replica: GatewayProcess, key: str, status: int, since: float) -> float:
        while True:
            reply = await cluster.turn(f"poll{time.monotonic_ns()}", "poll:0", key=key, base=replica.url)
            if reply.status == status:
                return time.monotonic() - since
            await asyncio.sleep(0.05)

    async def everywhere(key: str, status: int, since: float) -> list[float]:
        return await asyncio.wait_for(asyncio.gather(*(until(r, key, status, since) for r in cluster.replicas)), 10)

    # A key created while they run is accepted by every replica just as soon.
    fresh, _ = await _tenant_key(cluster.cli, "fresh")
    accepted = await everywhere(fresh, 200, time.monotonic())
    assert max(accepted) < 2.0, accepted
    revoked = await cluster.cli("keys", "revoke", key_id)
    assert revoked.status == 0 and revoked.out.strip() == f"revoked {key_id}", revoked.err
    refused = await everywhere(secret, 401, time.monotonic())
    assert max(refused) < 2.0, refused
    print(f"revocation seen by every replica after {max(refused) * 1000:.0f} ms")
    reply = await cluster.turn("keyed", "keyed:1", key=secret)
    assert (reply.status, reply.code) == (401, "invalid_api_key")


# --- the operator's CLI ------------------------------------------------------------------------------------------


async def test_cli_lists_shows_and_purges_on_postgresql_while_replicas_serve(
    start_cluster: StartCluster, upstream: FakeUpstream
) -> None:
    cluster = await start_cluster()
    for n in range(REPLICAS):  # every replica serves (and caches) "old" once
        assert (await cluster.turn("old", f"old:{n}")).acknowledged
    assert (await cluster.turn("fresh", "fresh:0", stream=True)).acknowledged
    listed = await cluster.cli("conversations", "list")
    assert listed.status == 0, listed.err
    lines = listed.out.splitlines()
    assert lines[0].split()[:3] == ["OWNER", "ID", "MESSAGES"]
    assert [line.split()[1:3] for line in lines[1:]] == [["fresh", "2"], ["old", str(2 * REPLICAS)]]
    shown = await cluster.cli("conversations", "show", "old")
    assert shown.status == 0, shown.err
    assert "conversation old" in shown.out and "user: old:0" in shown.out and "assistant: re:old:2" in shown.out
    assert PASSWORD not in listed.out + shown.out + listed.err + shown.err
    cluster.sql("UPDATE conversations SET updated_at = updated_at - 30 * 86400 WHERE external_id = 'old'")
    purged = await cluster.cli("purge", "--idle-days", "7")
    assert purged.status == 0 and purged.out.startswith("purged 1 conversation(s)"), (purged.out, purged.err)
    assert [line.split()[1] for line in (await cluster.cli("conversations", "list")).out.splitlines()[1:]] == ["fresh"]
    # No replica serves the purged history from its cache: the next turns on "old" start anew, wherever they run.
    for n in range(REPLICAS):
        assert (await cluster.turn("old", f"old:new{n}")).acknowledged
    assert [text for role, text in _sent(upstream, f"old:new{REPLICAS - 1}") if role == "user"] == [
        f"old:new{n}" for n in range(REPLICAS)
    ]
    assert len(await stored(cluster.balancer, "old", key=KEY)) == 2 * REPLICAS
