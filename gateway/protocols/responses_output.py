"""The output side of OpenAI's Responses API: a chat reply as a Response object, chat stream chunks as Responses
stream events, stored chat messages as items.  Pure code; ``gateway.protocols.openai_responses`` is the public
face and re-exports what is public here (its docstring lists the functions and their arguments).

Output items follow the reply's parts in the order chat upstreams produce them: a ``reasoning`` item (the reply's
``reasoning_content`` as one ``summary_text`` part), a ``message`` item (its text as one ``output_text`` part, also
when empty and nothing else was said), then one ``function_call`` item per tool call.  Item ids derive from the
response id and the item's ``output_index`` (``rs_``/``msg_``/``fc_`` + the response id's hex + ``_<index>``), so
the object a stream ends with, the plain answer and a later GET all name the same items.  A tool call the upstream
sent without an id (or with the id of an earlier call of the reply) gets ``call_<hex>_<index>`` the same way.

``ResponsesStream`` emits OpenAI's event order: each item is ``added``, gets its deltas and is ``done`` before
the next one starts (a part of another kind, or a tool call of another index, closes the open item), then
``response.completed`` (``response.incomplete`` when the upstream stopped at its length limit or a content
filter, as OpenAI sends it), or ``response.failed``.  ``sequence_number`` counts every event from 0.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from gateway.protocols.openai_chat import Message, dumps

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
_INCOMPLETE = {"length": "max_output_tokens", "content_filter": "content_filter"}
_IMAGE_DETAILS = ("low", "high", "auto", "original")


def _int(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


def _mapping(value: Any) -> Mapping[str, Any]:
    return value if isinstance(value, Mapping) else {}


def _detail(usage: Mapping[str, Any], key: str) -> Mapping[str, Any]:
    return _mapping(usage.get(key))


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
    reason = _INCOMPLETE.get(finish_reason) if isinstance(finish_reason, str) else None
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
        function = _mapping(call.get("function"))
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


# --- stored messages as items -------------------------------------------------------------------------------


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
        function = _mapping(call.get("function"))
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


# --- the stream ---------------------------------------------------------------------------------------------


@dataclass
class _Item:
    kind: str  # "reasoning" | "message" | "function_call"
    index: int  # output_index
    id: str
    text: list[str] = field(default_factory=list)  # reasoning or message text, or call arguments
    call_id: str = ""
    name: str = ""
    done: bool = False

    def snapshot(self, status: str) -> dict[str, Any]:
        text = "".join(self.text)
        if self.kind == "reasoning":
            return reasoning_item(self.id, text)
        if self.kind == "message":
            return message_item(self.id, text, status)
        return function_call_item(self.id, self.call_id, self.name, text, status)


@dataclass
class _PendingCall:
    """A tool call whose first fragments brought no name nor arguments yet (just its id, say)."""

    id: str | None = None
    name: str = ""


class ResponsesStream:
    """Turns the ``chat.completion.chunk`` objects of one reply into Responses stream events (SSE bytes):
    ``start()`` once, ``chunk()`` per chunk, then ``complete()`` at the end of the reply (after it is recorded) or
    ``fail(error)`` (an error chunk's ``error`` object).  After either, every call returns nothing."""

    def __init__(
        self, id: str, created_at: float, request_fields: Mapping[str, Any], conversation_id: str | None
    ) -> None:
        self._id = id
        self._created_at = created_at
        self._request = request_fields
        self._conversation_id = conversation_id
        self._sequence = 0
        self._items: list[_Item] = []
        self._calls: dict[int, _Item] = {}  # chat tool_call index -> its item
        self._pending: dict[int, _PendingCall] = {}
        self._call_ids: set[str] = set()
        self._open: _Item | None = None
        self._usage: Mapping[str, Any] | None = None
        self._finish: str | None = None
        self._started = False
        self._ended = False

    # --- the public steps

    def start(self) -> bytes:
        """``response.created`` and ``response.in_progress``."""
        if self._started:
            return b""
        self._started = True
        snapshot = self._response("in_progress", [], None)
        return self._event("response.created", response=snapshot) + self._event(
            "response.in_progress", response=snapshot
        )

    def chunk(self, chunk: Mapping[str, Any]) -> bytes:
        """The events for one chat chunk (none for a chunk that only carries usage or a role)."""
        if self._ended:
            return b""
        out = self.start()
        if isinstance(chunk.get("usage"), Mapping):
            self._usage = chunk["usage"]
        for choice in chunk.get("choices") or ():
            if isinstance(choice, Mapping) and choice.get("index", 0) == 0:
                out += self._choice(choice)
        return out

    def complete(self, usage: Mapping[str, Any] | None = None, *, completed_at: float | None = None) -> bytes:
        """Closes the open item, then ``response.completed`` (or ``response.incomplete``) with the whole
        response; ``usage`` (chat shape) defaults to the one the chunks carried."""
        if self._ended:
            return b""
        out = self.start()
        if not any(item.kind in ("message", "function_call") for item in self._items):
            out += self._close() + self._open_message()  # a reply with nothing to say still has its message
        out += self._close(last=True)
        self._ended = True
        status, incomplete = finish_status(self._finish)
        output = [item.snapshot("completed") for item in self._items]
        if status == "incomplete" and output and output[-1]["type"] != "reasoning":
            output[-1]["status"] = "incomplete"
        response = self._response(status, output, usage if usage is not None else self._usage, incomplete)
        if completed_at is not None and status == "completed":
            response["completed_at"] = int(completed_at)
        kind = "response.completed" if status == "completed" else "response.incomplete"
        return out + self._event(kind, response=response)

    def fail(self, error: Mapping[str, Any] | None) -> bytes:
        """``response.failed`` with ``error`` (an OpenAI error object) and the output so far."""
        if self._ended:
            return b""
        out = self.start()
        self._ended = True
        output = [item.snapshot("completed" if item.done else "incomplete") for item in self._items]
        response = self._response("failed", output, self._usage, error=error if error is not None else {})
        return out + self._event("response.failed", response=response)

    # --- chunk handling

    def _choice(self, choice: Mapping[str, Any]) -> bytes:
        if choice.get("finish_reason"):
            self._finish = str(choice["finish_reason"])
        delta = choice.get("delta")
        if not isinstance(delta, Mapping):
            return b""
        out = b""
        reasoning = delta.get("reasoning_content")
        if isinstance(reasoning, str) and reasoning:
            if self._open is None or self._open.kind != "reasoning":
                out += self._close() + self._open_reasoning()
            out += self._text_delta("response.reasoning_summary_text.delta", reasoning, summary_index=0)
        content = delta.get("content")
        if isinstance(content, str) and content:
            if self._open is None or self._open.kind != "message":
                out += self._close() + self._open_message()
            out += self._text_delta("response.output_text.delta", content, content_index=0, logprobs=[])
        for fragment in delta.get("tool_calls") or ():
            if isinstance(fragment, Mapping):
                out += self._tool_fragment(fragment)
        return out

    def _tool_fragment(self, fragment: Mapping[str, Any]) -> bytes:
        index = fragment.get("index")
        if not isinstance(index, int) or isinstance(index, bool):
            index = self._fragment_index(fragment)
        function = _mapping(fragment.get("function"))
        name: str = function["name"] if isinstance(function.get("name"), str) else ""
        arguments: str = function["arguments"] if isinstance(function.get("arguments"), str) else ""
        call_id = fragment.get("id") if isinstance(fragment.get("id"), str) and fragment.get("id") else None
        item = self._calls.get(index)
        if item is not None:  # a call already under way: more of its arguments (or a late name)
            if name and not item.name:
                item.name = name
            if not arguments:
                return b""
            item.text.append(arguments)
            if item.done:  # out of order from the upstream: kept for the final object, no delta after done
                return b""
            return self._event(
                "response.function_call_arguments.delta", item_id=item.id, output_index=item.index, delta=arguments
            )
        pending = self._pending.setdefault(index, _PendingCall())
        pending.id = pending.id or call_id
        pending.name = pending.name or name
        if not pending.name and not arguments:
            return b""  # nothing to show yet: open the item when its name (or arguments) arrive
        del self._pending[index]
        out = self._close()
        output_index = len(self._items)
        item = _Item(
            "function_call",
            output_index,
            item_id("fc", self._id, output_index),
            call_id=unique_call_id(pending.id, self._call_ids, self._id, output_index),
            name=pending.name,
        )
        self._calls[index] = item
        out += self._add(item)
        if arguments:
            item.text.append(arguments)
            out += self._event(
                "response.function_call_arguments.delta", item_id=item.id, output_index=item.index, delta=arguments
            )
        return out

    def _fragment_index(self, fragment: Mapping[str, Any]) -> int:
        """The tool call a fragment without an index belongs to, as ``ReplyAssembler`` decides it."""
        known = {**{i: c.call_id for i, c in self._calls.items()}, **{i: p.id for i, p in self._pending.items()}}
        call_id = fragment.get("id")
        for index, known_id in known.items():
            if call_id and known_id == call_id:
                return index
        if call_id or not known:
            return len(known)
        return max(known)

    # --- items

    def _add(self, item: _Item) -> bytes:
        self._items.append(item)
        self._open = item
        return self._event("response.output_item.added", output_index=item.index, item=item.snapshot("in_progress"))

    def _open_reasoning(self) -> bytes:
        index = len(self._items)
        item = _Item("reasoning", index, item_id("rs", self._id, index))
        out = self._add(item)
        empty = {"type": "summary_text", "text": ""}
        return out + self._event(
            "response.reasoning_summary_part.added", item_id=item.id, output_index=index, summary_index=0, part=empty
        )

    def _open_message(self) -> bytes:
        index = len(self._items)
        item = _Item("message", index, item_id("msg", self._id, index))
        out = self._add(item)
        return out + self._event(
            "response.content_part.added", item_id=item.id, output_index=index, content_index=0, part=text_part("")
        )

    def _text_delta(self, kind: str, delta: str, **fields: Any) -> bytes:
        item = self._open
        assert item is not None
        item.text.append(delta)
        return self._event(kind, item_id=item.id, output_index=item.index, **fields, delta=delta)

    def _close(self, *, last: bool = False) -> bytes:
        """The ``.done`` events of the open item, if there is one (``last``: the reply ends with it, so it is
        incomplete when the reply is)."""
        item, self._open = self._open, None
        if item is None:
            return b""
        item.done = True
        text = "".join(item.text)
        where = {"item_id": item.id, "output_index": item.index}
        if item.kind == "reasoning":
            part = {"type": "summary_text", "text": text}
            out = self._event("response.reasoning_summary_text.done", **where, summary_index=0, text=text)
            out += self._event("response.reasoning_summary_part.done", **where, summary_index=0, part=part)
        elif item.kind == "message":
            out = self._event("response.output_text.done", **where, content_index=0, text=text, logprobs=[])
            out += self._event("response.content_part.done", **where, content_index=0, part=text_part(text))
        else:
            out = self._event("response.function_call_arguments.done", **where, arguments=text)
        status = "incomplete" if last and self._finish in _INCOMPLETE and item.kind != "reasoning" else "completed"
        return out + self._event("response.output_item.done", output_index=item.index, item=item.snapshot(status))

    # --- framing

    def _response(
        self,
        status: str,
        output: list[dict[str, Any]],
        usage: Mapping[str, Any] | None,
        incomplete: Mapping[str, Any] | None = None,
        error: Mapping[str, Any] | None = None,
    ) -> dict[str, Any]:
        return build_response(
            id=self._id,
            created_at=self._created_at,
            request=self._request,
            output=output,
            usage=usage,
            status=status,
            conversation_id=self._conversation_id,
            incomplete=incomplete,
            error=error,
        )

    def _event(self, kind: str, **fields: Any) -> bytes:
        payload = {"type": kind, "sequence_number": self._sequence, **fields}
        self._sequence += 1
        return f"event: {kind}\ndata: {dumps(payload)}\n\n".encode()
