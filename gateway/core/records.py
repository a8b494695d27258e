"""The records the use cases and the storage backends exchange (re-exported by ``gateway.core.ports``).

Plain frozen dataclasses and one exception: what a conversation's memory holds when a turn loads it, what a turn
records, what the catalog lists and inserts, and why storage is not ready.  How a backend lays them out is its own
business; nothing here knows one.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

from gateway.protocols.openai_chat import Message, encode

# --- what a turn loads and records --------------------------------------------------------------------------


@dataclass(frozen=True)
class Memory:
    """A conversation's stored memory; ``exists`` is False for a conversation not created yet."""

    exists: bool
    system: tuple[Message, ...] | None
    messages: tuple[Message, ...]
    replayed: tuple[Message, ...]  # ``messages`` as sent upstream (history.replay), worked out once per message
    window_start: int = 0  # history before this index is left out upstream (gateway.core.window)
    summary: Message | None = None  # the summary of what is left out, sent in its place
    last_usage: dict[str, Any] | None = None  # the upstream's usage for the last stored reply, when known
    size: int = 0  # the stored JSON size of ``messages`` (UTF-8 bytes), as the store counts it
    version: int = 0  # moves on with every change to the conversation's history, by any process (the fence)

    def truncated(self, length: int) -> Memory:
        """This memory with only its first ``length`` messages, as a turn that replaces the rest plans from it
        (the store makes the same cut when it records that turn: ``Turn.replace_from``)."""
        if length >= len(self.messages):
            return self
        window_kept = self.window_start <= length
        return replace(
            self,
            messages=self.messages[:length],
            replayed=self.replayed[:length],
            window_start=self.window_start if window_kept else 0,
            summary=self.summary if window_kept else None,
            last_usage=None,  # it measured a request this turn no longer continues
            size=max(0, self.size - sum(len(encode(m)) for m in self.messages[length:])),
        )


@dataclass(frozen=True)
class IdempotentReply:
    """A turn's reply as kept under its Idempotency-Key (``gateway.core.idempotency``)."""

    key: str
    request_hash: str
    body: bytes  # a chat completion, as the client got it
    expires_before: float  # replies of the conversation recorded before this are dropped with the turn


@dataclass(frozen=True)
class ResponseRecord:
    """What a turn records about the Responses API call that made it (``gateway.core.responses``)."""

    id: str  # resp_...: the key it is found and deleted by, unique across owners
    created_at: float
    request: dict[str, Any]  # the request-side fields of the Response object, JSON-serialisable, given back as is


@dataclass(frozen=True)
class Turn:
    """One turn to record: the request's new messages and the assistant reply, written together."""

    owner: str
    external_id: str
    model: str | None
    system: list[Message] | None  # replaces the stored system prompt when not None
    messages: list[Message]
    reply: Message
    interrupted: bool
    usage: dict[str, Any] | None
    window: tuple[int, Message | None] | None = None  # a new window start and summary to keep, if they changed
    replace_from: int | None = None  # stored messages from this seq on give way to this turn (a retried last turn)
    existed: bool = False  # planned against a stored conversation: if that is gone by the commit, record nothing
    # The fence: the ``Memory.version`` the turn was planned from.  When the stored version differs at the commit
    # (another process changed the conversation although the turn held its lock: a lock lost with its database
    # connection), the store records nothing and raises ``ConversationChanged``.  None: no check.
    expected_version: int | None = None
    idempotent: IdempotentReply | None = None  # the reply to keep under the request's Idempotency-Key
    response: ResponseRecord | None = None  # the Responses API call this turn answers, recorded with it
    # What the gateway alone knows about the turn's request (its model, cache mode, history left unsent: see
    # ``gateway.core.ledger``), kept beside ``usage`` on the reply.
    ledger: dict[str, Any] | None = None


class ConversationDeleted(Exception):
    """A turn's conversation was deleted (by the CLI, say) while the turn was in flight: it was not recorded."""


class ConversationChanged(Exception):
    """A turn's conversation was changed by someone else while the turn was in flight (``Turn.expected_version``
    no longer matched): it was not recorded."""


@dataclass(frozen=True)
class Admission:
    """A shared limit store's answer (``ports.LimitStore.admit``): admitted with a ``slot`` to release (None when
    no concurrency limit applies), or refused with the error code and the seconds after which to retry."""

    refused: str | None  # None: admitted; else "concurrency_limit_exceeded" or "rate_limit_exceeded"
    retry_after: float = 0.0
    slot: str | None = None


# --- what the catalog lists and inserts ---------------------------------------------------------------------


@dataclass(frozen=True)
class ConversationInfo:
    """A conversation's row (``row_id`` is the backend's own, for cursors and joins)."""

    row_id: int
    owner: str
    external_id: str
    created_at: float
    updated_at: float
    message_count: int
    model: str | None
    metadata: dict[str, str]
    prompt_tokens: int
    completion_tokens: int
    cached_tokens: int
    system: list[Message] | None
    window_start: int = 0  # where the upstream window of the history starts (gateway.core.window)
    summary: Message | None = None  # the summary of what lies before it


@dataclass(frozen=True)
class StoredMessage:
    row_id: int
    seq: int
    body: Message
    created_at: float
    interrupted: bool
    usage: dict[str, Any] | None
    ledger: dict[str, Any] | None = None  # a reply's ``Turn.ledger``, when its turn had one


@dataclass(frozen=True)
class SearchHit:
    """A conversation found by a search, with up to 3 of its matching messages in order: (row id, seq, role,
    searchable text)."""

    conversation: ConversationInfo
    messages: list[tuple[int, int, str, str]]


@dataclass(frozen=True)
class StoredResponse:
    """A recorded Responses API call as the store gives it back: its conversation, request fields, the reply it
    produced and the messages its request added (its input items), as they are stored now."""

    id: str
    conversation_id: str  # the conversation's external id (what X-Conversation-Id names)
    created_at: float
    request: dict[str, Any]  # ``ResponseRecord.request`` as recorded
    reply: StoredMessage  # the assistant message it produced (its usage, its interrupted flag)
    inputs: list[StoredMessage]  # the messages its turn added before the reply, in order
    latest: bool  # its reply is the conversation's last message now


@dataclass(frozen=True)
class NewMessage:
    """A message to insert as it is (an import keeps its time, flag, usage and ledger; a create stamps them)."""

    body: Message
    created_at: float
    interrupted: bool = False
    usage: dict[str, Any] | None = None
    ledger: dict[str, Any] | None = None


# --- readiness ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class StorageFault:
    """Why no turn could be recorded now: a snake_case reason (the ``/readyz`` body, the log) and a sentence."""

    reason: str
    detail: str


# --- gateway keys -------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class GatewayKey:
    """A gateway key as stored: its public id, tenant, label, admin flag and times (never the key itself)."""

    id: str
    tenant: str
    name: str | None
    admin: bool
    created_at: float
    revoked_at: float | None

    @property
    def revoked(self) -> bool:
        return self.revoked_at is not None
