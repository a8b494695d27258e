"""Storage contract, the turn store and the storage as a whole: what ``core.ports.TurnStore`` and ``Storage``
promise, one test per behaviour, run against every backend (``backend=...``, tests/storage/conftest.py) through the
ports only: no SQL, no backend class.  The catalog and the key store are in test_contract_catalog.py.

A new backend needs no new test here: add it to ``DATABASES`` in tests/storage/conftest.py.
"""

from __future__ import annotations

import asyncio
import time

import pytest

from gateway.core.ports import ConversationDeleted, IdempotentReply, Storage
from gateway.protocols.openai_chat import encode
from tests.storage.conftest import Backend, info, load, soon, texts, turn

SYSTEM = [{"role": "system", "content": "You sell phones."}, {"role": "developer", "content": "Be brief."}]
TOOL_CALL = {
    "role": "assistant",
    "content": None,
    "tool_calls": [{"id": "call_1", "type": "function", "function": {"name": "stock", "arguments": '{"model": "X1"}'}}],
}
TOOL_RESULT = {"role": "tool", "tool_call_id": "call_1", "content": '{"in_stock": 3}'}
# Keys out of alphabetical order, unicode beyond the BMP, escapes, a NUL, numbers JSON keeps exactly, list content.
ODD = {
    "role": "user",
    "name": "zoë",
    "content": [
        {"type": "text", "text": 'Привет 你好 🙂 e\u0301 \u0000 "quoted" \\ \n\t'},
        {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}},
    ],
    "z": {"b": 1, "a": [9007199254740993, 0.1, -2.5e-8, True, None]},
}
LARGE = {"role": "user", "content": "ü" * 700_000}  # 1.4 MB of JSON (SQLite reads one over 1 MiB another way)
REPLY = {"role": "assistant", "content": "Two models fit.", "reasoning_content": "They asked about phones."}


async def test_an_unknown_conversation_does_not_exist(storage: Storage, second: Storage) -> None:
    memory = await load(storage, second, "owner-a", "nobody-wrote-this")
    assert not memory.exists
    assert (memory.system, memory.messages, memory.window_start, memory.summary) == (None, (), 0, None)
    assert (memory.last_usage, memory.size) == (None, 0)


async def test_a_turn_reads_back_in_order_byte_for_byte(storage: Storage, second: Storage) -> None:
    messages = [ODD, TOOL_CALL, TOOL_RESULT, LARGE]
    await storage.turns.load("owner-a", "c")  # known not to exist: a cached miss must not hide the turn
    await storage.turns.append_turn(turn("", system=SYSTEM, messages=messages, reply=REPLY))
    memory = await load(storage, second, "owner-a", "c")
    assert memory.exists
    assert memory.system == tuple(SYSTEM)
    assert memory.messages == (ODD, TOOL_CALL, TOOL_RESULT, LARGE, REPLY)
    assert [encode(m) for m in memory.messages] == [encode(m) for m in (*messages, REPLY)]  # key order too
    assert [encode(m) for m in memory.system] == [encode(m) for m in SYSTEM]
    assert memory.replayed[-1] == {"role": "assistant", "content": "Two models fit."}
    assert memory.size > 1_400_000


async def test_a_second_turn_continues_and_a_new_system_prompt_replaces_the_old(
    storage: Storage, second: Storage
) -> None:
    await storage.turns.append_turn(turn("q1", system=SYSTEM, model="qwen-plus"))
    await storage.turns.append_turn(turn("q2", existed=True, model="qwen-max"))  # system None: keep the stored one
    memory = await load(storage, second, "owner-a", "c")
    assert texts(memory) == ["q1", "re: q1", "q2", "re: q2"]
    assert memory.system == tuple(SYSTEM)
    conv = await storage.catalog.get_conversation("owner-a", "c")
    assert conv is not None and (conv.message_count, conv.model, conv.system) == (4, "qwen-max", SYSTEM)

    new_system = [{"role": "system", "content": "You sell tablets."}]
    await storage.turns.append_turn(turn("q3", existed=True, system=new_system))
    memory = await load(storage, second, "owner-a", "c")
    assert memory.system == tuple(new_system)
    assert texts(memory) == ["q1", "re: q1", "q2", "re: q2", "q3", "re: q3"]


async def test_the_reply_keeps_its_interrupted_flag_and_usage(storage: Storage, second: Storage) -> None:
    first = {"prompt_tokens": 10, "completion_tokens": 3, "prompt_tokens_details": {"cached_tokens": 4}}
    cut = {"prompt_tokens": 20, "completion_tokens": 1}
    await storage.turns.append_turn(turn("q1", usage=first))
    await storage.turns.append_turn(turn("q2", existed=True, usage=cut, interrupted=True))
    assert (await load(storage, second, "owner-a", "c")).last_usage == cut
    conv = await storage.catalog.get_conversation("owner-a", "c")
    assert conv is not None
    assert (conv.prompt_tokens, conv.completion_tokens, conv.cached_tokens) == (30, 4, 4)  # sums over the replies
    stored = await storage.catalog.export_messages(conv)
    assert [(m.interrupted, m.usage) for m in stored] == [(False, None), (False, first), (False, None), (True, cut)]

    await storage.turns.append_turn(turn("q3", existed=True))  # no usage known for the last reply
    assert (await load(storage, second, "owner-a", "c")).last_usage is None


async def test_replace_from_replaces_the_tail_of_the_last_turn(storage: Storage, second: Storage) -> None:
    await storage.turns.append_turn(turn("q1", usage={"prompt_tokens": 1, "completion_tokens": 1}))
    await storage.turns.append_turn(turn("q2", existed=True, usage={"prompt_tokens": 50, "completion_tokens": 50}))
    await storage.turns.load("owner-a", "c")  # cached, then replaced: the cache must not keep the old tail
    edited = turn("q2 edited", existed=True, replace_from=2, usage={"prompt_tokens": 7, "completion_tokens": 2})
    await storage.turns.append_turn(edited)
    memory = await load(storage, second, "owner-a", "c")
    assert texts(memory) == ["q1", "re: q1", "q2 edited", "re: q2 edited"]
    assert memory.last_usage == {"prompt_tokens": 7, "completion_tokens": 2}
    conv = await storage.catalog.get_conversation("owner-a", "c")
    assert conv is not None and (conv.message_count, conv.prompt_tokens, conv.completion_tokens) == (4, 8, 3)

    retry = turn("", existed=True, messages=[], reply={"role": "assistant", "content": "again"}, replace_from=3)
    await storage.turns.append_turn(retry)  # a retry keeps the user message, replaces only the reply
    memory = await load(storage, second, "owner-a", "c")
    assert texts(memory) == ["q1", "re: q1", "q2 edited", "again"]
    assert [m.seq for m in await storage.catalog.export_messages(conv)] == [0, 1, 2, 3]


async def test_a_turn_of_a_deleted_conversation_raises_and_records_nothing(storage: Storage, second: Storage) -> None:
    await storage.turns.append_turn(turn("q1"))
    assert await storage.catalog.delete_conversation("owner-a", "c")
    late = turn("q2", existed=True, idempotent=IdempotentReply("k", "hash", b"{}", time.time() - 60))
    with pytest.raises(ConversationDeleted):
        await storage.turns.append_turn(late)
    assert not (await load(storage, second, "owner-a", "c")).exists
    assert await storage.catalog.get_conversation("owner-a", "c") is None
    assert await storage.turns.idempotent_reply("owner-a", "c", "k", 0.0) is None
    assert await soon(lambda: storage.count_conversations() == 0)

    await storage.turns.append_turn(turn("anew"))  # planned as a new conversation: it starts empty
    assert texts(await load(storage, second, "owner-a", "c")) == ["anew", "re: anew"]


async def test_two_owners_of_one_conversation_id_are_separate(storage: Storage, second: Storage) -> None:
    await storage.turns.append_turn(turn("from a", owner="owner-a", conversation="shared", system=SYSTEM))
    await storage.turns.append_turn(turn("from b", owner="owner-b", conversation="shared"))
    a = await load(storage, second, "owner-a", "shared")
    b = await load(storage, second, "owner-b", "shared")
    assert (texts(a), a.system) == (["from a", "re: from a"], tuple(SYSTEM))
    assert (texts(b), b.system) == (["from b", "re: from b"], None)

    assert await storage.catalog.delete_conversation("owner-a", "shared")
    assert not (await load(storage, second, "owner-a", "shared")).exists
    await storage.turns.append_turn(turn("b again", owner="owner-b", conversation="shared", existed=True))
    assert texts(await load(storage, second, "owner-b", "shared")) == ["from b", "re: from b", "b again", "re: b again"]


async def test_a_turn_keeps_the_window_it_carries(storage: Storage, second: Storage) -> None:
    summary = {"role": "system", "content": "Earlier: they want a phone."}
    await storage.turns.append_turn(turn("q1"))
    await storage.turns.load("owner-a", "c")
    await storage.turns.append_turn(turn("q2", existed=True, window=(2, summary)))
    memory = await load(storage, second, "owner-a", "c")
    assert (memory.window_start, memory.summary) == (2, summary)
    await storage.turns.append_turn(turn("q3", existed=True))  # window None: unchanged
    memory = await load(storage, second, "owner-a", "c")
    assert (memory.window_start, memory.summary, len(memory.messages)) == (2, summary, 6)
    conv = await storage.catalog.get_conversation("owner-a", "c")
    assert conv is not None and (conv.window_start, conv.summary) == (2, summary)

    await storage.turns.append_turn(turn("q4", existed=True, window=(4, None)))  # a cut without a summary
    memory = await load(storage, second, "owner-a", "c")
    assert (memory.window_start, memory.summary) == (4, None)


async def test_replacing_from_before_the_window_resets_it_as_memory_truncated_does(
    storage: Storage, second: Storage
) -> None:
    summary = {"role": "system", "content": "Summary of q1 and q2."}
    for text in ("q1", "q2", "q3"):
        await storage.turns.append_turn(turn(text, existed=text != "q1"))
    await storage.turns.append_turn(turn("q4", existed=True, window=(4, summary)))
    for cut, kept in ((6, True), (4, True), (2, False)):  # a window starting at the cut survives it
        before = await load(storage, second, "owner-a", "c")
        await storage.turns.append_turn(turn(f"redo {cut}", existed=True, replace_from=cut))
        after = await load(storage, second, "owner-a", "c")
        planned = before.truncated(cut)  # what the turn was planned from: the store makes the same cut
        assert (after.window_start, after.summary) == (planned.window_start, planned.summary)
        assert (after.window_start, after.summary) == ((4, summary) if kept else (0, None))
        assert texts(after)[cut:] == [f"redo {cut}", f"re: redo {cut}"]

    newer = {"role": "system", "content": "Summary of q1."}  # a replacing turn's own window is kept
    await storage.turns.append_turn(turn("redo", existed=True, replace_from=2, window=(2, newer)))
    after = await load(storage, second, "owner-a", "c")
    assert (after.window_start, after.summary, texts(after)) == (2, newer, ["q1", "re: q1", "redo", "re: redo"])


async def test_an_idempotent_reply_is_kept_for_its_key_conversation_and_time(storage: Storage) -> None:
    body = '{"id":"chatcmpl-1","choices":[{"message":{"content":"Salut ☺"}}]}'.encode()
    await storage.turns.append_turn(turn("q1", idempotent=IdempotentReply("key-1", "hash-1", body, 0.0)))
    find = storage.turns.idempotent_reply
    assert await find("owner-a", "c", "key-1", time.time() - 60) == ("hash-1", body)
    assert await find("owner-a", "c", "key-1", time.time() + 60) is None  # kept before the cutoff
    assert await find("owner-a", "c", "key-2", 0.0) is None
    assert await find("owner-a", "other", "key-1", 0.0) is None
    assert await find("owner-b", "c", "key-1", 0.0) is None


async def test_older_replies_go_with_a_later_turn_and_with_a_rewind(storage: Storage) -> None:
    def keep(key: str, expires_before: float) -> IdempotentReply:
        return IdempotentReply(key, f"hash-{key}", key.encode(), expires_before)

    await storage.turns.append_turn(turn("q1", idempotent=keep("k1", 0.0)))
    await storage.turns.append_turn(turn("q2", existed=True, idempotent=keep("k2", time.time() - 60)))
    between = time.time()
    assert await storage.turns.idempotent_reply("owner-a", "c", "k1", 0.0) == ("hash-k1", b"k1")
    await storage.turns.append_turn(turn("q3", existed=True, idempotent=keep("k3", between)))
    assert await storage.turns.idempotent_reply("owner-a", "c", "k1", 0.0) is None
    assert await storage.turns.idempotent_reply("owner-a", "c", "k2", 0.0) is None
    assert await storage.turns.idempotent_reply("owner-a", "c", "k3", 0.0) == ("hash-k3", b"k3")

    conv = await storage.catalog.get_conversation("owner-a", "c")
    assert conv is not None and await storage.catalog.rewind(conv, 1, time.time()) == 2
    assert await storage.turns.idempotent_reply("owner-a", "c", "k3", 0.0) is None  # README: a rewind forgets


async def test_a_write_through_another_storage_is_seen_by_the_next_turn(backend: Backend, storage: Storage) -> None:
    other = await backend.open()
    await storage.turns.append_turn(turn("q1"))
    assert texts(await storage.turns.load("owner-a", "c")) == ["q1", "re: q1"]  # now cached
    await other.turns.append_turn(turn("q2", existed=True))
    # A turn runs in a later event-loop iteration than the other process's commit (it has awaited its request);
    # the promise is about the next turn, not about a load in the same iteration.
    await asyncio.sleep(0)
    assert texts(await storage.turns.load("owner-a", "c")) == ["q1", "re: q1", "q2", "re: q2"]
    assert await other.catalog.delete_conversation("owner-a", "c")
    await asyncio.sleep(0)
    assert not (await storage.turns.load("owner-a", "c")).exists
    with pytest.raises(ConversationDeleted):
        await storage.turns.append_turn(turn("q3", existed=True))


async def test_a_healthy_storage_is_ready(storage: Storage) -> None:
    assert await storage.readiness(write=True) is None
    await storage.turns.append_turn(turn("q1"))
    assert await storage.readiness() is None


async def test_count_conversations_counts_every_owner_and_process(storage: Storage, second: Storage) -> None:
    assert storage.count_conversations() == 0
    await storage.turns.append_turn(turn("q", owner="owner-a"))
    await storage.turns.append_turn(turn("q", owner="owner-b"))
    await storage.turns.append_turn(turn("q", owner="owner-b", conversation="d"))
    await storage.turns.append_turn(turn("q2", owner="owner-b", conversation="d", existed=True))
    assert await storage.catalog.create_conversation(info("owner-b", "e"), [])
    assert await soon(lambda: storage.count_conversations() == 4)
    assert await storage.catalog.delete_conversation("owner-b", "c")
    assert await soon(lambda: storage.count_conversations() == 3)
    assert await second.catalog.create_conversation(info("", "imported elsewhere"), [])  # the CLI, say
    assert await soon(lambda: storage.count_conversations() == 4)


async def test_observe_writes_is_told_each_commit_of_turns(storage: Storage) -> None:
    seen: list[float] = []
    storage.observe_writes(seen.append)
    await storage.turns.append_turn(turn("q1"))
    await storage.turns.append_turn(turn("q2", existed=True))
    assert len(seen) == 2 and all(isinstance(s, float) and s >= 0 for s in seen)
