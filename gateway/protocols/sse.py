"""Pure stream code: split an SSE byte stream into events, and assemble the assistant reply from its deltas.

No I/O here.  ``SseParser`` keeps each event's bytes so the relay can pass them on unchanged; ``ReplyAssembler``
folds ``chat.completion.chunk`` objects into the final message as a non-streaming call would have returned it:
``content``, ``reasoning_content`` and ``tool_calls`` accumulated by ``index`` (later fragments often lack ``id``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from gateway.protocols.openai_chat import Message, dumps

DONE = "[DONE]"


@dataclass(frozen=True)
class SseEvent:
    raw: bytes  # the event as received, line endings normalised to \n, ending with the blank line
    data: str | None  # the data lines joined by \n, or None for a comment/keep-alive event
    event: str | None


class SseParser:
    """Incremental SSE framing: feed bytes as they arrive, get back the events completed so far."""

    def __init__(self) -> None:
        self._buffer = b""

    def feed(self, chunk: bytes) -> list[SseEvent]:
        self._buffer += chunk
        if b"\r" in self._buffer:
            # A CRLF pair split across chunks leaves a lone trailing \r; normalise only what is complete.
            keep_cr = self._buffer.endswith(b"\r")
            body = self._buffer[:-1] if keep_cr else self._buffer
            self._buffer = body.replace(b"\r\n", b"\n").replace(b"\r", b"\n") + (b"\r" if keep_cr else b"")
        events: list[SseEvent] = []
        while True:
            end = self._buffer.find(b"\n\n")
            if end < 0:
                return events
            raw, self._buffer = self._buffer[: end + 2], self._buffer[end + 2 :]
            events.append(_parse_event(raw))

    @property
    def pending(self) -> bytes:
        """Bytes of an event not yet completed (non-empty at end of stream means it was cut)."""
        return self._buffer


def _parse_event(raw: bytes) -> SseEvent:
    data: list[str] = []
    event: str | None = None
    for line in raw.decode("utf-8", errors="replace").split("\n"):
        if not line or line.startswith(":"):
            continue
        name, _, value = line.partition(":")
        value = value.removeprefix(" ")
        if name == "data":
            data.append(value)
        elif name == "event":
            event = value
    return SseEvent(raw=raw, data="\n".join(data) if data else None, event=event)


def encode_event(payload: Any) -> bytes:
    return f"data: {dumps(payload)}\n\n".encode()


DONE_EVENT = b"data: [DONE]\n\n"


@dataclass
class _ToolCall:
    id: str | None = None
    type: str = "function"
    name: str = ""
    arguments: str = ""

    def as_message_part(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "type": self.type,
            "function": {"name": self.name, "arguments": self.arguments},
        }


@dataclass
class ReplyAssembler:
    """Folds the chunks of choice 0 into one assistant message; also keeps usage, model and finish_reason."""

    content: list[str] = field(default_factory=list)
    reasoning: list[str] = field(default_factory=list)
    tool_calls: dict[int, _ToolCall] = field(default_factory=dict)
    finish_reason: str | None = None
    usage: dict[str, Any] | None = None
    model: str | None = None

    def add(self, chunk: dict[str, Any]) -> None:
        if isinstance(chunk.get("model"), str):
            self.model = chunk["model"]
        if isinstance(chunk.get("usage"), dict):
            self.usage = chunk["usage"]
        for choice in chunk.get("choices") or ():
            if isinstance(choice, dict) and choice.get("index", 0) == 0:
                self._add_choice(choice)

    def _add_choice(self, choice: dict[str, Any]) -> None:
        if choice.get("finish_reason"):
            self.finish_reason = str(choice["finish_reason"])
        delta = choice.get("delta")
        if not isinstance(delta, dict):
            return
        if isinstance(delta.get("content"), str):
            self.content.append(delta["content"])
        if isinstance(delta.get("reasoning_content"), str):
            self.reasoning.append(delta["reasoning_content"])
        for fragment in delta.get("tool_calls") or ():
            if isinstance(fragment, dict):
                self._add_tool_call(fragment)

    def _add_tool_call(self, fragment: dict[str, Any]) -> None:
        index = fragment.get("index")
        if not isinstance(index, int):
            # Without an index, a fragment with a new id opens a call; one without continues the last call.
            known = [i for i, c in self.tool_calls.items() if c.id and c.id == fragment.get("id")]
            if known:
                index = known[0]
            elif fragment.get("id") or not self.tool_calls:
                index = len(self.tool_calls)
            else:
                index = max(self.tool_calls)
        call = self.tool_calls.setdefault(index, _ToolCall())
        if fragment.get("id"):
            call.id = str(fragment["id"])
        if fragment.get("type"):
            call.type = str(fragment["type"])
        function = fragment.get("function")
        if isinstance(function, dict):
            if function.get("name") and not call.name:
                call.name = str(function["name"])
            if isinstance(function.get("arguments"), str):
                call.arguments += function["arguments"]

    @property
    def finished(self) -> bool:
        return self.finish_reason is not None

    def message(self, *, interrupted: bool = False) -> Message:
        """The assembled assistant message.  An interrupted reply keeps only its text: half a tool call is
        not a call, and replaying one without its results would make the next upstream request invalid."""
        content = "".join(self.content)
        message: Message = {"role": "assistant", "content": content}
        if self.reasoning:
            message["reasoning_content"] = "".join(self.reasoning)
        if self.tool_calls and not interrupted:
            message["tool_calls"] = [self.tool_calls[i].as_message_part() for i in sorted(self.tool_calls)]
            if not content:
                message["content"] = None
        return message
