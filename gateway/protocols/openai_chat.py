"""OpenAI wire shapes at the edge: request validation, conversation ids, owners, and JSON encoding.

``Any`` stops here: ``parse_chat_body`` turns raw bytes into a checked ``ChatBody`` whose messages are plain dicts
with a known role, so the rest of the gateway can rely on that shape.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import orjson

from gateway.errors import InvalidRequest

Message = dict[str, Any]

ROLES = frozenset({"system", "developer", "user", "assistant", "tool", "function"})
SYSTEM_ROLES = frozenset({"system", "developer"})
MAX_CONVERSATION_ID = 256
# orjson parses 1,024 levels but serializes only 254, and the gateway re-serializes what it stores and sends: one
# limit, checked at parse time, well inside both (deeply nested tool schemas stay far below it).
MAX_JSON_DEPTH = 128
_CONVERSATION_ID = re.compile(rf"[!-~]{{1,{MAX_CONVERSATION_ID}}}")


@dataclass(frozen=True)
class ChatBody:
    """A validated chat completion request body."""

    fields: dict[str, Any]
    messages: list[Message]
    stream: bool
    model: str | None


def parse_json_body(raw: bytes | str) -> Any:
    """A request body (or an imported record) as JSON; ``InvalidRequest`` (invalid_json) naming what is wrong
    otherwise, nesting deeper than ``MAX_JSON_DEPTH`` included."""
    try:
        value = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise InvalidRequest(f"Request body is not valid JSON: {exc.msg}.", code="invalid_json") from None
    if _deeper_than(value, MAX_JSON_DEPTH):
        raise InvalidRequest(f"Request body nests deeper than {MAX_JSON_DEPTH} levels.", code="invalid_json")
    return value


def _deeper_than(value: Any, limit: int) -> bool:
    """Whether arrays and objects nest more than ``limit`` deep (iterative: no recursion limit to hit)."""
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        node, depth = stack.pop()
        children = node.values() if isinstance(node, dict) else node if isinstance(node, list) else None
        if children is None:
            continue
        if depth > limit:
            return True
        stack.extend((child, depth + 1) for child in children if isinstance(child, dict | list))
    return False


def parse_chat_body(raw: bytes, *, max_messages: int | None = None) -> ChatBody:
    """Validate a ``/v1/chat/completions`` body; raise ``InvalidRequest`` with a precise message otherwise."""
    data = parse_json_body(raw)
    if not isinstance(data, dict):
        raise InvalidRequest("Request body must be a JSON object.", code="invalid_request")
    messages = validate_messages(data.get("messages"))
    if max_messages is not None and len(messages) > max_messages:
        raise InvalidRequest(
            f"At most {max_messages} messages per request.", code="too_many_messages", param="messages"
        )
    model = data.get("model")
    return ChatBody(
        fields=data,
        messages=messages,
        stream=data.get("stream") is True,
        model=model if isinstance(model, str) else None,
    )


def validate_messages(value: Any, *, allow_empty: bool = False) -> list[Message]:
    """A list of message objects, each with a known role; ``InvalidRequest`` naming the first bad one otherwise."""
    if not isinstance(value, list) or not (value or allow_empty):
        raise InvalidRequest(
            f"'messages' must be {'an' if allow_empty else 'a non-empty'} array of message objects.",
            code="invalid_messages",
            param="messages",
        )
    for index, message in enumerate(value):
        if not isinstance(message, dict):
            raise InvalidRequest(
                f"messages[{index}] must be an object.", code="invalid_messages", param=f"messages[{index}]"
            )
        role = message.get("role")
        if not isinstance(role, str) or role not in ROLES:
            raise InvalidRequest(
                f"messages[{index}].role must be one of {', '.join(sorted(ROLES))}.",
                code="invalid_role",
                param=f"messages[{index}].role",
            )
    return value


def validate_conversation_id(value: Any, param: str = "X-Conversation-Id") -> str:
    """1-256 printable ASCII characters without spaces (0x21-0x7e)."""
    if not isinstance(value, str) or _CONVERSATION_ID.fullmatch(value) is None:
        raise InvalidRequest(
            f"{param} must be 1-{MAX_CONVERSATION_ID} printable ASCII characters without spaces.",
            code="invalid_conversation_id",
            param=param,
        )
    return value


def bearer_credential(authorization: str | None) -> str:
    """The credential in an ``Authorization`` header (the token after ``Bearer``), or '' when none."""
    if not authorization:
        return ""
    scheme, _, token = authorization.strip().partition(" ")
    if scheme.lower() == "bearer":
        return token.strip()
    return authorization.strip()


def owner_of(authorization: str | None) -> str:
    """Conversations are keyed by this: the SHA-256 of the bearer credential, '' for a client without one."""
    credential = bearer_credential(authorization)
    return hashlib.sha256(credential.encode()).hexdigest() if credential else ""


def cached_tokens(usage: Mapping[str, Any]) -> Any:
    """``usage.prompt_tokens_details.cached_tokens`` of an upstream usage object, or None when absent."""
    details = usage.get("prompt_tokens_details")
    return details.get("cached_tokens") if isinstance(details, dict) else None


def dumps(value: Any) -> str:
    """Compact UTF-8 JSON, the one serialization used for storage and upstream bodies (stable bytes for caching)."""
    return orjson.dumps(value).decode()


def encode(value: Any) -> bytes:
    """``dumps`` as bytes, for what goes on the wire: no round trip through ``str`` (megabytes of it, for a big
    message)."""
    return orjson.dumps(value)


def loads(text: str | bytes) -> Any:
    """Strict JSON (no NaN or Infinity, which no OpenAI-compatible API accepts)."""
    return orjson.loads(text)


def list_object(data: Sequence[dict[str, Any]], *, has_more: bool) -> dict[str, Any]:
    """OpenAI's list object for a page of ``data`` (each with an ``id``), as its list endpoints answer."""
    return {
        "object": "list",
        "data": list(data),
        "first_id": data[0]["id"] if data else None,
        "last_id": data[-1]["id"] if data else None,
        "has_more": has_more,
    }
