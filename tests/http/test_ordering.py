"""Turns on one conversation run one after another; many conversations run at once without lock errors."""

from __future__ import annotations

import asyncio

from structlog.testing import capture_logs

from tests.conftest import Gateway, user
from tests.fake_upstream import FakeUpstream, Script
from tests.stored import conversation_ids, message_count, stored


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
    assert len(await conversation_ids(gateway)) == 60
    assert await message_count(gateway) == 480
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
    assert await message_count(gateway) == 80
