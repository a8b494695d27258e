"""The chat use case: load memory, merge the request, call upstream, relay the reply, record the turn.

Knows no SQL and no HTTP server types: memory comes from a ``ports.TurnStore``, replies from a ``ports.Upstream``.
The handler hands it a ``ReplyChannel`` (``gateway.core.relay``) to answer through, which lets this module decide
*when* bytes go out: a turn is committed before a non-streaming body is sent and before a stream's ``data: [DONE]``
is relayed, so a reply the client saw complete is always on disk.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any

import structlog

from gateway.core.cache_markers import CacheMarkers, carries_markers
from gateway.core.context import ContextPlanner, Window
from gateway.core.history import TurnPlan, plan_turn
from gateway.core.idempotency import REPLAYED_HEADER, Replies, completion_body, replay_events
from gateway.core.lifecycle import Drain
from gateway.core.metering import Accounting, Meter, asking_usage, passthrough, wants_usage
from gateway.core.ordering import KeyedLocks
from gateway.core.ports import (
    ConversationChanged,
    ConversationDeleted,
    IdempotentReply,
    Memory,
    ResponseRecord,
    Turn,
    TurnStore,
    Upstream,
    UpstreamReply,
)
from gateway.core.relay import (
    STREAM_HEADERS,
    ClientGone,
    ReplyChannel,
    StreamFailed,
    error_event,
    parse_completion,
    pump,
    send_quietly,
)
from gateway.errors import (
    Conflict,
    GatewayError,
    InvalidRequest,
    Overloaded,
    UpstreamError,
    UpstreamHTTPError,
    UpstreamInvalidResponse,
)
from gateway.observability.logs import note
from gateway.observability.metrics import Metrics
from gateway.protocols.openai_chat import ChatBody, Message, encode, loads
from gateway.protocols.sse import DONE_EVENT, ReplyAssembler

log = structlog.get_logger("gateway")
_SHUTTING_DOWN = Overloaded("The gateway is shutting down; the reply was cut short.", code="server_shutting_down")


@dataclass(frozen=True)
class ChatRequest:
    body: ChatBody
    raw: bytes
    conversation_id: str | None
    owner: str
    authorization: str | None
    headers: Mapping[str, str]
    idempotency_key: str | None = None  # the Idempotency-Key header, checked (gateway.core.idempotency)
    record: bool = True  # False: the turn reads the conversation's memory but records nothing (store: false)
    response: ResponseRecord | None = None  # the Responses API call this turn answers, recorded with it
    # The stored history this turn continues has exactly this many messages (a response's reply is the last one):
    # recording, the conversation must not have moved on; not recording, only the first this many are read.
    expected_length: int | None = None
    trim: bool = True  # False: a turn that would leave stored messages out of the upstream request gets 400


@dataclass(frozen=True)
class _Memory:
    """Where and what to record for a turn with memory; None for a transparent pass-through."""

    owner: str
    conversation_id: str
    model: str | None
    system: list[Message] | None
    new_messages: list[Message]
    window: tuple[int, Message | None] | None  # a moved cut and its summary, to keep with the turn
    trimmed: int  # stored messages left out of the upstream request
    replace_from: int | None  # stored messages from here on give way to this turn (gateway.core.history, rule 3)
    replaced: int  # how many they are
    existed: bool  # the conversation was stored when the turn began (if it is deleted meanwhile, the delete wins)
    version: int  # its stored version then (the fence: Turn.expected_version)
    request: ChatRequest
    accounting: Accounting  # the turn's ledger, and whether the client is spared the usage chunk

    @property
    def headers(self) -> dict[str, str]:
        headers = {"X-Conversation-Trimmed": str(self.trimmed)}
        if self.replace_from is not None:
            headers["X-Conversation-Replaced"] = str(self.replaced)
        return headers


class ChatService:
    def __init__(
        self,
        store: TurnStore,
        upstream: Upstream,
        locks: KeyedLocks,
        context: ContextPlanner,
        *,
        metrics: Metrics,
        drain: Drain,
        max_history_bytes: int,
        replies: Replies,
        markers: CacheMarkers,
        meter: Meter,
    ) -> None:
        self._markers = markers
        self._meter = meter
        self._store = store
        self._replies = replies
        self._max_history_bytes = max_history_bytes
        self._upstream = upstream
        self._locks = locks
        self._context = context
        self._metrics = metrics
        self._drain = drain

    async def complete(self, request: ChatRequest, channel: ReplyChannel) -> None:
        """Answer one chat request through ``channel`` (admitted by the handler under ``upstream.max_in_flight``
        before its body was read)."""
        if request.conversation_id is None:
            await self._exchange(request.raw, request, channel, None)
            return
        key = (request.owner, request.conversation_id)
        async with self._locks.hold(key):
            kept = await self._replies.find(key, request.idempotency_key, request.raw)
            if kept is not None:
                await _replay(kept, request, channel)
                return
            stored = _memory_for(await self._store.load(*key), request)
            plan = plan_turn(stored.system, stored.messages, request.body.messages)
            replaced = 0
            if plan.replace_from is not None:
                replaced = len(stored.messages) - plan.replace_from
                stored = stored.truncated(plan.replace_from)
            new_bytes = len(encode(plan.new_messages))
            if stored.size + new_bytes > self._max_history_bytes:
                raise InvalidRequest(
                    f"This conversation would grow past its {self._max_history_bytes}-byte limit "
                    "(limits.max_history_bytes): rewind or fork it, or start a new conversation.",
                    code="conversation_too_large",
                    param="messages",
                )
            fields, hide_usage = asking_usage(request.body.fields)
            window = self._context.current(stored, plan.new_messages, fields)
            payload, marked = _payload(fields, plan, window, self._markers)
            if not self._context.fits_for_certain(window, payload, stored, new_bytes):
                window = await self._context.fit(
                    key,
                    stored,
                    window,
                    plan.prompt,
                    plan.new_messages,
                    fields,
                    payload_bytes=len(payload),
                    authorization=request.authorization,
                    headers=request.headers,
                )
                payload, marked = _payload(fields, plan, window, self._markers)
            if window.start and not request.trim:
                raise InvalidRequest(
                    f"The conversation no longer fits this model's context window whole ({window.start} stored "
                    "messages would be left out) and truncation is 'disabled': send truncation 'auto' to leave the "
                    "oldest turns out, or start a new conversation.",
                    code="context_length_exceeded",
                    param="truncation",
                )
            note(history_messages=len(stored.messages), resent_messages=plan.resent, trimmed_messages=window.start)
            if plan.replace_from is not None:
                note(replaced_messages=replaced)
            memory = _Memory(
                *key,
                request.body.model,
                plan.system,
                plan.new_messages,
                (window.start, window.summary) if window.changed else None,
                window.start,
                plan.replace_from,
                replaced,
                stored.exists,
                stored.version,
                request,
                Accounting(
                    {
                        "model": request.body.model,
                        "cache": "explicit" if marked else "implicit",
                        "unsent_tokens": await self._context.unsent_tokens(key, stored, window, request.body.model),
                    },
                    hide_usage,
                ),
            )
            await self._exchange(payload, request, channel, memory)

    async def _exchange(
        self, payload: bytes, request: ChatRequest, channel: ReplyChannel, memory: _Memory | None
    ) -> None:
        try:
            await self._call_upstream(payload, request, channel, memory)
        except UpstreamError as exc:
            self._metrics.upstream_errors.labels(type(exc).__name__).inc()
            raise

    async def _call_upstream(
        self, payload: bytes, request: ChatRequest, channel: ReplyChannel, memory: _Memory | None
    ) -> None:
        started = time.perf_counter()
        async with self._upstream.chat_completions(
            payload, client_authorization=request.authorization, client_headers=request.headers
        ) as response:
            note(upstream_status=response.status, upstream_ms=round((time.perf_counter() - started) * 1000, 1))
            if response.status >= 400:
                self._upstream.check_credentials(response.status)
                raise UpstreamHTTPError(response.status, await response.read(), response.headers)
            accounting = memory.accounting if memory is not None else passthrough(request.body)
            if response.is_event_stream:
                await self._relay_stream(response, channel, memory, accounting)
            else:
                await self._relay_body(response, channel, memory, accounting)

    async def _relay_body(
        self, response: UpstreamReply, channel: ReplyChannel, memory: _Memory | None, accounting: Accounting
    ) -> None:
        body = await response.read()
        completion = parse_completion(body)
        if memory is not None:
            if completion is None:
                raise UpstreamInvalidResponse(
                    "The upstream answered with something that is not a chat completion.",
                    code="upstream_invalid_response",
                )
            message, usage = completion
            await self._record(memory, message, usage, interrupted=False, body=body)
        elif completion is not None:
            self._meter.reply(completion[1], accounting.ledger)
        headers = {**response.headers, **memory.headers} if memory is not None else response.headers
        await channel.respond(response.status, response.content_type, headers, body)

    async def _relay_stream(
        self, response: UpstreamReply, channel: ReplyChannel, memory: _Memory | None, accounting: Accounting
    ) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._metrics.open_streams.inc()
        self._drain.streams.add(task)
        try:
            await self._relay_events(response, channel, memory, accounting)
        finally:
            self._drain.streams.discard(task)
            self._metrics.open_streams.dec()

    async def _relay_events(
        self, response: UpstreamReply, channel: ReplyChannel, memory: _Memory | None, accounting: Accounting
    ) -> None:
        headers = {**response.headers, **STREAM_HEADERS, **(memory.headers if memory is not None else {})}
        await channel.open_stream(response.status, response.content_type, headers)
        assembler = ReplyAssembler()
        try:
            await pump(response, channel, assembler, hide_usage=accounting.hide_usage)
        except StreamFailed as failed:
            self._metrics.upstream_errors.labels(type(failed.error).__name__).inc()
            note(stream_error=failed.error.code)
            await send_quietly(channel, error_event(failed.error))
            return
        except (ClientGone, asyncio.CancelledError):
            response.abort()
            note(interrupted=True)
            if memory is not None:
                await self._record(memory, assembler.message(interrupted=True), assembler.usage, interrupted=True)
            if self._drain.expired:  # cut by shutdown, not by the client: say so rather than just stop
                await send_quietly(channel, error_event(_SHUTTING_DOWN))
            raise
        if memory is None:
            self._meter.reply(assembler.usage, accounting.ledger)
        else:
            try:
                reply = assembler.message()
                body = completion_body(reply, assembler.usage, assembler.model, assembler.finish_reason)
                await self._record(memory, reply, assembler.usage, interrupted=False, body=body)
            except Exception as exc:
                # Headers are gone already: the client learns of the failure from an error event, not [DONE].
                log.warning("record_failed", error=type(exc).__name__)
                error = exc if isinstance(exc, GatewayError) else GatewayError("The turn could not be recorded.")
                note(stream_error=error.code)
                await send_quietly(channel, error_event(error))
                return
        await channel.send(DONE_EVENT)

    async def _record(
        self,
        memory: _Memory,
        reply: Message,
        usage: dict[str, Any] | None,
        *,
        interrupted: bool,
        body: bytes | None = None,
    ) -> None:
        """Store the turn; ``body``: the completion the client got, kept under its Idempotency-Key if it has one."""
        self._meter.reply(usage, memory.accounting.ledger)
        request = memory.request
        if not request.record:
            note(recorded=False)
            return
        kept = self._replies.keep(request.idempotency_key, request.raw, body) if body is not None else None
        try:
            await self._append(memory, reply, usage, interrupted=interrupted, kept=kept)
        except ConversationDeleted:
            # Deleted (by the CLI, another process) while the turn was in flight: the delete wins, the client still
            # gets its reply.
            log.warning("turn_not_recorded", reason="conversation_deleted")
            note(recorded=False)
        except ConversationChanged:
            # Another process changed the conversation although this turn held its lock (the lock was lost with
            # its database connection): the turn was planned from a history that is gone, so it is not recorded,
            # and the client must not take it for recorded.
            log.warning("turn_not_recorded", reason="conversation_changed")
            note(recorded=False)
            raise Conflict(
                "The conversation was changed by another request while this turn was in flight; it was not "
                "recorded. Send the turn again.",
                code="conversation_changed",
            ) from None

    async def _append(
        self,
        memory: _Memory,
        reply: Message,
        usage: dict[str, Any] | None,
        *,
        interrupted: bool,
        kept: IdempotentReply | None,
    ) -> None:
        await self._store.append_turn(
            Turn(
                owner=memory.owner,
                external_id=memory.conversation_id,
                model=memory.model,
                system=memory.system,
                messages=memory.new_messages,
                reply=reply,
                interrupted=interrupted,
                usage=usage,
                window=memory.window,
                replace_from=memory.replace_from,
                existed=memory.existed,
                expected_version=memory.version if memory.existed else None,
                idempotent=kept,
                response=memory.request.response,
                ledger=memory.accounting.ledger,
            ),
        )


def _memory_for(stored: Memory, request: ChatRequest) -> Memory:
    """The memory a turn plans from: checked against the history it says it continues (``expected_length``), and
    for a turn that may not trim, the whole history, whatever cut earlier turns left (it goes whole, or not)."""
    if not request.trim and (stored.window_start or stored.summary is not None):
        stored = replace(stored, window_start=0, summary=None)
    length = request.expected_length
    if length is None or len(stored.messages) == length:
        return stored
    if not request.record and len(stored.messages) > length:
        return stored.truncated(length)  # an unrecorded turn from an earlier point: nothing changes, no fork needed
    raise Conflict(
        "The conversation moved on since that response: send the request again to continue from it as a fork.",
        code="previous_response_not_latest",
        param="previous_response_id",
    )


def _payload(fields: dict[str, Any], plan: TurnPlan, window: Window, markers: CacheMarkers) -> tuple[bytes, bool]:
    """The upstream body: the request's own fields, with messages as system prompt, summary, window, new; cache
    markers at the end of what the next turn repeats (all but the new messages), on the wire only.  And whether
    it carries markers (the gateway's or the client's): the explicit cache then bills its hits."""
    messages = [*plan.prompt, *window.lead, *window.history, *plan.new_messages]
    model = fields.get("model")
    messages = markers.mark(messages, len(messages) - len(plan.new_messages), model if isinstance(model, str) else None)
    return encode({**fields, "messages": messages}), carries_markers(messages)


async def _replay(kept: bytes, request: ChatRequest, channel: ReplyChannel) -> None:
    """Answer a repeat of a kept turn (gateway.core.idempotency) with its reply, as a stream when it asks for one."""
    note(idempotent_replay=True)
    headers = {REPLAYED_HEADER: "true"}
    if not request.body.stream:
        await channel.respond(200, "application/json", headers, kept)
        return
    await channel.open_stream(200, "text/event-stream", {**headers, **STREAM_HEADERS})
    await channel.send(replay_events(loads(kept), include_usage=wants_usage(request.body.fields)))
