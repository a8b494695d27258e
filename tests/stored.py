"""What a gateway remembers, read the way its users read it, never with SQL: the conversations API of a running
gateway (``GET /v1/conversations...``, scoped to a credential exactly as chat turns are), or the operator's CLI
(``gateway conversations list`` and ``export``) on the database of a running or stopped one.

Nothing here knows the storage backend, so a test that reads through these holds for any backend.  Tests about
the SQLite file itself (schema, migrations, WAL, rows on disk after a crash) read it directly, in tests/storage/ and
the crash tests.  What no route shows is out of reach here: message rows left behind without their conversation,
and internal columns such as the stored byte count of a history.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import quote

import aiohttp

from tests.conftest import run_cli

SDK_KEY = "sk-test"  # the credential of Gateway.sdk() and GatewayProcess.sdk() unless a test names another
PAGE = 100  # the largest page the API serves
API_FIELDS = ("id", "object", "created_at", "interrupted", "usage", "cost")  # what the API adds to a stored message


class Served(Protocol):
    """A running gateway: conftest's in-process ``Gateway`` or a spawned ``GatewayProcess``."""

    @property
    def url(self) -> str: ...


def _headers(key: str | None) -> dict[str, str]:
    """The credential a test chatted with (None: none at all, the owner of clients without one)."""
    return {} if key is None else {"Authorization": f"Bearer {key}"}


async def _pages(http: aiohttp.ClientSession, url: str, key: str | None) -> list[dict[str, Any]] | None:
    """Every item of an OpenAI-style list route, oldest first, following ``after``; None for a 404."""
    items: list[dict[str, Any]] = []
    params = {"limit": str(PAGE), "order": "asc"}
    while True:
        async with http.get(url, params=params, headers=_headers(key)) as resp:
            if resp.status == 404:
                return None
            assert resp.status == 200, (url, resp.status, await resp.text())
            page = await resp.json()
        items += page["data"]
        if not page["has_more"]:
            return items
        params["after"] = page["last_id"]


def _path(conversation_id: str) -> str:
    return "/v1/conversations/" + quote(conversation_id, safe="")


async def find_conversation(
    gateway: Served, conversation_id: str, *, key: str | None = SDK_KEY
) -> dict[str, Any] | None:
    """``GET /v1/conversations/{id}`` as ``key``'s owner (id, times, message_count, model, metadata, usage), or
    None when that owner has no such conversation."""
    async with (
        aiohttp.ClientSession() as http,
        http.get(gateway.url + _path(conversation_id), headers=_headers(key)) as resp,
    ):
        if resp.status == 404:
            return None
        assert resp.status == 200, (conversation_id, resp.status, await resp.text())
        found: dict[str, Any] = await resp.json()
        return found


async def conversations(gateway: Served, *keys: str | None) -> list[dict[str, Any]]:
    """Every conversation of the owners of ``keys`` (default: ``SDK_KEY``), each owner's oldest activity first.
    Those owners only: every owner's is ``cli_list``."""
    found: list[dict[str, Any]] = []
    async with aiohttp.ClientSession() as http:
        for key in keys or (SDK_KEY,):
            found += await _pages(http, gateway.url + "/v1/conversations", key) or []
    return found


async def conversation_ids(gateway: Served, *keys: str | None) -> list[str]:
    """The ids of ``conversations(gateway, *keys)``."""
    return [c["id"] for c in await conversations(gateway, *keys)]


async def messages(gateway: Served, conversation_id: str, *, key: str | None = SDK_KEY) -> list[dict[str, Any]]:
    """Every message of a conversation in order, as ``GET /v1/conversations/{id}/messages`` shows them: the stored
    fields plus ``id``, ``created_at``, ``interrupted`` and (on replies) ``usage``.  [] when there is no such
    conversation, as for one without messages."""
    async with aiohttp.ClientSession() as http:
        return await _pages(http, gateway.url + _path(conversation_id) + "/messages", key) or []


async def stored(gateway: Served, conversation_id: str, *, key: str | None = SDK_KEY) -> list[dict[str, Any]]:
    """The messages of a conversation exactly as recorded (the API's own fields taken off), in order."""
    return [
        {k: v for k, v in m.items() if k not in API_FIELDS} for m in await messages(gateway, conversation_id, key=key)
    ]


async def message_count(gateway: Served, *keys: str | None) -> int:
    """How many messages all conversations of the owners of ``keys`` (default: ``SDK_KEY``) hold, counted by
    reading them.  Those owners only: "nothing stored anywhere" is ``all_messages_count`` or ``cli_list``."""
    total = 0
    for key in keys or (SDK_KEY,):
        for c in await conversations(gateway, key):
            total += len(await messages(gateway, c["id"], key=key))
    return total


# --- the operator's view: the CLI on the database file, across every owner --------------------------------------


def owner_of(key: str | None) -> str:
    """The CLI's ``--owner`` for the conversations of a credential: the SHA-256 of it, ``none`` without one."""
    return "none" if key is None else hashlib.sha256(key.encode()).hexdigest()


async def _cli(db: Path, *args: str) -> str:
    config = db.parent / "stored-cli.toml"  # no settings of its own: the defaults, and the database named here
    config.touch()
    result = await run_cli("conversations", *args, "--config", str(config), "--db", str(db))
    assert result.status == 0, (args, result.err)
    return result.out


@dataclass(frozen=True)
class Listed:
    owner: str  # as the CLI shows it: the first 12 characters of the hash, tenant:NAME, or none
    id: str
    messages: int


async def cli_list(db: Path) -> list[Listed]:
    """``gateway conversations list``: every conversation of every owner, newest activity first."""
    lines = (await _cli(db, "list", "--limit", "1000000")).splitlines()
    assert lines[0].split()[:3] == ["OWNER", "ID", "MESSAGES"], lines[0]
    return [
        Listed(owner, conversation_id, int(count)) for owner, conversation_id, count, *_ in map(str.split, lines[1:])
    ]


async def cli_export(db: Path, conversation_id: str, *, owner: str | None = None) -> list[dict[str, Any]]:
    """``gateway conversations export ID`` (jsonl, the exact format): the ``conversation`` line (owner, exact times,
    model, metadata, system prompt, totals, window and summary), then one ``conversation.message`` line per message
    (the message as stored, its time, interrupted flag and usage).  ``owner`` as for ``--owner``."""
    args = ["export", conversation_id, *(["--owner", owner] if owner is not None else [])]
    return [json.loads(line) for line in (await _cli(db, *args)).splitlines()]


async def cli_dump(db: Path) -> list[list[dict[str, Any]]]:
    """The export of every conversation of every owner, newest activity first."""
    return [await cli_export(db, c.id, owner=c.owner) for c in await cli_list(db)]


async def all_messages(db: Path) -> list[dict[str, Any]]:
    """Every message the database holds, of every owner, as recorded: conversation by conversation (newest
    activity first), each in order.  For "nothing was stored" and "only these were stored", which a read with one
    credential cannot tell: a turn recorded under the wrong owner would not show there."""
    return [line["message"] for conversation in await cli_dump(db) for line in conversation[1:]]


async def all_messages_count(db: Path) -> int:
    """How many messages ``all_messages(db)`` holds, counted by reading them (not the listing's totals)."""
    return len(await all_messages(db))
