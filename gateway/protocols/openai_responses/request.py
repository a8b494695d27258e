"""A ``POST /v1/responses`` body validated into a ``ResponsesRequest`` (``parse_responses_request``), and the
request-side fields of its Response object (``request_fields``).

Any JSON input gives either a request or ``InvalidRequest`` naming the first thing wrong, with OpenAI's ``code`` and
``param`` (``input[2].content[0].type``, ``tools[0].type``).  The input items are validated and turned into chat
messages by ``input_items``; the chat completions body is ``chat``'s.

- Non-function tools (hosted tools: web search, file search, computer, MCP, ...) are refused, naming the type as
  not served by this gateway.  Chat's nested function tools are accepted too, and kept flat.
- ``background: true`` and ``prompt`` (stored prompt templates) are refused.  A missing ``input`` is no items.
- Unknown top-level fields are kept as ``extra``, for the upstream.
- ``item_reference`` input items are kept as placeholders (``ResponsesRequest.references``) for the caller to
  look up; ``with_referenced_items`` puts the items they name in their places.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from gateway.errors import InvalidRequest
from gateway.protocols.openai_chat import Message, parse_json_body, validate_conversation_id
from gateway.protocols.openai_responses.checks import (
    invalid_type,
    invalid_value,
    item_not_found,
    missing,
    one_of,
    optional_bool,
    optional_number,
    optional_str,
    required_str,
    unsupported,
)
from gateway.protocols.openai_responses.input_items import (
    ItemReference,
    input_messages,
    is_reference,
    item_references,
    parse_input,
)

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


@dataclass(frozen=True)
class ResponsesRequest:
    """A validated ``POST /v1/responses`` body; optional fields the client left out are None.

    ``references`` are the input's ``item_reference`` items, unresolved: while there are any, ``messages`` refuses
    to answer (400, as before references were served) rather than leave them out; ``with_referenced_items`` gives
    the request with the items they name in their places and no references."""

    model: str
    input: list[dict[str, Any]]
    chat_messages: list[Message]  # the input items as chat messages, references left out (read ``messages``)
    references: tuple[ItemReference, ...] = ()
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

    @property
    def messages(self) -> list[Message]:
        """The input items as chat messages (without the instructions); ``InvalidRequest`` while item references
        are unresolved."""
        if self.references:
            first = self.references[0]
            raise unsupported(f"input[{first.index}].type", "An 'item_reference' here (send the item itself)")
        return self.chat_messages


def with_referenced_items(req: ResponsesRequest, found: Mapping[str, Mapping[str, Any]]) -> ResponsesRequest:
    """The request with each item reference replaced by the item ``found`` holds under its id (items as the
    gateway gives them out: output items of a Response, or input items), translated as if the client had sent it;
    400 ``item_not_found`` naming ``input[i]`` for the first reference ``found`` has no item for."""
    if not req.references:
        return req
    items = list(req.input)
    for ref in req.references:
        item = found.get(ref.id)
        if item is None or is_reference(dict(item)):
            raise item_not_found(f"input[{ref.index}]", ref.id)
        items[ref.index] = copy.deepcopy(dict(item))
    return replace(req, input=items, chat_messages=input_messages(items), references=())


# --- the request --------------------------------------------------------------------------------------------


def parse_responses_request(raw: bytes) -> ResponsesRequest:
    """Validate a ``/v1/responses`` body; ``InvalidRequest`` naming the first thing wrong otherwise."""
    data = parse_json_body(raw)
    if not isinstance(data, dict):
        raise InvalidRequest("Request body must be a JSON object.", code="invalid_request")
    return _request(data)


def _request(data: dict[str, Any]) -> ResponsesRequest:
    model = required_str(data, "model", "model")
    if not model:
        raise InvalidRequest("'model' must not be empty.", code="invalid_value", param="model")
    if data.get("background") is not None and data["background"] is not False:
        raise unsupported("background", "Background mode")
    if data.get("prompt") is not None:
        raise unsupported("prompt", "A prompt template ('prompt')")
    items = parse_input(data.get("input"))
    previous = optional_str(data, "previous_response_id")
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
        raise invalid_type("max_output_tokens", "an integer")
    if isinstance(max_output, int) and max_output < 1:
        raise InvalidRequest(
            "Invalid 'max_output_tokens': expected a value >= 1.", code="invalid_value", param="max_output_tokens"
        )
    include = data.get("include")
    if include is not None and not (isinstance(include, list) and all(isinstance(i, str) for i in include)):
        raise invalid_type("include", "an array of strings")
    return ResponsesRequest(
        model=model,
        input=items,
        chat_messages=input_messages(items),
        references=item_references(items),
        instructions=optional_str(data, "instructions"),
        previous_response_id=previous,
        conversation=conversation,
        store=optional_bool(data, "store") is not False,
        stream=optional_bool(data, "stream") is True,
        tools=tools,
        tool_choice=_tool_choice(data.get("tool_choice")),
        parallel_tool_calls=optional_bool(data, "parallel_tool_calls"),
        text=_text(data.get("text")),
        reasoning=_reasoning(data.get("reasoning")),
        max_output_tokens=max_output,
        temperature=optional_number(data, "temperature", 0, 2),
        top_p=optional_number(data, "top_p", 0, 1),
        metadata=_metadata(data.get("metadata")),
        truncation=one_of(data, "truncation", ("auto", "disabled"), "truncation") or "disabled",
        include=list(include or ()),
        user=optional_str(data, "user"),
        prompt_cache_key=optional_str(data, "prompt_cache_key"),
        extra={k: v for k, v in data.items() if k not in _KNOWN},
    )


def _conversation(value: Any) -> str | None:
    if value is None:
        return None
    if isinstance(value, dict):
        if "id" not in value:
            raise missing("conversation.id")
        return validate_conversation_id(value["id"], "conversation.id")
    return validate_conversation_id(value, "conversation")


def _metadata(value: Any) -> dict[str, str]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise invalid_type("metadata", "an object")
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
            raise invalid_type(f"metadata.{key}", "a string")
        if len(item) > 512:
            raise InvalidRequest(
                "Invalid 'metadata': values are at most 512 characters.", code="invalid_value", param=f"metadata.{key}"
            )
    return dict(value)


def _text(value: Any) -> dict[str, Any]:
    if value is None:
        return {"format": {"type": "text"}}
    if not isinstance(value, dict):
        raise invalid_type("text", "an object")
    text: dict[str, Any] = {"format": _format(value.get("format"))}
    verbosity = one_of(value, "verbosity", ("low", "medium", "high"), "text.verbosity")
    if verbosity is not None:
        text["verbosity"] = verbosity
    return text


def _format(value: Any) -> dict[str, Any]:
    if value is None:
        return {"type": "text"}
    if not isinstance(value, dict):
        raise invalid_type("text.format", "an object")
    kind = one_of(value, "type", ("text", "json_schema", "json_object"), "text.format.type")
    if kind is None:
        raise missing("text.format.type")
    if kind != "json_schema":
        return {"type": kind}
    schema = value.get("schema")
    if not isinstance(schema, dict):
        raise missing("text.format.schema") if schema is None else invalid_type("text.format.schema", "an object")
    result: dict[str, Any] = {
        "type": "json_schema",
        "name": required_str(value, "name", "text.format.name"),
        "schema": schema,
    }
    description = optional_str(value, "description", "text.format.description")
    if description is not None:
        result["description"] = description
    strict = value.get("strict")
    if strict is not None:
        if not isinstance(strict, bool):
            raise invalid_type("text.format.strict", "a boolean")
        result["strict"] = strict
    return result


def _reasoning(value: Any) -> dict[str, Any] | None:
    if value is None:
        return None
    if not isinstance(value, dict):
        raise invalid_type("reasoning", "an object")
    return {
        "effort": one_of(value, "effort", _EFFORTS, "reasoning.effort"),
        "summary": one_of(value, "summary", _SUMMARIES, "reasoning.summary"),
    }


# --- tools --------------------------------------------------------------------------------------------------


def _tools(value: Any) -> list[dict[str, Any]]:
    if value is None:
        return []
    if not isinstance(value, list):
        raise invalid_type("tools", "an array of tool objects")
    return [_tool(tool, f"tools[{i}]") for i, tool in enumerate(value)]


def _tool(tool: Any, param: str) -> dict[str, Any]:
    if not isinstance(tool, dict):
        raise invalid_type(param, "an object")
    kind = tool.get("type")
    if kind is None:
        raise missing(f"{param}.type")
    if not isinstance(kind, str):
        raise invalid_type(f"{param}.type", "a string")
    if kind != "function":
        raise unsupported(f"{param}.type", f"The '{kind[:64]}' tool (only function tools are served)")
    source = tool["function"] if isinstance(tool.get("function"), dict) and "name" not in tool else tool
    where = f"{param}.function" if source is not tool else param
    flat: dict[str, Any] = {"type": "function", "name": required_str(source, "name", f"{where}.name")}
    description = optional_str(source, "description", f"{where}.description")
    if description is not None:
        flat["description"] = description
    parameters = source.get("parameters")
    if parameters is not None and not isinstance(parameters, dict):
        raise invalid_type(f"{where}.parameters", "an object")
    flat["parameters"] = parameters
    strict = source.get("strict")
    if strict is not None and not isinstance(strict, bool):
        raise invalid_type(f"{where}.strict", "a boolean")
    flat["strict"] = strict
    return flat


def _tool_choice(value: Any) -> str | dict[str, Any] | None:
    if value is None:
        return None
    if isinstance(value, str):
        if value not in ("none", "auto", "required"):
            raise invalid_value("tool_choice", value, ("none", "auto", "required"))
        return value
    if not isinstance(value, dict):
        raise invalid_type("tool_choice", "a string or an object")
    kind = value.get("type")
    if kind == "function":
        name = value.get("name")
        if name is None and isinstance(value.get("function"), dict):  # chat's form
            name = value["function"].get("name")
        if not isinstance(name, str):
            raise missing("tool_choice.name") if name is None else invalid_type("tool_choice.name", "a string")
        return {"type": "function", "name": name}
    if kind == "allowed_tools":
        mode = one_of(value, "mode", ("auto", "required"), "tool_choice.mode")
        tools = value.get("tools")
        if not isinstance(tools, list):
            raise missing("tool_choice.tools") if tools is None else invalid_type("tool_choice.tools", "an array")
        for i, tool in enumerate(tools):
            param = f"tool_choice.tools[{i}]"
            if not isinstance(tool, dict):
                raise invalid_type(param, "an object")
            if tool.get("type") != "function":
                raise unsupported(f"{param}.type", "Allowing a tool other than a function")
            required_str(tool, "name", f"{param}.name")
        return {"type": "allowed_tools", "mode": mode or "auto", "tools": [dict(t) for t in tools]}
    shown = kind[:64] if isinstance(kind, str) else "that"
    raise unsupported("tool_choice.type", f"A tool_choice of type '{shown}'")


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
