"""Idempotency-Key for chat turns: the pure parts (the header's form, the request's hash, a reply as it is kept
and as it is replayed).

A client that retries a turn after a timeout or a 502 cannot know whether the first attempt was recorded.  With
``Idempotency-Key: K`` on a request with ``X-Conversation-Id``, the turn's reply is kept under K (in the turn's own
transaction) for ``memory.idempotency_seconds``; a repeat of the same request with K gets that reply again, with
``Idempotent-Replayed: true``, without calling upstream or storing the turn twice.  The same K with a different
request body is refused (409 ``idempotency_key_reused``).  A streamed turn is kept as one completion, and replayed
to a streaming request as a stream of that completion (one content chunk, the finish, usage when asked, ``[DONE]``).
"""

from __future__ import annotations

import hashlib
import re
import time
from typing import Any

from gateway.core.ports import IdempotentReply, TurnStore
from gateway.errors import Conflict, InvalidRequest
from gateway.protocols.openai_chat import Message, encode
from gateway.protocols.sse import DONE_EVENT, encode_event

HEADER = "Idempotency-Key"
REPLAYED_HEADER = "Idempotent-Replayed"
_KEY = re.compile(r"[!-~]{1,255}")


def parse_key(value: str | None) -> str | None:
    if value is None:
        return None
    if _KEY.fullmatch(value) is None:
        raise InvalidRequest(
            f"{HEADER} must be 1-255 printable ASCII characters without spaces.",
            code="invalid_idempotency_key",
            param=HEADER,
        )
    return value


def request_hash(raw: bytes) -> str:
    return hashlib.sha256(raw).hexdigest()


def completion_body(message: Message, usage: dict[str, Any] | None, model: str | None, finish: str | None) -> bytes:
    """A streamed reply, kept as the chat completion a non-streaming request would have got."""
    completion: dict[str, Any] = {
        "id": f"chatcmpl-replay-{int(time.time() * 1000)}",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": [{"index": 0, "message": message, "finish_reason": finish or "stop"}],
    }
    if usage is not None:
        completion["usage"] = usage
    return encode(completion)


class Replies:
    """Finds and keeps replies under their keys, over the store."""

    def __init__(self, store: TurnStore, keep_seconds: float) -> None:
        self._store = store
        self._keep = keep_seconds

    async def find(self, conversation: tuple[str, str], key: str | None, raw: bytes) -> bytes | None:
        """The body kept under ``key`` for this request, if any; 409 when the key came with another request."""
        if key is None or self._keep <= 0:
            return None
        found = await self._store.idempotent_reply(*conversation, key, time.time() - self._keep)
        if found is None:
            return None
        if found[0] != request_hash(raw):
            raise Conflict(
                f"This {HEADER} was used for a different request on this conversation.",
                code="idempotency_key_reused",
                param=HEADER,
            )
        return found[1]

    def keep(self, key: str | None, raw: bytes, body: bytes) -> IdempotentReply | None:
        """What a turn stores to answer a repeat of ``raw`` under ``key`` (None when there is nothing to keep)."""
        if key is None or self._keep <= 0:
            return None
        return IdempotentReply(key, request_hash(raw), body, expires_before=time.time() - self._keep)


def replay_events(completion: dict[str, Any], *, include_usage: bool) -> bytes:
    """A kept completion as the SSE stream a streaming request expects."""
    choice = (completion.get("choices") or [{}])[0]
    message = dict(choice.get("message") or {})
    calls = message.get("tool_calls")
    if isinstance(calls, list):
        message["tool_calls"] = [{"index": i, **call} for i, call in enumerate(calls) if isinstance(call, dict)]
    base = {"id": completion.get("id"), "object": "chat.completion.chunk", "model": completion.get("model")}
    events = [
        encode_event({**base, "choices": [{"index": 0, "delta": message, "finish_reason": None}]}),
        encode_event({**base, "choices": [{"index": 0, "delta": {}, "finish_reason": choice.get("finish_reason")}]}),
    ]
    if include_usage and completion.get("usage") is not None:
        events.append(encode_event({**base, "choices": [], "usage": completion["usage"]}))
    return b"".join([*events, DONE_EVENT])
