"""SQLite: the responses table (migration m008) on a database that already holds conversations, the response row
written with its turn on every write path (inline, a group commit, the waiting connection), and its access paths.
What the ports promise about responses is in test_contract_responses.py."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import sqlite3
from collections.abc import Callable
from pathlib import Path

import aiosqlite
import pytest

from gateway.core.ports import ConversationDeleted, ResponseRecord, Turn
from gateway.storage.sqlite import responses, turns
from gateway.storage.sqlite.catalog import SqliteCatalog
from gateway.storage.sqlite.migrations import MIGRATIONS, migrate
from gateway.storage.sqlite.store import ConversationStore
from tests.storage.conftest import info


def _turn(text: str, response_id: str | None, *, existed: bool = True, replace_from: int | None = None) -> Turn:
    return Turn(
        owner="o",
        external_id="c",
        model="qwen-plus",
        system=None,
        messages=[{"role": "user", "content": text}],
        reply={"role": "assistant", "content": f"re: {text}"},
        interrupted=False,
        usage=None,
        existed=existed,
        replace_from=replace_from,
        response=ResponseRecord(response_id, 1.5, {"model": "qwen-plus"}) if response_id else None,
    )


def _rows(path: Path) -> list[tuple[str, int, int]]:
    with sqlite3.connect(path) as db:
        return db.execute("SELECT id, first_seq, reply_seq FROM responses ORDER BY reply_seq").fetchall()


async def test_m008_adds_responses_to_a_database_with_conversations(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    async with aiosqlite.connect(path) as db:
        await db.execute("CREATE TABLE schema_migrations (name TEXT PRIMARY KEY, applied_at REAL NOT NULL)")
        for step in MIGRATIONS[:7]:  # a database as m007 left it
            await step(db)
            await db.execute("INSERT INTO schema_migrations VALUES (?, 0)", (step.__name__,))
        await db.execute(
            "INSERT INTO turn_writes VALUES ('o', 'c', 0, NULL, NULL, ?, 0, NULL, 0, 0, 0, 0)",
            (json.dumps(['{"role":"user","content":"hi"}', '{"role":"assistant","content":"hello"}']),),
        )
        await db.commit()
        assert await migrate(db) == [m.__name__ for m in MIGRATIONS[7:]]
        await db.commit()
    store = await ConversationStore.open(path)
    try:
        assert await store.find_response("o", "resp_1") is None
        await store.append_turn(_turn("more", "resp_1"))
        found = await store.find_response("o", "resp_1")
        assert found is not None and found.latest
        assert ([m.body["content"] for m in found.inputs], found.reply.seq) == (["more"], 3)
        assert list(await store._waiting.execute_fetchall("PRAGMA foreign_keys")) == [(1,)]  # for the cascade
        assert await SqliteCatalog(store).delete_conversation("o", "c")
    finally:
        await store.close()
    assert _rows(path) == []


@pytest.mark.parametrize(
    ("synchronous", "in_flight"),
    [("normal", lambda: 1), ("normal", lambda: 2), ("full", lambda: 1)],
    ids=["inline", "group-commit", "waiting"],
)
async def test_every_write_path_records_and_cuts_responses_with_their_turns(
    tmp_path: Path, synchronous: str, in_flight: Callable[[], int]
) -> None:
    path = tmp_path / "g.db"
    store = await ConversationStore.open(path, synchronous=synchronous, cache_messages=100, turns_in_flight=in_flight)
    try:
        await store.append_turn(_turn("q1", "resp_1", existed=False))
        await store.append_turn(_turn("q2", None))
        await store.append_turn(_turn("q3", "resp_3"))
        assert _rows(path) == [("resp_1", 0, 1), ("resp_3", 4, 5)]
        await store.append_turn(_turn("q2 again", "resp_2b", replace_from=2))  # cuts resp_3 with its reply
        assert _rows(path) == [("resp_1", 0, 1), ("resp_2b", 2, 3)]

        catalog = SqliteCatalog(store)
        assert await catalog.create_conversation(info("o", "other"), [])
        assert await catalog.delete_conversation("o", "c")
        late = asyncio.gather(  # in one group commit on that path: the failing turn must not take the other
            store.append_turn(_turn("late", "resp_late")),
            store.append_turn(dataclasses.replace(_turn("q", "resp_other"), external_id="other")),
            return_exceptions=True,
        )
        outcomes = await late
        assert isinstance(outcomes[0], ConversationDeleted) and outcomes[1] is None
    finally:
        await store.close()
    assert _rows(path) == [("resp_other", 0, 1)]


async def test_finding_and_cutting_responses_use_indexes(tmp_path: Path) -> None:
    await (await ConversationStore.open(tmp_path / "g.db")).close()
    cut_sql, cut_params = turns.cut_statements("o", "c", 2, None)[-1]
    with sqlite3.connect(tmp_path / "g.db") as db:
        plans = [
            " | ".join(r[3] for r in db.execute("EXPLAIN QUERY PLAN " + sql, params))
            for sql, params in (
                (responses._FIND_RESPONSE, ("resp_1", "o")),
                (responses._RESPONSE_MESSAGES, (1, 0, 3)),
                (cut_sql, cut_params),
            )
        ]
    for plan in plans:
        assert "SCAN" not in plan, plan
