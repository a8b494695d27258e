"""SQLite's versions (migration m009): a database that holds conversations already gets versions and distinct
incarnations and goes on recording turns, a replacing turn moves its conversation's version on once (its cut does
not count twice), the history cache checks a doubted entry with one indexed read, and a turn that takes its
conversation's lock loads what another process committed before releasing it, even within one event-loop
iteration."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import sqlite3
from collections.abc import Awaitable
from pathlib import Path

import aiosqlite

from gateway.core.ordering import KeyedLocks
from gateway.storage.sqlite.backend import SqliteStorage
from gateway.storage.sqlite.freshness import KEYS_VERSION
from gateway.storage.sqlite.migrations import MIGRATIONS, migrate
from gateway.storage.sqlite.store import ConversationStore
from gateway.storage.sqlite.turns import STAMP
from tests.storage.conftest import turn


async def test_m009_gives_existing_conversations_versions_and_incarnations(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    async with aiosqlite.connect(path) as db:
        await db.execute("CREATE TABLE schema_migrations (name TEXT PRIMARY KEY, applied_at REAL NOT NULL)")
        for step in MIGRATIONS[:8]:  # a database as m008 left it
            await step(db)
            await db.execute("INSERT INTO schema_migrations VALUES (?, 0)", (step.__name__,))
        for conversation in ("a", "b"):
            await db.execute(
                "INSERT INTO turn_writes VALUES ('o', ?, 0, NULL, NULL, ?, 0, NULL, 0, 0, 0, 0)",
                (conversation, json.dumps(['{"role":"user","content":"hi"}', '{"role":"assistant","content":"yo"}'])),
            )
        await db.commit()
        assert await migrate(db) == [m.__name__ for m in MIGRATIONS[8:]]
        await db.commit()
    with sqlite3.connect(path) as db:
        rows = db.execute("SELECT version, incarnation FROM conversations ORDER BY external_id").fetchall()
        assert [version for version, _ in rows] == [1, 1]
        assert rows[0][1] != rows[1][1]
        assert db.execute(KEYS_VERSION).fetchone() == (0,)
    store = await ConversationStore.open(path, cache_messages=100)
    try:
        memory = await store.load("o", "a")
        assert memory.version == 1 and len(memory.messages) == 2
        await store.append_turn(turn("more", owner="o", conversation="a", existed=True, expected_version=1))
        assert (await store.load("o", "a")).version == 2
    finally:
        await store.close()


async def test_a_replacing_turn_moves_the_version_on_once(tmp_path: Path) -> None:
    store = await ConversationStore.open(tmp_path / "g.db", cache_messages=100)
    try:
        await store.append_turn(turn("q1"))
        await store.append_turn(turn("q2", existed=True, expected_version=1))
        again = turn("q2 again", existed=True, expected_version=2, replace_from=2)
        await store.append_turn(again)
        memory = await store.load("owner-a", "c")
        assert memory.version == 3
        assert [m["content"] for m in memory.messages] == ["q1", "re: q1", "q2 again", "re: q2 again"]
        # Fenced on the version it made, the next turn is recorded.
        await store.append_turn(dataclasses.replace(turn("q3", existed=True), expected_version=memory.version))
    finally:
        await store.close()


async def test_checking_a_cached_entry_reads_one_row_through_the_index(tmp_path: Path) -> None:
    await (await ConversationStore.open(tmp_path / "g.db")).close()
    with sqlite3.connect(tmp_path / "g.db") as db:
        plan = " | ".join(r[3] for r in db.execute("EXPLAIN QUERY PLAN " + STAMP, ("o", "c")))
    assert "SCAN" not in plan and "INDEX" in plan, plan


async def test_a_turn_that_takes_the_lock_loads_what_another_process_committed_just_before(tmp_path: Path) -> None:
    # Two storages of one file, each with its own connections and lock file description, as two processes have.
    # Everything from A's first look to A's load runs in ONE event-loop iteration (nothing below yields: an
    # uncontended lock is taken without waiting, small reads and commits are inline), as happens when B's turn
    # commits and releases the lock just before A's turn takes it.
    def open_storage() -> Awaitable[SqliteStorage]:
        return SqliteStorage.open(tmp_path / "g.db", synchronous="normal", busy_timeout_ms=1000, cache_messages=100)

    a, b = await open_storage(), await open_storage()
    try:
        await a.turns.append_turn(turn("q1"))
        assert (await a.turns.load("owner-a", "c")).version == 1  # cached by A
        await asyncio.sleep(0)
        yielded: list[bool] = []
        asyncio.get_running_loop().call_soon(yielded.append, True)  # runs only if something below yields
        await a.turns.load("owner-a", "other")  # A has looked at the file in this iteration
        async with KeyedLocks(b.locks).hold(("owner-a", "c")):
            await b.turns.append_turn(turn("q2", existed=True, expected_version=1))
        async with KeyedLocks(a.locks).hold(("owner-a", "c")):
            memory = await a.turns.load("owner-a", "c")
        assert not yielded, "the sequence must stay within one event-loop iteration"
        assert memory.version == 2
        assert [m["content"] for m in memory.messages] == ["q1", "re: q1", "q2", "re: q2"]
    finally:
        await a.close()
        await b.close()
