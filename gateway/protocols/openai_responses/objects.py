"""Response objects from chat replies: ``response_object`` (and from a whole ``chat.completion``, from a stored
turn), ``build_response`` from ready output items (for the stream), the output items of a reply, ``usage``
(``response_usage``), the status of a finish reason (``finish_status``) and ``error``.

Output items follow the reply's parts in the order chat upstreams produce them: a ``reasoning`` item (the reply's
``reasoning_content`` as one ``summary_text`` part), a ``message`` item (its text as one ``output_text`` part, also
when empty and nothing else was said), then one ``function_call`` item per tool call.  Item ids derive from the
response id and the item's ``output_index`` (``rs_``/``msg_``/``fc_`` + the response id's hex + ``_<index>``), so
the object a stream ends with, the plain answer and a later GET all name the same items.  A tool call the upstream
sent without an id (or with the id of an earlier call of the reply) gets ``call_<hex>_<index>`` the same way.
``response_of_item`` reads the response id back out of an item id (for ``item_reference`` input items).
"""

from __future__ import annotations

import copy
import re
from collections.abc import Mapping
from typing import Any

from gateway.protocols.openai_chat import Message

# ResponseError.code is a closed set in the SDK; anything else is reported as a server error.
_ERROR_CODES = frozenset(
    {
        "server_error",
        "rate_limit_exceeded",
        "invalid_prompt",
        "vector_store_timeout",
        "invalid_image",
        "invalid_image_format",
        "invalid_base64_image",
        "invalid_image_url",
        "image_too_large",
        "image_too_small",
        "image_parse_error",
        "image_content_policy_violation",
        "invalid_image_mode",
        "image_file_too_large",
        "unsupported_image_media_type",
        "empty_image_file",
        "failed_to_download_image",
        "image_file_not_found",
    }
)
# finish_reason of a chat reply -> incomplete_details.reason of the Response
INCOMPLETE = {"length": "max_output_tokens", "content_filter": "content_filter"}


def _int(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


def as_mapping(value: Any) -> Mapping[str, Any]:
    return value if isinstance(value, Mapping) else {}


def _detail(usage: Mapping[str, Any], key: str) -> Mapping[str, Any]:
    return as_mapping(usage.get(key))


def response_usage(usage: Mapping[str, Any] | None) -> dict[str, Any] | None:
    """A chat completion's ``usage`` as the Responses API's (a usage already in that shape is kept as it is)."""
    if not isinstance(usage, Mapping):
        return None
    if "input_tokens" in usage and "prompt_tokens" not in usage:  # already Responses-shaped (or DashScope native)
        inputs, outputs = _int(usage.get("input_tokens")), _int(usage.get("output_tokens"))
        prompt, completion = _detail(usage, "input_tokens_details"), _detail(usage, "output_tokens_details")
        if not prompt:
            prompt = _detail(usage, "prompt_tokens_details")
    else:
        inputs, outputs = _int(usage.get("prompt_tokens")), _int(usage.get("completion_tokens"))
        prompt, completion = _detail(usage, "prompt_tokens_details"), _detail(usage, "completion_tokens_details")
    writes = prompt.get("cache_write_tokens", prompt.get("cache_creation_input_tokens"))
    return {
        "input_tokens": inputs,
        "input_tokens_details": {
            "cached_tokens": _int(prompt.get("cached_tokens")),
            "cache_write_tokens": _int(writes),
        },
        "output_tokens": outputs,
        "output_tokens_details": {"reasoning_tokens": _int(completion.get("reasoning_tokens"))},
        "total_tokens": _int(usage.get("total_tokens")) or inputs + outputs,
    }


def finish_status(finish_reason: Any, *, interrupted: bool = False) -> tuple[str, dict[str, Any] | None]:
    """(status, incomplete_details) of a response whose chat reply ended with ``finish_reason``: "length" and
    "content_filter" make it ``incomplete``; so does a reply cut short by the client (``interrupted``), with no
    reason, as none of OpenAI's fits."""
    reason = INCOMPLETE.get(finish_reason) if isinstance(finish_reason, str) else None
    if reason is not None:
        return "incomplete", {"reason": reason}
    return ("incomplete", None) if interrupted else ("completed", None)


def response_error(error: Mapping[str, Any] | None) -> dict[str, Any]:
    """An OpenAI-shaped error object (``{"message", "type", "code", "param"}``) as a Response's ``error``."""
    error = error if isinstance(error, Mapping) else {}
    code, kind = error.get("code"), error.get("type")
    if code not in _ERROR_CODES:
        code = "rate_limit_exceeded" if kind == "rate_limit_error" else "server_error"
    message = error.get("message")
    return {"code": code, "message": message if isinstance(message, str) else "The upstream model failed."}


def _hex(response_id: str) -> str:
    return response_id.removeprefix("resp_")


def item_id(prefix: str, response_id: str, output_index: int) -> str:
    return f"{prefix}_{_hex(response_id)}_{output_index}"


# An output item's id: its kind, the response id's 32 hex digits, its output_index.  (The ids of stored messages'
# items, ``items``' ``msg_<row>`` and ``fc_<row>_<n>``, have decimal row ids of at most 19 digits: never 32.)
_OUTPUT_ITEM_ID = re.compile(r"(?:msg|fc|rs)_([0-9a-f]{32})_[0-9]{1,9}")


def response_of_item(item_id: Any) -> str | None:
    """The id of the response whose output item ``item_id`` names (``msg_<hex>_1`` -> ``resp_<hex>``), or None
    when it is not shaped like an output item id of the gateway's."""
    match = _OUTPUT_ITEM_ID.fullmatch(item_id) if isinstance(item_id, str) else None
    return None if match is None else f"resp_{match.group(1)}"


def text_part(text: str) -> dict[str, Any]:
    return {"type": "output_text", "text": text, "annotations": [], "logprobs": []}


def message_item(id_: str, text: str | None, status: str) -> dict[str, Any]:
    content = [] if text is None else [text_part(text)]
    return {"type": "message", "id": id_, "status": status, "role": "assistant", "content": content}


def reasoning_item(id_: str, text: str | None) -> dict[str, Any]:
    summary = [] if text is None else [{"type": "summary_text", "text": text}]
    return {"type": "reasoning", "id": id_, "summary": summary}


def function_call_item(id_: str, call_id: str, name: str, arguments: str, status: str) -> dict[str, Any]:
    return {
        "type": "function_call",
        "id": id_,
        "call_id": call_id,
        "name": name,
        "arguments": arguments,
        "status": status,
    }


def unique_call_id(candidate: Any, used: set[str], response_id: str, output_index: int) -> str:
    """A function call's ``call_id``: the upstream's tool call id, or ``call_<hex>_<index>`` when it sent none, or
    one an earlier call of the reply already has (the SDK refuses two calls with one id)."""
    call_id = candidate if isinstance(candidate, str) and candidate and candidate not in used else None
    call_id = call_id or item_id("call", response_id, output_index)
    used.add(call_id)
    return call_id


def text_of(content: Any) -> str:
    """A chat message's content as text (the text parts of a list joined)."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(p["text"] for p in content if isinstance(p, dict) and isinstance(p.get("text"), str))
    return ""


def output_items(response_id: str, reply: Message | None, *, incomplete: bool = False) -> list[dict[str, Any]]:
    """The output items of a chat reply (the assistant message), in stream order."""
    if reply is None:
        return []
    items: list[dict[str, Any]] = []
    reasoning = reply.get("reasoning_content")
    if isinstance(reasoning, str) and reasoning:
        items.append(reasoning_item(item_id("rs", response_id, len(items)), reasoning))
    text = text_of(reply.get("content"))
    calls = [c for c in reply.get("tool_calls") or () if isinstance(c, dict)]
    if text or not calls:
        items.append(message_item(item_id("msg", response_id, len(items)), text, "completed"))
    used: set[str] = set()
    for call in calls:
        function = as_mapping(call.get("function"))
        index = len(items)
        call_id = unique_call_id(call.get("id"), used, response_id, index)
        items.append(
            function_call_item(
                item_id("fc", response_id, index),
                call_id,
                str(function.get("name") or ""),
                function["arguments"] if isinstance(function.get("arguments"), str) else "",
                "completed",
            )
        )
    if incomplete and items and items[-1]["type"] != "reasoning":
        items[-1]["status"] = "incomplete"
    return items


def _request_side(request: Mapping[str, Any]) -> dict[str, Any]:
    def get(key: str, default: Any = None) -> Any:
        value = request.get(key)
        return copy.deepcopy(default if value is None else value)

    return {
        "instructions": get("instructions"),
        "max_output_tokens": get("max_output_tokens"),
        "model": get("model", ""),
        "parallel_tool_calls": get("parallel_tool_calls", True),
        "previous_response_id": get("previous_response_id"),
        "prompt_cache_key": get("prompt_cache_key"),
        "reasoning": get("reasoning", {"effort": None, "summary": None}),
        "store": get("store", True),
        "temperature": get("temperature"),
        "text": get("text", {"format": {"type": "text"}}),
        "tool_choice": get("tool_choice", "auto"),
        "tools": get("tools", []),
        "top_p": get("top_p"),
        "truncation": get("truncation", "disabled"),
        "user": get("user"),
        "metadata": get("metadata", {}),
    }


def build_response(
    *,
    id: str,
    created_at: float,
    request: Mapping[str, Any],
    output: list[dict[str, Any]],
    usage: Mapping[str, Any] | None,
    status: str,
    conversation_id: str | None,
    error: Mapping[str, Any] | None = None,
    incomplete: Mapping[str, Any] | None = None,
    completed_at: float | None = None,
) -> dict[str, Any]:
    """A Response object from its parts (``usage`` in the chat shape; ``error`` an OpenAI error object)."""
    side = _request_side(request)
    response: dict[str, Any] = {
        "id": id,
        "object": "response",
        "created_at": int(created_at),
        "status": status,
        "background": False,
        "completed_at": int(completed_at) if completed_at is not None and status == "completed" else None,
        "conversation": {"id": conversation_id} if conversation_id else None,
        "error": response_error(error) if error is not None else None,
        "incomplete_details": dict(incomplete) if incomplete is not None else None,
    }
    response.update(
        instructions=side.pop("instructions"),
        max_output_tokens=side.pop("max_output_tokens"),
        model=side.pop("model"),
        output=output,
    )
    response.update(side)
    response["usage"] = response_usage(usage)
    metadata = response.pop("metadata")  # OpenAI's order: metadata last
    response["metadata"] = metadata
    return response


# --- Response objects ---------------------------------------------------------------------------------------


def response_object(
    *,
    id: str,
    created_at: float,
    request: Mapping[str, Any],
    reply: Message | None,
    usage: Mapping[str, Any] | None,
    status: str,
    conversation_id: str | None,
    error: Mapping[str, Any] | None = None,
    incomplete: Mapping[str, Any] | None = None,
    completed_at: float | None = None,
) -> dict[str, Any]:
    """The Response object for a chat reply, exactly as ``openai.types.responses.Response`` reads it."""
    return build_response(
        id=id,
        created_at=created_at,
        request=request,
        output=output_items(id, reply, incomplete=status == "incomplete"),
        usage=usage,
        status=status,
        conversation_id=conversation_id,
        error=error,
        incomplete=incomplete,
        completed_at=completed_at,
    )


def response_from_completion(
    *,
    id: str,
    created_at: float,
    request: Mapping[str, Any],
    completion: Mapping[str, Any],
    conversation_id: str | None,
    completed_at: float | None = None,
) -> dict[str, Any]:
    """The Response object for a whole ``chat.completion`` body (its first choice, usage, finish reason)."""
    choices = completion.get("choices")
    choice = choices[0] if isinstance(choices, list) and choices and isinstance(choices[0], dict) else {}
    reply = choice.get("message") if isinstance(choice.get("message"), dict) else {"role": "assistant", "content": ""}
    usage = completion.get("usage")
    status, incomplete = finish_status(choice.get("finish_reason"))
    return response_object(
        id=id,
        created_at=created_at,
        request=request,
        reply=reply,
        usage=usage if isinstance(usage, dict) else None,
        status=status,
        conversation_id=conversation_id,
        incomplete=incomplete,
        completed_at=completed_at,
    )


def response_from_stored(
    *,
    id: str,
    created_at: float,
    request: Mapping[str, Any],
    reply: Message,
    usage: Mapping[str, Any] | None,
    interrupted: bool,
    conversation_id: str | None,
    completed_at: float | None = None,
) -> dict[str, Any]:
    """GET's Response object from a recorded turn: ``completed``, or ``incomplete`` when the reply was cut short."""
    status, incomplete = finish_status(None, interrupted=interrupted)
    return response_object(
        id=id,
        created_at=created_at,
        request=request,
        reply=reply,
        usage=usage,
        status=status,
        conversation_id=conversation_id,
        incomplete=incomplete,
        completed_at=completed_at,
    )
