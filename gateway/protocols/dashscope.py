"""DashScope's native text-generation protocol, translated to and from the OpenAI shapes the gateway works in.

Pure code.  The native endpoint (``/api/v1/services/aigc/text-generation/generation``) takes ``model``,
``input.messages`` (or ``input.prompt``) and ``parameters``, and answers ``output.choices[].message`` (with
``result_format: "message"``) or ``output.text`` (``"text"``, the default), ``usage.input_tokens/output_tokens/
total_tokens`` and ``request_id``; errors are ``{"code", "message", "request_id"}``.  Its stream is SSE with
``id:``, ``event:result`` (``event:error``), a ``:HTTP_STATUS/200`` comment and ``data:``; without
``incremental_output`` every event carries the whole text so far.

Everything inside the gateway (memory, context window, storage) stays in OpenAI's shape, so one conversation can
move between the two protocols freely: requests are translated in, replies out (``NativeStream`` per event).  For
``upstream.protocol = "native"`` the same functions work the other way round on the upstream side.
"""

from __future__ import annotations

from typing import Any

from gateway.errors import InvalidRequest
from gateway.protocols.openai_chat import Message, dumps, loads

# Parameters that shape the native answer itself rather than the generation.
_ANSWER_SHAPE = frozenset({"result_format", "incremental_output"})


def openai_body(native: Any, *, stream: bool) -> dict[str, Any]:
    """A native request as an OpenAI chat completions body: messages from ``input``, every parameter that is not
    about the answer's shape alongside them (DashScope's compatible mode takes its own extras the same way)."""
    if not isinstance(native, dict):
        raise InvalidRequest("Request body must be a JSON object.", code="InvalidParameter")
    source = native.get("input")
    if not isinstance(source, dict):
        raise InvalidRequest("'input' must be an object with 'messages' or 'prompt'.", code="InvalidParameter")
    messages = source.get("messages")
    if messages is None and isinstance(source.get("prompt"), str):
        messages = [{"role": "user", "content": source["prompt"]}]
    parameters = native.get("parameters") or {}
    if not isinstance(parameters, dict):
        raise InvalidRequest("'parameters' must be an object.", code="InvalidParameter")
    body: dict[str, Any] = {k: v for k, v in parameters.items() if k not in _ANSWER_SHAPE}
    body.update(model=native.get("model"), messages=messages)
    if stream:
        body.update(stream=True, stream_options={"include_usage": True})
    return body


def answer_shape(native: dict[str, Any]) -> tuple[str, bool]:
    """(result_format, incremental_output) asked for by a native request."""
    parameters = native.get("parameters") or {}
    fmt = parameters.get("result_format", "text") if isinstance(parameters, dict) else "text"
    return ("message" if fmt == "message" else "text"), bool(
        isinstance(parameters, dict) and parameters.get("incremental_output")
    )


def native_usage(usage: Any) -> dict[str, Any] | None:
    if not isinstance(usage, dict):
        return None
    result = {
        "input_tokens": usage.get("prompt_tokens", 0),
        "output_tokens": usage.get("completion_tokens", 0),
        "total_tokens": usage.get("total_tokens", 0),
    }
    details = usage.get("prompt_tokens_details")
    if isinstance(details, dict):  # cached tokens, and the explicit cache's creation tokens and type
        result["prompt_tokens_details"] = details
    return result


def native_reply(completion: Any, result_format: str, request_id: str) -> dict[str, Any]:
    """An OpenAI chat completion as a native answer."""
    choice = completion["choices"][0]
    message, finish = choice.get("message") or {}, choice.get("finish_reason") or "stop"
    if result_format == "text":
        output: dict[str, Any] = {"text": message.get("content") or "", "finish_reason": finish}
    else:
        output = {"choices": [{"finish_reason": finish, "message": message}]}
    answer = {"output": output, "request_id": request_id}
    usage = native_usage(completion.get("usage"))
    if usage is not None:
        answer["usage"] = usage
    return answer


def native_error(openai_error_body: bytes, request_id: str) -> dict[str, Any]:
    """An OpenAI-shaped error body (the gateway's, or an upstream's) in the native shape."""
    try:
        error = loads(openai_error_body).get("error") or {}
    except (ValueError, AttributeError):
        error = {}
    code = error.get("code") or error.get("type") or "InternalError"
    return {"code": str(code), "message": str(error.get("message") or "request failed"), "request_id": request_id}


def _text(value: Any) -> str:
    return value if isinstance(value, str) else ""


class NativeStream:
    """Turns the OpenAI stream chunks of one reply into native SSE events.  The event that finishes the reply is
    held back until the usage (which OpenAI streams send in a chunk of its own, after it) or the end arrives, so
    that, as in DashScope's own streams, the last event carries both."""

    def __init__(self, result_format: str, incremental: bool, request_id: str) -> None:
        self._format = result_format
        self._incremental = incremental
        self._request_id = request_id
        self._events = 0
        self._content = ""
        self._reasoning = ""
        self._usage: dict[str, Any] | None = None
        self._held: tuple[Message, str] | None = None

    def chunk(self, chunk: dict[str, Any]) -> bytes:
        """The events for one OpenAI chunk (often one, none for a usage-only chunk)."""
        usage = native_usage(chunk.get("usage"))
        if usage is not None:
            self._usage = usage
        choices = chunk.get("choices")
        first = choices[0] if isinstance(choices, list) and choices else None
        if not isinstance(first, dict):
            return b""
        raw_delta = first.get("delta")
        delta: dict[str, Any] = raw_delta if isinstance(raw_delta, dict) else {}
        finish = first.get("finish_reason")
        content, reasoning = _text(delta.get("content")), _text(delta.get("reasoning_content"))
        self._content += content
        self._reasoning += reasoning
        message: Message = {"role": "assistant", "content": content if self._incremental else self._content}
        if reasoning or (self._reasoning and not self._incremental):
            message["reasoning_content"] = reasoning if self._incremental else self._reasoning
        if delta.get("tool_calls"):
            message["tool_calls"] = delta["tool_calls"]
        out = self.flush()
        if finish:
            self._held = (message, finish)
            return out
        return out + self._event(message, "null")

    def flush(self) -> bytes:
        """The held-back finishing event, if any (at the end of the stream)."""
        if self._held is None:
            return b""
        (message, finish), self._held = self._held, None
        return self._event(message, finish)

    def error(self, openai_error_body: bytes, status: int) -> bytes:
        self._events += 1
        data = dumps(native_error(openai_error_body, self._request_id))
        return f"id:{self._events}\nevent:error\n:HTTP_STATUS/{status}\ndata:{data}\n\n".encode()

    def _event(self, message: Message, finish: str) -> bytes:
        self._events += 1
        if self._format == "text":
            output: dict[str, Any] = {"text": message.get("content", ""), "finish_reason": finish}
        else:
            output = {"choices": [{"message": message, "finish_reason": finish}]}
        data: dict[str, Any] = {"output": output, "request_id": self._request_id}
        if self._usage is not None:
            data["usage"] = self._usage
        return f"id:{self._events}\nevent:result\n:HTTP_STATUS/200\ndata:{dumps(data)}\n\n".encode()


# The other direction, for ``upstream.protocol = "native"``: OpenAI-shaped requests out, native answers back in.

_OPENAI_ONLY = frozenset({"model", "messages", "stream", "stream_options"})


def native_request(openai: dict[str, Any]) -> dict[str, Any]:
    """An OpenAI chat completions body as a native request (messages in, replies as deltas when streamed)."""
    parameters = {k: v for k, v in openai.items() if k not in _OPENAI_ONLY}
    parameters["result_format"] = "message"
    if openai.get("stream"):
        parameters["incremental_output"] = True
    return {"model": openai.get("model"), "input": {"messages": openai.get("messages")}, "parameters": parameters}


def openai_usage(usage: Any) -> dict[str, Any] | None:
    if not isinstance(usage, dict):
        return None
    prompt, completion = usage.get("input_tokens", 0), usage.get("output_tokens", 0)
    result: dict[str, Any] = {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": usage.get("total_tokens", prompt + completion),
    }
    details = usage.get("prompt_tokens_details")
    if isinstance(details, dict):
        result["prompt_tokens_details"] = details
    return result


def _native_message(output: dict[str, Any]) -> tuple[Message, str | None]:
    choices = output.get("choices")
    if isinstance(choices, list) and choices:
        message = dict(choices[0].get("message") or {})
        finish = choices[0].get("finish_reason")
    else:
        message, finish = {"role": "assistant", "content": output.get("text", "")}, output.get("finish_reason")
    return message, None if finish in (None, "null") else finish


def openai_completion(native: Any) -> dict[str, Any]:
    """A native answer as an OpenAI chat completion."""
    message, finish = _native_message(native["output"])
    message.setdefault("role", "assistant")
    completion: dict[str, Any] = {
        "id": native.get("request_id", ""),
        "object": "chat.completion",
        "choices": [{"index": 0, "message": message, "finish_reason": finish or "stop"}],
    }
    usage = openai_usage(native.get("usage"))
    if usage is not None:
        completion["usage"] = usage
    return completion


def openai_error(native_body: bytes) -> bytes:
    """A native error body as an OpenAI-shaped one (left as it is when it is not a native error)."""
    try:
        data = loads(native_body)
    except ValueError:
        return native_body
    if not isinstance(data, dict) or "code" not in data or "error" in data:
        return native_body
    return dumps(
        {"error": {"message": data.get("message", ""), "type": "upstream_error", "code": data["code"]}}
    ).encode()


def openai_chunk(event: str | None, data: str) -> bytes:
    """One native SSE event (``event:`` name and ``data:``) as OpenAI SSE bytes; the finishing event is followed by
    ``[DONE]``."""
    native = loads(data)
    if event == "error":
        return b"data: " + openai_error(dumps(native).encode()) + b"\n\n"
    message, finish = _native_message(native.get("output") or {})
    message.pop("role", None)
    chunk: dict[str, Any] = {
        "id": native.get("request_id", ""),
        "object": "chat.completion.chunk",
        "choices": [{"index": 0, "delta": message, "finish_reason": finish}],
    }
    out = b"data: " + dumps(chunk).encode() + b"\n\n"
    if not finish:
        return out
    usage = openai_usage(native.get("usage"))
    if usage is not None:  # in a chunk of its own, as OpenAI streams send it (include_usage)
        tail = {"id": chunk["id"], "object": "chat.completion.chunk", "choices": [], "usage": usage}
        out += b"data: " + dumps(tail).encode() + b"\n\n"
    return out + b"data: [DONE]\n\n"
