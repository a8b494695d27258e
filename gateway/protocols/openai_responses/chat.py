"""A validated Responses request as a chat completions body (``chat_body``), without stored history.

Translation rules, where OpenAI's and the chat API's models differ (the input items' are ``input_items``'s):

- ``instructions`` becomes the leading system message.
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
  ``metadata``, ``store``, ``truncation``, ``include``, ``previous_response_id``, ``conversation`` stay in the
  gateway.
- Unknown top-level fields (``extra``) are passed to the upstream, below the translated ones.
"""

from __future__ import annotations

from typing import Any

from gateway.protocols.openai_chat import Message
from gateway.protocols.openai_responses.request import ResponsesRequest


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
