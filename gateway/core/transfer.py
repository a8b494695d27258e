"""Export and import formats for stored conversations (pure code: records in, lines out, and back).

``jsonl`` is the exact format: a ``conversation`` line (id, owner, times, model, metadata, system prompt, token
totals, the context window's cut and summary) followed by one ``conversation.message`` line per message (the
message as stored, its time, interrupted flag and usage, and the gateway's ``ledger`` of its turn on a reply that
has one: the key is left out otherwise, so files written before there were ledgers import and export unchanged).
Importing it rebuilds the conversation exactly, so export → import → export gives the same bytes.
A file may hold several conversations one after another.

``openai`` is one line per conversation, ``{"model", "messages", "metadata"}``: the system prompt and history as a
chat completions request body (and OpenAI's fine-tuning line format).  It keeps the messages exactly; times, flags
and usage are not part of it, so an import of it stamps the messages with the import time.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, replace
from typing import Any

from gateway.core.access import TENANT_OWNER_PREFIX
from gateway.core.conversations import parse_metadata
from gateway.core.history import split_system
from gateway.core.keys import TENANT_PATTERN
from gateway.core.ports import ConversationInfo, NewMessage, StoredMessage
from gateway.errors import InvalidRequest
from gateway.protocols.openai_chat import dumps, parse_json_body, validate_conversation_id, validate_messages

FORMATS = ("jsonl", "openai")
_OWNER = re.compile(rf"[0-9a-f]{{64}}|{TENANT_OWNER_PREFIX}{TENANT_PATTERN.pattern}|")


class TransferError(ValueError):
    """A line of an import file is not what an export writes; the message names the line."""


@dataclass(frozen=True)
class Exported:
    """A whole conversation, as read for export or parsed for import."""

    info: ConversationInfo
    messages: Sequence[NewMessage]


def export_lines(info: ConversationInfo, messages: Sequence[StoredMessage], fmt: str) -> list[str]:
    """A conversation as lines of JSON in ``fmt`` (see the module docstring)."""
    if fmt == "openai":
        history = [m.body for m in messages]
        return [dumps({"model": info.model, "messages": [*(info.system or ()), *history], "metadata": info.metadata})]
    header = {
        "object": "conversation",
        "id": info.external_id,
        "owner": info.owner,
        "created_at": info.created_at,
        "updated_at": info.updated_at,
        "model": info.model,
        "metadata": info.metadata,
        "system": info.system,
        "usage": {
            "prompt_tokens": info.prompt_tokens,
            "completion_tokens": info.completion_tokens,
            "cached_tokens": info.cached_tokens,
        },
        "window": {"start": info.window_start, "summary": info.summary},
    }
    return [dumps(header), *map(_message_line, messages)]


def _message_line(m: StoredMessage) -> str:
    line: dict[str, Any] = {
        "object": "conversation.message",
        "created_at": m.created_at,
        "interrupted": m.interrupted,
        "usage": m.usage,
    }
    if m.ledger is not None:
        line["ledger"] = m.ledger
    line["message"] = m.body
    return dumps(line)


def parse_import(
    lines: Iterable[str], *, owner: str | None, now: float, new_id: Callable[[], str]
) -> Iterator[Exported]:
    """Conversations from the lines of an export in either format; ``owner`` (when given) replaces the owner of
    each, ``new_id()`` names conversations in the ``openai`` format.  Raises ``TransferError`` naming the line."""
    current: Exported | None = None
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            record = parse_json_body(line)
            kind = record.get("object") if isinstance(record, dict) else None
            if kind == "conversation.message":
                if current is None:
                    raise InvalidRequest("a message comes before any conversation line")
                current = replace(current, messages=[*current.messages, _message(record)])
                continue
            if current is not None:
                yield current
            if kind == "conversation":
                current = Exported(_header(record, owner), [])
            elif isinstance(record, dict) and "messages" in record:
                if owner is None:
                    raise InvalidRequest("the openai format names no owner: give one with --owner")
                current = _openai(record, owner, now, new_id())
            else:
                raise InvalidRequest("expected a conversation, a conversation.message or a {messages} line")
        except (InvalidRequest, ValueError, KeyError, TypeError) as exc:
            detail = exc.message if isinstance(exc, InvalidRequest) else str(exc) or type(exc).__name__
            raise TransferError(f"line {number}: {detail}") from None
    if current is not None:
        yield current


def check_owner(owner: str) -> str:
    """An owner as stored: the 64-hex SHA-256 of a bearer credential, '' for clients without one, or
    ``tenant:NAME`` in keys mode."""
    if _OWNER.fullmatch(owner) is None:
        raise TransferError(f"owner {owner!r} is not a 64-character hex hash, tenant:NAME, or '' for no credential")
    return owner


def _header(record: dict[str, Any], owner: str | None) -> ConversationInfo:
    usage = record["usage"]
    system = record["system"]
    if system is not None:
        system = validate_messages(system)
    return ConversationInfo(
        row_id=0,
        owner=check_owner(owner if owner is not None else _typed(record["owner"], str)),
        external_id=validate_conversation_id(record["id"], "id"),
        created_at=_typed(record["created_at"], float),
        updated_at=_typed(record["updated_at"], float),
        message_count=0,
        model=_typed(record["model"], str) if record["model"] is not None else None,
        metadata=parse_metadata(record["metadata"]),
        prompt_tokens=_typed(usage["prompt_tokens"], int),
        completion_tokens=_typed(usage["completion_tokens"], int),
        cached_tokens=_typed(usage["cached_tokens"], int),
        system=system,
        **_window(record.get("window")),
    )


def _window(value: Any) -> dict[str, Any]:
    """The context window's cut and summary (absent from older exports: the whole history, no summary)."""
    if value is None:
        return {}
    summary = value["summary"]
    return {
        "window_start": _typed(value["start"], int),
        "summary": validate_messages([summary])[0] if summary is not None else None,
    }


def _message(record: dict[str, Any]) -> NewMessage:
    usage = record["usage"]
    ledger = record.get("ledger")  # absent from older exports, and from messages without one
    return NewMessage(
        body=validate_messages([record["message"]])[0],
        created_at=_typed(record["created_at"], float),
        interrupted=_typed(record["interrupted"], bool),
        usage=_typed(usage, dict) if usage is not None else None,
        ledger=_typed(ledger, dict) if ledger is not None else None,
    )


def _openai(record: dict[str, Any], owner: str, now: float, conversation_id: str) -> Exported:
    system, history = split_system(validate_messages(record["messages"], allow_empty=True))
    model = record.get("model")
    info = ConversationInfo(
        row_id=0,
        owner=check_owner(owner),
        external_id=conversation_id,
        created_at=now,
        updated_at=now,
        message_count=0,
        model=_typed(model, str) if model is not None else None,
        metadata=parse_metadata(record.get("metadata") or {}),
        prompt_tokens=0,
        completion_tokens=0,
        cached_tokens=0,
        system=system or None,
    )
    return Exported(info, [NewMessage(m, now) for m in history])


def _typed(value: Any, kind: type[Any]) -> Any:
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise TypeError(f"expected {kind.__name__}, got {value!r}")
    return value
