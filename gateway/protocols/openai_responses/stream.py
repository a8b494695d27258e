"""``ResponsesStream``: the ``chat.completion.chunk`` objects of one reply as Responses stream events (SSE bytes).

It emits OpenAI's event order: each item is ``added``, gets its deltas and is ``done`` before the next one starts (a
part of another kind, or a tool call of another index, closes the open item), then ``response.completed``
(``response.incomplete`` when the upstream stopped at its length limit or a content filter, as OpenAI sends it), or
``response.failed``.  ``sequence_number`` counts every event from 0.  Items and their ids are ``objects``'s.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from gateway.protocols.openai_chat import dumps
from gateway.protocols.openai_responses.objects import (
    INCOMPLETE,
    as_mapping,
    build_response,
    finish_status,
    function_call_item,
    item_id,
    message_item,
    reasoning_item,
    text_part,
    unique_call_id,
)


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
        function = as_mapping(fragment.get("function"))
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
        status = "incomplete" if last and self._finish in INCOMPLETE and item.kind != "reasoning" else "completed"
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
