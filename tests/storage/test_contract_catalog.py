"""Storage contract, the catalog and the key store: what ``core.ports.Catalog`` and ``KeyStore`` promise, one test
per behaviour, run against every backend (``backend=...``, tests/storage/conftest.py) through the ports only.
The turn store and the storage as a whole are in test_contract_turns.py.

Times the catalog takes (``ConversationInfo.updated_at``, ``at``, ``before``) stand in for the clock, so nothing
here sleeps.  A new backend needs no new test here: add it to ``DATABASES`` in tests/storage/conftest.py.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Sequence
from typing import Any

from gateway.core.keys import KeyRing, hash_key
from gateway.core.ports import IdempotentReply, NewMessage, ResponseRecord, Storage, StoredMessage
from gateway.protocols.openai_chat import encode
from tests.storage.conftest import CREATED, Backend, existing, info, load, soon, texts, turn, user

SYSTEM = [{"role": "system", "content": "You sell phones."}]


async def test_create_conversation_keeps_what_it_is_given_and_refuses_a_taken_id(
    storage: Storage, second: Storage
) -> None:
    summary = {"role": "system", "content": "Earlier: hello."}
    given = info(
        "owner-a",
        "imported",
        model="qwen-max",
        metadata={"topic": "phones", "ключ": "значение"},
        prompt_tokens=11,
        completion_tokens=5,
        cached_tokens=2,
        system=SYSTEM,
        window_start=2,
        summary=summary,
    )
    usage = {"prompt_tokens": 11, "completion_tokens": 5}
    messages = [
        NewMessage(user("hello"), CREATED + 1.25),
        NewMessage({"role": "assistant", "content": "hi"}, CREATED + 2.5, interrupted=True, usage={"x": 1}),
        NewMessage(user("a phone"), CREATED + 3.75),
        NewMessage({"role": "assistant", "content": "which?", "name": "bot"}, CREATED + 5.0, usage=usage),
    ]
    assert await storage.catalog.create_conversation(given, messages)
    got = await existing(storage, "owner-a", "imported")
    assert got == dataclasses.replace(given, row_id=got.row_id, message_count=4)  # counters from info, not recounted
    exported = await storage.catalog.export_messages(got)
    assert [(m.seq, encode(m.body), m.created_at, m.interrupted, m.usage) for m in exported] == [
        (seq, encode(m.body), m.created_at, m.interrupted, m.usage) for seq, m in enumerate(messages)
    ]  # bodies byte for byte, key order included
    memory = await load(storage, second, "owner-a", "imported")
    assert (memory.system, memory.window_start, memory.summary) == (tuple(SYSTEM), 2, summary)
    assert (texts(memory), memory.last_usage) == (["hello", "hi", "a phone", "which?"], usage)

    assert not await storage.catalog.create_conversation(info("owner-a", "imported"), [NewMessage(user("x"), 1.0)])
    assert await existing(storage, "owner-a", "imported") == got
    assert len(await storage.catalog.export_messages(got)) == 4
    assert await storage.catalog.create_conversation(info("owner-b", "imported"), [])  # another owner's id
    empty = await load(storage, second, "owner-b", "imported")
    assert (empty.exists, empty.messages) == (True, ())


async def test_get_and_find_conversations_by_owner_and_owner_prefix(storage: Storage) -> None:
    for owner in ("aa11", "aa22", "bb33", ""):
        await storage.turns.append_turn(turn(f"from {owner}", owner=owner, conversation="x"))
    await storage.turns.append_turn(turn("other id", owner="aa11", conversation="y"))
    got = await existing(storage, "aa22", "x")
    assert (got.owner, got.external_id, got.message_count) == ("aa22", "x", 2)
    assert texts_of(await storage.catalog.export_messages(got)) == ["from aa22", "re: from aa22"]
    assert await storage.catalog.get_conversation("aa22", "y") is None

    async def owners(prefix: str | None) -> list[str]:
        found = await storage.catalog.find_conversations("x", prefix)
        assert all(c.external_id == "x" for c in found)
        return sorted(c.owner for c in found)

    assert await owners("aa") == ["aa11", "aa22"]
    assert await owners("aa1") == ["aa11"]
    assert await owners(None) == [""]  # None names the owner of clients without a credential
    assert await owners("") == ["", "aa11", "aa22", "bb33"]
    assert await storage.catalog.find_conversations("nope", "") == []


def texts_of(messages: Sequence[StoredMessage]) -> list[Any]:
    return [m.body.get("content") for m in messages]


async def pages(storage: Storage, owner: str | None, order: str, limit: int, prefix: str | None = "") -> list[str]:
    """Every conversation ``list_conversations`` gives, page after page, following the cursor."""
    seen: list[str] = []
    cursor = None
    for _ in range(100):  # a cursor that does not move on must fail the test, not hang it
        page = await storage.catalog.list_conversations(
            owner, limit=limit, order=order, cursor=cursor, owner_prefix=prefix
        )
        if not page:
            return seen
        assert len(page) <= limit
        seen += [c.external_id for c in page]
        cursor = page[-1]
    raise AssertionError(f"no end to the pages: {seen[:20]}...")


async def test_list_conversations_pages_by_recent_activity(storage: Storage) -> None:
    for n in (3, 1, 5, 2, 4):  # created out of order: the order is activity, not creation
        assert await storage.catalog.create_conversation(info("owner-a", f"c{n}", updated_at=1000.0 * n), [])
    assert await storage.catalog.create_conversation(info("pp-other", "theirs", updated_at=3500.0), [])
    assert await pages(storage, "owner-a", "desc", 2) == ["c5", "c4", "c3", "c2", "c1"]
    assert await pages(storage, "owner-a", "asc", 2) == ["c1", "c2", "c3", "c4", "c5"]
    assert await pages(storage, None, "desc", 4) == ["c5", "c4", "theirs", "c3", "c2", "c1"]
    assert await pages(storage, None, "desc", 4, prefix="pp") == ["theirs"]
    first = await storage.catalog.list_conversations("owner-a", limit=1, order="desc", cursor=None)
    assert [(c.external_id, c.updated_at) for c in first] == [("c5", 5000.0)]

    await storage.turns.append_turn(turn("back", owner="owner-a", conversation="c1", existed=True))  # activity now
    assert await pages(storage, "owner-a", "desc", 3) == ["c1", "c5", "c4", "c3", "c2"]


async def test_list_conversations_pages_through_equal_times_without_gaps_or_repeats(storage: Storage) -> None:
    for n in range(7):
        assert await storage.catalog.create_conversation(info("owner-a", f"same-{n}", updated_at=42.0), [])
    desc = await pages(storage, "owner-a", "desc", 2)
    asc = await pages(storage, "owner-a", "asc", 3)
    assert sorted(desc) == [f"same-{n}" for n in range(7)]
    assert asc == desc[::-1]


async def test_messages_page_in_seq_order_after_a_cursor(storage: Storage) -> None:
    for n in range(3):
        await storage.turns.append_turn(turn(f"q{n}", existed=n > 0))
    await storage.turns.append_turn(turn("elsewhere", conversation="other"))
    conversation, other = await existing(storage, "owner-a", "c"), await existing(storage, "owner-a", "other")
    every = await storage.catalog.list_messages(conversation, limit=-1, order="asc", cursor_seq=None)
    assert texts_of(every) == ["q0", "re: q0", "q1", "re: q1", "q2", "re: q2"]
    assert [m.seq for m in every] == list(range(6))
    assert await storage.catalog.export_messages(conversation) == every

    async def page(order: str, limit: int, after: int | None) -> list[StoredMessage]:
        return await storage.catalog.list_messages(conversation, limit=limit, order=order, cursor_seq=after)

    assert await page("asc", 4, None) == every[:4]
    assert await page("asc", 4, 3) == every[4:]
    assert await page("desc", 2, None) == [every[5], every[4]]
    assert await page("desc", 2, 4) == [every[3], every[2]]
    assert await page("desc", 10, 0) == []

    assert [await storage.catalog.message_seq(conversation, m.row_id) for m in every] == list(range(6))
    (theirs, _) = await storage.catalog.export_messages(other)
    assert await storage.catalog.message_seq(conversation, theirs.row_id) is None  # another conversation's message
    assert await storage.catalog.message_seq(conversation, max(m.row_id for m in every) + 1000) is None


async def test_set_metadata_replaces_it_whole(storage: Storage) -> None:
    assert await storage.catalog.create_conversation(info("owner-a", "c", metadata={"a": "1", "b": "2"}), [])
    assert await storage.catalog.set_metadata("owner-a", "c", {"c": "3", "ü": "✓"})
    assert (await existing(storage, "owner-a", "c")).metadata == {"c": "3", "ü": "✓"}
    assert not await storage.catalog.set_metadata("owner-b", "c", {"x": "y"})  # another owner's: no such one
    assert not await storage.catalog.set_metadata("owner-a", "nope", {"x": "y"})
    assert (await existing(storage, "owner-a", "c")).metadata == {"c": "3", "ü": "✓"}


async def test_rewind_removes_the_last_user_turns_and_what_follows_and_recounts(
    storage: Storage, second: Storage
) -> None:
    summary = {"role": "system", "content": "Earlier: q1."}
    tool_turn = [user("q2"), {"role": "assistant", "content": None, "tool_calls": []}, {"role": "tool", "content": ""}]
    await storage.turns.append_turn(turn("q1", usage={"prompt_tokens": 1, "completion_tokens": 2}))
    await storage.turns.append_turn(turn("", existed=True, messages=tool_turn, usage={"prompt_tokens": 10}))
    await storage.turns.append_turn(turn("q3", existed=True, usage={"prompt_tokens": 100}, window=(2, summary)))
    conversation = await existing(storage, "owner-a", "c")
    await storage.turns.load("owner-a", "c")  # cached, then rewound

    assert await storage.catalog.rewind(conversation, 4, 9e9) is None  # only three user messages
    assert await existing(storage, "owner-a", "c") == conversation

    assert await storage.catalog.rewind(conversation, 1, 2e9) == 2
    after = await existing(storage, "owner-a", "c")
    assert (after.message_count, after.prompt_tokens, after.completion_tokens, after.updated_at) == (6, 11, 2, 2e9)
    memory = await load(storage, second, "owner-a", "c")
    assert texts(memory) == ["q1", "re: q1", "q2", None, "", "re: "]
    assert (memory.window_start, memory.summary, memory.last_usage) == (2, summary, {"prompt_tokens": 10})

    assert await storage.catalog.rewind(after, 2, 2e9 + 1) == 6  # back to nothing; the window went with q1
    memory = await load(storage, second, "owner-a", "c")
    assert (memory.exists, memory.messages, memory.window_start, memory.summary) == (True, (), 0, None)
    assert (await existing(storage, "owner-a", "c")).prompt_tokens == 0
    assert await storage.catalog.rewind(after, 1, 2e9 + 2) is None


async def test_fork_copies_up_to_last_seq_into_a_new_conversation_of_the_owner(
    storage: Storage, second: Storage
) -> None:
    await storage.turns.append_turn(turn("q1", system=SYSTEM, usage={"prompt_tokens": 3}, model="qwen-max"))
    await storage.turns.append_turn(
        turn("q2", existed=True, usage={"prompt_tokens": 30}, interrupted=True, model="qwen-max")
    )
    source = await existing(storage, "owner-a", "c")
    await storage.turns.load("owner-a", "fork")  # cached as missing, then created by the fork
    assert await storage.catalog.fork(source, "fork", last_seq=1, metadata={"forked_from": "c"}, at=1.5e9)
    fork = await existing(storage, "owner-a", "fork")
    assert (fork.model, fork.system, fork.metadata) == ("qwen-max", SYSTEM, {"forked_from": "c"})
    assert (fork.created_at, fork.updated_at, fork.message_count, fork.prompt_tokens) == (1.5e9, 1.5e9, 2, 3)
    copied, originals = await storage.catalog.export_messages(fork), await storage.catalog.export_messages(source)
    assert [(m.seq, m.body, m.created_at, m.usage) for m in copied] == [
        (m.seq, m.body, m.created_at, m.usage) for m in originals[:2]
    ]
    memory = await load(storage, second, "owner-a", "fork")
    assert (texts(memory), memory.system) == (["q1", "re: q1"], tuple(SYSTEM))
    assert texts(await load(storage, second, "owner-a", "c")) == ["q1", "re: q1", "q2", "re: q2"]  # untouched

    assert not await storage.catalog.fork(source, "fork", last_seq=3, metadata={}, at=1.6e9)  # taken
    assert await existing(storage, "owner-a", "fork") == fork
    assert await storage.catalog.fork(source, "whole", last_seq=1 << 62, metadata={}, at=1.6e9)
    whole = await existing(storage, "owner-a", "whole")
    assert [m.interrupted for m in await storage.catalog.export_messages(whole)] == [False, False, False, True]
    assert await storage.catalog.get_conversation("owner-b", "whole") is None


async def test_delete_conversation_removes_it_and_its_messages(storage: Storage, second: Storage) -> None:
    await storage.turns.append_turn(turn("q1", conversation="kept"))
    await storage.turns.append_turn(turn("q1", idempotent=IdempotentReply("k", "hash", b"{}", 0.0)))
    assert await storage.catalog.delete_conversation("owner-a", "c")
    assert not await storage.catalog.delete_conversation("owner-a", "c")
    assert not await storage.catalog.delete_conversation("owner-a", "never")
    assert not (await load(storage, second, "owner-a", "c")).exists
    assert await storage.catalog.get_conversation("owner-a", "c") is None
    assert texts(await load(storage, second, "owner-a", "kept")) == ["q1", "re: q1"]

    await storage.turns.append_turn(turn("q2"))  # the id again: none of the deleted history comes back
    assert texts_of(await storage.catalog.export_messages(await existing(storage, "owner-a", "c"))) == ["q2", "re: q2"]
    assert await storage.turns.idempotent_reply("owner-a", "c", "k", 0.0) is None  # nor its kept replies


async def test_idle_conversations_are_listed_in_row_order_and_deleted_only_while_idle(storage: Storage) -> None:
    for name, updated_at in (("old-200", 200.0), ("old-100", 100.0), ("recent", 300.0)):
        assert await storage.catalog.create_conversation(info("owner-a", name, updated_at=updated_at), [])
    await storage.turns.append_turn(turn("now", conversation="active"))
    rows = {c: (await existing(storage, "owner-a", c)).row_id for c in ("old-200", "old-100")}
    idle = await storage.catalog.idle_conversations(250.0, 0, 10)
    assert idle == sorted((row, "owner-a", name) for name, row in rows.items())
    assert await storage.catalog.idle_conversations(250.0, 0, 1) == idle[:1]
    assert await storage.catalog.idle_conversations(250.0, idle[0][0], 10) == idle[1:]
    assert await storage.catalog.idle_conversations(250.0, idle[1][0], 10) == []
    assert await storage.catalog.idle_conversations(150.0, 0, 10) == [(rows["old-100"], "owner-a", "old-100")]

    await storage.turns.append_turn(turn("back", conversation="old-200", existed=True))  # active since listed
    assert await storage.catalog.delete_idle(idle, 250.0) == 1
    assert await storage.catalog.get_conversation("owner-a", "old-100") is None
    assert not (await storage.turns.load("owner-a", "old-100")).exists
    for name in ("old-200", "recent", "active"):
        await existing(storage, "owner-a", name)


async def test_keys_are_created_listed_found_by_hash_and_revoked(backend: Backend, storage: Storage) -> None:
    secret_a, key_a = await storage.keys.create("tenant-a", "laptop", False)
    secret_b, key_b = await storage.keys.create("tenant-b", None, True)
    assert (key_a.tenant, key_a.name, key_a.admin, key_a.revoked) == ("tenant-a", "laptop", False, False)
    assert (key_b.tenant, key_b.name, key_b.admin) == ("tenant-b", None, True)
    assert secret_a != secret_b and key_a.id != key_b.id
    assert await storage.keys.list() == [key_a, key_b]  # oldest first
    assert await storage.keys.by_hash() == {hash_key(secret_a): key_a, hash_key(secret_b): key_b}

    assert await storage.keys.revoke(key_a.id)
    assert not await storage.keys.revoke(key_a.id)
    assert not await storage.keys.revoke("key_0000000000000000")
    listed = await (await backend.open(cache=False)).keys.list()  # as stored, seen by another process
    assert [k.id for k in listed] == [key_a.id, key_b.id]
    assert listed[0].revoked and listed[0].revoked_at is not None and listed[0].revoked_at >= key_a.created_at
    assert listed[1] == key_b
    assert (await storage.keys.by_hash())[hash_key(secret_a)] == listed[0]  # revoked keys are still found


async def test_the_key_version_tells_a_key_ring_of_writes_by_another_storage(
    backend: Backend, storage: Storage
) -> None:
    ring = KeyRing(storage.keys)
    await ring.refresh()
    assert not ring.stale() and not ring.any
    cli = await backend.open(cache=False)  # another process: the CLI creating and revoking keys

    secret, key = await cli.keys.create("tenant-a", None, False)
    assert await soon(ring.stale)
    await ring.refresh()
    assert not ring.stale()  # reading the keys is no change: the ring does not read them on every request
    assert ring.find(secret) == key

    assert await cli.keys.revoke(key.id)
    assert await soon(ring.stale)
    await ring.refresh()
    found = ring.find(secret)
    assert found is not None and found.revoked

    own, _ = await storage.keys.create("tenant-b", None, False)  # this process's own write counts too
    assert await soon(ring.stale)
    await ring.refresh()
    assert ring.find(own) is not None


async def test_edits_of_one_owners_conversation_leave_another_owners_alone(storage: Storage) -> None:
    # The catalog's scoping, as the turn store's: every call names (owner, id), and one owner's edit is never
    # another's.
    for owner in ("owner-a", "owner-b"):
        await storage.turns.append_turn(
            turn(f"q {owner}", owner=owner, conversation="same", usage={"prompt_tokens": 1})
        )
    a = await existing(storage, "owner-a", "same")
    assert await storage.catalog.rewind(a, 1, time.time()) == 2
    assert await storage.catalog.set_metadata("owner-a", "same", {"k": "v"})
    assert await storage.catalog.delete_conversation("owner-a", "same")
    b = await existing(storage, "owner-b", "same")
    assert (b.message_count, b.metadata, b.prompt_tokens) == (2, {}, 1)
    assert texts_of(await storage.catalog.export_messages(b)) == ["q owner-b", "re: q owner-b"]


async def test_append_messages_adds_after_the_last_one_and_refuses_past_max_bytes(
    storage: Storage, second: Storage
) -> None:
    await storage.turns.append_turn(turn("q1", usage={"prompt_tokens": 4}))
    conversation = await existing(storage, "owner-a", "c")
    await storage.turns.load("owner-a", "c")  # cached, then appended to
    added = [NewMessage(user("q2"), 2e9), NewMessage({"role": "assistant", "content": "a2"}, 2e9)]
    stored = await storage.catalog.append_messages(conversation, added, 2e9, max_bytes=None)
    assert stored is not None
    assert [(m.seq, m.body, m.created_at) for m in stored] == [(2, user("q2"), 2e9), (3, added[1].body, 2e9)]
    after = await existing(storage, "owner-a", "c")
    assert (after.message_count, after.prompt_tokens, after.updated_at) == (4, 4, 2e9)
    memory = await load(storage, second, "owner-a", "c")
    assert texts(memory) == ["q1", "re: q1", "q2", "a2"]
    assert [m.row_id for m in await storage.catalog.export_messages(after)][2:] == [m.row_id for m in stored]

    size = memory.size
    too_big = [NewMessage(user("x" * 10), 3e9)]
    assert await storage.catalog.append_messages(after, too_big, 3e9, max_bytes=size + 5) is None
    assert await existing(storage, "owner-a", "c") == after  # nothing written
    fits = await storage.catalog.append_messages(after, too_big, 3e9, max_bytes=size + 100)
    assert fits is not None and fits[0].seq == 4
    await storage.catalog.delete_conversation("owner-a", "c")
    assert await storage.catalog.append_messages(after, too_big, 4e9, max_bytes=None) == []


async def test_delete_message_closes_the_gap_recounts_and_drops_what_held_it(storage: Storage, second: Storage) -> None:
    summary = {"role": "system", "content": "Earlier: q1."}
    await storage.turns.append_turn(
        turn("q1", usage={"prompt_tokens": 1, "completion_tokens": 2}, response=ResponseRecord("resp_1", 1.0, {}))
    )
    await storage.turns.append_turn(
        turn("q2", existed=True, usage={"prompt_tokens": 10}, response=ResponseRecord("resp_2", 2.0, {}))
    )
    await storage.turns.append_turn(
        turn(
            "q3",
            existed=True,
            usage={"prompt_tokens": 100},
            window=(4, summary),
            response=ResponseRecord("resp_3", 3.0, {}),
        )
    )
    conversation = await existing(storage, "owner-a", "c")
    await storage.turns.load("owner-a", "c")  # cached, then edited
    rows = [m.row_id for m in await storage.catalog.export_messages(conversation)]
    assert not await storage.catalog.delete_message(conversation, max(rows) + 1)
    assert await existing(storage, "owner-a", "c") == conversation

    # "re: q2" (seq 3): the second response goes with its reply; the third moves up with its messages.
    assert await storage.catalog.delete_message(conversation, rows[3])
    after = await existing(storage, "owner-a", "c")
    assert (after.message_count, after.prompt_tokens, after.completion_tokens) == (5, 101, 2)
    assert after.updated_at == conversation.updated_at  # an edit, not activity
    memory = await load(storage, second, "owner-a", "c")
    assert texts(memory) == ["q1", "re: q1", "q2", "q3", "re: q3"]
    assert (memory.window_start, memory.summary) == (0, None)  # the window began after the cut: reset
    exported = await storage.catalog.export_messages(after)
    assert [m.seq for m in exported] == [0, 1, 2, 3, 4]
    assert [m.row_id for m in exported] == rows[:3] + rows[4:]  # ids kept
    assert await storage.turns.find_response("owner-a", "resp_2") is None
    third = await storage.turns.find_response("owner-a", "resp_3")
    assert third is not None and third.latest
    assert (third.reply.row_id, [m.row_id for m in third.inputs]) == (rows[5], [rows[4]])
    first = await storage.turns.find_response("owner-a", "resp_1")
    assert first is not None and [m.body for m in first.inputs] == [user("q1")]

    # An input of the third (seq 3, "q3"): it goes, and so does the response it was part of.
    assert await storage.catalog.delete_message(after, rows[4])
    assert await storage.turns.find_response("owner-a", "resp_3") is None
    memory = await load(storage, second, "owner-a", "c")
    assert texts(memory) == ["q1", "re: q1", "q2", "re: q3"]
    assert (await existing(storage, "owner-a", "c")).prompt_tokens == 101


async def test_delete_message_keeps_a_window_that_began_before_it(storage: Storage, second: Storage) -> None:
    summary = {"role": "system", "content": "Earlier: q1."}
    await storage.turns.append_turn(turn("q1"))
    await storage.turns.append_turn(turn("q2", existed=True, window=(2, summary)))
    conversation = await existing(storage, "owner-a", "c")
    rows = [m.row_id for m in await storage.catalog.export_messages(conversation)]
    assert await storage.catalog.delete_message(conversation, rows[3])
    memory = await load(storage, second, "owner-a", "c")
    assert (texts(memory), memory.window_start, memory.summary) == (["q1", "re: q1", "q2"], 2, summary)
    other = await storage.catalog.get_conversation("owner-b", "c")
    assert other is None
