"""Operator commands over the database file: conversations (list, show, export, import, delete), purge, and
gateway keys (create, list, revoke).

They open the same storage as the server, which may be running: an import or a purge first takes each
conversation's lock (``locks``: the storage's cross-process ``ConversationLocks``), so it waits for a turn in
flight in the server and the next turn sees it (a delete does not wait: it wins, and the turn records nothing);
their writes wait out the database's lock for the configured busy timeout, and the server checks what it had
cached against the new versions.  They call the same catalog as the conversations API, but across owners: an
owner is named by its hash or a prefix of it (the log lines show the first 12 characters), a tenant as
``tenant:NAME`` (keys mode), or ``none`` for clients without a credential, and an id held by several owners must
be told apart with ``--owner``.
"""

from __future__ import annotations

import sys
import time
from collections.abc import AsyncIterator, Iterable, Sequence
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from typing import Any, TextIO

from gateway.core.conversations import ConversationsService, check_history_size, new_conversation_id
from gateway.core.keys import valid_tenant
from gateway.core.ledger import Pricing, conversation_ledger
from gateway.core.ordering import KeyedLocks
from gateway.core.ports import Catalog, ConversationInfo, ConversationLocks, KeyStore, Storage, StoredMessage
from gateway.core.retention import SECONDS_PER_DAY
from gateway.core.search import parse_query, snippet
from gateway.core.transfer import export_lines, parse_import
from gateway.errors import InvalidRequest
from gateway.protocols.openai_chat import dumps
from gateway.settings.config import Config
from gateway.storage.open import open_storage

OWNER_SHOWN = 12  # characters of an owner hash shown in listings, as in the log lines
NO_OWNER = "none"  # how the CLI names the owner of clients without a credential (hashes never hold an "n")


class CommandFailed(Exception):
    """The command cannot do what was asked; the message says why (exit status 1)."""


def owner_filter(value: str | None) -> str | None:
    """``--owner`` as a catalog owner prefix: absent → '' (every owner), ``none`` → None (the owner '')."""
    if value is None:
        return ""
    if value == NO_OWNER:
        return None
    if not value:
        raise CommandFailed(f"--owner: expected an owner hash or a prefix of it, tenant:NAME, or {NO_OWNER!r}")
    return value


def import_owner(value: str | None) -> str | None:
    """``--owner`` for an import: the full owner hash, or ``none``; absent keeps each conversation's own."""
    if value is None or value == NO_OWNER:
        return "" if value else None
    return value


@asynccontextmanager
async def open_store(config: Config) -> AsyncIterator[Storage]:
    storage = await open_storage(config, cache=False)
    try:
        yield storage
    finally:
        await storage.close()


async def list_conversations(catalog: Catalog, out: TextIO, *, owner: str | None, limit: int) -> None:
    found = await catalog.list_conversations(None, limit=limit, order="desc", cursor=None, owner_prefix=owner)
    rows = [("OWNER", "ID", "MESSAGES", "UPDATED", "MODEL")]
    rows += [(_owner(c.owner), c.external_id, str(c.message_count), _time(c.updated_at), c.model or "-") for c in found]
    _table(out, rows)


async def search_conversations(catalog: Catalog, out: TextIO, text: str, *, owner: str | None, limit: int) -> None:
    """Every owner's conversations (or those ``owner`` starts) holding each word of ``text``, newest first, with
    the first match of each."""
    try:
        terms = parse_query(text)
    except InvalidRequest as exc:
        raise CommandFailed(exc.message) from None
    found = await catalog.search_conversations(None, terms, limit=limit, order="desc", cursor=None, owner_prefix=owner)
    rows = [("OWNER", "ID", "UPDATED", "MATCH")]
    for hit in found:
        info, first = hit.conversation, hit.messages[0] if hit.messages else None
        match = f"{first[2]}: {snippet(first[3], terms)[0]}" if first is not None else ""
        rows.append((_owner(info.owner), info.external_id, _time(info.updated_at), match))
    _table(out, rows)


async def show_conversation(
    catalog: Catalog, out: TextIO, conversation_id: str, *, owner: str | None, pricing: Pricing
) -> None:
    info = await _one(catalog, conversation_id, owner)
    for line in transcript(info, await catalog.export_messages(info), pricing):
        print(line, file=out)


async def export_conversation(
    catalog: Catalog, out: TextIO, conversation_id: str, *, owner: str | None, fmt: str
) -> None:
    info = await _one(catalog, conversation_id, owner)
    for line in export_lines(info, await catalog.export_messages(info), fmt):
        print(line, file=out)


async def delete_conversations(
    catalog: Catalog, out: TextIO, conversation_ids: Sequence[str], *, owner: str | None
) -> None:
    """Delete each conversation, without waiting for its lock: a delete wins over a turn in flight in a server,
    which then records nothing (``ConversationDeleted``)."""
    targets = [await _one(catalog, conversation_id, owner) for conversation_id in conversation_ids]
    for info in targets:
        if await catalog.delete_conversation(info.owner, info.external_id):
            print(f"deleted {info.external_id} (owner {_owner(info.owner)})", file=out)


async def import_conversations(
    catalog: Catalog,
    out: TextIO,
    lines: Iterable[str],
    *,
    owner: str | None,
    max_history_bytes: int,
    locks: ConversationLocks | None = None,
) -> None:
    """Import every conversation of an export; each is written whole or not at all, and an id that exists, or
    one larger than ``limits.max_history_bytes``, stops the import there.  (No message-count limit: what turns
    stored over time may hold more messages than one request may.)  Each is created holding its lock
    (``locks``), as the conversations API creates one."""
    ordering = KeyedLocks(locks)
    for exported in parse_import(lines, owner=owner, now=time.time(), new_id=new_conversation_id):
        info = exported.info
        try:
            check_history_size([m.body for m in exported.messages], max_history_bytes)
        except InvalidRequest as exc:
            raise CommandFailed(f"conversation {info.external_id!r}: {exc.message}") from None
        async with ordering.hold((info.owner, info.external_id)):
            created = await catalog.create_conversation(info, exported.messages)
        if not created:
            raise CommandFailed(f"conversation {info.external_id!r} of owner {_owner(info.owner)} exists already")
        print(f"imported {info.external_id} (owner {_owner(info.owner)}, {len(exported.messages)} messages)", file=out)


async def purge(catalog: Catalog, out: TextIO, *, idle_days: float, locks: ConversationLocks | None = None) -> None:
    """Delete the conversations idle for longer than ``idle_days``, each holding its lock (``locks``), so that
    one a server process is answering a turn of is kept (that turn makes it active again)."""
    if idle_days <= 0:
        print("retention.idle_days is 0: conversations are kept forever, nothing purged", file=out)
        return
    purged = await ConversationsService(catalog, KeyedLocks(locks)).purge(idle_days * SECONDS_PER_DAY)
    print(f"purged {purged} conversation(s) idle for more than {idle_days:g} day(s)", file=out)


async def create_key(keys: KeyStore, out: TextIO, *, tenant: str, name: str | None, admin: bool) -> None:
    if not valid_tenant(tenant):
        raise CommandFailed(
            f"--tenant: 1-64 letters, digits, '.', '_' or '-' (starting with a letter or digit), got {tenant!r}"
        )
    secret, key = await keys.create(tenant, name, admin)
    print(secret, file=out)
    role = "admin key" if admin else "key"
    print(f"{role} {key.id} for tenant {tenant}: shown once, only its hash is stored", file=sys.stderr)


async def list_keys(keys: KeyStore, out: TextIO) -> None:
    rows = [("ID", "TENANT", "NAME", "ADMIN", "CREATED", "REVOKED")]
    rows += [
        (
            k.id,
            k.tenant,
            k.name or "-",
            "yes" if k.admin else "no",
            _time(k.created_at),
            _time(k.revoked_at) if k.revoked_at is not None else "-",
        )
        for k in await keys.list()
    ]
    _table(out, rows)


async def revoke_key(keys: KeyStore, out: TextIO, key_id: str) -> None:
    if not await keys.revoke(key_id):
        raise CommandFailed(f"no unrevoked key {key_id!r}")
    print(f"revoked {key_id}", file=out)


def transcript(info: ConversationInfo, messages: Sequence[StoredMessage], pricing: Pricing) -> list[str]:
    """A conversation as readable lines for a terminal."""
    usage = f"tokens: {info.prompt_tokens} prompt, {info.completion_tokens} completion, {info.cached_tokens} cached"
    lines = [
        f"conversation {info.external_id}  owner {_owner(info.owner)}  model {info.model or '-'}",
        f"created {_time(info.created_at)}  updated {_time(info.updated_at)}  {info.message_count} messages  {usage}",
        _cost_line(conversation_ledger(pricing, messages, info.model).summary()),
    ]
    if info.metadata:
        lines.append("metadata: " + ", ".join(f"{k}={v}" for k, v in info.metadata.items()))
    lines.append("")
    lines += [_line(body) for body in info.system or ()]
    lines += [_line(m.body, m.interrupted) for m in messages]
    return lines


def _cost_line(cost: dict[str, Any]) -> str:
    tokens = f"{cost['cache_creation_tokens']} written to the cache"
    if cost["currency"] is None:
        return f"cost: no price for this model ({tokens})"
    currency, billed, stateless = cost["currency"], cost["billed_cost"], cost["stateless_cost"]
    saved = f"{cost['saved_cost'] / stateless:.0%}" if stateless else "0%"
    return (
        f"cost: {billed:.6f} {currency} billed ({tokens}), {stateless:.6f} {currency} resending everything "
        f"without the gateway: {saved} saved"
        + (
            f"  ({cost['priced_turns']} of {cost['turns']} replies priced)"
            if cost["priced_turns"] < cost["turns"]
            else ""
        )
    )


def _line(body: dict[str, Any], interrupted: bool = False) -> str:
    label = body["role"] + (f" [{body['tool_call_id']}]" if "tool_call_id" in body else "")
    label += " (interrupted)" if interrupted else ""
    parts = [_text(body.get("content"))]
    for call in body.get("tool_calls") or ():
        function = call.get("function") or {} if isinstance(call, dict) else {}
        parts.append(f"-> {function.get('name')}({function.get('arguments', '')})")
    return f"{label}: " + "\n    ".join(part for part in parts if part)


def _text(content: Any) -> str:
    """Text content as is; list-form parts as their text, other parts (images, audio) as a [type] mark."""
    if content is None or isinstance(content, str):
        return content or ""
    if isinstance(content, list):
        return " ".join(
            str(part.get("text", "")) if part.get("type") == "text" else f"[{part.get('type')}]"
            for part in content
            if isinstance(part, dict)
        )
    return dumps(content)


async def _one(catalog: Catalog, conversation_id: str, owner: str | None) -> ConversationInfo:
    found = await catalog.find_conversations(conversation_id, owner)
    if not found:
        named = "" if owner == "" else f" of owner {owner or NO_OWNER}"
        raise CommandFailed(f"no conversation {conversation_id!r}{named}")
    if len(found) > 1:
        owners = ", ".join(_owner(c.owner) for c in found)
        raise CommandFailed(f"conversation {conversation_id!r} exists for several owners ({owners}): use --owner")
    return found[0]


def _owner(owner: str) -> str:
    return owner[:OWNER_SHOWN] or NO_OWNER


def _table(out: TextIO, rows: Sequence[Sequence[str]]) -> None:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]) - 1)]
    for row in rows:
        print("  ".join([*(cell.ljust(width) for cell, width in zip(row, widths, strict=False)), row[-1]]), file=out)


def _time(timestamp: float) -> str:
    return datetime.fromtimestamp(timestamp, UTC).strftime("%Y-%m-%d %H:%M:%SZ")
