"""Storage contract, the ledger of a turn (``Turn.ledger``): what the gateway alone knows of a turn's request, kept
on its reply beside the upstream's usage and given back wherever a stored message is read (the catalog's pages and
export, the items API, a response's reply), copied by a fork, kept by a create or an import, and absent (None) on
every other message and on the replies of a database written before there were ledgers.  Run against every backend
(``backend=...``, tests/storage/conftest.py) through the ports, except where a test builds the old database.

A new backend needs a builder of its pre-ledger database in ``_BEFORE_LEDGERS``; nothing else here.
"""

from __future__ import annotations

import json
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import aiosqlite
import asyncpg
import pytest

from gateway.core.ports import ConversationInfo, NewMessage, ResponseRecord, Storage, StoredMessage
from gateway.core.transfer import TransferError, export_lines, parse_import
from gateway.settings.config import Config
from gateway.storage.postgres import migrations as postgres_migrations
from gateway.storage.sqlite import migrations as sqlite_migrations
from tests.storage.conftest import (
    CREATED,
    Backend,
    existing,
    info,
    postgres_migrated_until,
    sqlite_migrated_until,
    turn,
    user,
)

LEDGER = {"model": "qwen-plus", "cache": "explicit", "unsent_tokens": 0}
USAGE = {"prompt_tokens": 3019, "completion_tokens": 104, "prompt_tokens_details": {"cached_tokens": 2048}}
# Owners an import accepts (a credential's SHA-256 in hex).
OWNER, IMPORTER = "a" * 64, "b" * 64


async def messages_of(storage: Storage, conversation: ConversationInfo) -> list[StoredMessage]:
    return await storage.catalog.list_messages(conversation, limit=-1, order="asc", cursor_seq=None)


def ledgers(messages: Sequence[StoredMessage | NewMessage]) -> list[dict[str, Any] | None]:
    return [m.ledger for m in messages]


async def test_a_turns_ledger_reads_back_on_its_reply_only(storage: Storage, second: Storage) -> None:
    await storage.turns.append_turn(turn("q1", messages=[user("a"), user("q1")], usage=USAGE, ledger=LEDGER))
    conversation = await existing(storage, "owner-a", "c")
    for reader in (storage, second):
        listed = await messages_of(reader, conversation)
        assert ledgers(listed) == [None, None, LEDGER]
        assert [m.usage for m in listed] == [None, None, USAGE]
        assert ledgers(await reader.catalog.export_messages(conversation)) == [None, None, LEDGER]
    newest = await storage.catalog.list_messages(conversation, limit=1, order="desc", cursor_seq=None)
    assert ledgers(newest) == [LEDGER]


async def test_a_turn_without_a_ledger_reads_back_none(storage: Storage) -> None:
    await storage.turns.append_turn(turn("q1", usage=USAGE, ledger=LEDGER))
    await storage.turns.append_turn(turn("q2", usage=USAGE, existed=True))
    assert ledgers(await messages_of(storage, await existing(storage, "owner-a", "c"))) == [None, LEDGER, None, None]


async def test_a_fork_copies_the_ledgers_it_keeps(storage: Storage) -> None:
    other = {**LEDGER, "cache": "implicit", "unsent_tokens": 512}
    await storage.turns.append_turn(turn("q1", ledger=LEDGER))
    await storage.turns.append_turn(turn("q2", ledger=other, existed=True))
    source = await existing(storage, "owner-a", "c")
    assert await storage.catalog.fork(source, "whole", last_seq=3, metadata={}, at=time.time())
    assert await storage.catalog.fork(source, "half", last_seq=1, metadata={}, at=time.time())
    assert ledgers(await messages_of(storage, await existing(storage, "owner-a", "whole"))) == [
        None,
        LEDGER,
        None,
        other,
    ]
    assert ledgers(await messages_of(storage, await existing(storage, "owner-a", "half"))) == [None, LEDGER]


async def test_create_conversation_keeps_each_messages_ledger(storage: Storage, second: Storage) -> None:
    messages = [
        NewMessage(user("hello"), CREATED + 1.0),
        NewMessage({"role": "assistant", "content": "hi"}, CREATED + 2.0, usage=USAGE, ledger=LEDGER),
        NewMessage(user("and?"), CREATED + 3.0),
        NewMessage({"role": "assistant", "content": "so"}, CREATED + 4.0, usage=USAGE),
    ]
    assert await storage.catalog.create_conversation(info("owner-a", "created"), messages)
    conversation = await existing(second, "owner-a", "created")
    assert ledgers(await messages_of(second, conversation)) == [None, LEDGER, None, None]


async def test_appended_items_keep_their_ledger(storage: Storage) -> None:
    await storage.turns.append_turn(turn("q1"))
    conversation = await existing(storage, "owner-a", "c")
    added = [NewMessage(user("q2"), 2e9), NewMessage({"role": "assistant", "content": "a2"}, 2e9, ledger=LEDGER)]
    appended = await storage.catalog.append_messages(conversation, added, 2e9, max_bytes=None)
    assert appended is not None
    assert ledgers(appended) == [None, LEDGER]
    assert ledgers(await messages_of(storage, conversation)) == [None, None, None, LEDGER]


async def test_a_responses_reply_carries_its_turns_ledger(storage: Storage) -> None:
    response = ResponseRecord("resp_1", CREATED, {"model": "qwen-plus"})
    await storage.turns.append_turn(turn("q1", usage=USAGE, ledger=LEDGER, response=response))
    stored = await storage.turns.find_response("owner-a", "resp_1")
    assert stored is not None
    assert (stored.reply.ledger, ledgers(stored.inputs)) == (LEDGER, [None])


async def test_an_export_imported_again_keeps_the_ledger_byte_for_byte(storage: Storage) -> None:
    await storage.turns.append_turn(turn("q1", owner=OWNER, usage=USAGE, ledger=LEDGER))
    await storage.turns.append_turn(turn("q2", owner=OWNER, usage=USAGE, existed=True))
    source = await existing(storage, OWNER, "c")
    lines = export_lines(source, await storage.catalog.export_messages(source), "jsonl")
    assert [json.loads(line).get("ledger") for line in lines[1:]] == [None, LEDGER, None, None]
    assert ["ledger" in json.loads(line) for line in lines[1:]] == [False, True, False, False]  # only when present
    [imported] = parse_import(lines, owner=IMPORTER, now=time.time(), new_id=lambda: "unused")
    assert ledgers(imported.messages) == [None, LEDGER, None, None]
    assert await storage.catalog.create_conversation(imported.info, imported.messages)
    copy = await existing(storage, IMPORTER, "c")
    again = export_lines(copy, await storage.catalog.export_messages(copy), "jsonl")
    assert again[1:] == lines[1:]


def test_an_import_refuses_a_ledger_that_is_not_an_object() -> None:
    header = {
        "object": "conversation",
        "id": "c",
        "owner": OWNER,
        "created_at": CREATED,
        "updated_at": CREATED,
        "model": None,
        "metadata": {},
        "system": None,
        "usage": {"prompt_tokens": 0, "completion_tokens": 0, "cached_tokens": 0},
    }
    reply = {"role": "assistant", "content": "hi"}
    line = {"object": "conversation.message", "created_at": CREATED, "interrupted": False, "usage": None}
    lines = [json.dumps(header), json.dumps({**line, "ledger": ["explicit"], "message": reply})]
    with pytest.raises(TransferError, match="line 2: expected dict"):
        list(parse_import(lines, owner=None, now=time.time(), new_id=lambda: "unused"))
    # A line from before there were ledgers (no key at all) and a null one both import as none.
    for message in ({**line, "message": reply}, {**line, "ledger": None, "message": reply}):
        [imported] = parse_import([json.dumps(header), json.dumps(message)], owner=None, now=0.0, new_id=str)
        assert imported.messages[0].ledger is None


# --- a database written before there were ledgers ---------------------------------------------------------------

_BODIES = [json.dumps(user("old")), json.dumps({"role": "assistant", "content": "from before"})]


async def _sqlite_before_ledgers(config: Config) -> None:
    """A SQLite file as m010 left it, holding one turn with usage."""
    async with aiosqlite.connect(config.db_path) as db:
        await sqlite_migrated_until(db, sqlite_migrations.m010_shared_limits)
        await db.execute(
            """
            INSERT INTO turn_writes (owner, external_id, at, model, system_json, bodies_json, interrupted, usage_json,
                                     prompt_tokens, completion_tokens, cached_tokens, existed, expected_version)
            VALUES ('owner-a', 'old', 1.0, 'qwen-plus', NULL, ?, 0, ?, 3019, 104, 2048, 0, NULL)
            """,
            (json.dumps(_BODIES), json.dumps(USAGE)),
        )
        await db.commit()


async def _postgres_before_ledgers(config: Config) -> None:
    """A PostgreSQL database as p001 and the coordination tables left it, holding one turn with usage recorded by
    p001's ``gateway_record_turn``."""
    assert config.db_url is not None
    conn = await asyncpg.connect(config.db_url)
    try:
        await postgres_migrated_until(conn, postgres_migrations.p001_schema)
        await _record_as_p001(conn, "old")
    finally:
        await conn.close()


async def _record_as_p001(conn: asyncpg.Connection, conversation: str) -> None:
    """A turn recorded as the release before ledgers did: p001's ``gateway_record_turn``, 26 arguments."""
    placeholders = ", ".join(f"${n}" for n in range(1, 27))
    await conn.execute(
        f"SELECT gateway_record_turn({placeholders})",
        *("owner-a", conversation, 1.0, "qwen-plus", None, ["user", "assistant"], _BODIES),
        *(sum(len(b.encode()) for b in _BODIES), False, json.dumps(USAGE), 3019, 104, 2048),
        *(False, None, None, False, 0, None, None, None, None, None, None, None, None),
    )


_BEFORE_LEDGERS: dict[str, Callable[[Config], Awaitable[None]]] = {
    "sqlite": _sqlite_before_ledgers,
    "postgres": _postgres_before_ledgers,
}


async def test_a_database_from_before_ledgers_migrates_and_its_replies_read_none(backend: Backend) -> None:
    await _BEFORE_LEDGERS[backend.name](backend.config)
    storage = await backend.open()
    old = await existing(storage, "owner-a", "old")
    listed = await messages_of(storage, old)
    assert [(m.body["content"], m.usage, m.ledger) for m in listed] == [
        ("old", None, None),
        ("from before", USAGE, None),
    ]
    memory = await storage.turns.load("owner-a", "old")
    await storage.turns.append_turn(
        turn("new", conversation="old", ledger=LEDGER, existed=True, expected_version=memory.version)
    )
    assert ledgers(await messages_of(storage, old)) == [None, None, None, LEDGER]
    if backend.name == "postgres":  # a process of the previous release (rolling upgrade) still records its turns
        conn = await asyncpg.connect(backend.config.db_url)
        try:
            await _record_as_p001(conn, "still-old")
        finally:
            await conn.close()
        assert ledgers(await messages_of(storage, await existing(storage, "owner-a", "still-old"))) == [None, None]
