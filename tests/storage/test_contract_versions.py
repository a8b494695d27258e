"""Storage contract, versions and the fence: ``Memory.version`` moves on with every kind of write that changes what
a turn loads, a turn planned from a version no longer stored records nothing (``Turn.expected_version``:
``ConversationChanged``), and a history cached by one storage is never served after another storage changed it.
Run against every backend (``backend=...``, tests/storage/conftest.py) through the ports only.

Another storage opened on the same database stands for another process (a worker, a replica, the CLI).  A load
follows the other's write in a later event-loop iteration (``asyncio.sleep(0)``), as the next turn would.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

import pytest

from gateway.core.ports import (
    ConversationChanged,
    ConversationDeleted,
    NewMessage,
    ResponseRecord,
    Storage,
    StoredMessage,
)
from gateway.storage.open import open_storage
from tests.storage.conftest import Backend, existing, info, load, soon, texts, turn, user

Edit = Callable[[Storage], Awaitable[object]]


async def _turn(s: Storage) -> object:
    return await s.turns.append_turn(turn("more", existed=True))


async def _replacing_turn(s: Storage) -> object:
    return await s.turns.append_turn(turn("again", existed=True, replace_from=2))


async def _window_turn(s: Storage) -> object:
    summary = {"role": "system", "content": "Earlier: q1."}
    return await s.turns.append_turn(turn("later", existed=True, window=(2, summary)))


async def _system_turn(s: Storage) -> object:
    return await s.turns.append_turn(turn("hi", existed=True, system=[{"role": "system", "content": "New."}]))


async def _rewind(s: Storage) -> object:
    return await s.catalog.rewind(await existing(s, "owner-a", "c"), 1, time.time())


async def _append_messages(s: Storage) -> object:
    conversation = await existing(s, "owner-a", "c")
    return await s.catalog.append_messages(conversation, [NewMessage(user("added"), 1.0)], time.time(), max_bytes=None)


async def _delete_message(s: Storage) -> object:
    conversation = await existing(s, "owner-a", "c")
    first: StoredMessage = (await s.catalog.export_messages(conversation))[0]
    return await s.catalog.delete_message(conversation, first.row_id)


async def _delete_latest_response(s: Storage) -> object:
    return await s.turns.delete_response("owner-a", "resp_2")


EDITS: dict[str, Edit] = {
    "turn": _turn,
    "replacing-turn": _replacing_turn,
    "window-turn": _window_turn,
    "system-turn": _system_turn,
    "rewind": _rewind,
    "append-messages": _append_messages,
    "delete-message": _delete_message,
    "delete-latest-response": _delete_latest_response,
}


async def _two_turns(storage: Storage) -> None:
    await storage.turns.append_turn(turn("q1", response=ResponseRecord("resp_1", 1.0, {"model": "m"})))
    await storage.turns.append_turn(turn("q2", existed=True, response=ResponseRecord("resp_2", 2.0, {"model": "m"})))


async def test_a_conversation_has_a_version_once_stored_and_each_turn_moves_it_on(
    storage: Storage, second: Storage
) -> None:
    unknown = await load(storage, second, "owner-a", "c")
    await storage.turns.append_turn(turn("q1"))
    first = await load(storage, second, "owner-a", "c")
    await storage.turns.append_turn(turn("q2", existed=True, expected_version=first.version))
    after = await load(storage, second, "owner-a", "c")
    assert unknown.version != first.version
    assert after.version == first.version + 1  # a fenced turn makes expected_version + 1


async def test_a_turn_of_another_conversation_leaves_the_version_alone(storage: Storage, second: Storage) -> None:
    await storage.turns.append_turn(turn("q1"))
    before = await load(storage, second, "owner-a", "c")
    await storage.turns.append_turn(turn("elsewhere", conversation="d"))
    await storage.turns.append_turn(turn("elsewhere", owner="owner-b"))
    assert (await load(storage, second, "owner-a", "c")).version == before.version


@pytest.mark.parametrize("edit", EDITS.values(), ids=EDITS.keys())
async def test_every_kind_of_write_moves_the_version_on_and_is_seen_through_the_cache(
    backend: Backend, storage: Storage, second: Storage, edit: Edit
) -> None:
    other = await backend.open()  # another process, with a cache of its own
    await _two_turns(storage)
    before = await load(storage, second, "owner-a", "c")  # cached in ``storage``
    await other.turns.load("owner-a", "c")  # and in ``other``
    await edit(other)
    await asyncio.sleep(0)
    after = await load(storage, second, "owner-a", "c")  # ``load`` checks the cached copy against the database
    assert after.version != before.version
    assert after != before
    await edit(storage)  # and the other way round
    await asyncio.sleep(0)
    assert await other.turns.load("owner-a", "c") == await second.turns.load("owner-a", "c")


@pytest.mark.parametrize("how", ["create", "fork"])
async def test_a_created_conversation_is_not_taken_for_the_missing_one_a_cache_holds(
    backend: Backend, storage: Storage, second: Storage, how: str
) -> None:
    other = await backend.open()
    await storage.turns.append_turn(turn("source", conversation="src"))
    assert not (await storage.turns.load("owner-a", "c")).exists  # a miss, cached
    if how == "create":
        assert await other.catalog.create_conversation(info("owner-a", "c"), [NewMessage(user("imported"), 1.0)])
    else:
        source = await existing(other, "owner-a", "src")
        assert await other.catalog.fork(source, "c", last_seq=1, metadata={}, at=time.time())
    await asyncio.sleep(0)
    created = await load(storage, second, "owner-a", "c")
    assert created.exists and created.version != 0
    assert texts(created) == (["imported"] if how == "create" else ["source", "re: source"])


async def test_a_conversation_deleted_and_created_anew_is_not_served_from_the_cache(
    backend: Backend, storage: Storage, second: Storage
) -> None:
    """Versions may start again for a conversation created anew (an import after a delete, say): even at the same
    version, the cached history of the deleted one is not the new one's."""
    other = await backend.open()
    await storage.turns.append_turn(turn("old"))
    old = await load(storage, second, "owner-a", "c")  # cached
    assert await other.catalog.delete_conversation("owner-a", "c")
    await other.turns.append_turn(turn("new"))  # stored anew, at the version the old one had
    await asyncio.sleep(0)
    new = await load(storage, second, "owner-a", "c")
    assert texts(new) == ["new", "re: new"]
    assert new != old


async def test_a_fenced_turn_planned_from_a_stale_version_records_nothing(
    backend: Backend, storage: Storage, second: Storage
) -> None:
    other = await backend.open()
    await storage.turns.append_turn(turn("q1"))
    planned = await storage.turns.load("owner-a", "c")
    await other.turns.append_turn(turn("theirs", existed=True))  # lands while the turn is in flight
    await asyncio.sleep(0)
    with pytest.raises(ConversationChanged):
        await storage.turns.append_turn(
            turn("mine", existed=True, expected_version=planned.version, idempotent=None, response=None)
        )
    with pytest.raises(ConversationChanged):
        await storage.turns.append_turn(
            turn("mine", existed=True, expected_version=planned.version, response=ResponseRecord("resp_x", 1.0, {}))
        )
    stored = await load(storage, second, "owner-a", "c")
    assert texts(stored) == ["q1", "re: q1", "theirs", "re: theirs"]
    assert await storage.turns.find_response("owner-a", "resp_x") is None
    # Planned again from what is stored now, it is recorded.
    await storage.turns.append_turn(turn("mine", existed=True, expected_version=stored.version))
    assert texts(await load(storage, second, "owner-a", "c"))[-2:] == ["mine", "re: mine"]


async def test_a_fenced_turn_of_a_deleted_conversation_is_refused_as_deleted(storage: Storage, second: Storage) -> None:
    await storage.turns.append_turn(turn("q1"))
    planned = await storage.turns.load("owner-a", "c")
    assert await second.catalog.delete_conversation("owner-a", "c")
    await asyncio.sleep(0)
    with pytest.raises(ConversationDeleted):
        await storage.turns.append_turn(turn("q2", existed=True, expected_version=planned.version))
    assert not (await load(storage, second, "owner-a", "c")).exists


async def test_a_fenced_turn_refused_among_turns_committed_together_fails_alone(
    backend: Backend, second: Storage
) -> None:
    # Several turns in flight: a backend that commits turns finishing together as one (SQLite) groups these.
    storage = await open_storage(backend.config, turns_in_flight=lambda: 3)
    backend.opened.append(storage)
    for conversation in ("a", "b", "stale"):
        await storage.turns.append_turn(turn("q1", conversation=conversation))
    versions = {c: (await storage.turns.load("owner-a", c)).version for c in ("a", "b", "stale")}
    await second.turns.append_turn(turn("theirs", conversation="stale", existed=True))
    await asyncio.sleep(0)
    outcomes = await asyncio.gather(
        *(
            storage.turns.append_turn(turn("q2", conversation=c, existed=True, expected_version=versions[c]))
            for c in ("a", "stale", "b")
        ),
        return_exceptions=True,
    )
    assert outcomes[0] is None and outcomes[2] is None
    assert isinstance(outcomes[1], ConversationChanged)
    for conversation in ("a", "b"):
        assert texts(await load(storage, second, "owner-a", conversation))[-1] == "re: q2"
    assert texts(await load(storage, second, "owner-a", "stale"))[-1] == "re: theirs"


async def test_a_cache_follows_turns_written_by_two_storages_in_turn(backend: Backend, storage: Storage) -> None:
    other = await backend.open()
    stores = [storage, other]
    for i in range(6):
        writer = stores[i % 2]
        planned = await writer.turns.load("owner-a", "c")  # from its cache when it can be trusted
        fence = planned.version if planned.exists else None
        await writer.turns.append_turn(turn(f"q{i}", existed=planned.exists, expected_version=fence))
        await asyncio.sleep(0)
    for s in stores:
        assert texts(await s.turns.load("owner-a", "c")) == [t for i in range(6) for t in (f"q{i}", f"re: q{i}")]


async def test_turns_another_storage_records_do_not_move_the_key_version(backend: Backend, storage: Storage) -> None:
    """A worker's turns are no reason for every other worker to read the keys again: only key writes are."""
    other = await backend.open()
    await storage.keys.create("tenant-a", None, False)
    await asyncio.sleep(0.1)
    before = storage.keys.version()
    for i in range(3):
        await other.turns.append_turn(turn(f"q{i}", existed=i > 0))
        await asyncio.sleep(0)
        assert storage.keys.version() == before
    await other.keys.create("tenant-b", None, False)
    assert await soon(lambda: storage.keys.version() != before)
