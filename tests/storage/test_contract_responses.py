"""Storage contract, the Responses API calls turns record: what ``TurnStore.find_response`` and ``delete_response``
promise, and when a response record goes (with its reply: a replacing turn, a rewind, a deleted or purged
conversation), run against every backend (``backend=...``, tests/storage/conftest.py) through the ports only.

A new backend needs no new test here: add it to ``DATABASES`` in tests/storage/conftest.py.
"""

from __future__ import annotations

import time
from typing import Any

import pytest

from gateway.core.ports import ConversationDeleted, ResponseRecord, Storage, StoredResponse
from gateway.errors import StorageUnavailable
from tests.storage.conftest import existing, load, texts, turn, user

CREATED_AT = 1_700_000_200.125
REQUEST: dict[str, Any] = {
    "model": "qwen-plus",
    "instructions": "Be brief.",
    "tools": [{"type": "function", "name": "stock", "parameters": {"type": "object"}, "strict": None}],
    "tool_choice": "auto",
    "parallel_tool_calls": True,
    "text": {"format": {"type": "text"}},
    "metadata": {"ключ": "значение 🙂"},
    "temperature": 0.7,
    "top_p": None,
    "max_output_tokens": 512,
    "truncation": "disabled",
    "previous_response_id": None,
    "user": None,
    "reasoning": {"effort": None},
    "store": True,
}
LARGE = {"role": "user", "content": "ü" * 700_000}  # 1.4 MB of JSON: a history read another way on SQLite


def record(response_id: str, **request: Any) -> ResponseRecord:
    return ResponseRecord(response_id, CREATED_AT, {**REQUEST, **request})


async def found(storage: Storage, response_id: str, owner: str = "owner-a") -> StoredResponse:
    stored = await storage.turns.find_response(owner, response_id)
    assert stored is not None, response_id
    return stored


def bodies(stored: StoredResponse) -> list[Any]:
    return [m.body for m in stored.inputs]


async def test_a_turn_records_its_response_with_the_inputs_it_added(storage: Storage, second: Storage) -> None:
    await storage.turns.append_turn(turn("before"))  # a chat completions turn: history, not this response's input
    tool_result = {"role": "tool", "tool_call_id": "call_1", "content": '{"in_stock": 3}'}
    reply = {"role": "assistant", "content": "Three left.", "reasoning_content": "Count them."}
    usage = {"prompt_tokens": 12, "completion_tokens": 4}
    response = record("resp_1", previous_response_id="resp_0")
    await storage.turns.append_turn(
        turn("q1", existed=True, messages=[user("q1"), tool_result], reply=reply, usage=usage, response=response)
    )
    for through in (storage, second):  # ``second``: read from the database, not from a cache
        stored = await found(through, "resp_1")
        assert (stored.id, stored.conversation_id, stored.created_at) == ("resp_1", "c", CREATED_AT)
        assert stored.request == response.request
        assert (stored.reply.body, stored.reply.seq, stored.reply.usage, stored.reply.interrupted) == (
            reply,
            4,
            usage,
            False,
        )
        assert bodies(stored) == [user("q1"), tool_result]
        assert [m.seq for m in stored.inputs] == [2, 3]
        assert stored.latest
    conv = await existing(storage, "owner-a", "c")
    by_seq = {m.seq: m for m in await storage.catalog.export_messages(conv)}
    assert [m.row_id for m in (*stored.inputs, stored.reply)] == [by_seq[seq].row_id for seq in (2, 3, 4)]


async def test_an_interrupted_reply_and_a_retried_turn_without_inputs(storage: Storage) -> None:
    await storage.turns.append_turn(turn("q1", interrupted=True, response=record("resp_1")))
    assert (await found(storage, "resp_1")).reply.interrupted
    again = {"role": "assistant", "content": "again"}
    retry = turn("", existed=True, messages=[], reply=again, replace_from=1, response=record("resp_2"))
    await storage.turns.append_turn(retry)  # keeps the user message: it is not this response's input
    assert await storage.turns.find_response("owner-a", "resp_1") is None
    stored = await found(storage, "resp_2")
    assert (stored.inputs, stored.reply.body, stored.reply.seq, stored.latest) == ([], again, 1, True)


async def test_a_later_turn_makes_a_response_no_longer_the_latest(storage: Storage) -> None:
    await storage.turns.append_turn(turn("q1", response=record("resp_1")))
    await storage.turns.append_turn(turn("q2", existed=True, response=record("resp_2", temperature=0.1)))
    first, latest = await found(storage, "resp_1"), await found(storage, "resp_2")
    assert (first.latest, bodies(first), first.reply.body["content"]) == (False, [user("q1")], "re: q1")
    assert (latest.latest, bodies(latest), latest.reply.seq) == (True, [user("q2")], 3)
    assert (first.request["temperature"], latest.request["temperature"]) == (0.7, 0.1)
    await storage.turns.append_turn(turn("q3", existed=True))  # a chat completions turn moves it on too
    assert not (await found(storage, "resp_2")).latest


async def test_a_response_is_its_owners_only(storage: Storage) -> None:
    await storage.turns.append_turn(turn("from a", owner="owner-a", conversation="shared", response=record("resp_a")))
    await storage.turns.append_turn(turn("from b", owner="owner-b", conversation="shared"))
    assert await storage.turns.find_response("owner-b", "resp_a") is None
    assert await storage.turns.find_response("owner-a", "resp_unknown") is None
    assert not await storage.turns.delete_response("owner-b", "resp_a")
    assert not await storage.turns.delete_response("owner-a", "resp_unknown")
    assert (await found(storage, "resp_a")).conversation_id == "shared"
    assert texts(await storage.turns.load("owner-b", "shared")) == ["from b", "re: from b"]


async def test_a_response_in_a_large_conversation(storage: Storage, second: Storage) -> None:
    await storage.turns.append_turn(turn("", messages=[LARGE], response=record("resp_1")))
    await storage.turns.append_turn(turn("q2", existed=True, response=record("resp_2")))
    for through in (storage, second):
        first, latest = await found(through, "resp_1"), await found(through, "resp_2")
        assert (bodies(first), first.latest) == ([LARGE], False)
        assert (bodies(latest), latest.reply.body["content"], latest.latest) == ([user("q2")], "re: q2", True)


async def test_a_replacing_turn_removes_the_responses_it_cuts(storage: Storage, second: Storage) -> None:
    for n in (1, 2, 3):
        await storage.turns.append_turn(turn(f"q{n}", existed=n > 1, response=record(f"resp_{n}")))
    edited = turn("q3 edited", existed=True, replace_from=4, response=record("resp_3b"))
    await storage.turns.append_turn(edited)  # replaces the third turn whole
    assert await storage.turns.find_response("owner-a", "resp_3") is None
    assert (await found(storage, "resp_2")).latest is False
    assert bodies(await found(storage, "resp_3b")) == [user("q3 edited")]

    await storage.turns.append_turn(turn("q2 edited", existed=True, replace_from=2))  # without a response
    assert await storage.turns.find_response("owner-a", "resp_2") is None
    assert await storage.turns.find_response("owner-a", "resp_3b") is None
    assert await second.turns.find_response("owner-a", "resp_3b") is None
    kept = await found(storage, "resp_1")
    assert (bodies(kept), kept.latest) == ([user("q1")], False)


async def test_a_rewind_removes_the_responses_past_the_cut(storage: Storage) -> None:
    for n in (1, 2, 3):
        await storage.turns.append_turn(turn(f"q{n}", existed=n > 1, response=record(f"resp_{n}")))
    conv = await existing(storage, "owner-a", "c")
    assert await storage.catalog.rewind(conv, 2, time.time()) == 4
    assert await storage.turns.find_response("owner-a", "resp_2") is None
    assert await storage.turns.find_response("owner-a", "resp_3") is None
    assert (await found(storage, "resp_1")).latest  # its reply is the last message again
    await storage.turns.append_turn(turn("q2 again", existed=True, response=record("resp_2b")))  # the same seqs
    assert await storage.turns.find_response("owner-a", "resp_2") is None
    assert (await found(storage, "resp_2b")).reply.body["content"] == "re: q2 again"


async def test_deleting_or_purging_a_conversation_removes_its_responses(storage: Storage) -> None:
    # Each conversation deleted is the newest one stored, and then created anew under the same id (a backend may
    # give the new one the deleted one's row): nothing of the deleted one's responses may come back with it.
    await storage.turns.append_turn(turn("q1", conversation="kept", response=record("resp_kept")))
    await storage.turns.append_turn(turn("q1", response=record("resp_1")))
    assert await storage.catalog.delete_conversation("owner-a", "c")
    assert await storage.turns.find_response("owner-a", "resp_1") is None
    await storage.turns.append_turn(turn("anew"))
    assert await storage.turns.find_response("owner-a", "resp_1") is None

    await storage.turns.append_turn(turn("q1", conversation="idle", response=record("resp_idle")))
    before = time.time() + 60
    idle = [row for row in await storage.catalog.idle_conversations(before, 0, 10) if row[2] == "idle"]
    assert await storage.catalog.delete_idle(idle, before) == 1
    assert await storage.turns.find_response("owner-a", "resp_idle") is None
    await storage.turns.append_turn(turn("anew", conversation="idle"))
    assert await storage.turns.find_response("owner-a", "resp_idle") is None
    assert (await found(storage, "resp_kept")).conversation_id == "kept"


async def test_deleting_the_latest_response_removes_its_turn(storage: Storage, second: Storage) -> None:
    await storage.turns.append_turn(
        turn("q1", usage={"prompt_tokens": 5, "completion_tokens": 2}, response=record("resp_1"))
    )
    usage = {"prompt_tokens": 40, "completion_tokens": 9, "prompt_tokens_details": {"cached_tokens": 8}}
    await storage.turns.append_turn(
        turn("q2", existed=True, messages=[user("q2"), user("more")], usage=usage, response=record("resp_2"))
    )
    before = await existing(storage, "owner-a", "c")
    assert texts(await storage.turns.load("owner-a", "c"))[-3:] == ["q2", "more", "re: q2"]  # cached, then cut

    assert await storage.turns.delete_response("owner-a", "resp_2")
    assert await storage.turns.find_response("owner-a", "resp_2") is None
    assert not await storage.turns.delete_response("owner-a", "resp_2")
    memory = await load(storage, second, "owner-a", "c")
    assert texts(memory) == ["q1", "re: q1"]
    assert memory.last_usage == {"prompt_tokens": 5, "completion_tokens": 2}
    after = await existing(storage, "owner-a", "c")
    assert (after.message_count, after.prompt_tokens, after.completion_tokens, after.cached_tokens) == (2, 5, 2, 0)
    assert after.updated_at == before.updated_at
    assert (await found(storage, "resp_1")).latest

    await storage.turns.append_turn(turn("q3", existed=True))  # the conversation goes on from there
    assert texts(await load(storage, second, "owner-a", "c")) == ["q1", "re: q1", "q3", "re: q3"]


async def test_deleting_an_earlier_response_keeps_its_messages(storage: Storage, second: Storage) -> None:
    await storage.turns.append_turn(turn("q1", response=record("resp_1")))
    await storage.turns.append_turn(turn("q2", existed=True, response=record("resp_2")))
    assert await storage.turns.delete_response("owner-a", "resp_1")
    assert await storage.turns.find_response("owner-a", "resp_1") is None
    assert texts(await load(storage, second, "owner-a", "c")) == ["q1", "re: q1", "q2", "re: q2"]
    assert (await existing(storage, "owner-a", "c")).message_count == 4
    latest = await found(storage, "resp_2")
    assert (bodies(latest), latest.latest) == ([user("q2")], True)


async def test_a_turn_of_a_deleted_conversation_records_no_response(storage: Storage) -> None:
    await storage.turns.append_turn(turn("q1"))
    assert await storage.catalog.delete_conversation("owner-a", "c")
    with pytest.raises(ConversationDeleted):
        await storage.turns.append_turn(turn("q2", existed=True, response=record("resp_late")))
    assert await storage.turns.find_response("owner-a", "resp_late") is None
    await storage.turns.append_turn(turn("anew", response=record("resp_late")))  # its id was never taken
    assert bodies(await found(storage, "resp_late")) == [user("anew")]


async def test_a_turn_whose_response_cannot_be_recorded_records_nothing(storage: Storage, second: Storage) -> None:
    await storage.turns.append_turn(turn("q1", response=record("resp_1")))
    with pytest.raises(StorageUnavailable):  # a response id is recorded once
        await storage.turns.append_turn(turn("q2", existed=True, response=record("resp_1", temperature=0.0)))
    assert texts(await load(storage, second, "owner-a", "c")) == ["q1", "re: q1"]
    stored = await found(storage, "resp_1")
    assert (stored.request["temperature"], stored.latest) == (0.7, True)
