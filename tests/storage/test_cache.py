"""The history cache and the store's write paths: what another process writes is seen by the next turn (checked
per conversation by its version, the others kept), group commits keep one bad turn from failing the others, and a
turn that meets another process's lock waits for it."""

from __future__ import annotations

import asyncio
import dataclasses
import sqlite3
from collections.abc import Callable
from pathlib import Path

import pytest

from gateway.core.history import replay
from gateway.core.ports import Memory, Turn
from gateway.errors import StorageUnavailable
from gateway.storage.cache import HistoryCache
from gateway.storage.sqlite.catalog import SqliteCatalog
from gateway.storage.sqlite.store import ConversationStore
from gateway.storage.sqlite.turns import INLINE_TURN_BYTES
from tests.conftest import Gateway, make_config, start_gateway, user
from tests.fake_upstream import FakeUpstream


def _memory(*texts: str) -> Memory:
    messages = tuple(user(t) for t in texts)
    return Memory(exists=True, system=None, messages=messages, replayed=tuple(map(replay, messages)))


def _turn(conversation: str, text: str, reply: dict | None = None) -> Turn:
    return Turn(
        owner="o",
        external_id=conversation,
        model="qwen-plus",
        system=None,
        messages=[user(text)],
        reply=reply if reply is not None else {"role": "assistant", "content": f"re: {text}"},
        interrupted=False,
        usage=None,
    )


def test_cache_evicts_least_recently_used_by_message_count() -> None:
    cache = HistoryCache(max_messages=5)
    cache.put(("o", "a"), _memory("1", "2"))
    cache.put(("o", "b"), _memory("1", "2"))
    assert cache.get(("o", "a")) is not None  # now the most recently used
    cache.put(("o", "c"), _memory("1", "2"))  # 6 > 5: evicts b, the least recently used
    assert cache.get(("o", "b")) is None
    assert cache.get(("o", "a")) is not None and cache.get(("o", "c")) is not None
    cache.put(("o", "huge"), _memory(*"123456"))  # larger than the whole cache: not kept, nothing evicted
    assert cache.get(("o", "huge")) is None and len(cache) == 2


def test_empty_entries_count_toward_the_bound() -> None:
    cache = HistoryCache(max_messages=3)
    for i in range(10):
        cache.put(("o", str(i)), Memory(exists=False, system=None, messages=(), replayed=()))
    assert len(cache) == 3


def test_extend_appends_a_committed_turn_without_touching_earlier_entries() -> None:
    cache = HistoryCache(max_messages=100)
    before = _memory("1")
    cache.put(("o", "a"), before)
    reply = {"role": "assistant", "content": "r", "reasoning_content": "thought"}
    cache.extend(("o", "a"), [{"role": "system", "content": "S"}], [user("2"), reply])
    after = cache.get(("o", "a"))
    assert after is not None
    assert [m["content"] for m in after.messages] == ["1", "2", "r"]
    assert after.replayed[-1] == {"role": "assistant", "content": "r"}  # reasoning is not replayed
    assert after.system == ({"role": "system", "content": "S"},)
    assert before.messages == (user("1"),)  # entries are immutable
    cache.extend(("o", "missing"), None, [user("x")])  # nothing cached: nothing to extend
    assert cache.get(("o", "missing")) is None


async def test_what_another_process_writes_is_seen_by_the_next_turn(gateway: Gateway, upstream: FakeUpstream) -> None:
    client = gateway.sdk("edited")
    await client.chat.completions.create(model="qwen-plus", messages=[user("my name is Ann")])
    with sqlite3.connect(gateway.db_path) as db:  # as another worker would: edit the message, moving the version on
        db.execute("UPDATE messages SET body = json_set(body, '$.content', 'my name is Bob') WHERE seq = 0")
        db.execute("UPDATE conversations SET version = version + 1")
    await client.chat.completions.create(model="qwen-plus", messages=[user("what is my name?")])
    assert upstream.last["messages"][0] == user("my name is Bob")
    with sqlite3.connect(gateway.db_path) as db:  # and delete the conversation outright
        db.execute("DELETE FROM messages")
        db.execute("DELETE FROM conversations")
    await client.chat.completions.create(model="qwen-plus", messages=[user("hello again")])
    assert upstream.last["messages"] == [user("hello again")]
    assert [m["content"] for m in gateway.stored("edited")] == ["hello again", "reply 3"]


async def test_another_process_writing_other_conversations_leaves_this_one_cached(tmp_path: Path) -> None:
    path = tmp_path / "g.db"
    store = await ConversationStore.open(path, cache_messages=100)
    other = sqlite3.connect(path, isolation_level=None)
    try:
        await store.append_turn(_turn("mine", "1"))
        await store.append_turn(_turn("theirs", "1"))
        cached = await store.load("o", "mine")
        other.execute("UPDATE conversations SET version = version + 1 WHERE external_id = 'theirs'")
        await asyncio.sleep(0)  # the next event-loop iteration looks at the file again
        assert await store.load("o", "mine") is cached  # checked by its version, not read again
        assert (await store.load("o", "theirs")).version == 2
        await store.append_turn(dataclasses.replace(_turn("mine", "2"), expected_version=cached.version, existed=True))
        extended = await store.load("o", "mine")
        assert extended.version == cached.version + 1 and len(extended.messages) == 4
        with sqlite3.connect(path) as db:  # the entry the turn extended is what the database holds
            assert db.execute("SELECT version FROM conversations WHERE external_id = 'mine'").fetchone() == (2,)
    finally:
        other.close()
        await store.close()


async def test_a_conversation_created_anew_at_the_same_version_is_not_taken_for_the_cached_one(tmp_path: Path) -> None:
    """Versions start at 1 again when a deleted conversation is created anew (an import after a delete, say):
    the cache tells the two rows apart by their incarnation."""
    path = tmp_path / "g.db"
    store = await ConversationStore.open(path, cache_messages=100)
    other = await ConversationStore.open(path)
    try:
        await store.append_turn(_turn("c", "old"))
        assert [m["content"] for m in (await store.load("o", "c")).messages] == ["old", "re: old"]  # cached, v1
        await other.write("DELETE FROM conversations", (), conversation=("o", "c"))
        await other.append_turn(_turn("c", "new"))  # version 1 again, another history
        await asyncio.sleep(0)
        assert [m["content"] for m in (await store.load("o", "c")).messages] == ["new", "re: new"]
    finally:
        await other.close()
        await store.close()


async def test_memory_works_with_the_cache_turned_off(tmp_path: Path, upstream: FakeUpstream) -> None:
    gw = await start_gateway(make_config(tmp_path, upstream.url, storage__cache_messages=0))
    try:
        client = gw.sdk("nocache")
        await client.chat.completions.create(model="qwen-plus", messages=[user("one")])
        await client.chat.completions.create(model="qwen-plus", messages=[user("two")])
    finally:
        await gw.stop()
    assert upstream.last["messages"] == [user("one"), {"role": "assistant", "content": "reply 1"}, user("two")]


async def test_synchronous_full_keeps_memory(tmp_path: Path, upstream: FakeUpstream) -> None:
    """With storage.synchronous = "full" every write takes the waiting (fsyncing) path; memory is unchanged."""
    gw = await start_gateway(make_config(tmp_path, upstream.url, storage__synchronous="full"))
    try:
        clients = [gw.sdk(f"full-{i}") for i in range(5)]
        for text in ("one", "two"):
            await asyncio.gather(
                *(c.chat.completions.create(model="qwen-plus", messages=[user(text)]) for c in clients)
            )
        stored = [gw.stored(f"full-{i}") for i in range(5)]
    finally:
        await gw.stop()
    assert [[m["content"] for m in s][::2] for s in stored] == [["one", "two"]] * 5
    assert all(r.body["messages"][0] == user("one") for r in upstream.requests[5:])


def _one() -> int:
    return 1


def _three() -> int:
    """Turns in flight as the store's group commit sees them: several, so each turn waits to share a commit."""
    return 3


async def test_one_bad_turn_in_a_group_commit_fails_alone(tmp_path: Path) -> None:
    store = await ConversationStore.open(tmp_path / "g.db", cache_messages=100, turns_in_flight=_three)
    try:
        bad = _turn("bad", "x", reply={"content": "a reply without a role violates messages.role NOT NULL"})
        results = await asyncio.gather(
            store.append_turn(_turn("a", "1")),
            store.append_turn(bad),
            store.append_turn(_turn("b", "2")),
            return_exceptions=True,
        )
        loaded = [await store.load("o", c) for c in ("a", "b", "bad")]
    finally:
        await store.close()
    assert results[0] is None and results[2] is None
    assert isinstance(results[1], StorageUnavailable)
    assert [len(m.messages) for m in loaded] == [2, 2, 0]
    with sqlite3.connect(tmp_path / "g.db") as db:
        assert db.execute("SELECT count(*) FROM messages").fetchone() == (4,)


async def test_a_cancelled_caller_still_gets_its_queued_turn_recorded(tmp_path: Path) -> None:
    store = await ConversationStore.open(tmp_path / "c.db", cache_messages=100, turns_in_flight=_three)
    try:
        kept = asyncio.create_task(store.append_turn(_turn("a", "1")))
        dropped = asyncio.create_task(store.append_turn(_turn("b", "2")))
        await asyncio.sleep(0)  # both queued for the same group commit
        dropped.cancel()
        await kept
        with pytest.raises(asyncio.CancelledError):
            await dropped
        loaded = [await store.load("o", c) for c in ("a", "b")]
    finally:
        await store.close()
    assert [len(m.messages) for m in loaded] == [2, 2]


@pytest.mark.parametrize("in_flight", [_one, _three], ids=["alone", "group-commit"])
async def test_a_turn_waits_for_another_process_lock_then_commits(tmp_path: Path, in_flight: Callable[[], int]) -> None:
    path = tmp_path / "g.db"
    store = await ConversationStore.open(path, busy_timeout_ms=5000, cache_messages=100, turns_in_flight=in_flight)
    other = sqlite3.connect(path, isolation_level=None)
    try:
        await store.append_turn(_turn("c", "before"))
        assert len((await store.load("o", "c")).messages) == 2  # cached now
        other.execute("BEGIN IMMEDIATE")
        other.execute("UPDATE conversations SET model = 'other'")
        pending = asyncio.create_task(store.append_turn(_turn("c", "during")))
        await asyncio.sleep(0.3)
        assert not pending.done()  # waiting on the lock, not failed
        other.execute("COMMIT")
        await asyncio.wait_for(pending, 5)
        loaded = await store.load("o", "c")
    finally:
        other.close()
        await store.close()
    assert [m["content"] for m in loaded.messages] == ["before", "re: before", "during", "re: during"]


async def test_a_large_turn_commits_off_the_event_loop_and_keeps_the_history_cached(tmp_path: Path) -> None:
    """A turn of more than 16 KiB of messages (indexing its text for search would hold the loop) commits on the
    waiting connection, and the cached history is extended as an inline commit extends it, not thrown away."""
    path = tmp_path / "g.db"
    store = await ConversationStore.open(path, cache_messages=100)
    try:
        await store.append_turn(_turn("big", "1"))
        cached = await store.load("o", "big")
        large = dataclasses.replace(
            _turn("big", "x" * (INLINE_TURN_BYTES + 1)), expected_version=cached.version, existed=True
        )
        await store.append_turn(large)
        extended = await store.load("o", "big")
        assert extended.version == cached.version + 1 and len(extended.messages) == 4
        assert extended.messages[:2] == cached.messages  # the same entry, grown: not read afresh
        assert extended.messages[2]["content"] is large.messages[0]["content"]
        found = await SqliteCatalog(store).search_conversations("o", ["xxxx"], limit=5, order="desc", cursor=None)
        assert [hit.conversation.external_id for hit in found] == ["big"]  # and indexed with it
    finally:
        await store.close()
