"""The PostgreSQL backend beyond the storage contract: what its design promises that a port cannot show.  A turn
costs one round trip to load (a cached history validated by its version) and one to record; the server restarted
under a running gateway is survived (the pool reconnects, readiness recovers, acknowledged turns are all there);
migrations applied by processes starting together run once; the password never appears in an error or a log.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import pytest
from structlog.testing import capture_logs

from gateway.core.ports import Storage
from gateway.errors import StorageUnavailable
from gateway.settings.config import Config
from gateway.storage.open import STORAGE_ERRORS, open_storage
from gateway.storage.postgres.backend import PostgresStorage
from gateway.storage.postgres.migrations import MIGRATIONS
from tests.conftest import make_config
from tests.postgres import PostgresServer, _free_port
from tests.storage.conftest import UNUSED_UPSTREAM, texts, turn

PASSWORD = "s3cret-Pa55word"


def _config(tmp_path: Path, url: str, **flags: Any) -> Config:
    return make_config(tmp_path, UNUSED_UPSTREAM, storage__path=url, **flags)


def _with_password(url: str, password: str = PASSWORD) -> str:
    """``url`` with a password in its user part (the test cluster trusts every local login, so any works)."""
    parts = urlsplit(url)
    user, _, host = parts.netloc.rpartition("@")
    return urlunsplit((parts.scheme, f"{user}:{password}@{host}", parts.path, parts.query, ""))


@contextlib.contextmanager
def round_trips(storage: Storage) -> Iterator[list[int]]:
    """The requests sent on the storage's pool connections while the block runs, one entry each.  asyncpg hands
    each request (a statement's Bind/Execute/Sync, or a Parse/Describe for a statement not prepared yet) to the
    transport in one write and awaits the answer before the next, so writes are round trips.  Counting them needs
    the transport (private in asyncpg): a query logger would miss the round trips of preparing statements."""
    assert isinstance(storage, PostgresStorage)
    sent: list[int] = []
    patched = []
    for holder in storage.database.pool._holders:
        conn = holder._con
        if conn is None:
            continue
        transport = conn._transport
        original = transport.write

        def write(data: Any, original: Any = original) -> Any:
            sent.append(len(data))
            return original(data)

        transport.write = write
        patched.append((transport, original))
    try:
        yield sent
    finally:
        for transport, original in patched:
            transport.write = original


async def test_a_cached_turn_costs_one_round_trip_to_load_and_one_to_record(tmp_path: Path, postgres_url: str) -> None:
    # One pool connection, so every statement goes where the count looks; no background count runs meanwhile
    # (turns of an existing conversation leave the count alone).
    storage = await open_storage(_config(tmp_path, postgres_url, storage__pool_size=1))
    try:
        await storage.turns.append_turn(turn("q0"))
        memory = await storage.turns.load("owner-a", "c")
        await storage.turns.append_turn(turn("warm", existed=True, expected_version=memory.version))
        await asyncio.sleep(0.3)  # the count's refresh after the first turn created the conversation
        with round_trips(storage) as sent:
            for n in range(5):
                memory = await storage.turns.load("owner-a", "c")
                await storage.turns.append_turn(turn(f"q{n + 1}", existed=True, expected_version=memory.version))
        assert len(sent) == 10  # 5 turns: a load and a record each
        assert len((await storage.turns.load("owner-a", "c")).messages) == 14
    finally:
        await storage.close()


async def test_a_load_of_a_history_changed_elsewhere_is_one_round_trip_too(tmp_path: Path, postgres_url: str) -> None:
    config = _config(tmp_path, postgres_url, storage__pool_size=1)
    storage, other = await open_storage(config), await open_storage(config, cache=False)
    try:
        await storage.turns.append_turn(turn("q1"))
        assert texts(await storage.turns.load("owner-a", "c")) == ["q1", "re: q1"]  # cached now
        await other.turns.append_turn(turn("q2", existed=True))
        with round_trips(storage) as sent:
            memory = await storage.turns.load("owner-a", "c")
        assert texts(memory) == ["q1", "re: q1", "q2", "re: q2"]
        assert len(sent) == 1
    finally:
        await other.close()
        await storage.close()


async def test_processes_starting_together_migrate_once(tmp_path: Path, postgres_url: str) -> None:
    config = _config(tmp_path, postgres_url)
    opened = await asyncio.gather(*(open_storage(config, cache=False) for _ in range(4)))
    try:
        assert isinstance(opened[0], PostgresStorage)
        rows = await opened[0].database.fetch("SELECT name FROM schema_migrations ORDER BY name")
        assert sorted(row["name"] for row in rows) == sorted(step.__name__ for step in MIGRATIONS)
    finally:
        for storage in opened:
            await storage.close()


async def _soon_ready(storage: Storage, seconds: float = 10.0) -> bool:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + seconds
    while await storage.readiness() is not None:
        if loop.time() > deadline:
            return False
        await asyncio.sleep(0.05)
    return True


async def test_a_restarted_server_is_survived_and_keeps_every_acknowledged_turn(
    tmp_path: Path, postgres_server: PostgresServer, postgres_url: str
) -> None:
    storage = await open_storage(_config(tmp_path, _with_password(postgres_url)))
    try:
        await storage.turns.append_turn(turn("q1"))
        assert await storage.readiness(write=True) is None
        with capture_logs() as logs:
            postgres_server.kill()
            try:
                fault = await storage.readiness()
                assert fault is not None and fault.reason == "unreachable"
                with pytest.raises(StorageUnavailable) as failed:
                    await storage.turns.append_turn(turn("lost", existed=True))
                with pytest.raises(StorageUnavailable):
                    await storage.turns.load("owner-a", "c")
            finally:
                postgres_server.start()
            assert await _soon_ready(storage)
        await storage.turns.append_turn(turn("q2", existed=True))
        assert texts(await storage.turns.load("owner-a", "c")) == ["q1", "re: q1", "q2", "re: q2"]
        # Nothing the outage produced shows the password: the fault, the error and its causes, the log lines.
        shown = [fault.detail, *_chain(failed.value), *map(repr, logs)]
        assert not [text for text in shown if PASSWORD in text]
    finally:
        await storage.close()


def _chain(exc: BaseException | None) -> Iterator[str]:
    while exc is not None:
        yield str(exc)
        yield repr(exc)
        exc = exc.__cause__ or exc.__context__


async def test_an_unreachable_server_is_named_without_its_password(tmp_path: Path) -> None:
    url = _with_password(f"postgresql://gateway@127.0.0.1:{_free_port()}/gateway")
    with pytest.raises(STORAGE_ERRORS) as failed:
        await open_storage(_config(tmp_path, url))
    assert "127.0.0.1" in str(failed.value) and "***" in str(failed.value)
    assert not [text for text in _chain(failed.value) if PASSWORD in text]


async def test_an_unknown_database_is_refused_without_the_password(tmp_path: Path, postgres_url: str) -> None:
    url = _with_password(postgres_url.rsplit("/", 1)[0] + "/no_such_database")
    with pytest.raises(STORAGE_ERRORS) as failed:
        await open_storage(_config(tmp_path, url))
    assert "no_such_database" in str(failed.value)
    assert not [text for text in _chain(failed.value) if PASSWORD in text]
