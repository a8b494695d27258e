"""Pure history logic: merge a request with stored memory, recognise resent history by meaning, and shape
messages for replay.

Terms used here and in the store: the *system prompt* is the leading run of system/developer messages of a
request; *history* is every stored non-system message in order; a *turn* starts at a user message.  A request's
leading system run replaces the stored prompt; its other messages are matched against history so that clients
which resend the whole conversation every turn (agent frameworks, chat UIs, the DashScope guide's loop) are not
doubled.  The rules, in order (README, "How resent history is recognised"):

1. *Continuation*: the request starts with a run equal to the tail of history; the rest is new.
2. A request without assistant messages is new messages only (a stateless client sends only what is new).
3. A request with assistant messages is a *transcript*: aligned with history from its first message.  Where it
   parts from history inside the last stored turn (a retry that never saw the reply, a regenerate, an edit of
   the last message), its version replaces the rest of that turn.  Where it parts earlier, or its first message
   is not stored although later ones are, it is refused (409 ``history_mismatch``): stored turns are never
   doubled, and never dropped without the client asking (the rewind and fork endpoints).
4. A transcript that shares no message with history is new messages (few-shot examples on a first turn).

"Equal" means equal in meaning (``fingerprint``); what is stored stays byte-exact as first received.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import orjson

from gateway.errors import HistoryMismatch, InvalidRequest
from gateway.protocols.openai_chat import SYSTEM_ROLES, Message

# Output-only or never-replayed fields: reasoning is stored for the record but not sent back to the model.
_NOT_REPLAYED = frozenset({"reasoning_content", "annotations"})
# JavaScript clients turn 1.0 into 1 when they re-serialize; integers that large and larger stay floats in JS too.
_EXACT_FLOAT_INTEGERS = 2**53

Fingerprint = tuple[Any, ...]


@dataclass(frozen=True)
class TurnPlan:
    """What one turn sends besides history, and what it will store once the upstream succeeds."""

    prompt: list[Message]  # the system prompt this turn uses: the request's own, else the stored one
    new_messages: list[Message]
    system: list[Message] | None  # the request's system prompt when it brings one, else None (keep stored)
    resent: int  # messages of the request recognised as already stored
    replace_from: int | None = None  # history from this index on is replaced by this turn (rule 3)


@dataclass(frozen=True)
class Match:
    """How a request's non-system messages relate to history: the first ``resent`` are stored already, and
    history from ``replace_from`` on (when not None) gives way to the rest."""

    resent: int
    replace_from: int | None = None


def split_system(messages: Sequence[Message]) -> tuple[list[Message], list[Message]]:
    """Split off the leading run of system/developer messages."""
    cut = 0
    while cut < len(messages) and messages[cut].get("role") in SYSTEM_ROLES:
        cut += 1
    return list(messages[:cut]), list(messages[cut:])


def plan_turn(
    stored_system: Sequence[Message] | None, history: Sequence[Message], request: Sequence[Message]
) -> TurnPlan:
    """Merge a request's messages with stored memory: the system prompt to use and the genuinely new messages."""
    request_system, rest = split_system(request)
    match = match_history(history, rest, offset=len(request_system))
    new = rest[match.resent :]
    if not new and match.replace_from is None:
        raise InvalidRequest(
            "Every message in the request is already stored in this conversation; send the new message.",
            code="no_new_messages",
            param="messages",
        )
    prompt = request_system or list(stored_system or ())
    return TurnPlan(prompt, new, request_system or None, match.resent, match.replace_from)


def match_history(history: Sequence[Message], incoming: Sequence[Message], *, offset: int = 0) -> Match:
    """Apply the module's rules; ``offset`` is the index of ``incoming[0]`` in the request (for error params)."""
    if not history or not incoming:
        return Match(0)
    prints = [fingerprint(m) for m in incoming]
    overlap = _tail_overlap(history, prints)
    # A prefix to continue (DashScope's partial mode: an assistant message with "partial": true) is not a reply.
    if overlap or not any(m.get("role") == "assistant" and not m.get("partial") for m in incoming):
        return Match(overlap)
    stored = [fingerprint(m) for m in history]
    alignment = _align(stored, prints)
    if alignment is None:
        known = set(stored)
        if any(p in known for p in prints[1:]):
            raise _mismatch(offset, None, len(history))
        return Match(0)
    start, run = alignment
    parted = start + run  # the first stored message the transcript does not repeat
    if parted >= _last_turn_start(history):
        return Match(run, parted)
    raise _mismatch(offset + run, parted, len(history))


def _tail_overlap(history: Sequence[Message], prints: Sequence[Fingerprint]) -> int:
    tail = [fingerprint(history[-1])]  # history from the end, fingerprinted only as far as needed
    for k in range(min(len(history), len(prints)), 0, -1):
        if prints[k - 1] != tail[0]:
            continue
        while len(tail) < k:
            tail.append(fingerprint(history[-len(tail) - 1]))
        if all(prints[i] == tail[k - 1 - i] for i in range(k - 1)):
            return k
    return 0


def _align(stored: Sequence[Fingerprint], prints: Sequence[Fingerprint]) -> tuple[int, int] | None:
    """Where in history the transcript's first message stands and how far the two then agree: of every place
    the first message occurs, the one whose agreement reaches furthest into history, the earliest (longest
    agreement) of equals; None if it occurs nowhere."""
    best: tuple[int, int] | None = None
    for start, stored_print in enumerate(stored):
        if stored_print != prints[0]:
            continue
        run = 1
        while run < len(prints) and start + run < len(stored) and prints[run] == stored[start + run]:
            run += 1
        if best is None or start + run > sum(best):
            best = (start, run)
    return best


def _last_turn_start(history: Sequence[Message]) -> int:
    for index in range(len(history) - 1, -1, -1):
        if history[index].get("role") == "user":
            return index
    return len(history)


def _mismatch(request_index: int, stored_index: int | None, stored_count: int) -> HistoryMismatch:
    where = (
        f"stored message {stored_index + 1} of {stored_count}"
        if stored_index is not None
        else "the stored conversation, although later messages repeat it"
    )
    return HistoryMismatch(
        f"messages[{request_index}] differs from {where}, before the last turn. Send only the new messages, resend "
        "the stored history unchanged, or rewind or fork the conversation first "
        "(POST /v1/conversations/{id}/rewind or /fork).",
        code="history_mismatch",
        param=f"messages[{request_index}]",
    )


def fingerprint(message: Message) -> Fingerprint:
    """What makes two messages 'the same' for resend detection: their meaning, not their bytes.

    Clients echo stored messages back re-serialized (README, "How resent history is recognised"): tool-call
    arguments as compact JSON, with spaces or with ``\\uXXXX`` escapes (compared as parsed JSON; raw text only
    when they do not parse; empty as ``{}``), text as a string or as a list of text parts, ``null``, ``""`` and
    absent content alike, ``null`` or absent optional fields (``refusal``, ``audio``, ``name``), output-only
    fields dropped (``reasoning_content``, ``annotations``), tool results as parsed JSON when they are JSON.
    """
    role = message.get("role")
    calls = message.get("tool_calls")
    call_prints = tuple(_call_print(c) for c in calls if isinstance(c, dict)) if isinstance(calls, list) else ()
    legacy = message.get("function_call")
    return (
        _scalar(role),
        _content_print(message.get("content"), json_text=role == "tool"),
        _scalar(message.get("name")),
        _scalar(message.get("tool_call_id")),
        call_prints,
        _call_print({"function": legacy}) if isinstance(legacy, dict) else None,
    )


def _scalar(value: Any) -> str | None:
    """A field meant to be a string, as something hashable whatever a client put there ('' and null alike)."""
    if value is None or value == "":
        return None
    return value if isinstance(value, str) else _canonical_json(value, fallback=repr(value))


def _call_print(call: dict[str, Any]) -> tuple[Any, ...]:
    function = call.get("function")
    function = function if isinstance(function, dict) else {}
    return (_scalar(call.get("id")), _scalar(function.get("name")), _arguments_print(function.get("arguments")))


def _arguments_print(arguments: Any) -> str:
    if isinstance(arguments, str):
        text = arguments.strip()
        if not text:
            return "{}"
        try:
            return _canonical_json(orjson.loads(text), fallback=arguments)
        except orjson.JSONDecodeError:
            return arguments
    return _canonical_json(arguments if arguments is not None else {}, fallback=repr(arguments))


def _content_print(content: Any, *, json_text: bool) -> str:
    if content is None:
        return ""
    if isinstance(content, list) and all(isinstance(p, dict) and p.get("type") == "text" for p in content):
        content = "".join(str(p.get("text", "")) for p in content)
    if isinstance(content, str):
        if json_text and content[:1] in ("{", "["):
            try:
                return _canonical_json(orjson.loads(content), fallback=content)
            except orjson.JSONDecodeError:
                return content
        return content
    return _canonical_json(content, fallback=f"\0{id(content)}")  # media parts; past any sane depth, unequal


def _canonical_json(value: Any, *, fallback: str) -> str:
    try:
        return orjson.dumps(_canonical(value), option=orjson.OPT_SORT_KEYS).decode()
    except (orjson.JSONEncodeError, RecursionError):
        return fallback


def _canonical(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _canonical(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_canonical(v) for v in value]
    if isinstance(value, float) and value.is_integer() and abs(value) < _EXACT_FLOAT_INTEGERS:
        return int(value)
    return value


def replay(message: Message) -> Message:
    """A stored message as sent upstream in later turns: no reasoning, no output-only or null fields."""
    return {
        key: value
        for key, value in message.items()
        if key not in _NOT_REPLAYED and (value is not None or key == "content")
    }
