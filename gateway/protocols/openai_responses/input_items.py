"""The ``input`` of a Responses request (a string, or a list of items) validated and translated into chat messages;
``param`` names the first bad item or part (``input[2].content[0].type``).

Translation rules, where OpenAI's and the chat API's models differ:

- ``developer`` messages go upstream as ``system`` (few chat models other than OpenAI's know the role).
- ``message`` items: a plain string content, or parts: ``input_text`` (and chat's ``text``) -> ``text``,
  ``input_image`` with ``image_url`` -> ``image_url`` (``detail`` kept), ``input_file`` with ``file_data`` or
  ``file_id`` -> chat's ``file`` part; one text part alone becomes a plain string.  An assistant message's
  ``output_text``/``refusal`` parts become its text.  ``file_id`` images and ``file_url`` files are refused: the
  gateway has no file store.
- ``function_call`` items become ``tool_calls`` of an assistant message: consecutive calls, and calls right after
  an assistant message item, join that one message, as a chat reply holds its text and calls.
  ``function_call_output`` -> a ``tool`` message (text parts joined into a string).
- ``reasoning`` items are dropped: the gateway keeps its replies' reasoning itself (``reasoning_content``) and
  replays it upstream as the model's ``reasoning_replay`` setting says; a client's summaries and encrypted
  content mean nothing to another model.
- ``item_reference`` items (``{"type": "item_reference", "id"}``, or an item with an ``id`` and neither ``type``
  nor ``role``, as OpenAI reads one) name an item the gateway gave out.  Parsing keeps them as placeholders
  (``item_references``: their positions and ids); the caller looks the items up and puts them in their places
  (``request.with_referenced_items``), and only then are they translated, exactly as if the client had sent them
  (so a referenced text and the function calls after it still make one assistant message).  Until then
  ``input_messages`` leaves them out.
- Other item types are refused, naming the type as not served by this gateway.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from gateway.errors import InvalidRequest
from gateway.protocols.openai_chat import Message
from gateway.protocols.openai_responses.checks import (
    invalid_type,
    invalid_value,
    missing,
    one_of,
    optional_str,
    required_str,
    unsupported,
)

_MESSAGE_ROLES = ("user", "assistant", "system", "developer")
_IMAGE_DETAILS = ("low", "high", "auto", "original")


def parse_input(value: Any) -> list[dict[str, Any]]:
    """The ``input`` field as a list of item objects (a string is one user message; an item with a ``role`` and no
    ``type`` is a message)."""
    if value is None:
        return []
    if isinstance(value, str):
        return [{"type": "message", "role": "user", "content": value}]
    if not isinstance(value, list):
        raise invalid_type("input", "a string or an array of input items")
    items: list[dict[str, Any]] = []
    for i, item in enumerate(value):
        if not isinstance(item, dict):
            raise invalid_type(f"input[{i}]", "an object")
        if item.get("type") is None and "role" in item:
            item = {**item, "type": "message"}
        items.append(item)
    return items


@dataclass(frozen=True)
class ItemReference:
    """An ``item_reference`` input item: its position in ``input`` and the id of the item it stands for."""

    index: int
    id: str


def is_reference(item: dict[str, Any]) -> bool:
    """Whether an input item (as ``parse_input`` gives it) is an item reference."""
    kind = item.get("type")
    return kind == "item_reference" or (kind is None and "id" in item)


def item_references(items: list[dict[str, Any]]) -> tuple[ItemReference, ...]:
    """The item references among the items, in order, their ids validated."""
    references: list[ItemReference] = []
    for i, item in enumerate(items):
        if is_reference(item):
            item_id = required_str(item, "id", f"input[{i}].id")
            if not item_id:
                param = f"input[{i}].id"
                raise InvalidRequest(f"'{param}' must not be empty.", code="invalid_value", param=param)
            references.append(ItemReference(i, item_id))
    return tuple(references)


def input_messages(items: list[dict[str, Any]]) -> list[Message]:
    """The items as chat messages, validating each (``param`` names the first bad one); item references are left
    out (the caller puts the items they name in their places first, see the module docstring)."""
    messages: list[Message] = []
    merge = False  # whether a function_call joins the last message (an assistant message from these items)
    for i, item in enumerate(items):
        param = f"input[{i}]"
        kind = item.get("type")
        if kind == "message":
            message = _message(item, param)
            messages.append(message)
            merge = message["role"] == "assistant"
        elif kind == "function_call":
            call = {
                "id": required_str(item, "call_id", f"{param}.call_id"),
                "type": "function",
                "function": {
                    "name": required_str(item, "name", f"{param}.name"),
                    "arguments": required_str(item, "arguments", f"{param}.arguments"),
                },
            }
            if merge:
                messages[-1].setdefault("tool_calls", []).append(call)
            else:
                messages.append({"role": "assistant", "content": None, "tool_calls": [call]})
            merge = True
        elif kind == "function_call_output":
            messages.append(
                {
                    "role": "tool",
                    "tool_call_id": required_str(item, "call_id", f"{param}.call_id"),
                    "content": _tool_output(item.get("output"), f"{param}.output"),
                }
            )
            merge = False
        elif kind == "reasoning":
            continue  # dropped, see the module docstring; adjacency of the items around it is kept
        elif is_reference(item):
            continue  # a placeholder, see the module docstring
        elif kind is None:
            raise missing(f"{param}.type")
        elif isinstance(kind, str):
            raise unsupported(f"{param}.type", f"An input item of type '{kind[:64]}'")
        else:
            raise invalid_type(f"{param}.type", "a string")
    return messages


def _message(item: dict[str, Any], param: str) -> Message:
    role = item.get("role")
    if role is None:
        raise missing(f"{param}.role")
    if not isinstance(role, str) or role not in _MESSAGE_ROLES:
        raise invalid_value(f"{param}.role", role, _MESSAGE_ROLES)
    content = item.get("content")
    if content is None:
        raise missing(f"{param}.content")
    if isinstance(content, str):
        return {"role": "system" if role == "developer" else role, "content": content}
    if not isinstance(content, list):
        raise invalid_type(f"{param}.content", "a string or an array of content parts")
    parts = [_part(part, f"{param}.content[{j}]") for j, part in enumerate(content)]
    if role == "assistant":
        if any(p["type"] != "text" for p in parts):
            raise unsupported(f"{param}.content", "Non-text content in an assistant message")
        return {"role": "assistant", "content": "".join(p["text"] for p in parts)}
    if len(parts) == 1 and parts[0]["type"] == "text":
        return {"role": "system" if role == "developer" else role, "content": parts[0]["text"]}
    return {"role": "system" if role == "developer" else role, "content": parts}


def _part(part: Any, param: str) -> dict[str, Any]:
    """One content part of a message (or of a function call's output) as a chat content part."""
    if not isinstance(part, dict):
        raise invalid_type(param, "an object")
    kind = part.get("type")
    if kind in ("input_text", "output_text", "text"):
        return {"type": "text", "text": required_str(part, "text", f"{param}.text")}
    if kind == "refusal":
        return {"type": "text", "text": required_str(part, "refusal", f"{param}.refusal")}
    if kind == "input_image":
        url = optional_str(part, "image_url", f"{param}.image_url")
        if url is None:
            if part.get("file_id") is not None:
                raise unsupported(f"{param}.file_id", "An image by file_id (send image_url)")
            raise missing(f"{param}.image_url")
        image: dict[str, Any] = {"url": url}
        detail = one_of(part, "detail", _IMAGE_DETAILS, f"{param}.detail")
        if detail is not None:
            image["detail"] = detail
        return {"type": "image_url", "image_url": image}
    if kind == "image_url":  # chat's own form, accepted as it is
        if not isinstance(part.get("image_url"), dict) or not isinstance(part["image_url"].get("url"), str):
            raise invalid_type(f"{param}.image_url", "an object with a url")
        return {"type": "image_url", "image_url": dict(part["image_url"])}
    if kind == "input_file":
        if part.get("file_url") is not None:
            raise unsupported(f"{param}.file_url", "A file by file_url (send file_data)")
        file: dict[str, Any] = {}
        for key in ("file_data", "file_id", "filename"):
            value = optional_str(part, key, f"{param}.{key}")
            if value is not None:
                file[key] = value
        if "file_data" not in file and "file_id" not in file:
            raise missing(f"{param}.file_data")
        return {"type": "file", "file": file}
    if kind is None:
        raise missing(f"{param}.type")
    shown = kind[:64] if isinstance(kind, str) else "that"
    raise invalid_value(f"{param}.type", shown, ("input_text", "input_image", "input_file"))


def _tool_output(output: Any, param: str) -> Any:
    if output is None:
        raise missing(param)
    if isinstance(output, str):
        return output
    if not isinstance(output, list):
        raise invalid_type(param, "a string or an array of content parts")
    parts = [_part(part, f"{param}[{j}]") for j, part in enumerate(output)]
    if all(p["type"] == "text" for p in parts):
        return "".join(p["text"] for p in parts)
    return parts
