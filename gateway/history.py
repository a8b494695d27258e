"""Pure history logic: merge a request with stored memory, drop a resent tail, and shape messages for replay.

Terms used here and in the store: the *system prompt* is the leading run of system/developer messages of a
request; *history* is every stored non-system message in order.  A request's leading system run replaces the
stored prompt; its other messages are compared with the tail of history so that clients which resend the whole
conversation every turn (as the DashScope guide's loop does) are not doubled.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from gateway.errors import InvalidRequest
from gateway.protocol import SYSTEM_ROLES, Message, dumps

# Output-only or never-replayed fields: reasoning is stored for the record but not sent back to the model.
_NOT_REPLAYED = frozenset({"reasoning_content", "annotations"})


@dataclass(frozen=True)
class TurnPlan:
    """What one turn sends besides history, and what it will store once the upstream succeeds."""

    prompt: list[Message]  # the system prompt this turn uses: the request's own, else the stored one
    new_messages: list[Message]
    system: list[Message] | None  # the request's system prompt when it brings one, else None (keep stored)
    resent: int  # messages of the request recognised as already stored


def split_system(messages: Sequence[Message]) -> tuple[list[Message], list[Message]]:
    """Split off the leading run of system/developer messages."""
    cut = 0
    while cut < len(messages) and messages[cut].get("role") in SYSTEM_ROLES:
        cut += 1
    return list(messages[:cut]), list(messages[cut:])


def plan_turn(
    stored_system: Sequence[Message] | None, history: Sequence[Message], request: Sequence[Message]
) -> TurnPlan:
    """Merge a request's messages with stored memory: the system prompt to use and the genuinely new messages
    (those after any run that repeats the tail of ``history``)."""
    request_system, rest = split_system(request)
    resent = resent_prefix_length(history, rest)
    new = rest[resent:]
    if not new:
        raise InvalidRequest(
            "Every message in the request is already stored in this conversation; send the new message.",
            code="no_new_messages",
            param="messages",
        )
    return TurnPlan(request_system or list(stored_system or ()), new, request_system or None, resent)


def resent_prefix_length(history: Sequence[Message], incoming: Sequence[Message]) -> int:
    """Length of the longest run at the start of ``incoming`` equal to the tail of ``history`` (0 if none)."""
    if not history or not incoming:
        return 0
    incoming_prints = [fingerprint(m) for m in incoming]
    tail_prints = [fingerprint(history[-1])]  # history from the end, fingerprinted only as far as needed
    for k in range(min(len(history), len(incoming)), 0, -1):
        if incoming_prints[k - 1] != tail_prints[0]:
            continue
        while len(tail_prints) < k:
            tail_prints.append(fingerprint(history[-len(tail_prints) - 1]))
        if all(incoming_prints[i] == tail_prints[k - 1 - i] for i in range(k - 1)):
            return k
    return 0


def fingerprint(message: Message) -> str:
    """What makes two messages 'the same' for resend detection.

    Clients echo stored replies back in varied shapes (SDK dumps add ``refusal: null``, some drop
    ``reasoning_content``, some send text as a list of parts), so only the meaningful fields are compared.
    """
    content = message.get("content")
    if isinstance(content, list) and all(isinstance(p, dict) and p.get("type") == "text" for p in content):
        content = "".join(str(p.get("text", "")) for p in content)
    calls = message.get("tool_calls") or []
    call_prints = [
        [c.get("id"), (c.get("function") or {}).get("name"), (c.get("function") or {}).get("arguments")]
        for c in calls
        if isinstance(c, dict)
    ]
    return dumps([message.get("role"), content or "", message.get("name"), message.get("tool_call_id"), call_prints])


def replay(message: Message) -> Message:
    """A stored message as sent upstream in later turns: no reasoning, no output-only or null fields."""
    return {
        key: value
        for key, value in message.items()
        if key not in _NOT_REPLAYED and (value is not None or key == "content")
    }
