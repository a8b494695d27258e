"""Stored chat messages as Responses items (``items_from_messages``), for input_items and the Conversations items
API; their ids derive from the messages' row ids.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from gateway.protocols.openai_chat import Message
from gateway.protocols.openai_responses.objects import as_mapping, text_of

_IMAGE_DETAILS = ("low", "high", "auto", "original")


def items_from_messages(messages: Iterable[tuple[int, Message]]) -> list[dict[str, Any]]:
    """Stored chat messages, as ``(row_id, body)`` pairs, as Responses items: ``msg_<row_id>`` message items
    (``input_text`` parts for user/system/developer, ``output_text`` for the assistant), ``rs_<row_id>`` for an
    assistant's reasoning, ``fc_<row_id>_<n>`` for its tool calls, ``fco_<row_id>`` for a tool result."""
    items: list[dict[str, Any]] = []
    for row_id, message in messages:
        role = message.get("role")
        if role == "assistant":
            items.extend(_assistant_items(row_id, message))
        elif role in ("tool", "function"):
            call_id = message.get("tool_call_id") or message.get("name") or ""
            items.append(
                {
                    "type": "function_call_output",
                    "id": f"fco_{row_id}",
                    "call_id": str(call_id),
                    "output": _item_output(message.get("content")),
                    "status": "completed",
                }
            )
        else:
            items.append(
                {
                    "type": "message",
                    "id": f"msg_{row_id}",
                    "status": "completed",
                    "role": role if role in ("system", "developer") else "user",
                    "content": _input_parts(message.get("content")),
                }
            )
    return items


def _assistant_items(row_id: int, message: Message) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = []
    reasoning = message.get("reasoning_content")
    if isinstance(reasoning, str) and reasoning:
        items.append(
            {"type": "reasoning", "id": f"rs_{row_id}", "summary": [{"type": "summary_text", "text": reasoning}]}
        )
    text = text_of(message.get("content"))
    calls = [c for c in message.get("tool_calls") or () if isinstance(c, dict)]
    if text or not calls:
        content = [{"type": "output_text", "text": text, "annotations": [], "logprobs": []}]
        items.append(
            {"type": "message", "id": f"msg_{row_id}", "status": "completed", "role": "assistant", "content": content}
        )
    for n, call in enumerate(calls):
        function = as_mapping(call.get("function"))
        arguments = function.get("arguments")
        items.append(
            {
                "type": "function_call",
                "id": f"fc_{row_id}_{n}",
                "call_id": str(call.get("id") or f"call_{row_id}_{n}"),
                "name": str(function.get("name") or ""),
                "arguments": arguments if isinstance(arguments, str) else "",
                "status": "completed",
            }
        )
    return items


def _input_parts(content: Any) -> list[dict[str, Any]]:
    if isinstance(content, str):
        return [{"type": "input_text", "text": content}]
    parts: list[dict[str, Any]] = []
    for part in content if isinstance(content, list) else ():
        if not isinstance(part, dict):
            continue
        kind = part.get("type")
        if kind == "text" and isinstance(part.get("text"), str):
            parts.append({"type": "input_text", "text": part["text"]})
        elif kind == "image_url":
            image = part.get("image_url")
            url = image.get("url") if isinstance(image, dict) else image
            detail = image.get("detail") if isinstance(image, dict) else None
            if isinstance(url, str):
                shown = detail if detail in _IMAGE_DETAILS else "auto"
                parts.append({"type": "input_image", "image_url": url, "detail": shown})
        elif kind == "file" and isinstance(part.get("file"), dict):
            file = {k: v for k, v in part["file"].items() if k in ("file_data", "file_id", "filename")}
            parts.append({"type": "input_file", **file})
    return parts


def _item_output(content: Any) -> Any:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return _input_parts(content)
    return ""
