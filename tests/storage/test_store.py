"""Storage: migrations build the schema on a blank file and are recorded; the access paths use indexes so long
histories and many conversations stay fast; WAL and a busy timeout are on."""

from __future__ import annotations

import dataclasses
import sqlite3
from pathlib import Path

from gateway.core.ports import Memory, Turn
from gateway.storage.sqlite.migrations import MIGRATIONS
from gateway.storage.sqlite.store import ConversationStore


def _turn(conversation: str, text: str, owner: str = "o") -> Turn:
    return Turn(
        owner=owner,
        external_id=conversation,
        model="qwen-plus",
        system=None,
        messages=[{"role": "user", "content": text}],
        reply={"role": "assistant", "content": f"re: {text}"},
        interrupted=False,
        usage=None,
    )


async def test_blank_database_is_created_and_migrated(tmp_path: Path) -> None:
    path = tmp_path / "nested" / "dir" / "g.db"
    store = await ConversationStore.open(path)
    await store.close()
    with sqlite3.connect(path) as db:
        tables = {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        indexes = {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type = 'index' AND sql IS NOT NULL")}
        applied = [r[0] for r in db.execute("SELECT name FROM schema_migrations ORDER BY rowid")]
        message_columns = {r[1] for r in db.execute("PRAGMA table_info(messages)")}
        conversation_columns = {r[1] for r in db.execute("PRAGMA table_info(conversations)")}
        assert db.execute("PRAGMA journal_mode").fetchone() == ("wal",)
    assert {"conversations", "messages", "schema_migrations"} <= tables
    assert indexes == set()  # the UNIQUE constraints' automatic indexes serve every access path
    assert applied == [m.__name__ for m in MIGRATIONS]
    assert {"conversation_id", "seq", "role", "body", "created_at", "interrupted", "usage_json"} <= message_columns
    assert {"owner", "external_id", "created_at", "updated_at", "model", "system_json"} <= conversation_columns


async def test_reopening_applies_nothing_twice_and_keeps_data(tmp_path: Path) -> None:
    path = tmp_path / "g.db"
    store = await ConversationStore.open(path)
    await store.append_turn(_turn("c", "hello"))
    await store.close()
    store = await ConversationStore.open(path)
    loaded = await store.load("o", "c")
    await store.close()
    assert [m["content"] for m in loaded.messages] == ["hello", "re: hello"]
    with sqlite3.connect(path) as db:
        assert db.execute("SELECT count(*) FROM schema_migrations").fetchone() == (len(MIGRATIONS),)


async def test_history_load_uses_indexes_not_scans(tmp_path: Path) -> None:
    from gateway.storage.sqlite.turns import LOAD

    store = await ConversationStore.open(tmp_path / "g.db")
    await store.close()
    with sqlite3.connect(tmp_path / "g.db") as db:
        plan = " | ".join(r[3] for r in db.execute("EXPLAIN QUERY PLAN " + LOAD, ("o", "c", "o", "c")))
    assert "SCAN m" not in plan and "SCAN messages" not in plan
    assert "SCAN conversations" not in plan and "SCAN c " not in plan
    assert "USING INDEX" in plan or "USING COVERING INDEX" in plan


async def test_long_history_and_many_conversations(tmp_path: Path) -> None:
    path = tmp_path / "g.db"
    store = await ConversationStore.open(path)
    for i in range(1000):
        await store.append_turn(_turn("long", f"turn {i}"))
    await store.close()
    with sqlite3.connect(path) as db:  # 100k other conversations, written in bulk
        db.executemany(
            "INSERT INTO conversations (owner, external_id, created_at, updated_at) VALUES ('o', ?, 0, 0)",
            ((f"other-{i}",) for i in range(100_000)),
        )
    store = await ConversationStore.open(path)
    loaded = await store.load("o", "long")
    missing = await store.load("o", "nope")
    await store.close()
    assert len(loaded.messages) == 2000
    assert loaded.messages[-1] == {"role": "assistant", "content": "re: turn 999"}
    assert not missing.exists
    assert missing.messages == ()


async def test_busy_timeout_and_synchronous_are_applied(tmp_path: Path) -> None:
    store = await ConversationStore.open(tmp_path / "g.db", synchronous="full", busy_timeout_ms=1234)
    try:
        rows = await store._waiting.execute_fetchall("PRAGMA busy_timeout")
        sync = await store._waiting.execute_fetchall("PRAGMA synchronous")
    finally:
        await store.close()
    assert list(rows) == [(1234,)]
    assert list(sync) == [(2,)]  # FULL


async def test_a_replacing_turn_cuts_recounts_and_resets_a_window_past_the_cut(tmp_path: Path) -> None:
    """Both write paths (inline, and the waiting connection used with synchronous = full) do the same."""
    for synchronous in ("normal", "full"):
        path = tmp_path / f"{synchronous}.db"
        store = await ConversationStore.open(path, synchronous=synchronous, cache_messages=1000)
        for text in ("q1", "q2", "q3"):
            await store.append_turn(_turn("c", text))
        with sqlite3.connect(path) as db:
            db.execute("UPDATE conversations SET window_start = 4, summary_json = '{}'")
        await store.load("o", "c")  # cached, then replaced below: the cache must not keep the old tail
        retry = dataclasses.replace(_turn("c", "q2"), messages=[], replace_from=3)
        await store.append_turn(retry)
        memory = await store.load("o", "c")
        assert [m["content"] for m in memory.messages] == ["q1", "re: q1", "q2", "re: q2"]
        assert (memory.window_start, memory.summary) == (0, None)
        await store.close()
        with sqlite3.connect(path) as db:
            assert db.execute("SELECT message_count FROM conversations").fetchall() == [(4,)]
            assert db.execute("SELECT seq FROM messages ORDER BY seq").fetchall() == [(0,), (1,), (2,), (3,)]


def test_a_truncated_memory_keeps_a_window_only_when_it_began_before_the_cut() -> None:
    messages = tuple({"role": "user", "content": str(n)} for n in range(4))
    memory = Memory(True, None, messages, messages, window_start=2, summary={"role": "system"}, last_usage={})
    assert memory.truncated(3).window_start == 2 and memory.truncated(3).summary is not None
    cut = memory.truncated(1)
    assert (cut.messages, cut.window_start, cut.summary, cut.last_usage) == (messages[:1], 0, None, None)
    assert memory.truncated(4) is memory
