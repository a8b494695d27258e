"""Turns on one conversation run one after another; many conversations run at once without lock errors, and
turns that finish together on different conversations share a database commit (group commit)."""

from __future__ import annotations

import asyncio

import aiohttp
from structlog.testing import capture_logs

from tests.conftest import Gateway, chat_body, read_sse, user
from tests.fake_upstream import FakeUpstream, Script
from tests.stored import SDK_KEY, cli_list, message_count, owner_of, stored


async def test_twenty_concurrent_turns_on_one_conversation_alternate_strictly(
    gateway: Gateway, upstream: FakeUpstream
) -> None:
    # Each upstream call takes a while, so unserialized turns would overlap and read stale history.
    upstream.script(*(Script(content=f"answer {i}", delay=0.01) for i in range(20)))
    client = gateway.sdk("busy")
    replies = await asyncio.gather(
        *(client.chat.completions.create(model="qwen-plus", messages=[user(f"question {i}")]) for i in range(20))
    )
    assert sorted(r.choices[0].message.content or "" for r in replies) == sorted(f"answer {i}" for i in range(20))
    recorded = await stored(gateway, "busy")
    assert [m["role"] for m in recorded] == ["user", "assistant"] * 20
    assert sorted(m["content"] for m in recorded[::2]) == sorted(f"question {i}" for i in range(20))
    # Turn n saw all n earlier turns: each upstream request is one exchange longer than the one before.
    assert [len(r.body["messages"]) for r in upstream.requests] == [2 * n + 1 for n in range(20)]
    for request, n in zip(upstream.requests, range(20), strict=True):
        assert request.body["messages"][:-1] == recorded[: 2 * n]


async def test_many_conversations_at_once_none_fail(gateway: Gateway, upstream: FakeUpstream) -> None:
    clients = [gateway.sdk(f"conv-{i}") for i in range(60)]

    async def talk(client_index: int) -> None:
        for turn in range(4):
            await clients[client_index].chat.completions.create(
                model="qwen-plus", messages=[user(f"c{client_index} t{turn}")]
            )

    with capture_logs() as logs:
        await asyncio.gather(*(talk(i) for i in range(60)))
    assert [e for e in logs if e.get("log_level") in ("error", "critical")] == []
    listed = await cli_list(gateway.db_path)  # every owner's: 60 conversations of four turns, all the SDK key's
    assert sorted((c.owner, c.id, c.messages) for c in listed) == sorted(
        (owner_of(SDK_KEY)[:12], f"conv-{i}", 8) for i in range(60)
    )
    assert await message_count(gateway) == 480  # and the messages are there to read
    for i in (0, 31, 59):
        assert [m["content"] for m in await stored(gateway, f"conv-{i}")][::2] == [f"c{i} t{t}" for t in range(4)]


async def test_concurrent_turns_beside_another_process_writing(gateway: Gateway, upstream: FakeUpstream) -> None:
    """Another process (as the CLI will be) writing the same file must not cause 'database is locked'."""
    import sqlite3

    stop = asyncio.Event()

    def other_writer() -> int:
        writes = 0
        with sqlite3.connect(gateway.db_path, timeout=5, isolation_level=None) as db:
            while not stop.is_set():
                db.execute("BEGIN IMMEDIATE")
                db.execute("UPDATE conversations SET model = model")
                db.execute("COMMIT")
                writes += 1
        return writes

    writer = asyncio.create_task(asyncio.to_thread(other_writer))
    clients = [gateway.sdk(f"p-{i}") for i in range(20)]
    try:
        await asyncio.gather(
            *(c.chat.completions.create(model="qwen-plus", messages=[user(f"t{t}")]) for c in clients for t in (0,))
        )
        await asyncio.gather(*(c.chat.completions.create(model="qwen-plus", messages=[user("t1")]) for c in clients))
    finally:
        stop.set()
    assert await writer > 0
    listed = await cli_list(gateway.db_path)  # every owner's
    assert sorted((c.owner, c.id, c.messages) for c in listed) == sorted(
        (owner_of(SDK_KEY)[:12], f"p-{i}", 4) for i in range(20)
    )
    assert await message_count(gateway) == 80


async def _db_commits(http: aiohttp.ClientSession, gateway: Gateway) -> float:
    """How many commits of turns the gateway has made, by its metrics (one observation per commit)."""
    async with http.get(gateway.url + "/metrics") as resp:
        assert resp.status == 200
        text = await resp.text()
    (count,) = (line.split()[-1] for line in text.splitlines() if line.startswith("gateway_db_write_seconds_count "))
    return float(count)


async def test_turns_finishing_together_on_different_conversations_share_commits(
    gateway: Gateway, upstream: FakeUpstream, http: aiohttp.ClientSession
) -> None:
    n = 12  # turns, each on a conversation of its own
    gate = asyncio.Event()  # every reply waits after its first chunk until all n turns are under way
    upstream.script(*(Script(gate=gate) for _ in range(n)))
    under_way: list[int] = []
    everyone = asyncio.Event()

    async def turn(i: int) -> list[str]:
        headers = {"Authorization": f"Bearer {SDK_KEY}", "X-Conversation-Id": f"together-{i}"}
        body = chat_body(user(f"question {i}"), stream=True)
        async with http.post(gateway.url + "/v1/chat/completions", json=body, headers=headers) as resp:
            assert resp.status == 200
            await resp.content.readline()  # the first chunk: this turn holds its conversation
            under_way.append(i)
            if len(under_way) == n:
                everyone.set()
            return await read_sse(resp)

    before = await _db_commits(http, gateway)
    turns = asyncio.gather(*(turn(i) for i in range(n)))
    await asyncio.wait_for(everyone.wait(), 10)
    gate.set()  # all n replies finish at once
    for events in await turns:
        assert events[-1] == "[DONE]"  # each turn was recorded before the client heard it was complete
    commits = await _db_commits(http, gateway) - before
    # Every turn recorded, each on its own conversation (of any owner, nothing else) ...
    listed = await cli_list(gateway.db_path)
    assert sorted((c.owner, c.id, c.messages) for c in listed) == sorted(
        (owner_of(SDK_KEY)[:12], f"together-{i}", 2) for i in range(n)
    )
    recorded = [await stored(gateway, f"together-{i}") for i in range(n)]
    assert [[m["role"] for m in conversation] for conversation in recorded] == [["user", "assistant"]] * n
    assert [conversation[0]["content"] for conversation in recorded] == [f"question {i}" for i in range(n)]
    assert sorted(c[1]["content"] for c in recorded) == sorted(f"reply {i + 1}" for i in range(n))
    # ... in fewer transactions than turns (one commit each would be n): the app counts the turns in flight for
    # the store, which then lets turns that finish together share a commit.
    assert 1 <= commits < n, commits
