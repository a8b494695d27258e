"""Fixtures of the storage contract tests (test_contract_*.py): every storage backend, opened through
``open_storage`` and seen only through the ports, plus the few helpers those tests share.

To add a backend: write a ``*_database`` context manager below that yields a ``Config`` naming a fresh, empty
database of it (and drops that database afterwards), and add it to ``DATABASES``.  Every contract test then runs
against it as ``backend=<name>``.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiosqlite
import asyncpg
import pytest

from gateway.core.history import replay
from gateway.core.ports import ConversationInfo, Memory, Storage, Turn
from gateway.protocols.openai_chat import Message, encode
from gateway.settings.config import Config
from gateway.storage.open import open_storage
from gateway.storage.postgres import migrations as postgres_migrations
from gateway.storage.postgres.coordination_schema import COORDINATION_MIGRATIONS
from gateway.storage.sqlite import migrations as sqlite_migrations
from tests.conftest import make_config

UNUSED_UPSTREAM = "http://127.0.0.1:9/v1"  # the config needs one; storage never calls it
# Times with more digits than a microsecond: an export gives them back exactly (README: export/import round trip).
CREATED, UPDATED = 1_700_000_000.1234567, 1_700_000_100.7654321


@asynccontextmanager
async def sqlite_database(tmp_path: Path) -> AsyncIterator[Config]:
    yield make_config(tmp_path, UNUSED_UPSTREAM)  # storage.path: a new gateway.db under tmp_path


@asynccontextmanager
async def postgres_database(tmp_path: Path, request: pytest.FixtureRequest) -> AsyncIterator[Config]:
    url = request.getfixturevalue("postgres_url")  # a fresh database on the session's server (tests/conftest.py)
    yield make_config(tmp_path, UNUSED_UPSTREAM, storage__path=url)


DATABASES: dict[str, Callable[[Path, pytest.FixtureRequest], AbstractAsyncContextManager[Config]]] = {
    "sqlite": lambda tmp_path, request: sqlite_database(tmp_path),
    "postgres": postgres_database,
}


@dataclass
class Backend:
    """One backend's fresh database: ``open`` opens a storage on it (another one at each call, as a second
    process would); all of them are closed after the test."""

    name: str
    config: Config
    opened: list[Storage]

    async def open(self, *, cache: bool = True) -> Storage:
        storage = await open_storage(self.config, cache=cache)
        self.opened.append(storage)
        return storage


@pytest.fixture(params=sorted(DATABASES), ids=lambda name: f"backend={name}")
async def backend(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Backend]:
    async with DATABASES[request.param](tmp_path, request) as config:
        opened = Backend(request.param, config, [])
        try:
            yield opened
        finally:
            for storage in reversed(opened.opened):
                await storage.close()


@pytest.fixture
async def storage(backend: Backend) -> Storage:
    """The storage under test, opened as the server opens it (history cache on)."""
    return await backend.open()


@pytest.fixture
async def second(backend: Backend) -> Storage:
    """Another storage on the same database, without a cache: what it loads was read from the database."""
    return await backend.open(cache=False)


def user(text: str) -> Message:
    return {"role": "user", "content": text}


def turn(text: str, *, owner: str = "owner-a", conversation: str = "c", **fields: Any) -> Turn:
    """A turn of one user message ``text`` and the reply ``re: text``; ``fields`` override any Turn field."""
    values: dict[str, Any] = {
        "owner": owner,
        "external_id": conversation,
        "model": "qwen-plus",
        "system": None,
        "messages": [user(text)],
        "reply": {"role": "assistant", "content": f"re: {text}"},
        "interrupted": False,
        "usage": None,
    }
    return Turn(**{**values, **fields})


def info(owner: str, conversation: str, updated_at: float = UPDATED, **fields: Any) -> ConversationInfo:
    values: dict[str, Any] = {
        "row_id": 0,
        "owner": owner,
        "external_id": conversation,
        "created_at": CREATED,
        "updated_at": updated_at,
        "message_count": 0,
        "model": None,
        "metadata": {},
        "prompt_tokens": 0,
        "completion_tokens": 0,
        "cached_tokens": 0,
        "system": None,
    }
    return ConversationInfo(**{**values, **fields})


async def existing(storage: Storage, owner: str, conversation: str) -> ConversationInfo:
    found = await storage.catalog.get_conversation(owner, conversation)
    assert found is not None, (owner, conversation)
    return found


async def load(storage: Storage, second: Storage, owner: str, conversation: str) -> Memory:
    """The conversation's memory, loaded through ``storage`` (maybe from its cache) and through ``second`` (from
    the database): the two must agree byte for byte, and ``replayed`` and ``size`` must be what ``Memory`` says."""
    memory = await storage.turns.load(owner, conversation)
    from_database = await second.turns.load(owner, conversation)
    assert from_database == memory
    assert _exact(from_database) == _exact(memory)  # == on dicts ignores key order; stored bytes do not
    assert memory.replayed == tuple(map(replay, memory.messages))
    assert memory.size == sum(len(encode(m)) for m in memory.messages)
    return memory


def _exact(memory: Memory) -> bytes:
    return encode([memory.system, memory.messages, memory.summary])


def texts(memory: Memory) -> list[Any]:
    return [m.get("content") for m in memory.messages]


async def soon(condition: Callable[[], bool], seconds: float = 5.0) -> bool:
    """Whether ``condition`` holds now or within ``seconds`` while the event loop runs: for what a backend may keep
    current in the background (``KeyStore.version``, ``Storage.count_conversations``; see their docstrings)."""
    deadline = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > deadline:
            return False
        await asyncio.sleep(0.01)
    return True


async def sqlite_migrated_until(db: aiosqlite.Connection, last: Callable[[aiosqlite.Connection], Any]) -> None:
    """A new SQLite database taken through the migrations up to and including ``last``, as a release before the
    next one left it (each recorded, so that opening it runs only the later ones)."""
    await db.execute("CREATE TABLE schema_migrations (name TEXT PRIMARY KEY, applied_at REAL NOT NULL)")
    steps = sqlite_migrations.MIGRATIONS
    for step in steps[: steps.index(last) + 1]:
        await step(db)
        await db.execute("INSERT INTO schema_migrations VALUES (?, 0)", (step.__name__,))


async def postgres_migrated_until(conn: asyncpg.Connection, last: Callable[[asyncpg.Connection], Any]) -> None:
    """The same for PostgreSQL: its own migrations up to ``last``, then the coordination tables (which every
    release since they came has)."""
    await conn.execute("CREATE TABLE schema_migrations (name TEXT PRIMARY KEY, applied_at DOUBLE PRECISION NOT NULL)")
    own = [step for step in postgres_migrations.MIGRATIONS if step not in COORDINATION_MIGRATIONS]
    for step in (*own[: own.index(last) + 1], *COORDINATION_MIGRATIONS):
        await step(conn)
        await conn.execute("INSERT INTO schema_migrations VALUES ($1, 0)", step.__name__)
