"""Storage contract, search (``Catalog.search_conversations``): a conversation is found when every term occurs,
case-insensitively, as a substring of the searchable text of one of its messages (its text content, its tool
calls' names and arguments; not its reasoning, not the system prompt), whatever path wrote the messages (turns,
imports, forks, appended items) and never after they are gone (deleted, rewound, replaced, the conversation
deleted); results are the owner's only, paged as ``list_conversations`` pages, each with up to 3 of its matching
messages in order.  Run against every backend (``backend=...``, tests/storage/conftest.py) through the ports,
except where a test builds a database from before the search index.  SQLite answers a query in one of two shapes,
chosen by how common its terms are (``storage.sqlite.search``): every test runs on it in both (``sqlite_shape``).

A new backend needs a builder of its pre-index database in ``_BEFORE_SEARCH``; nothing else here.
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
import time
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any

import aiosqlite
import asyncpg
import pytest

from gateway.core.ports import ConversationInfo, NewMessage, SearchHit, Storage, StoredMessage
from gateway.protocols.openai_chat import Message
from gateway.settings.config import Config
from gateway.storage.open import open_storage
from gateway.storage.postgres import migrations as postgres_migrations
from gateway.storage.postgres.database import Database
from gateway.storage.sqlite import migrations as sqlite_migrations
from gateway.storage.sqlite import search as sqlite_search
from tests.storage.conftest import (
    CREATED,
    Backend,
    existing,
    info,
    postgres_migrated_until,
    sqlite_database,
    sqlite_migrated_until,
    turn,
    user,
)

PHONE = "我想要6.7英寸的"  # "I want a 6.7-inch one": no spaces, as Chinese is written
RESOLUTION = "2K or 4K?"
TOOL_CALL: Message = {
    "role": "assistant",
    "content": None,
    "reasoning_content": "the user wants weather, think zebra",
    "tool_calls": [
        {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city":"Paris"}'}}
    ],
}


@pytest.fixture(autouse=True, params=["probed", "walked"], ids=lambda shape: f"sqlite={shape}")
def sqlite_shape(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """SQLite's shapes: "probed" as it runs (a test's few messages make every term rare: the index first),
    "walked" as if every term were common (the owner's conversations walked, the text compared).  The second is
    SQLite's only."""
    if request.param == "walked":
        if getattr(request.node, "callspec", None) is None or request.node.callspec.params.get("backend") != "sqlite":
            pytest.skip("the walked shape is SQLite's")
        monkeypatch.setattr(sqlite_search, "PROBE_CAP", 0)
    return str(request.param)


async def search(
    storage: Storage,
    *terms: str,
    owner: str | None = "owner-a",
    limit: int = 20,
    order: str = "desc",
    cursor: ConversationInfo | None = None,
    owner_prefix: str | None = "",
) -> list[SearchHit]:
    return await storage.catalog.search_conversations(
        owner, terms, limit=limit, order=order, cursor=cursor, owner_prefix=owner_prefix
    )


async def found(storage: Storage, *terms: str, **options: Any) -> list[str]:
    """The ids of the conversations found, in the order given."""
    return [hit.conversation.external_id for hit in await search(storage, *terms, **options)]


async def messages_of(storage: Storage, conversation: ConversationInfo) -> list[StoredMessage]:
    return await storage.catalog.list_messages(conversation, limit=-1, order="asc", cursor_seq=None)


async def test_a_term_is_found_as_a_substring_in_any_case(storage: Storage) -> None:
    await storage.turns.append_turn(turn("The Phone STORE sells cases", conversation="shop"))
    await storage.turns.append_turn(turn("nothing here", conversation="other"))
    for term in ("store", "STORE", "Store", "ore", "phone", "sells", "cas", "E PHONE"[2:]):
        assert await found(storage, term) == ["shop"], term
    assert await found(storage, "stores") == []
    assert await found(storage, "phonestore") == []


async def test_chinese_and_short_terms_are_found_by_any_run_of_characters(storage: Storage) -> None:
    await storage.turns.append_turn(turn(PHONE, conversation="zh"))
    await storage.turns.append_turn(turn(RESOLUTION, conversation="en"))
    for term in ("英寸", "想要", "6.7英寸", "我想要6.7英寸的", "寸"):
        assert await found(storage, term) == ["zh"], term
    for term in ("4K", "4k", "2K", "?", "K?"):
        assert await found(storage, term) == ["en"], term
    assert await found(storage, "2k", "4K") == ["en"]
    assert await found(storage, "5K") == []
    assert await found(storage, "英尺") == []
    assert await found(storage, "英寸", "4K") == []  # each in another conversation


async def test_every_term_must_occur_in_some_message_in_any_order(storage: Storage) -> None:
    await storage.turns.append_turn(turn("a red apple", conversation="fruit"))
    await storage.turns.append_turn(turn("then a green pear", conversation="fruit", existed=True))
    await storage.turns.append_turn(turn("only an apple", conversation="apple"))
    assert await found(storage, "pear", "apple") == ["fruit"]  # in different messages
    assert await found(storage, "apple", "pear") == ["fruit"]
    assert await found(storage, "PEAR", "re", "ap") == ["fruit"]  # indexed and short terms together
    assert sorted(await found(storage, "apple")) == ["apple", "fruit"]
    assert await found(storage, "apple", "banana") == []
    assert await found(storage, "pear", "banana", "apple") == []


async def test_tool_calls_names_and_arguments_are_searched_but_not_reasoning(storage: Storage) -> None:
    await storage.turns.append_turn(turn("weather?", conversation="tools", reply=TOOL_CALL))
    assert await found(storage, "paris") == ["tools"]
    assert await found(storage, "get_weather") == ["tools"]
    assert await found(storage, '"city"') == ["tools"]  # arguments as sent, quotes and all
    assert await found(storage, "zebra") == []
    [hit] = await search(storage, "Paris")
    [(_, seq, role, text)] = hit.messages
    assert (seq, role, text) == (1, "assistant", 'get_weather {"city":"Paris"}')


async def test_text_parts_are_searched_joined_by_a_space_and_the_system_prompt_is_not(storage: Storage) -> None:
    parts: Message = {
        "role": "user",
        "content": [
            {"type": "text", "text": "first part"},
            {"type": "image_url", "image_url": {"url": "https://example.com/kangaroo.png"}},
            {"type": "text", "text": "second part"},
        ],
    }
    system = [{"role": "system", "content": "You are a wombat."}]
    await storage.turns.append_turn(turn("x", conversation="parts", messages=[parts], system=system))
    [hit] = await search(storage, "second")
    assert [(seq, text) for _, seq, _, text in hit.messages] == [(0, "first part second part")]
    assert await found(storage, "part", "first") == ["parts"]
    assert await found(storage, "kangaroo") == []
    assert await found(storage, "wombat") == []


async def test_like_wildcards_and_quotes_in_a_term_are_plain_characters(storage: Storage) -> None:
    await storage.turns.append_turn(turn("100% sure", conversation="percent"))
    await storage.turns.append_turn(turn("snake_case name", conversation="underscore"))
    await storage.turns.append_turn(turn('she said "hello" twice', conversation="quotes"))
    await storage.turns.append_turn(turn(r"a C:\path here", conversation="backslash"))
    assert await found(storage, "%") == ["percent"]
    assert await found(storage, "0%") == ["percent"]
    assert await found(storage, "_") == ["underscore"]
    assert await found(storage, "e_c") == ["underscore"]
    assert await found(storage, '"hello"') == ["quotes"]
    assert await found(storage, '"') == ["quotes"]
    assert await found(storage, "hello OR sure") == []  # a term is text, never FTS syntax
    assert await found(storage, "\\") == ["backslash"]
    assert await found(storage, ":\\p") == ["backslash"]


async def test_a_term_no_stored_text_can_hold_finds_nothing(storage: Storage) -> None:
    await storage.turns.append_turn(turn("nul\x00byte and more", conversation="nul"))
    assert await found(storage, "more") == ["nul"]
    assert await found(storage, "\x00") == []
    assert await found(storage, "nul\x00byte") == []
    assert await found(storage, "\udcff", "more") == []  # a lone surrogate: undecodable bytes of a command line
    await storage.turns.append_turn(turn("C:\\u0000\x00 as text", conversation="escaped"))  # JSON "C:\\u0000\u0000"
    [hit] = await search(storage, "\\u0000", "text")
    assert hit.conversation.external_id == "escaped"
    assert hit.messages[0][3] == "C:\\u0000 as text"


async def test_a_hit_holds_up_to_3_matching_messages_in_order(storage: Storage) -> None:
    await storage.turns.append_turn(turn("a needle", conversation="hay"))  # seq 0, 1 ("re: a needle")
    await storage.turns.append_turn(turn("just hay", conversation="hay", existed=True))  # seq 2, 3
    await storage.turns.append_turn(turn("the NEEDLE again", conversation="hay", existed=True))  # seq 4, 5
    conversation = await existing(storage, "owner-a", "hay")
    stored = await messages_of(storage, conversation)
    [hit] = await search(storage, "needle")
    assert hit.conversation == conversation
    assert hit.messages == [
        (m.row_id, m.seq, m.body["role"], m.body["content"]) for m in (stored[i] for i in (0, 1, 4))
    ]
    [hit] = await search(storage, "hay")
    assert [seq for _, seq, _, _ in hit.messages] == [2, 3]
    [hit] = await search(storage, "again", "just")  # a message holding either term
    assert [seq for _, seq, _, _ in hit.messages] == [2, 3, 4]


async def test_another_owners_conversations_never_appear(storage: Storage) -> None:
    await storage.turns.append_turn(turn("shared secret", owner="owner-a", conversation="a"))
    await storage.turns.append_turn(turn("shared secret", owner="owner-b", conversation="b"))
    await storage.turns.append_turn(turn("shared secret", owner="", conversation="anonymous"))
    assert await found(storage, "secret", owner="owner-a") == ["a"]
    assert await found(storage, "secret", "4K", owner="owner-a") == []
    assert await found(storage, "ed", owner="owner-b") == ["b"]
    assert await found(storage, "secret", owner="owner-c") == []
    # The operator's view (the CLI): every owner whose name starts with the prefix; None is the owner ''.
    assert sorted(await found(storage, "secret", owner=None, owner_prefix="")) == ["a", "anonymous", "b"]
    assert await found(storage, "secret", owner=None, owner_prefix="owner-b") == ["b"]
    assert await found(storage, "se", owner=None, owner_prefix=None) == ["anonymous"]


async def test_results_are_paged_by_activity_like_the_list(storage: Storage) -> None:
    for n in range(7):
        text = f"order number {n}" if n != 3 else "something else"
        await storage.turns.append_turn(turn(text, conversation=f"c{n}"))
        await asyncio.sleep(0.002)  # distinct activity times
    await storage.turns.append_turn(turn("order 1 again", conversation="c1", existed=True))  # c1 now the newest
    newest_first = ["c1", "c6", "c5", "c4", "c2", "c0"]
    assert await found(storage, "order", limit=-1) == newest_first
    listed = await storage.catalog.list_conversations("owner-a", limit=-1, order="desc", cursor=None)
    assert [c.external_id for c in listed if c.external_id != "c3"] == newest_first
    pages, cursor = [], None
    while True:
        page = await search(storage, "order", limit=4, cursor=cursor)
        pages.append([hit.conversation.external_id for hit in page])
        if len(page) < 4:
            break
        cursor = page[-1].conversation
    assert pages == [newest_first[:4], newest_first[4:]]
    assert await found(storage, "order", order="asc", limit=-1) == newest_first[::-1]
    first = await search(storage, "order", "er", order="asc", limit=2)
    assert [hit.conversation.external_id for hit in first] == ["c0", "c2"]
    rest = await found(storage, "order", "er", order="asc", cursor=first[-1].conversation)
    assert rest == ["c4", "c5", "c6", "c1"]
    assert await found(storage, "order", limit=0) == []


async def test_a_deleted_conversation_is_no_longer_found(storage: Storage) -> None:
    await storage.turns.append_turn(turn("keep this needle", conversation="kept"))
    await storage.turns.append_turn(turn("find the needle", conversation="gone"))
    assert await storage.catalog.delete_conversation("owner-a", "gone")
    assert await found(storage, "needle") == ["kept"]
    assert await found(storage, "find") == []
    # New messages (SQLite gives them the deleted ones' row ids, which were the largest) are found by their own
    # text only.
    await storage.turns.append_turn(turn("fresh words", conversation="new"))
    assert await found(storage, "find") == []
    assert await found(storage, "fresh") == ["new"]
    [hit] = await search(storage, "wor")
    assert [text for _, _, _, text in hit.messages] == ["fresh words", "re: fresh words"]


async def test_idle_conversations_deleted_by_retention_are_no_longer_found(storage: Storage) -> None:
    await storage.turns.append_turn(turn("old needle", conversation="idle"))
    idle = await storage.catalog.idle_conversations(time.time() + 60, 0, 10)
    assert await storage.catalog.delete_idle(idle, time.time() + 60) == 1
    assert await found(storage, "needle") == []


async def test_rewound_and_replaced_messages_are_no_longer_found(storage: Storage) -> None:
    await storage.turns.append_turn(turn("first question", conversation="c"))
    await storage.turns.append_turn(turn("second question", conversation="c", existed=True))
    conversation = await existing(storage, "owner-a", "c")
    assert await storage.catalog.rewind(conversation, 1, time.time()) == 2
    assert await found(storage, "second") == []
    assert await found(storage, "first") == ["c"]
    # A retried last turn (the inline write path) replaces the reply it retries.
    retried = {"role": "assistant", "content": "a better answer"}
    await storage.turns.append_turn(
        turn("first question", conversation="c", existed=True, replace_from=0, reply=retried)
    )
    assert await found(storage, "re: first") == []
    [hit] = await search(storage, "first")
    assert [text for _, _, _, text in hit.messages] == ["first question"]
    assert await found(storage, "better") == ["c"]


async def test_an_edit_of_the_items_updates_what_is_found(storage: Storage) -> None:
    await storage.turns.append_turn(turn("keep me", conversation="c"))
    await storage.turns.append_turn(turn("drop me", conversation="c", existed=True))
    conversation = await existing(storage, "owner-a", "c")
    dropped = (await messages_of(storage, conversation))[2]
    assert await storage.catalog.delete_message(conversation, dropped.row_id)
    assert await found(storage, "drop", "keep") == ["c"]  # the reply "re: drop me" is still there
    [hit] = await search(storage, "drop")
    assert [(seq, text) for _, seq, _, text in hit.messages] == [(2, "re: drop me")]  # moved up, same row
    added = [NewMessage(user("an appended question"), time.time())]
    assert await storage.catalog.append_messages(conversation, added, time.time(), max_bytes=None)
    [hit] = await search(storage, "appended")
    assert [(seq, role) for _, seq, role, _ in hit.messages] == [(3, "user")]


async def test_imported_and_forked_conversations_are_found(storage: Storage) -> None:
    imported = [
        NewMessage(user("imported hello"), CREATED + 1.0),
        NewMessage({"role": "assistant", "content": "imported 英寸 answer"}, CREATED + 2.0),
        NewMessage(user("later words"), CREATED + 3.0),
    ]
    assert await storage.catalog.create_conversation(info("owner-a", "imported"), imported)
    assert await found(storage, "英寸", "imported") == ["imported"]
    source = await existing(storage, "owner-a", "imported")
    assert await storage.catalog.fork(source, "fork", last_seq=1, metadata={}, at=time.time())
    assert await found(storage, "英寸") == ["fork", "imported"]  # the fork is the newest
    assert await found(storage, "later") == ["imported"]  # not copied
    [fork, _] = await search(storage, "hello")
    forked = await messages_of(storage, fork.conversation)
    assert [row_id for row_id, _, _, _ in fork.messages] == [forked[0].row_id]  # the copy's own rows
    assert await storage.catalog.delete_conversation("owner-a", "imported")
    assert await found(storage, "英寸") == ["fork"]


async def test_a_conversation_with_many_messages_is_found_by_its_last(storage: Storage) -> None:
    many = [NewMessage(user(f"message {n}"), CREATED + n) for n in range(500)]
    many.append(NewMessage({"role": "assistant", "content": "the very last 4K"}, CREATED + 500))
    assert await storage.catalog.create_conversation(info("owner-a", "long"), many)
    [hit] = await search(storage, "4K", "last")
    assert [seq for _, seq, _, _ in hit.messages] == [500]
    [hit] = await search(storage, "message")
    assert [seq for _, seq, _, _ in hit.messages] == [0, 1, 2]


async def test_a_search_repeated_many_times_still_finds_what_it_should(storage: Storage) -> None:
    # PostgreSQL plans a prepared statement for its parameters the first 5 times, then may switch to a generic
    # plan; the search keeps custom plans (Database.fetch_custom_plan): results stay right from the 6th on too.
    await storage.turns.append_turn(turn("a red apple", conversation="apple"))
    await storage.turns.append_turn(turn("a green pear", conversation="pear"))
    await storage.turns.append_turn(turn("no fruit", conversation="none"))
    for n in range(12):
        term, expected = [("apple", ["apple"]), ("pear", ["pear"]), ("grape", [])][n % 3]
        assert await found(storage, term) == expected, n
        assert await found(storage, term, "re") == expected, n
        assert sorted(await found(storage, "a", "re")) == ["apple", "pear"], n  # short terms only


# --- a database written before there was a search index ---------------------------------------------------------

_OLD_MESSAGES: Sequence[Message] = (user(PHONE), TOOL_CALL, {"role": "tool", "content": "sunny", "tool_call_id": "x"})


async def _sqlite_before_search(config: Config) -> None:
    """A SQLite file as m011 left it, holding one conversation."""
    async with aiosqlite.connect(config.db_path) as db:
        await sqlite_migrated_until(db, sqlite_migrations.m011_message_ledger)
        await db.execute(
            """
            INSERT INTO turn_writes (owner, external_id, at, model, system_json, bodies_json, interrupted, usage_json,
                                     ledger_json, prompt_tokens, completion_tokens, cached_tokens, existed,
                                     expected_version)
            VALUES ('owner-a', 'old', 1.0, 'qwen-plus', NULL, ?, 0, NULL, NULL, 0, 0, 0, 0, NULL)
            """,
            (json.dumps([json.dumps(m, ensure_ascii=False) for m in _OLD_MESSAGES]),),
        )
        await db.commit()


async def _postgres_before_search(config: Config) -> None:
    """A PostgreSQL database as p002 and the coordination tables left it, holding one conversation."""
    assert config.db_url is not None
    conn = await asyncpg.connect(config.db_url)
    try:
        await postgres_migrated_until(conn, postgres_migrations.p002_message_ledger)
        row_id = await conn.fetchval(
            "INSERT INTO conversations (owner, external_id, created_at, updated_at, message_count)"
            " VALUES ('owner-a', 'old', 1.0, 1.0, $1) RETURNING id",
            len(_OLD_MESSAGES),
        )
        await conn.executemany(
            "INSERT INTO messages (conversation_id, seq, role, body, created_at) VALUES ($1, $2, $3, $4, 1.0)",
            [(row_id, seq, m["role"], json.dumps(m, ensure_ascii=False)) for seq, m in enumerate(_OLD_MESSAGES)],
        )
    finally:
        await conn.close()


_BEFORE_SEARCH: dict[str, Callable[[Config], Awaitable[None]]] = {
    "sqlite": _sqlite_before_search,
    "postgres": _postgres_before_search,
}


async def test_a_database_from_before_the_search_index_has_its_messages_found(backend: Backend) -> None:
    await _BEFORE_SEARCH[backend.name](backend.config)
    storage = await backend.open()
    assert await found(storage, "英寸") == ["old"]
    [hit] = await search(storage, "paris", "SUN")
    assert [(seq, role, text) for _, seq, role, text in hit.messages] == [
        (1, "assistant", 'get_weather {"city":"Paris"}'),
        (2, "tool", "sunny"),
    ]
    await storage.turns.append_turn(turn("a new turn", conversation="old", existed=True))
    assert await found(storage, "new", "英寸") == ["old"]


# --- SQLite's index itself --------------------------------------------------------------------------------------


async def test_sqlite_index_holds_exactly_the_messages_after_every_kind_of_write(tmp_path: Path) -> None:
    async with sqlite_database(tmp_path) as config:
        storage = await open_storage(config)
        try:
            await storage.turns.append_turn(turn("one", conversation="a"))
            await storage.turns.append_turn(turn("two", conversation="a", existed=True))
            await storage.turns.append_turn(turn("two", conversation="a", existed=True, replace_from=2))
            a = await existing(storage, "owner-a", "a")
            assert await storage.catalog.fork(a, "b", last_seq=2, metadata={}, at=time.time())
            assert await storage.catalog.rewind(a, 1, time.time()) == 2
            b = await existing(storage, "owner-a", "b")
            assert await storage.catalog.delete_message(b, (await messages_of(storage, b))[0].row_id)
            await storage.catalog.append_messages(b, [NewMessage(user("three"), 1.0)], 1.0, max_bytes=None)
            assert await storage.catalog.create_conversation(info("owner-a", "c"), [NewMessage(user("four"), 1.0)])
            assert await storage.catalog.delete_conversation("owner-a", "c")
        finally:
            await storage.close()
    with sqlite3.connect(config.db_path) as db:
        db.execute("INSERT INTO message_search (message_search) VALUES ('integrity-check')")  # raises if corrupt
        indexed = db.execute("SELECT rowid, text FROM message_search ORDER BY rowid").fetchall()
        stored = db.execute("SELECT id, json_extract(body, '$.content') FROM messages ORDER BY id").fetchall()
    assert indexed == stored
    assert [text for _, text in stored] == ["one", "re: one", "re: one", "two", "three"]


async def test_sqlite_both_shapes_fold_case_as_the_index_does(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # The index folds all of Unicode; LIKE ASCII only: KELVIN SIGN and LONG S fold to k and s, É to é.  Each cap
    # makes other terms rare: 0 none (walked, "école" looked up whole), 2 the once-held ones, 2,000 all.
    async with sqlite_database(tmp_path) as config:
        storage = await open_storage(config)
        try:
            await storage.turns.append_turn(turn("a 42\u212a display at the \u00c9COLE", conversation="kelvin"))
            await storage.turns.append_turn(turn("\u017ftock of zebras at the \u00e9cole", conversation="long-s"))
            await storage.turns.append_turn(turn("plain stock, 42K", conversation="plain"))
            for cap in (0, 2, 2000):
                monkeypatch.setattr(sqlite_search, "PROBE_CAP", cap)
                assert sorted(await found(storage, "42k")) == ["kelvin", "plain"], cap
                assert sorted(await found(storage, "STOCK")) == ["long-s", "plain"], cap
                assert sorted(await found(storage, "\u00e9cole")) == ["kelvin", "long-s"], cap
                assert await found(storage, "zebra", "\u00e9cole") == ["long-s"], cap  # rare zebra, then école
                assert await found(storage, "display", "\u00c9COLE", "42") == ["kelvin"], cap
                [hit] = await search(storage, "zebra", "\u00e9cole")
                assert [seq for _, seq, _, _ in hit.messages] == [0, 1], cap
        finally:
            await storage.close()


async def test_postgres_custom_plans_do_not_outlive_the_search(postgres_url: str) -> None:
    database = await Database.open(postgres_url, pool_size=1)  # one connection: every statement on it
    try:
        [row] = await database.fetch_custom_plan("SHOW plan_cache_mode")
        assert row[0] == "force_custom_plan"
        assert await database.fetchval("SHOW plan_cache_mode") == "auto"
    finally:
        await database.close()
