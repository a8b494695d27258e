"""Ports: what the use cases need from the outside world, as Protocols, and the records they exchange.

``storage`` and ``upstream`` implement these; ``app`` hands the concrete classes in.  Nothing here does I/O or
knows a backend: a second storage backend or another upstream dialect implements the same Protocols.  The storage
records are defined in ``gateway.core.records`` and re-exported here, the one place the use cases import them from.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from contextlib import AbstractAsyncContextManager
from typing import Protocol

from gateway.core.records import (
    Admission,
    ConversationChanged,
    ConversationDeleted,
    ConversationInfo,
    GatewayKey,
    IdempotentReply,
    Memory,
    NewMessage,
    ResponseRecord,
    SearchHit,
    StorageFault,
    StoredMessage,
    StoredResponse,
    Turn,
)

__all__ = [
    "Admission",
    "Catalog",
    "ConversationChanged",
    "ConversationDeleted",
    "ConversationInfo",
    "ConversationLocks",
    "GatewayKey",
    "IdempotentReply",
    "KeyStore",
    "LimitStore",
    "Memory",
    "NewMessage",
    "ResponseRecord",
    "SearchHit",
    "Storage",
    "StorageFault",
    "StoredMessage",
    "StoredResponse",
    "Turn",
    "TurnStore",
    "Upstream",
    "UpstreamReply",
]

# --- storage ------------------------------------------------------------------------------------------------
# Reads and writes raise ``gateway.errors.StorageUnavailable`` when the storage cannot do them.


class TurnStore(Protocol):
    """Conversations' memory as chat turns use it: load it, find a kept idempotent reply, record a turn, and find
    or delete the Responses API calls turns recorded (``Turn.response``)."""

    async def load(self, owner: str, external_id: str) -> Memory:
        """The conversation's system prompt, history and window (``exists`` False when it is not stored)."""
        ...

    async def idempotent_reply(self, owner: str, external_id: str, key: str, since: float) -> tuple[str, bytes] | None:
        """The (request hash, body) kept under ``key`` for this conversation since ``since``, if any."""
        ...

    async def append_turn(self, turn: Turn) -> None:
        """Record ``turn`` whole or not at all, durably enough to tell the client it is complete once this returns.
        Raises ``ConversationDeleted`` when ``turn.existed`` and the conversation was deleted meanwhile, and
        ``ConversationChanged`` when ``turn.expected_version`` is set and differs from the stored version.
        ``turn.response`` is recorded in the same transaction, or not at all with the turn; a response record goes
        when its reply does (a cut by ``replace_from`` or a rewind, the conversation deleted or purged)."""
        ...

    async def find_response(self, owner: str, response_id: str) -> StoredResponse | None:
        """The response recorded under ``response_id`` with its reply and inputs as stored now; None when there is
        none, or it is another owner's."""
        ...

    async def delete_response(self, owner: str, response_id: str) -> bool:
        """Delete a response record; when it is its conversation's latest (``StoredResponse.latest``) its inputs
        and reply go too, as a rewind would remove them (counters recounted, activity time kept); an earlier one's
        messages stay (later turns' history holds them).  False when there is none for ``owner``."""
        ...


class Catalog(Protocol):
    """Stored conversations as the conversations API, the CLI and retention see them.  ``order`` is "asc" or
    "desc"; every change is one transaction."""

    async def get_conversation(self, owner: str, external_id: str) -> ConversationInfo | None: ...

    async def find_conversations(self, external_id: str, owner_prefix: str | None) -> list[ConversationInfo]:
        """Conversations with this id whose owner starts with ``owner_prefix`` (None names the owner '')."""
        ...

    async def list_conversations(
        self,
        owner: str | None,
        *,
        limit: int,
        order: str,
        cursor: ConversationInfo | None,
        owner_prefix: str | None = "",
    ) -> list[ConversationInfo]:
        """A page by recent activity, after ``cursor``: ``owner``'s, or with ``owner`` None those of the owners
        ``owner_prefix`` names (as ``find_conversations``)."""
        ...

    async def search_conversations(
        self,
        owner: str | None,
        terms: Sequence[str],
        *,
        limit: int,
        order: str,
        cursor: ConversationInfo | None,
        owner_prefix: str | None = "",
    ) -> list[SearchHit]:
        """Conversations every term occurs in (as a substring of some message's searchable text: its text content
        and tool calls; case-insensitive), a page by activity after ``cursor``, each with up to 3 of its matching
        messages in order; ``owner`` and ``owner_prefix`` as in ``list_conversations``."""
        ...

    async def message_seq(self, conversation: ConversationInfo, message_row_id: int) -> int | None:
        """The position of one of the conversation's messages, by its row id; None when it holds no such one."""
        ...

    async def list_messages(
        self, conversation: ConversationInfo, *, limit: int, order: str, cursor_seq: int | None
    ) -> list[StoredMessage]:
        """A page of messages in ``seq`` order after ``cursor_seq`` (``limit`` -1: all of them)."""
        ...

    async def export_messages(self, conversation: ConversationInfo) -> list[StoredMessage]:
        """Every message of a conversation, in order."""
        ...

    async def create_conversation(self, info: ConversationInfo, messages: Sequence[NewMessage]) -> bool:
        """Insert a conversation (its counters from ``info``) and its messages as given; False, and nothing
        written, when the id is taken."""
        ...

    async def set_metadata(self, owner: str, external_id: str, metadata: dict[str, str]) -> bool:
        """Replace a conversation's metadata; False when there is no such conversation."""
        ...

    async def delete_conversation(self, owner: str, external_id: str) -> bool:
        """Delete a conversation and all of its messages (and the responses recorded with them); False when there
        was none."""
        ...

    async def rewind(self, conversation: ConversationInfo, turns: int, at: float) -> int | None:
        """Remove the last ``turns`` user messages and everything after each; how many messages went, or None
        (nothing changed) when the conversation holds fewer user messages."""
        ...

    async def append_messages(
        self, conversation: ConversationInfo, messages: Sequence[NewMessage], at: float, *, max_bytes: int | None
    ) -> list[StoredMessage] | None:
        """Append ``messages`` after the conversation's last one (activity time ``at``, counters recounted) and
        return them as stored; None, and nothing written, when the history would then hold more than ``max_bytes``
        bytes of message JSON; an empty list when the conversation is gone."""
        ...

    async def delete_message(self, conversation: ConversationInfo, message_row_id: int) -> bool:
        """Delete one message by its row id, wherever it is: later messages move up one ``seq``, a response whose
        inputs or reply held it goes, the context window restarts when it began after it, counters, size and
        token totals are recounted (activity time kept).  False, and nothing changed, when there is no such one."""
        ...

    async def fork(
        self, source: ConversationInfo, new_id: str, *, last_seq: int, metadata: dict[str, str], at: float
    ) -> bool:
        """Copy ``source`` up to and including message ``last_seq`` to a new conversation of the same owner;
        False, and nothing written, when ``new_id`` is taken."""
        ...

    async def idle_conversations(self, before: float, after_row: int, limit: int) -> list[tuple[int, str, str]]:
        """Up to ``limit`` conversations (row id, owner, external id) last active before ``before``, in row order
        from after row ``after_row``."""
        ...

    async def delete_idle(self, conversations: Sequence[tuple[int, str, str]], before: float) -> int:
        """Delete those of ``conversations`` still idle since before ``before``; how many went."""
        ...


class KeyStore(Protocol):
    """Gateway keys as stored: only each key's hash, never the key."""

    async def create(self, tenant: str, name: str | None, admin: bool) -> tuple[str, GatewayKey]:
        """A new key: the secret (to show once) and its record."""
        ...

    async def list(self) -> list[GatewayKey]:
        """Every key, revoked ones included, oldest first."""
        ...

    async def revoke(self, key_id: str) -> bool:
        """Revoke a key for good; False when there is no such unrevoked key."""
        ...

    async def by_hash(self) -> dict[str, GatewayKey]:
        """Every key by the hash of its secret."""
        ...

    def version(self) -> int:
        """A number that changes whenever the stored keys may have changed, by this process or another (the CLI
        revoking a key, say) since the last call; cheap and without awaiting, so it can be asked per request.  A
        backend whose database is across a network keeps it current in the background (a notification channel,
        or a poll) rather than asking the database per call."""
        ...


class ConversationLocks(Protocol):
    """The part of per-conversation ordering that spans processes: a lock per (owner, external id) that every
    process (workers, replicas, the CLI) using the same database honours.  ``core.ordering.KeyedLocks`` takes it
    after its in-process lock, so at most one holder per process ever asks for a given key.  A lock whose holder
    dies (kill -9) is freed by the system (the kernel, the database server)."""

    def hold(self, key: tuple[str, str]) -> AbstractAsyncContextManager[None]:
        """``async with locks.hold(key):`` runs the block holding ``key`` against every other process; raises
        ``gateway.errors.StorageUnavailable`` when the lock cannot be taken (the database is gone)."""
        ...

    def rank(self, key: tuple[str, str]) -> int:
        """Where ``key``'s lock sorts: several keys held at once are taken in this order in every process, so two
        holders of overlapping sets never wait for each other in a cycle (keys whose locks collide rank equal)."""
        ...


class LimitStore(Protocol):
    """Per-key request limits counted in the shared database, so that they hold across processes and replicas.
    Each ``admit`` decides and counts atomically (no two processes can both take the last place); a slot whose
    process died stops counting by itself (its holder's liveness expires)."""

    async def admit(self, key: str, *, concurrent: int, per_minute: int) -> Admission:
        """Count a request start for ``key`` under the limits (0: no limit of that kind), or refuse it."""
        ...

    async def release(self, key: str, slot: str) -> None:
        """The request admitted into ``slot`` has ended."""
        ...


class Storage(Protocol):
    """An opened storage backend, as the storage package's ``open_storage`` returns it: the three stores over one
    database, and what the server asks of the database as a whole."""

    @property
    def turns(self) -> TurnStore: ...

    @property
    def catalog(self) -> Catalog: ...

    @property
    def keys(self) -> KeyStore: ...

    @property
    def locks(self) -> ConversationLocks | None:
        """The cross-process conversation locks, or None when this process is the only writer."""
        ...

    @property
    def limits(self) -> LimitStore | None:
        """Limits counted across processes, or None when this process's own counts are the whole truth."""
        ...

    def exclusive(self, name: str) -> AbstractAsyncContextManager[bool]:
        """``async with storage.exclusive("purge") as mine:`` -- ``mine`` is True for at most one process using
        this database at a time (the others get False at once and skip the work); held until the block ends."""
        ...

    async def readiness(self, *, write: bool = False) -> StorageFault | None:
        """None when a turn could be recorded now, else what stands in the way.  ``write``: prove it with a write
        now (at start-up)."""
        ...

    def count_conversations(self) -> int:
        """How many conversations are stored (a metrics gauge reads it at each scrape, on the event loop): a
        backend for which that is a slow query answers from a count it keeps current."""
        ...

    def observe_writes(self, observe: Callable[[float], None]) -> None:
        """Have ``observe`` told how long each commit of turns took, in seconds."""

    async def close(self) -> None: ...


# --- the upstream -------------------------------------------------------------------------------------------


class UpstreamReply(Protocol):
    """An open upstream response: status and headers are known; the body is read whole or streamed, always
    OpenAI-shaped (whatever dialect the upstream speaks) and scrubbed of the gateway's secrets."""

    status: int
    content_type: str
    headers: dict[str, str]

    @property
    def is_event_stream(self) -> bool: ...

    def abort(self) -> None:
        """Drop the connection now, so the upstream stops generating (and billing) tokens nobody will read."""

    async def read(self) -> bytes: ...

    def chunks(self) -> AsyncIterator[bytes]:
        """Body bytes as they arrive; a cut or stalled stream raises a ``GatewayError``."""
        ...


class Upstream(Protocol):
    """The model API.  Each call is an ``async with`` block that gets the reply once its headers arrived; leaving
    the block early closes the connection."""

    def chat_completions(
        self, body: bytes, *, client_authorization: str | None, client_headers: Mapping[str, str]
    ) -> AbstractAsyncContextManager[UpstreamReply]:
        """A chat completion (an OpenAI-shaped request body)."""
        ...

    def forward(
        self,
        method: str,
        path: str,
        query: str,
        body: bytes,
        *,
        native: bool,
        client_authorization: str | None,
        client_headers: Mapping[str, str],
    ) -> AbstractAsyncContextManager[UpstreamReply]:
        """Any other request, to the same path under the upstream's base URL (``native``: DashScope's native one),
        its body and headers as they came."""
        ...

    def check_credentials(self, status: int) -> None:
        """Raise when ``status`` says the upstream rejected the gateway's own key (an operator problem)."""
