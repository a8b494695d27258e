"""OpenAI's Responses API (``POST /v1/responses``) as chat completions: request validation and translation in,
Response objects and stream events out (``gateway.protocols.responses_output``, re-exported here).  Pure code.

Public functions (plain values in and out; nothing here knows the core's records):

- ``parse_responses_request(raw: bytes) -> ResponsesRequest``: validates a body; any JSON input gives either a
  request or ``InvalidRequest`` with OpenAI's ``code`` (``invalid_type``, ``missing_required_parameter``,
  ``invalid_value``, ``unsupported_value``, ...) and ``param`` (``input[2].content[0].type``, ``tools[0].type``).
- ``chat_body(req, *, stream: bool) -> dict``: the chat completions body, without stored history.
- ``request_fields(req) -> dict``: the request-side fields of the Response object (``ResponseRecord.request``).
- ``response_object(*, id, created_at, request, reply, usage, status, conversation_id, error=None,
  incomplete=None, completed_at=None) -> dict``: a Response object; ``reply`` is the assistant chat message,
  ``usage`` the chat completion's usage, ``error`` an OpenAI error object (``{"message", "type", "code"}``).
- ``response_from_completion(*, id, created_at, request, completion, conversation_id, completed_at=None)``: the
  same from a whole ``chat.completion`` body (status from its ``finish_reason``).
- ``response_from_stored(*, id, created_at, request, reply, usage, interrupted, conversation_id,
  completed_at=None) -> dict``: GET's object from what a turn recorded (``StoredResponse.reply.body``, its usage,
  its interrupted flag, ``reply.created_at`` as ``completed_at``): ``completed``, or ``incomplete`` when
  interrupted.  (A reply stopped by the length limit reads back as ``completed``: no finish reason is stored.)
- ``items_from_messages(messages: Iterable[tuple[int, Message]]) -> list[dict]``: stored chat messages, given as
  ``(row_id, body)`` pairs in conversation order, as Responses items (input_items, the Conversations items API).
- ``finish_status(finish_reason, *, interrupted=False) -> (status, incomplete_details)``, ``response_usage``.
- ``ResponsesStream(id, created_at, request_fields, conversation_id)``: ``start()``, ``chunk(chat_chunk)``,
  ``complete(usage=None, *, completed_at=None)``, ``fail(error)``, each returning SSE bytes; ``complete`` ends
  with ``response.completed``, or ``response.incomplete`` (as OpenAI) when the reply hit its length limit.

Translation rules, where OpenAI's and the chat API's models differ:

- ``instructions`` becomes the leading system message.  ``developer`` messages go upstream as ``system`` (few
  chat models other than OpenAI's know the role).
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
- ``item_reference`` items are refused (400): send the item itself, or continue with ``previous_response_id``.
- Other item types and non-function tools (hosted tools: web search, file search, computer, MCP, ...) are refused,
  naming the type as not served by this gateway.
- Tools: flat ``{"type": "function", "name", ...}`` -> ``{"type": "function", "function": {...}}`` (chat's nested
  form is accepted too).  ``tool_choice``: ``none``/``auto``/``required`` as they are, ``{"type": "function",
  "name"}`` -> ``{"type": "function", "function": {"name"}}``, ``allowed_tools`` -> only those tools sent, with its
  ``mode`` as the choice.  ``tool_choice`` and ``parallel_tool_calls`` go upstream only with tools.
- ``text.format``: ``json_object`` -> ``response_format`` ``json_object``; ``json_schema`` -> ``{"type":
  "json_schema", "json_schema": {name, schema, description, strict}}``; ``text`` -> nothing.  ``text.verbosity``
  -> ``verbosity``.
- ``reasoning.effort`` -> DashScope's ``enable_thinking`` (false for ``none``/``minimal``, true otherwise), unless
  the request sets ``enable_thinking`` itself.
- ``max_output_tokens`` -> ``max_tokens``; ``temperature``, ``top_p``, ``user``, ``prompt_cache_key`` as they are;
  ``metadata``, ``store``, ``truncation``, ``include``, ``previous_response_id``, ``conversation`` stay here.
- ``background: true`` and ``prompt`` (stored prompt templates) are refused.  A missing ``input`` is no items.
- Unknown top-level fields (``extra``) are passed to the upstream, below the translated ones.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from gateway.errors import InvalidRequest
from gateway.protocols.openai_chat import Message, parse_json_body, validate_conversation_id
from gateway.protocols.responses_output import (
    ResponsesStream,
    finish_status,
    items_from_messages,
    response_from_completion,
    response_from_stored,
    response_object,
    response_usage,
)

__all__ = [
    "ResponsesRequest",
    "ResponsesStream",
    "chat_body",
    "finish_status",
    "items_from_messages",
    "parse_responses_request",
    "request_fields",
    "response_from_completion",
    "response_from_stored",
    "response_object",
    "response_usage",
]

_KNOWN = frozenset(
    {
        "model",
        "input",
        "instructions",
        "previous_response_id",
        "conversation",
        "store",
        "stream",
        "stream_options",
        "tools",
        "tool_choice",
        "parallel_tool_calls",
        "text",
        "reasoning",
        "max_output_tokens",
        "temperature",
        "top_p",
        "metadata",
        "truncation",
        "include",
        "user",
        "prompt_cache_key",
        "background",
        "prompt",
    }
)
_EFFORTS = ("none", "minimal", "low", "medium", "high", "xhigh", "max")
_SUMMARIES = ("auto", "concise", "detailed")
_MESSAGE_ROLES = ("user", "assistant", "system", "developer")
_IMAGE_DETAILS = ("low", "high", "auto", "original")


@dataclass(frozen=True)
class ResponsesRequest:
    """A validated ``POST /v1/responses`` body.  ``messages`` are the input items as chat messages (without the
    instructions); optional fields the client left out are None."""

    model: str
    input: list[dict[str, Any]]
    messages: list[Message]
    instructions: str | None = None
    previous_response_id: str | None = None
    conversation: str | None = None
    store: bool = True
    stream: bool = False
    tools: list[dict[str, Any]] = field(default_factory=list)  # flat function tools
    tool_choice: str | dict[str, Any] | None = None
    parallel_tool_calls: bool | None = None
    text: dict[str, Any] = field(default_factory=lambda: {"format": {"type": "text"}})
    reasoning: dict[str, Any] | None = None  # {"effort", "summary"}
    max_output_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    metadata: dict[str, str] = field(default_factory=dict)
    truncation: str = "disabled"
    include: list[str] = field(default_factory=list)
    user: str | None = None
    prompt_cache_key: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)


# --- errors -------------------------------------------------------------------------------------------------


def _invalid_type(param: str, expected: str) -> InvalidRequest:
    return InvalidRequest(f"Invalid type for '{param}': expected {expected}.", code="invalid_type", param=param)


def _missing(param: str) -> InvalidRequest:
    return InvalidRequest(f"Missing required parameter: '{param}'.", code="missing_required_parameter", param=param)


def _invalid_value(param: str, value: Any, supported: Iterable[str]) -> InvalidRequest:
    shown = f"'{value}'" if isinstance(value, str) and len(value) <= 64 else "the value given"
    choices = ", ".join(f"'{s}'" for s in supported)
    return InvalidRequest(
        f"Invalid value for '{param}': {shown}. Supported values are: {choices}.", code="invalid_value", param=param
    )


def _unsupported(param: str, what: str) -> InvalidRequest:
    return InvalidRequest(f"{what} is not supported by this gateway.", code="unsupported_value", param=param)


# --- scalar checks ------------------------------------------------------------------------------------------


def _optional_str(data: Mapping[str, Any], key: str, param: str | None = None) -> str | None:
    value = data.get(key)
    if value is None or isinstance(value, str):
        return value
    raise _invalid_type(param or key, "a string")


def _required_str(data: Mapping[str, Any], key: str, param: str) -> str:
    value = data.get(key)
    if value is None:
        raise _missing(param)
    if not isinstance(value, str):
        raise _invalid_type(param, "a string")
    return value


def _optional_bool(data: Mapping[str, Any], key: str) -> bool | None:
    value = data.get(key)
    if value is None or isinstance(value, bool):
        return value
    raise _invalid_type(key, "a boolean")


def _optional_number(data: Mapping[str, Any], key: str, low: float, high: float) -> float | None:
    value = data.get(key)
    if value is None:
        return None
    if not isinstance(value, int | float) or isinstance(value, bool):
        raise _invalid_type(key, "a number")
    if not low <= value <= high:
        raise InvalidRequest(
            f"Invalid '{key}': expected a value between {low:g} and {high:g}.", code="invalid_value", param=key
        )
    return value


def _choice(data: Mapping[str, Any], key: str, choices: tuple[str, ...], param: str) -> str | None:
    value = data.get(key)
    if value is None:
        return None
    if not isinstance(value, str) or value not in choices:
        raise _invalid_value(param, value, choices)
    return value


# --- the request --------------------------------------------------------------------------------------------


def parse_responses_request(raw: bytes) -> ResponsesRequest:
    """Validate a ``/v1/responses`` body; ``InvalidRequest`` naming the first thing wrong otherwise."""
    data = parse_json_body(raw)
    if not isinstance(data, dict):
        raise InvalidRequest("Request body must be a JSON object.", code="invalid_request")
    return _request(data)


def _request(data: dict[str, Any]) -> ResponsesRequest:
    model = _required_str(data, "model", "model")
    if not model:
        raise InvalidRequest("'model' must not be empty.", code="invalid_value", param="model")
    if data.get("background") is not None and data["background"] is not False:
        raise _unsupported("background", "Background mode")
    if data.get("prompt") is not None:
        raise _unsupported("prompt", "A prompt template ('prompt')")
    items = _input(data.get("input"))
    previous = _optional_str(data, "previous_response_id")
    if previous == "":
        raise InvalidRequest(
            "'previous_response_id' must not be empty.", code="invalid_value", param="previous_response_id"
        )
    conversation = _conversation(data.get("conversation"))
    if previous is not None and conversation is not None:
        raise InvalidRequest(
            "Mutually exclusive parameters: provide only one of 'previous_response_id' or 'conversation'.",
            code="mutually_exclusive_parameters",
            param="conversation",
        )
    tools = _tools(data.get("tools"))
    max_output = data.get("max_output_tokens")
    if max_output is not None and (not isinstance(max_output, int) or isinstance(max_output, bool)):
        raise _invalid_type("max_output_tokens", "an integer")
    if isinstance(max_output, int) and max_output < 1:
        raise InvalidRequest(
            "Invalid 'max_output_tokens': expected a value >= 1.", code="invalid_value", param="max_output_tokens"
        )
    include = data.get("include")
    if include is not None and not (isinstance(include, list) and all(isinstance(i, str) for i in include)):
        raise _invalid_type("include", "an array of strings")
    return ResponsesRequest(
        model=model,
        input=items,
        messages=_messages(items),
        instructions=_optional_str(data, "instructions"),
        previous_response_id=previous,
        conversation=conversation,
        store=_optional_bool(data, "store") is not False,
        stream=_optional_bool(data, "stream") is True,
        tools=tools,
        tool_choice=_tool_choice(data.get("tool_choice")),
        parallel_tool_calls=_optional_bool(data, "parallel_tool_calls"),
        text=_text(data.get("text")),
        reasoning=_reasoning(data.get("reasoning")),
        max_output_tokens=max_output,
        temperature=_optional_number(data, "temperature", 0, 2),
        top_p=_optional_number(data, "top_p", 0, 1),
        metadata=_metadata(data.get("metadata")),
        truncation=_choice(data, "truncation", ("auto", "disabled"), "truncation") or "disabled",
        include=list(include or ()),
        user=_optional_str(data, "user"),
        prompt_cache_key=_optional_str(data, "prompt_cache_key"),
        extra={k: v for k, v in data.items() if k not in _KNOWN},
    )


def _conversation(value: Any) -> str | None:
    if value is None:
        return None
    if isinstance(value, dict):
        if "id" not in value:
            raise _missing("conversation.id")
        return validate_conversation_id(value["id"], "conversation.id")
    return validate_conversation_id(value, "conversation")


def _metadata(value: Any) -> dict[str, str]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise _invalid_type("metadata", "an object")
    if len(value) > 16:
        raise InvalidRequest(
            "Invalid 'metadata': at most 16 properties.", code="object_above_max_properties", param="metadata"
        )
    for key, item in value.items():
        if len(key) > 64:
            raise InvalidRequest(
                "Invalid 'metadata': keys are at most 64 characters.", code="invalid_value", param="metadata"
            )
        if not isinstance(item, str):
            raise _invalid_type(f"metadata.{key}", "a string")
        if len(item) > 512:
            raise InvalidRequest(
                "Invalid 'metadata': values are at most 512 characters.", code="invalid_value", param=f"metadata.{key}"
            )
    return dict(value)


def _text(value: Any) -> dict[str, Any]:
    if value is None:
        return {"format": {"type": "text"}}
    if not isinstance(value, dict):
        raise _invalid_type("text", "an object")
    text: dict[str, Any] = {"format": _format(value.get("format"))}
    verbosity = _choice(value, "verbosity", ("low", "medium", "high"), "text.verbosity")
    if verbosity is not None:
        text["verbosity"] = verbosity
    return text


def _format(value: Any) -> dict[str, Any]:
    if value is None:
        return {"type": "text"}
    if not isinstance(value, dict):
        raise _invalid_type("text.format", "an object")
    kind = _choice(value, "type", ("text", "json_schema", "json_object"), "text.format.type")
    if kind is None:
        raise _missing("text.format.type")
    if kind != "json_schema":
        return {"type": kind}
    schema = value.get("schema")
    if not isinstance(schema, dict):
        raise _missing("text.format.schema") if schema is None else _invalid_type("text.format.schema", "an object")
    result: dict[str, Any] = {
        "type": "json_schema",
        "name": _required_str(value, "name", "text.format.name"),
        "schema": schema,
    }
    description = _optional_str(value, "description", "text.format.description")
    if description is not None:
        result["description"] = description
    strict = value.get("strict")
    if strict is not None:
        if not isinstance(strict, bool):
            raise _invalid_type("text.format.strict", "a boolean")
        result["strict"] = strict
    return result


def _reasoning(value: Any) -> dict[str, Any] | None:
    if value is None:
        return None
    if not isinstance(value, dict):
        raise _invalid_type("reasoning", "an object")
    return {
        "effort": _choice(value, "effort", _EFFORTS, "reasoning.effort"),
        "summary": _choice(value, "summary", _SUMMARIES, "reasoning.summary"),
    }


# --- tools --------------------------------------------------------------------------------------------------


def _tools(value: Any) -> list[dict[str, Any]]:
    if value is None:
        return []
    if not isinstance(value, list):
        raise _invalid_type("tools", "an array of tool objects")
    return [_tool(tool, f"tools[{i}]") for i, tool in enumerate(value)]


def _tool(tool: Any, param: str) -> dict[str, Any]:
    if not isinstance(tool, dict):
        raise _invalid_type(param, "an object")
    kind = tool.get("type")
    if kind is None:
        raise _missing(f"{param}.type")
    if not isinstance(kind, str):
        raise _invalid_type(f"{param}.type", "a string")
    if kind != "function":
        raise _unsupported(f"{param}.type", f"The '{kind[:64]}' tool (only function tools are served)")
    source = tool["function"] if isinstance(tool.get("function"), dict) and "name" not in tool else tool
    where = f"{param}.function" if source is not tool else param
    flat: dict[str, Any] = {"type": "function", "name": _required_str(source, "name", f"{where}.name")}
    description = _optional_str(source, "description", f"{where}.description")
    if description is not None:
        flat["description"] = description
    parameters = source.get("parameters")
    if parameters is not None and not isinstance(parameters, dict):
        raise _invalid_type(f"{where}.parameters", "an object")
    flat["parameters"] = parameters
    strict = source.get("strict")
    if strict is not None and not isinstance(strict, bool):
        raise _invalid_type(f"{where}.strict", "a boolean")
    flat["strict"] = strict
    return flat


def _tool_choice(value: Any) -> str | dict[str, Any] | None:
    if value is None:
        return None
    if isinstance(value, str):
        if value not in ("none", "auto", "required"):
            raise _invalid_value("tool_choice", value, ("none", "auto", "required"))
        return value
    if not isinstance(value, dict):
        raise _invalid_type("tool_choice", "a string or an object")
    kind = value.get("type")
    if kind == "function":
        name = value.get("name")
        if name is None and isinstance(value.get("function"), dict):  # chat's form
            name = value["function"].get("name")
        if not isinstance(name, str):
            raise _missing("tool_choice.name") if name is None else _invalid_type("tool_choice.name", "a string")
        return {"type": "function", "name": name}
    if kind == "allowed_tools":
        mode = _choice(value, "mode", ("auto", "required"), "tool_choice.mode")
        tools = value.get("tools")
        if not isinstance(tools, list):
            raise _missing("tool_choice.tools") if tools is None else _invalid_type("tool_choice.tools", "an array")
        for i, tool in enumerate(tools):
            param = f"tool_choice.tools[{i}]"
            if not isinstance(tool, dict):
                raise _invalid_type(param, "an object")
            if tool.get("type") != "function":
                raise _unsupported(f"{param}.type", "Allowing a tool other than a function")
            _required_str(tool, "name", f"{param}.name")
        return {"type": "allowed_tools", "mode": mode or "auto", "tools": [dict(t) for t in tools]}
    shown = kind[:64] if isinstance(kind, str) else "that"
    raise _unsupported("tool_choice.type", f"A tool_choice of type '{shown}'")


# --- input items --------------------------------------------------------------------------------------------


def _input(value: Any) -> list[dict[str, Any]]:
    if value is None:
        return []
    if isinstance(value, str):
        return [{"type": "message", "role": "user", "content": value}]
    if not isinstance(value, list):
        raise _invalid_type("input", "a string or an array of input items")
    items: list[dict[str, Any]] = []
    for i, item in enumerate(value):
        if not isinstance(item, dict):
            raise _invalid_type(f"input[{i}]", "an object")
        if item.get("type") is None and "role" in item:
            item = {**item, "type": "message"}
        items.append(item)
    return items


def _messages(items: list[dict[str, Any]]) -> list[Message]:
    """The items as chat messages, validating each (``param`` names the first bad one)."""
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
                "id": _required_str(item, "call_id", f"{param}.call_id"),
                "type": "function",
                "function": {
                    "name": _required_str(item, "name", f"{param}.name"),
                    "arguments": _required_str(item, "arguments", f"{param}.arguments"),
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
                    "tool_call_id": _required_str(item, "call_id", f"{param}.call_id"),
                    "content": _tool_output(item.get("output"), f"{param}.output"),
                }
            )
            merge = False
        elif kind == "reasoning":
            continue  # dropped, see the module docstring; adjacency of the items around it is kept
        elif kind == "item_reference" or (kind is None and "id" in item):
            raise _unsupported(f"{param}.type", "'item_reference' (send the item itself, or use previous_response_id)")
        elif kind is None:
            raise _missing(f"{param}.type")
        elif isinstance(kind, str):
            raise _unsupported(f"{param}.type", f"An input item of type '{kind[:64]}'")
        else:
            raise _invalid_type(f"{param}.type", "a string")
    return messages


def _message(item: dict[str, Any], param: str) -> Message:
    role = item.get("role")
    if role is None:
        raise _missing(f"{param}.role")
    if not isinstance(role, str) or role not in _MESSAGE_ROLES:
        raise _invalid_value(f"{param}.role", role, _MESSAGE_ROLES)
    content = item.get("content")
    if content is None:
        raise _missing(f"{param}.content")
    if isinstance(content, str):
        return {"role": "system" if role == "developer" else role, "content": content}
    if not isinstance(content, list):
        raise _invalid_type(f"{param}.content", "a string or an array of content parts")
    parts = [_part(part, f"{param}.content[{j}]") for j, part in enumerate(content)]
    if role == "assistant":
        if any(p["type"] != "text" for p in parts):
            raise _unsupported(f"{param}.content", "Non-text content in an assistant message")
        return {"role": "assistant", "content": "".join(p["text"] for p in parts)}
    if len(parts) == 1 and parts[0]["type"] == "text":
        return {"role": "system" if role == "developer" else role, "content": parts[0]["text"]}
    return {"role": "system" if role == "developer" else role, "content": parts}


def _part(part: Any, param: str) -> dict[str, Any]:
    """One content part of a message (or of a function call's output) as a chat content part."""
    if not isinstance(part, dict):
        raise _invalid_type(param, "an object")
    kind = part.get("type")
    if kind in ("input_text", "output_text", "text"):
        return {"type": "text", "text": _required_str(part, "text", f"{param}.text")}
    if kind == "refusal":
        return {"type": "text", "text": _required_str(part, "refusal", f"{param}.refusal")}
    if kind == "input_image":
        url = _optional_str(part, "image_url", f"{param}.image_url")
        if url is None:
            if part.get("file_id") is not None:
                raise _unsupported(f"{param}.file_id", "An image by file_id (send image_url)")
            raise _missing(f"{param}.image_url")
        image: dict[str, Any] = {"url": url}
        detail = _choice(part, "detail", _IMAGE_DETAILS, f"{param}.detail")
        if detail is not None:
            image["detail"] = detail
        return {"type": "image_url", "image_url": image}
    if kind == "image_url":  # chat's own form, accepted as it is
        if not isinstance(part.get("image_url"), dict) or not isinstance(part["image_url"].get("url"), str):
            raise _invalid_type(f"{param}.image_url", "an object with a url")
        return {"type": "image_url", "image_url": dict(part["image_url"])}
    if kind == "input_file":
        if part.get("file_url") is not None:
            raise _unsupported(f"{param}.file_url", "A file by file_url (send file_data)")
        file: dict[str, Any] = {}
        for key in ("file_data", "file_id", "filename"):
            value = _optional_str(part, key, f"{param}.{key}")
            if value is not None:
                file[key] = value
        if "file_data" not in file and "file_id" not in file:
            raise _missing(f"{param}.file_data")
        return {"type": "file", "file": file}
    if kind is None:
        raise _missing(f"{param}.type")
    shown = kind[:64] if isinstance(kind, str) else "that"
    raise _invalid_value(f"{param}.type", shown, ("input_text", "input_image", "input_file"))


def _tool_output(output: Any, param: str) -> Any:
    if output is None:
        raise _missing(param)
    if isinstance(output, str):
        return output
    if not isinstance(output, list):
        raise _invalid_type(param, "a string or an array of content parts")
    parts = [_part(part, f"{param}[{j}]") for j, part in enumerate(output)]
    if all(p["type"] == "text" for p in parts):
        return "".join(p["text"] for p in parts)
    return parts


# --- the chat request ---------------------------------------------------------------------------------------


def chat_body(req: ResponsesRequest, *, stream: bool) -> dict[str, Any]:
    """The chat completions body for a request, WITHOUT stored history (the chat use case puts it in front of the
    new messages, after the system prompt)."""
    body: dict[str, Any] = dict(req.extra)
    messages: list[Message] = []
    if req.instructions is not None:
        messages.append({"role": "system", "content": req.instructions})
    messages.extend(_copy_message(m) for m in req.messages)
    body.update(model=req.model, messages=messages)
    tools = req.tools
    choice: Any = req.tool_choice
    if isinstance(choice, dict) and choice["type"] == "allowed_tools":
        allowed = {t.get("name") for t in choice["tools"]}
        tools = [t for t in tools if t["name"] in allowed]
        choice = choice["mode"]
    elif isinstance(choice, dict):
        choice = {"type": "function", "function": {"name": choice["name"]}}
    if tools:
        body["tools"] = [_chat_tool(t) for t in tools]
        if choice is not None:
            body["tool_choice"] = choice
        if req.parallel_tool_calls is not None:
            body["parallel_tool_calls"] = req.parallel_tool_calls
    fmt = req.text.get("format") or {"type": "text"}
    if fmt["type"] == "json_object":
        body["response_format"] = {"type": "json_object"}
    elif fmt["type"] == "json_schema":
        schema = {k: v for k, v in fmt.items() if k != "type"}
        body["response_format"] = {"type": "json_schema", "json_schema": schema}
    if "verbosity" in req.text:
        body["verbosity"] = req.text["verbosity"]
    effort = (req.reasoning or {}).get("effort")
    if effort is not None and "enable_thinking" not in req.extra:
        body["enable_thinking"] = effort not in ("none", "minimal")
    for key, value in (
        ("max_tokens", req.max_output_tokens),
        ("temperature", req.temperature),
        ("top_p", req.top_p),
        ("user", req.user),
        ("prompt_cache_key", req.prompt_cache_key),
    ):
        if value is not None:
            body[key] = value
    body.pop("stream", None)
    body.pop("stream_options", None)
    if stream:
        body.update(stream=True, stream_options={"include_usage": True})
    return body


def _copy_message(message: Message) -> Message:
    copied = dict(message)
    if isinstance(copied.get("tool_calls"), list):
        copied["tool_calls"] = [{**c, "function": dict(c["function"])} for c in copied["tool_calls"]]
    return copied


def _chat_tool(tool: dict[str, Any]) -> dict[str, Any]:
    function = {k: v for k, v in tool.items() if k != "type" and v is not None}
    return {"type": "function", "function": function}


def request_fields(req: ResponsesRequest) -> dict[str, Any]:
    """The request-side fields of the Response object, JSON-serialisable (``ResponseRecord.request``)."""
    return {
        "model": req.model,
        "instructions": req.instructions,
        "tools": [dict(t) for t in req.tools],
        "tool_choice": req.tool_choice if req.tool_choice is not None else "auto",
        "parallel_tool_calls": req.parallel_tool_calls if req.parallel_tool_calls is not None else True,
        "text": dict(req.text),
        "reasoning": dict(req.reasoning) if req.reasoning is not None else {"effort": None, "summary": None},
        "max_output_tokens": req.max_output_tokens,
        "temperature": req.temperature,
        "top_p": req.top_p,
        "metadata": dict(req.metadata),
        "truncation": req.truncation,
        "previous_response_id": req.previous_response_id,
        "user": req.user,
        "prompt_cache_key": req.prompt_cache_key,
        "store": req.store,
    }
