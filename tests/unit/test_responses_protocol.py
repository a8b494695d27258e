"""The Responses API's wire shapes (gateway.protocols.openai_responses), checked against the installed openai SDK's
own types: requests translated to chat bodies, replies to Response objects, chat chunks to stream events (which the
SDK's own stream accumulator must turn into the same final Response), stored messages to items."""

from __future__ import annotations

from typing import Any

import httpx
import openai
import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from openai.types.responses import Response, ResponseItem, ResponseStreamEvent
from pydantic import TypeAdapter

from gateway.errors import InvalidRequest
from gateway.protocols.openai_responses import (
    ItemReference,
    ResponsesRequest,
    ResponsesStream,
    chat_body,
    finish_status,
    items_from_messages,
    parse_responses_request,
    request_fields,
    response_from_completion,
    response_from_stored,
    response_object,
    response_of_item,
    response_usage,
    with_referenced_items,
)
from gateway.protocols.sse import ReplyAssembler

RESP_ID = "resp_" + "ab" * 16
CREATED = 1_764_590_000.25
EVENTS: TypeAdapter[Any] = TypeAdapter(ResponseStreamEvent)
ITEMS: TypeAdapter[Any] = TypeAdapter(ResponseItem)


def parse(body: dict[str, Any]) -> ResponsesRequest:
    return parse_responses_request(orjson.dumps(body))


def rejected(body: dict[str, Any]) -> InvalidRequest:
    with pytest.raises(InvalidRequest) as caught:
        parse(body)
    return caught.value


def sdk_round_trip(obj: dict[str, Any]) -> Response:
    """The object validates as the SDK's Response and dumps back to exactly what was sent."""
    response = Response.model_validate(obj)
    assert response.to_dict() == obj
    return response


def reply_object(reply: dict[str, Any], usage: dict[str, Any] | None = None, **request: Any) -> dict[str, Any]:
    fields = request_fields(parse({"model": "qwen-plus", "input": "hi", **request}))
    return response_object(
        id=RESP_ID,
        created_at=CREATED,
        request=fields,
        reply=reply,
        usage=usage,
        status="completed",
        conversation_id="conv_1",
    )


# --- requests -----------------------------------------------------------------------------------------------


def test_string_input_is_one_user_message_after_the_instructions() -> None:
    req = parse({"model": "qwen-plus", "input": "Hello", "instructions": "Be brief."})
    assert req.input == [{"type": "message", "role": "user", "content": "Hello"}]
    assert req.store is True and req.stream is False and req.truncation == "disabled"
    body = chat_body(req, stream=False)
    assert body == {
        "model": "qwen-plus",
        "messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hello"}],
    }


def test_message_items_and_their_parts() -> None:
    req = parse(
        {
            "model": "m",
            "input": [
                {"role": "developer", "content": "Rules."},
                {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "one"}]},
                {
                    "role": "user",
                    "content": [
                        {"type": "input_text", "text": "look"},
                        {"type": "input_image", "image_url": "https://x/cat.png", "detail": "high"},
                        {"type": "input_file", "file_data": "data:application/pdf;base64,AA", "filename": "a.pdf"},
                    ],
                },
                {
                    "type": "message",
                    "id": "msg_1",
                    "status": "completed",
                    "role": "assistant",
                    "content": [{"type": "output_text", "text": "a cat", "annotations": []}],
                },
            ],
        }
    )
    assert req.messages == [
        {"role": "system", "content": "Rules."},
        {"role": "user", "content": "one"},
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "look"},
                {"type": "image_url", "image_url": {"url": "https://x/cat.png", "detail": "high"}},
                {"type": "file", "file": {"file_data": "data:application/pdf;base64,AA", "filename": "a.pdf"}},
            ],
        },
        {"role": "assistant", "content": "a cat"},
    ]


def test_function_calls_join_the_assistant_message_and_outputs_become_tool_messages() -> None:
    req = parse(
        {
            "model": "m",
            "input": [
                {"role": "user", "content": "Weather and time in Paris?"},
                {"type": "reasoning", "id": "rs_1", "summary": [{"type": "summary_text", "text": "tools"}]},
                {"role": "assistant", "content": "Checking."},
                {"type": "function_call", "call_id": "call_a", "name": "weather", "arguments": '{"city":"Paris"}'},
                {"type": "function_call", "call_id": "call_b", "name": "time", "arguments": "{}", "id": "fc_9"},
                {"type": "function_call_output", "call_id": "call_a", "output": "sunny"},
                {
                    "type": "function_call_output",
                    "call_id": "call_b",
                    "output": [{"type": "input_text", "text": "12:00"}, {"type": "input_text", "text": " CET"}],
                },
                {"type": "function_call", "call_id": "call_c", "name": "time", "arguments": "{}"},
            ],
        }
    )
    calls = [
        {"id": "call_a", "type": "function", "function": {"name": "weather", "arguments": '{"city":"Paris"}'}},
        {"id": "call_b", "type": "function", "function": {"name": "time", "arguments": "{}"}},
    ]
    assert req.messages == [
        {"role": "user", "content": "Weather and time in Paris?"},
        {"role": "assistant", "content": "Checking.", "tool_calls": calls},
        {"role": "tool", "tool_call_id": "call_a", "content": "sunny"},
        {"role": "tool", "tool_call_id": "call_b", "content": "12:00 CET"},
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [{"id": "call_c", "type": "function", "function": {"name": "time", "arguments": "{}"}}],
        },
    ]


def test_tool_call_round_trip_through_a_chat_reply() -> None:
    """function_call_output in -> tool message; a chat reply with tool_calls -> function_call items, which as the
    next request's input become the same assistant message again."""
    tools = [{"type": "function", "name": "weather", "parameters": {"type": "object", "properties": {}}}]
    req = parse({"model": "m", "tools": tools, "input": "Weather in Paris?"})
    body = chat_body(req, stream=False)
    assert body["tools"] == [
        {"type": "function", "function": {"name": "weather", "parameters": {"type": "object", "properties": {}}}}
    ]
    reply = {
        "role": "assistant",
        "content": None,
        "tool_calls": [
            {"id": "call_1", "type": "function", "function": {"name": "weather", "arguments": '{"city":"Paris"}'}},
            {"id": "call_2", "type": "function", "function": {"name": "weather", "arguments": '{"city":"Nice"}'}},
        ],
    }
    obj = reply_object(reply, tools=tools)
    response = sdk_round_trip(obj)
    assert [o.type for o in response.output] == ["function_call", "function_call"]
    assert obj["output"][0] == {
        "type": "function_call",
        "id": f"fc_{'ab' * 16}_0",
        "call_id": "call_1",
        "name": "weather",
        "arguments": '{"city":"Paris"}',
        "status": "completed",
    }
    follow_up = parse(
        {
            "model": "m",
            "input": [
                *obj["output"],
                {"type": "function_call_output", "call_id": "call_1", "output": "sunny"},
                {"type": "function_call_output", "call_id": "call_2", "output": "rain"},
            ],
        }
    )
    assert follow_up.messages == [
        reply,
        {"role": "tool", "tool_call_id": "call_1", "content": "sunny"},
        {"role": "tool", "tool_call_id": "call_2", "content": "rain"},
    ]


def test_tools_choice_and_parallel_calls_are_sent_only_with_tools() -> None:
    assert chat_body(parse({"model": "m", "tool_choice": "none", "parallel_tool_calls": False}), stream=False) == {
        "model": "m",
        "messages": [],
    }
    tools = [
        {"type": "function", "name": "a", "description": "A", "strict": True, "parameters": {"type": "object"}},
        {"type": "function", "function": {"name": "b"}},  # chat's nested form, accepted
    ]
    req = parse({"model": "m", "tools": tools, "tool_choice": {"type": "function", "name": "a"}})
    body = chat_body(req, stream=False)
    assert body["tools"] == [
        {
            "type": "function",
            "function": {"name": "a", "description": "A", "parameters": {"type": "object"}, "strict": True},
        },
        {"type": "function", "function": {"name": "b"}},
    ]
    assert body["tool_choice"] == {"type": "function", "function": {"name": "a"}}
    assert "parallel_tool_calls" not in body
    assert request_fields(req)["tools"][1] == {"type": "function", "name": "b", "parameters": None, "strict": None}
    allowed = {"type": "allowed_tools", "mode": "required", "tools": [{"type": "function", "name": "b"}]}
    body = chat_body(
        parse({"model": "m", "tools": tools, "tool_choice": allowed, "parallel_tool_calls": True}), stream=False
    )
    assert [t["function"]["name"] for t in body["tools"]] == ["b"]
    assert body["tool_choice"] == "required" and body["parallel_tool_calls"] is True
    for choice in ("auto", allowed, {"type": "function", "name": "a"}):
        sdk_round_trip(reply_object({"role": "assistant", "content": "x"}, tools=tools, tool_choice=choice))


def test_text_format_becomes_response_format() -> None:
    schema = {"type": "object", "properties": {"n": {"type": "integer"}}, "required": ["n"]}
    fmt = {"type": "json_schema", "name": "count", "schema": schema, "strict": True}
    body = chat_body(parse({"model": "m", "text": {"format": fmt, "verbosity": "low"}}), stream=False)
    assert body["response_format"] == {
        "type": "json_schema",
        "json_schema": {"name": "count", "schema": schema, "strict": True},
    }
    assert body["verbosity"] == "low"
    body = chat_body(parse({"model": "m", "text": {"format": {"type": "json_object"}}}), stream=False)
    assert body["response_format"] == {"type": "json_object"}
    assert "response_format" not in chat_body(parse({"model": "m", "text": {"format": {"type": "text"}}}), stream=False)
    sdk_round_trip(reply_object({"role": "assistant", "content": '{"n": 1}'}, text={"format": fmt}))


def test_reasoning_effort_sampling_limits_and_extras() -> None:
    req = parse(
        {
            "model": "m",
            "reasoning": {"effort": "high", "summary": "auto"},
            "max_output_tokens": 500,
            "temperature": 0.3,
            "top_p": 0.9,
            "user": "u1",
            "prompt_cache_key": "k",
            "metadata": {"a": "b"},
            "store": False,
            "include": ["reasoning.encrypted_content"],
            "truncation": "auto",
            "enable_search": True,  # DashScope's own
            "max_tokens": 9,  # overridden by max_output_tokens
            "messages": ["ignored"],
            "stream_options": {"include_obfuscation": False},
        }
    )
    assert req.extra == {"enable_search": True, "max_tokens": 9, "messages": ["ignored"]}
    body = chat_body(req, stream=True)
    assert body == {
        "enable_search": True,
        "max_tokens": 500,
        "model": "m",
        "messages": [],
        "enable_thinking": True,
        "temperature": 0.3,
        "top_p": 0.9,
        "user": "u1",
        "prompt_cache_key": "k",
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    assert (
        chat_body(parse({"model": "m", "reasoning": {"effort": "minimal"}}), stream=False)["enable_thinking"] is False
    )
    explicit = parse({"model": "m", "reasoning": {"effort": "none"}, "enable_thinking": True})
    assert chat_body(explicit, stream=False)["enable_thinking"] is True
    assert "enable_thinking" not in chat_body(parse({"model": "m", "reasoning": {"summary": "auto"}}), stream=False)
    fields = request_fields(req)
    assert fields["reasoning"] == {"effort": "high", "summary": "auto"} and fields["store"] is False
    assert orjson.loads(orjson.dumps(fields)) == fields
    obj = response_object(
        id=RESP_ID,
        created_at=CREATED,
        request=fields,
        reply={"role": "assistant", "content": "ok"},
        usage=None,
        status="completed",
        conversation_id=None,
    )
    response = sdk_round_trip(obj)
    assert response.max_output_tokens == 500 and response.metadata == {"a": "b"} and response.conversation is None
    assert response.truncation == "auto" and obj["store"] is False and obj["created_at"] == int(CREATED)


def test_conversation_forms() -> None:
    assert parse({"model": "m", "conversation": "conv_1"}).conversation == "conv_1"
    assert parse({"model": "m", "conversation": {"id": "conv_2"}}).conversation == "conv_2"
    assert parse({"model": "m", "previous_response_id": RESP_ID}).previous_response_id == RESP_ID


@pytest.mark.parametrize(
    ("body", "code", "param"),
    [
        ({"input": "x"}, "missing_required_parameter", "model"),
        ({"model": 3}, "invalid_type", "model"),
        ({"model": "m", "input": 5}, "invalid_type", "input"),
        ({"model": "m", "input": ["x"]}, "invalid_type", "input[0]"),
        ({"model": "m", "input": [{"type": "message", "content": "x"}]}, "missing_required_parameter", "input[0].role"),
        ({"model": "m", "input": [{"role": "bot", "content": "x"}]}, "invalid_value", "input[0].role"),
        ({"model": "m", "input": [{"role": "user"}]}, "missing_required_parameter", "input[0].content"),
        (
            {
                "model": "m",
                "input": [{"role": "user", "content": [{"type": "input_text", "text": "a"}, {"type": "x"}]}],
            },
            "invalid_value",
            "input[0].content[1].type",
        ),
        (
            {
                "model": "m",
                "input": [
                    {"role": "user", "content": "a"},
                    {"role": "user", "content": "b"},
                    {"type": "item_reference"},
                ],
            },
            "missing_required_parameter",
            "input[2].id",
        ),
        ({"model": "m", "input": [{"type": "item_reference", "id": 5}]}, "invalid_type", "input[0].id"),
        ({"model": "m", "input": [{"type": "item_reference", "id": ""}]}, "invalid_value", "input[0].id"),
        ({"model": "m", "input": [{"id": None}]}, "missing_required_parameter", "input[0].id"),
        ({"model": "m", "input": [{"id": ["msg_1"]}]}, "invalid_type", "input[0].id"),
        ({"model": "m", "input": [{"type": "computer_call_output"}]}, "unsupported_value", "input[0].type"),
        ({"model": "m", "input": [{"content": "x"}]}, "missing_required_parameter", "input[0].type"),
        (
            {"model": "m", "input": [{"type": "function_call", "name": "f", "arguments": "{}"}]},
            "missing_required_parameter",
            "input[0].call_id",
        ),
        (
            {"model": "m", "input": [{"type": "function_call_output", "call_id": "c"}]},
            "missing_required_parameter",
            "input[0].output",
        ),
        (
            {
                "model": "m",
                "input": [
                    {"role": "user", "content": [{"type": "input_image", "file_id": "file_1", "detail": "auto"}]}
                ],
            },
            "unsupported_value",
            "input[0].content[0].file_id",
        ),
        (
            {"model": "m", "tools": [{"type": "function", "name": "f"}, {"type": "web_search"}]},
            "unsupported_value",
            "tools[1].type",
        ),
        ({"model": "m", "tools": [{"type": "function"}]}, "missing_required_parameter", "tools[0].name"),
        (
            {"model": "m", "tools": [{"type": "function", "name": "f", "parameters": []}]},
            "invalid_type",
            "tools[0].parameters",
        ),
        ({"model": "m", "tool_choice": "any"}, "invalid_value", "tool_choice"),
        ({"model": "m", "tool_choice": {"type": "web_search_preview"}}, "unsupported_value", "tool_choice.type"),
        (
            {"model": "m", "text": {"format": {"type": "json_schema", "name": "n"}}},
            "missing_required_parameter",
            "text.format.schema",
        ),
        ({"model": "m", "text": {"format": {"type": "xml"}}}, "invalid_value", "text.format.type"),
        ({"model": "m", "reasoning": {"effort": "extreme"}}, "invalid_value", "reasoning.effort"),
        ({"model": "m", "temperature": "hot"}, "invalid_type", "temperature"),
        ({"model": "m", "temperature": 3}, "invalid_value", "temperature"),
        ({"model": "m", "max_output_tokens": 1.5}, "invalid_type", "max_output_tokens"),
        ({"model": "m", "max_output_tokens": 0}, "invalid_value", "max_output_tokens"),
        ({"model": "m", "truncation": "middle"}, "invalid_value", "truncation"),
        ({"model": "m", "metadata": {str(i): "v" for i in range(17)}}, "object_above_max_properties", "metadata"),
        ({"model": "m", "metadata": {"k": 1}}, "invalid_type", "metadata.k"),
        ({"model": "m", "store": "yes"}, "invalid_type", "store"),
        ({"model": "m", "conversation": "has space"}, "invalid_conversation_id", "conversation"),
        ({"model": "m", "conversation": {"id": 1}}, "invalid_conversation_id", "conversation.id"),
        (
            {"model": "m", "conversation": "c", "previous_response_id": "resp_1"},
            "mutually_exclusive_parameters",
            "conversation",
        ),
        ({"model": "m", "background": True}, "unsupported_value", "background"),
        ({"model": "m", "include": "x"}, "invalid_type", "include"),
    ],
)
def test_bad_requests_name_the_parameter(body: dict[str, Any], code: str, param: str) -> None:
    error = rejected(body)
    assert (error.code, error.param) == (code, param), error.message
    assert error.http_status == 400


def test_bad_json_and_non_objects() -> None:
    for raw in (b"{", b"[]", b'"x"', b"null"):
        with pytest.raises(InvalidRequest):
            parse_responses_request(raw)


# --- item references ----------------------------------------------------------------------------------------

HEX = RESP_ID.removeprefix("resp_")
TEXT_AND_CALL = {
    "role": "assistant",
    "content": "Let me check.",
    "tool_calls": [{"id": "call_1", "type": "function", "function": {"name": "weather", "arguments": '{"c":1}'}}],
}


def output_of(reply: dict[str, Any], response_id: str = RESP_ID) -> list[dict[str, Any]]:
    fields = request_fields(parse({"model": "m"}))
    obj = response_object(
        id=response_id,
        created_at=CREATED,
        request=fields,
        reply=reply,
        usage=None,
        status="completed",
        conversation_id=None,
    )
    output: list[dict[str, Any]] = obj["output"]
    return output


def test_item_references_are_kept_as_placeholders() -> None:
    req = parse(
        {
            "model": "m",
            "input": [
                {"role": "user", "content": "Weather?"},
                {"type": "item_reference", "id": f"msg_{HEX}_0"},
                {"id": f"fc_{HEX}_1"},  # OpenAI's bare form: an id, no type, no role
                {"type": "function_call_output", "call_id": "call_1", "output": "sunny"},
            ],
        }
    )
    assert req.references == (ItemReference(1, f"msg_{HEX}_0"), ItemReference(2, f"fc_{HEX}_1"))
    # Unresolved, the request will not pretend they are not there: no messages, no chat body.
    for read in (lambda: req.messages, lambda: chat_body(req, stream=False)):
        with pytest.raises(InvalidRequest) as caught:
            read()
        assert (caught.value.code, caught.value.param) == ("unsupported_value", "input[1].type")
    # An item with an id and a role is a message, not a reference.
    sent = parse({"model": "m", "input": [{"id": "msg_1", "role": "user", "content": "hi"}]})
    assert sent.references == () and sent.messages == [{"role": "user", "content": "hi"}]


def test_referenced_items_translate_as_if_they_were_sent() -> None:
    """A referenced text and the call after it make one assistant message, exactly as the items sent in full."""
    output = output_of(TEXT_AND_CALL)
    assert [item["id"] for item in output] == [f"msg_{HEX}_0", f"fc_{HEX}_1"]
    tail = [{"type": "function_call_output", "call_id": "call_1", "output": "sunny"}]
    req = parse(
        {
            "model": "m",
            "input": [
                {"role": "user", "content": "Weather?"},
                {"type": "item_reference", "id": f"msg_{HEX}_0"},
                {"type": "item_reference", "id": f"fc_{HEX}_1"},
                *tail,
            ],
        }
    )
    resolved = with_referenced_items(req, {item["id"]: item for item in output})
    sent = parse({"model": "m", "input": [{"role": "user", "content": "Weather?"}, *output, *tail]})
    assert resolved.references == ()
    assert resolved.input == sent.input
    assert (
        resolved.messages
        == sent.messages
        == [
            {"role": "user", "content": "Weather?"},
            {"role": "assistant", "content": "Let me check.", "tool_calls": TEXT_AND_CALL["tool_calls"]},
            {"role": "tool", "tool_call_id": "call_1", "content": "sunny"},
        ]
    )
    assert chat_body(resolved, stream=False)["messages"] == sent.messages
    # The found items are copied, not shared with the request.
    resolved.input[1]["content"][0]["text"] = "changed"
    assert output[0]["content"][0]["text"] == "Let me check."
    # A referenced call alone, after a message sent in full, joins it all the same.
    mixed = parse(
        {
            "model": "m",
            "input": [{"role": "assistant", "content": "Let me check."}, {"id": f"fc_{HEX}_1"}],
        }
    )
    assert with_referenced_items(mixed, {output[1]["id"]: output[1]}).messages == [TEXT_AND_CALL]


def test_referenced_input_items_translate_back_to_their_messages() -> None:
    stored = [
        (7, {"role": "user", "content": "one"}),
        (8, TEXT_AND_CALL),
        (9, {"role": "tool", "tool_call_id": "call_1", "content": "x"}),
    ]
    items = items_from_messages(stored)
    req = parse({"model": "m", "input": [{"type": "item_reference", "id": item["id"]} for item in items]})
    assert with_referenced_items(req, {item["id"]: item for item in items}).messages == [m for _, m in stored]


def test_an_item_reference_naming_nothing_found_is_400_naming_its_input_index() -> None:
    output = output_of(TEXT_AND_CALL)
    req = parse(
        {
            "model": "m",
            "input": [
                {"type": "item_reference", "id": f"msg_{HEX}_0"},
                {"role": "user", "content": "x"},
                {"id": "msg_unknown"},
                {"type": "item_reference", "id": f"rs_{HEX}_9"},
            ],
        }
    )
    with pytest.raises(InvalidRequest) as caught:
        with_referenced_items(req, {output[0]["id"]: output[0]})
    error = caught.value
    assert (error.code, error.param, error.http_status) == ("item_not_found", "input[2]", 400)
    assert error.message == "Item with id 'msg_unknown' not found."
    assert orjson.loads(error.body())["error"]["type"] == "invalid_request_error"
    # A "found" item that is itself a reference resolves nothing.
    with pytest.raises(InvalidRequest) as caught:
        with_referenced_items(req, {r.id: {"type": "item_reference", "id": "x"} for r in req.references})
    assert caught.value.param == "input[0]"
    # A long id is cut in the message.
    long = parse({"model": "m", "input": [{"id": "x" * 1000}]})
    with pytest.raises(InvalidRequest) as caught:
        with_referenced_items(long, {})
    assert caught.value.message == f"Item with id '{'x' * 128}' not found."
    # No references: the very request.
    plain = parse({"model": "m", "input": "hi"})
    assert with_referenced_items(plain, {}) is plain


def test_output_item_ids_name_their_response() -> None:
    reply = {**TEXT_AND_CALL, "reasoning_content": "hmm"}
    for item in output_of(reply):
        assert response_of_item(item["id"]) == RESP_ID
    assert response_of_item(f"msg_{HEX}_12") == RESP_ID
    for other in (
        "msg_12",  # an input item id (a stored message's row)
        "fc_12_0",
        "fco_12",
        f"fco_{HEX}_0",
        f"call_{HEX}_0",  # a call_id, not an item id
        f"msg_{HEX}",
        f"msg_{HEX[:-1]}_0",
        f"msg_{HEX.upper()}_0",
        f"msg_{HEX}_0 ",
        f"msg_{HEX}_x",
        RESP_ID,
        "",
        None,
        7,
    ):
        assert response_of_item(other) is None, other


# --- Response objects ---------------------------------------------------------------------------------------


def test_text_reply_response_object() -> None:
    usage = {
        "prompt_tokens": 30,
        "completion_tokens": 5,
        "total_tokens": 35,
        "prompt_tokens_details": {"cached_tokens": 20},
    }
    obj = reply_object({"role": "assistant", "content": "Hi there"}, usage, instructions="Be brief.")
    response = sdk_round_trip(obj)
    assert response.output_text == "Hi there"
    assert obj["id"] == RESP_ID and obj["object"] == "response" and obj["status"] == "completed"
    assert obj["output"] == [
        {
            "type": "message",
            "id": f"msg_{'ab' * 16}_0",
            "status": "completed",
            "role": "assistant",
            "content": [{"type": "output_text", "text": "Hi there", "annotations": [], "logprobs": []}],
        }
    ]
    assert obj["usage"] == {
        "input_tokens": 30,
        "input_tokens_details": {"cached_tokens": 20, "cache_write_tokens": 0},
        "output_tokens": 5,
        "output_tokens_details": {"reasoning_tokens": 0},
        "total_tokens": 35,
    }
    assert obj["conversation"] == {"id": "conv_1"} and obj["instructions"] == "Be brief."
    assert obj["tool_choice"] == "auto" and obj["tools"] == [] and obj["parallel_tool_calls"] is True
    assert obj["text"] == {"format": {"type": "text"}} and obj["truncation"] == "disabled"
    assert obj["error"] is None and obj["incomplete_details"] is None and obj["metadata"] == {}


def test_reasoning_reply_and_usage_details() -> None:
    reply = {"role": "assistant", "content": "42", "reasoning_content": "Six times seven."}
    usage = {"prompt_tokens": 9, "completion_tokens": 40, "completion_tokens_details": {"reasoning_tokens": 38}}
    obj = reply_object(reply, usage)
    response = sdk_round_trip(obj)
    assert [o.type for o in response.output] == ["reasoning", "message"]
    assert obj["output"][0] == {
        "type": "reasoning",
        "id": f"rs_{'ab' * 16}_0",
        "summary": [{"type": "summary_text", "text": "Six times seven."}],
    }
    assert obj["output"][1]["id"] == f"msg_{'ab' * 16}_1"
    assert obj["usage"]["output_tokens_details"] == {"reasoning_tokens": 38}
    assert obj["usage"]["total_tokens"] == 49


def test_usage_mapping_edges() -> None:
    assert response_usage(None) is None
    assert response_usage({}) == {
        "input_tokens": 0,
        "input_tokens_details": {"cached_tokens": 0, "cache_write_tokens": 0},
        "output_tokens": 0,
        "output_tokens_details": {"reasoning_tokens": 0},
        "total_tokens": 0,
    }
    dashscope = {"prompt_tokens": 100, "completion_tokens": 1, "total_tokens": 101,
                 "prompt_tokens_details": {"cached_tokens": 0, "cache_creation_input_tokens": 64}}  # fmt: skip
    assert response_usage(dashscope)["input_tokens_details"] == {"cached_tokens": 0, "cache_write_tokens": 64}  # type: ignore[index]
    native = {"input_tokens": 3, "output_tokens": 4, "total_tokens": 7}
    assert response_usage(native)["total_tokens"] == 7  # type: ignore[index]


def test_text_and_tool_calls_in_one_reply_and_missing_ids() -> None:
    reply = {
        "role": "assistant",
        "content": "Let me check.",
        "tool_calls": [{"id": None, "type": "function", "function": {"name": "f", "arguments": "{}"}}],
    }
    obj = reply_object(reply)
    sdk_round_trip(obj)
    assert [o["type"] for o in obj["output"]] == ["message", "function_call"]
    assert obj["output"][1]["call_id"] == f"call_{'ab' * 16}_1"


def test_completion_finish_reasons_and_stored_responses() -> None:
    fields = request_fields(parse({"model": "m", "input": "hi", "max_output_tokens": 16}))
    completion = {
        "id": "chatcmpl-1",
        "object": "chat.completion",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": "Once upon"}, "finish_reason": "length"}],
        "usage": {"prompt_tokens": 5, "completion_tokens": 16, "total_tokens": 21},
    }
    obj = response_from_completion(
        id=RESP_ID, created_at=CREATED, request=fields, completion=completion, conversation_id=None
    )
    sdk_round_trip(obj)
    assert obj["status"] == "incomplete" and obj["incomplete_details"] == {"reason": "max_output_tokens"}
    assert obj["output"][0]["status"] == "incomplete"
    completion["choices"][0]["finish_reason"] = "stop"
    done = response_from_completion(
        id=RESP_ID,
        created_at=CREATED,
        request=fields,
        completion=completion,
        conversation_id="c",
        completed_at=CREATED + 2,
    )
    assert done["status"] == "completed" and done["completed_at"] == int(CREATED + 2)
    stored = response_from_stored(
        id=RESP_ID,
        created_at=CREATED,
        request=fields,
        reply={"role": "assistant", "content": "Once upon"},
        usage=completion["usage"],
        interrupted=False,
        conversation_id="c",
        completed_at=CREATED + 2,
    )
    assert stored == done
    cut = response_from_stored(
        id=RESP_ID,
        created_at=CREATED,
        request=fields,
        reply={"role": "assistant", "content": "Once"},
        usage=None,
        interrupted=True,
        conversation_id="c",
    )
    sdk_round_trip(cut)
    assert cut["status"] == "incomplete" and cut["output"][0]["status"] == "incomplete"
    assert finish_status("content_filter") == ("incomplete", {"reason": "content_filter"})
    assert finish_status("tool_calls") == ("completed", None)


def test_failed_response_error_codes() -> None:
    stream = ResponsesStream(RESP_ID, CREATED, request_fields(parse({"model": "m"})), None)
    events = sse_events(stream.fail({"message": "slow down", "type": "rate_limit_error", "code": "upstream_http_429"}))
    assert [e["type"] for e in events] == ["response.created", "response.in_progress", "response.failed"]
    failed = EVENTS.validate_python(events[-1])
    assert failed.response.status == "failed"
    assert events[-1]["response"]["error"] == {"code": "rate_limit_exceeded", "message": "slow down"}
    assert stream.complete() == b"" and stream.chunk({"choices": []}) == b""


# --- stored messages as items -------------------------------------------------------------------------------


def test_items_from_stored_messages() -> None:
    messages = [
        (11, {"role": "system", "content": "Rules."}),
        (
            12,
            {
                "role": "user",
                "content": [{"type": "text", "text": "see"}, {"type": "image_url", "image_url": {"url": "u"}}],
            },
        ),
        (
            13,
            {
                "role": "assistant",
                "content": None,
                "reasoning_content": "need weather",
                "tool_calls": [{"id": "call_1", "type": "function", "function": {"name": "w", "arguments": "{}"}}],
            },
        ),
        (14, {"role": "tool", "tool_call_id": "call_1", "content": "sunny"}),
        (15, {"role": "assistant", "content": "It is sunny."}),
    ]
    items = items_from_messages(messages)
    assert [(i["type"], i["id"]) for i in items] == [
        ("message", "msg_11"),
        ("message", "msg_12"),
        ("reasoning", "rs_13"),
        ("function_call", "fc_13_0"),
        ("function_call_output", "fco_14"),
        ("message", "msg_15"),
    ]
    assert items[1]["content"] == [
        {"type": "input_text", "text": "see"},
        {"type": "input_image", "image_url": "u", "detail": "auto"},
    ]
    for item in items:
        assert ITEMS.validate_python(item).type == item["type"]
    page = openai.types.responses.ResponseItemList.model_validate(
        {"object": "list", "data": items, "first_id": items[0]["id"], "last_id": items[-1]["id"], "has_more": False}
    )
    assert len(page.data) == len(items)


_text = st.text(st.characters(exclude_categories=("Cs",)), max_size=8)
_call = st.fixed_dictionaries(
    {
        "id": _text.filter(bool),
        "type": st.just("function"),
        "function": st.fixed_dictionaries({"name": _text, "arguments": _text}),
    }
)
_chat_message = st.one_of(
    st.fixed_dictionaries({"role": st.sampled_from(["user", "system"]), "content": _text}),
    st.fixed_dictionaries({"role": st.just("assistant"), "content": _text.filter(bool)}),
    st.fixed_dictionaries(
        {
            "role": st.just("assistant"),
            "content": st.none() | _text.filter(bool),
            "tool_calls": st.lists(_call, min_size=1, max_size=3),
        }
    ),
    st.fixed_dictionaries({"role": st.just("tool"), "tool_call_id": _text, "content": _text}),
)


@settings(deadline=None)
@given(st.lists(_chat_message, max_size=6))
def test_stored_messages_as_items_translate_back_to_the_same_messages(messages: list[dict[str, Any]]) -> None:
    items = items_from_messages(list(enumerate(messages)))
    for item in items:
        ITEMS.validate_python(item)
    translated = parse({"model": "m", "input": items}).messages
    # consecutive assistant messages would merge their calls; the canonical history never has two in a row
    expected: list[dict[str, Any]] = []
    for message in messages:
        if (
            expected
            and message.get("tool_calls")
            and expected[-1]["role"] == "assistant"
            and message["content"] is None
        ):
            expected[-1] = {**expected[-1], "tool_calls": [*expected[-1].get("tool_calls", []), *message["tool_calls"]]}
        else:
            expected.append(message)
    assert translated == expected


# --- the stream ---------------------------------------------------------------------------------------------


def sse_events(raw: bytes) -> list[dict[str, Any]]:
    events = []
    for block in raw.decode().split("\n\n"):
        if not block:
            continue
        lines = block.split("\n")
        assert lines[0].startswith("event: ") and lines[1].startswith("data: ") and len(lines) == 2
        event = orjson.loads(lines[1].removeprefix("data: "))
        assert event["type"] == lines[0].removeprefix("event: ")
        events.append(event)
    return events


def chunk(
    delta: dict[str, Any] | None = None, finish: str | None = None, usage: dict[str, Any] | None = None
) -> dict[str, Any]:
    value: dict[str, Any] = {"id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 1, "model": "qwen-plus"}
    value["choices"] = [] if delta is None else [{"index": 0, "delta": delta, "finish_reason": finish}]
    if usage is not None:
        value["usage"] = usage
    return value


USAGE = {
    "prompt_tokens": 12,
    "completion_tokens": 7,
    "total_tokens": 19,
    "prompt_tokens_details": {"cached_tokens": 8},
    "completion_tokens_details": {"reasoning_tokens": 3},
}
TEXT = [
    chunk({"role": "assistant", "content": ""}),
    chunk({"content": "Hel"}),
    chunk({"content": "lo!"}),
    chunk({}, "stop"),
    chunk(usage=USAGE),
]
TOOLS = [
    chunk(
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {"index": 0, "id": "call_a", "type": "function", "function": {"name": "weather", "arguments": ""}}
            ],
        }
    ),
    chunk({"tool_calls": [{"index": 0, "function": {"arguments": '{"city":'}}]}),
    chunk({"tool_calls": [{"index": 0, "function": {"arguments": '"Paris"}'}}]}),
    chunk({"tool_calls": [{"index": 1, "id": "call_b", "type": "function", "function": {"name": "time"}}]}),
    chunk({"tool_calls": [{"index": 1, "function": {"arguments": "{}"}}]}),
    chunk({}, "tool_calls"),
    chunk(usage=USAGE),
]
REASONING = [
    chunk({"role": "assistant", "content": None, "reasoning_content": "Let me"}),
    chunk({"reasoning_content": " think."}),
    chunk({"content": "Answer: "}),
    chunk({"content": "42"}),
    chunk({}, "stop"),
    chunk(usage=USAGE),
]
TEXT_THEN_TOOL = [
    chunk({"role": "assistant", "content": "Checking"}),
    chunk({"content": " now."}),
    chunk(
        {"tool_calls": [{"index": 0, "id": "call_c", "type": "function", "function": {"name": "f", "arguments": "{}"}}]}
    ),
    chunk({}, "tool_calls"),
    chunk(usage=USAGE),
]
EMPTY = [chunk({"role": "assistant", "content": ""}), chunk({}, "stop")]


def run_stream(chunks: list[dict[str, Any]], fields: dict[str, Any]) -> tuple[bytes, list[dict[str, Any]]]:
    stream = ResponsesStream(RESP_ID, CREATED, fields, "conv_1")
    raw = stream.start()
    for c in chunks:
        raw += stream.chunk(c)
    raw += stream.complete()
    return raw, sse_events(raw)


def expected_object(chunks: list[dict[str, Any]], fields: dict[str, Any]) -> dict[str, Any]:
    assembler = ReplyAssembler()
    for c in chunks:
        assembler.add(c)
    status, incomplete = finish_status(assembler.finish_reason)
    return response_object(
        id=RESP_ID,
        created_at=CREATED,
        request=fields,
        reply=assembler.message(),
        usage=assembler.usage,
        status=status,
        conversation_id="conv_1",
        incomplete=incomplete,
    )


def check_events(events: list[dict[str, Any]]) -> None:
    """Every event validates as the SDK's union; sequence numbers count from 0; deltas name open items."""
    assert [e["sequence_number"] for e in events] == list(range(len(events)))
    added: dict[int, str] = {}
    finished: set[int] = set()
    for event in events:
        parsed = EVENTS.validate_python(event)
        assert parsed.type == event["type"]
        if "output_index" in event:
            index = event["output_index"]
            if event["type"] == "response.output_item.added":
                assert index == len(added) and index not in added
                added[index] = event["item"]["id"]
            else:
                assert index in added and index not in finished, event
                assert event.get("item_id", added[index]) == added[index]
                if event["type"] == "response.output_item.done":
                    assert event["item"]["id"] == added[index]
                    finished.add(index)
    assert finished == set(added)
    assert events[0]["type"] == "response.created" and events[1]["type"] == "response.in_progress"
    assert events[0]["response"]["status"] == "in_progress" and events[0]["response"]["output"] == []


@pytest.mark.parametrize(
    "chunks", [TEXT, TOOLS, REASONING, TEXT_THEN_TOOL, EMPTY], ids=["text", "tools", "reasoning", "text+tool", "empty"]
)
def test_stream_events_accumulate_to_the_plain_response(chunks: list[dict[str, Any]]) -> None:
    fields = request_fields(
        parse({"model": "qwen-plus", "input": "hi", "tools": [{"type": "function", "name": "weather"}]})
    )
    _, events = run_stream(chunks, fields)
    check_events(events)
    final = events[-1]
    assert final["type"] == "response.completed"
    assert final["response"] == expected_object(chunks, fields)
    sdk_round_trip(final["response"])


def test_stream_event_order_for_reasoning_then_text() -> None:
    fields = request_fields(parse({"model": "m"}))
    _, events = run_stream(REASONING, fields)
    assert [e["type"] for e in events] == [
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "response.reasoning_summary_part.added",
        "response.reasoning_summary_text.delta",
        "response.reasoning_summary_text.delta",
        "response.reasoning_summary_text.done",
        "response.reasoning_summary_part.done",
        "response.output_item.done",
        "response.output_item.added",
        "response.content_part.added",
        "response.output_text.delta",
        "response.output_text.delta",
        "response.output_text.done",
        "response.content_part.done",
        "response.output_item.done",
        "response.completed",
    ]
    assert events[6]["text"] == "Let me think." and events[13]["text"] == "Answer: 42"
    assert events[-1]["response"]["usage"]["output_tokens_details"] == {"reasoning_tokens": 3}


def test_stream_tool_call_argument_fragments() -> None:
    _, events = run_stream(TOOLS, request_fields(parse({"model": "m"})))
    kinds = [e["type"] for e in events]
    assert kinds[2:] == [
        "response.output_item.added",
        "response.function_call_arguments.delta",
        "response.function_call_arguments.delta",
        "response.function_call_arguments.done",
        "response.output_item.done",
        "response.output_item.added",
        "response.function_call_arguments.delta",
        "response.function_call_arguments.done",
        "response.output_item.done",
        "response.completed",
    ]
    assert events[2]["item"] == {
        "type": "function_call",
        "id": f"fc_{'ab' * 16}_0",
        "call_id": "call_a",
        "name": "weather",
        "arguments": "",
        "status": "in_progress",
    }
    assert events[5]["arguments"] == '{"city":"Paris"}'
    assert events[7]["item"]["name"] == "time" and events[7]["item"]["call_id"] == "call_b"


def test_stream_cut_by_the_length_limit_ends_incomplete() -> None:
    chunks = [chunk({"content": "Once upon"}), chunk({}, "length"), chunk(usage=USAGE)]
    fields = request_fields(parse({"model": "m", "max_output_tokens": 16}))
    _, events = run_stream(chunks, fields)
    check_events(events)
    assert events[-1]["type"] == "response.incomplete"
    assert events[-2]["item"]["status"] == "incomplete"
    assert events[-1]["response"] == expected_object(chunks, fields)
    assert events[-1]["response"]["incomplete_details"] == {"reason": "max_output_tokens"}


def test_stream_failure_midway_keeps_the_output_so_far() -> None:
    stream = ResponsesStream(RESP_ID, CREATED, request_fields(parse({"model": "m"})), None)
    raw = stream.chunk(chunk({"content": "Hal"}))  # start() is implied
    raw += stream.fail({"message": "upstream broke", "type": "upstream_error", "code": None})
    events = sse_events(raw)
    check_events_partial = [EVENTS.validate_python(e) for e in events]
    assert check_events_partial[-1].type == "response.failed"
    assert events[-1]["response"]["output"][0]["status"] == "incomplete"
    assert events[-1]["response"]["output"][0]["content"][0]["text"] == "Hal"
    assert events[-1]["response"]["error"] == {"code": "server_error", "message": "upstream broke"}


# --- the real SDK reading them ------------------------------------------------------------------------------


def sdk_client(handler: Any) -> openai.OpenAI:
    return openai.OpenAI(
        api_key="k", base_url="http://gateway/v1", http_client=httpx.Client(transport=httpx.MockTransport(handler))
    )


def _without_parsed(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _without_parsed(v) for k, v in value.items() if k not in ("parsed", "parsed_arguments")}
    if isinstance(value, list):
        return [_without_parsed(v) for v in value]
    return value


@pytest.mark.parametrize(
    "chunks", [TEXT, TOOLS, REASONING, TEXT_THEN_TOOL], ids=["text", "tools", "reasoning", "text+tool"]
)
def test_the_sdk_stream_helper_accumulates_the_same_response(chunks: list[dict[str, Any]]) -> None:
    seen: list[dict[str, Any]] = []

    def handler(request: httpx.Request) -> httpx.Response:
        req = parse_responses_request(request.content)
        seen.append(chat_body(req, stream=req.stream))
        raw, _ = run_stream(chunks, request_fields(req))
        return httpx.Response(200, headers={"content-type": "text/event-stream"}, content=raw)

    tools: Any = [
        {"type": "function", "name": "weather", "parameters": {"type": "object", "properties": {}}, "strict": False}
    ]
    with sdk_client(handler).responses.stream(model="qwen-plus", input="hi", tools=tools) as stream:
        kinds = [event.type for event in stream]
        final = stream.get_final_response()
    assert kinds[0] == "response.created" and kinds[-1] == "response.completed"
    assert seen[0]["stream"] is True and seen[0]["stream_options"] == {"include_usage": True}
    fields = request_fields(parse({"model": "qwen-plus", "input": "hi", "tools": tools}))
    assert _without_parsed(final.to_dict()) == expected_object(chunks, fields)


def test_the_sdk_reads_a_plain_response() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        req = parse_responses_request(request.content)
        reply = {"role": "assistant", "content": "Bonjour", "reasoning_content": "French."}
        obj = response_object(
            id=RESP_ID,
            created_at=CREATED,
            request=request_fields(req),
            reply=reply,
            usage={"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5},
            status="completed",
            conversation_id="conv_9",
        )
        return httpx.Response(200, json=obj)

    response = sdk_client(handler).responses.create(
        model="qwen-plus",
        input=[{"role": "user", "content": "Say hi in French"}],
        conversation="conv_9",
        metadata={"k": "v"},
    )
    assert response.output_text == "Bonjour"
    assert response.conversation is not None and response.conversation.id == "conv_9"
    assert response.usage is not None and response.usage.total_tokens == 5
    assert response.metadata == {"k": "v"}


# --- any JSON: a request or InvalidRequest, never anything else ---------------------------------------------

_json = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**63 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | _text,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(_text, children, max_size=4),
    max_leaves=12,
)
_fields = st.sampled_from(
    ["input", "tools", "tool_choice", "text", "reasoning", "metadata", "conversation", "temperature", "top_p",
     "max_output_tokens", "truncation", "include", "instructions", "store", "stream", "previous_response_id",
     "parallel_tool_calls", "user", "background", "model"]
)  # fmt: skip
_item_types = st.sampled_from(["message", "function_call", "function_call_output", "reasoning", "item_reference", None])
_item = st.fixed_dictionaries(
    {"type": _item_types},
    optional={
        "role": st.sampled_from(["user", "assistant", "system", "developer"]) | _json,
        "content": _text
        | st.lists(
            st.fixed_dictionaries(
                {"type": st.sampled_from(["input_text", "input_image", "output_text", "input_file"]) | _json},
                optional={"text": _json, "image_url": _json, "detail": _json, "file_data": _json},
            ),
            max_size=3,
        )
        | _json,
        "call_id": _text | _json,
        "name": _text | _json,
        "arguments": _text | _json,
        "output": _text | _json,
        "id": _text,
    },
)
_tool = st.fixed_dictionaries(
    {"type": st.sampled_from(["function", "web_search"]) | _json},
    optional={
        "name": _text | _json,
        "parameters": st.dictionaries(_text, _json, max_size=2) | _json,
        "strict": _json,
        "description": _json,
        "function": _json,
    },
)


def _accepted_is_usable(req: ResponsesRequest) -> None:
    if req.references:
        with pytest.raises(InvalidRequest) as caught:
            with_referenced_items(req, {})
        assert caught.value.code == "item_not_found"
        req = with_referenced_items(
            req, {r.id: {"type": "message", "role": "user", "content": "x"} for r in req.references}
        )
    orjson.dumps(chat_body(req, stream=True))
    fields = request_fields(req)
    assert orjson.loads(orjson.dumps(fields)) == fields
    sdk_round_trip(
        response_object(
            id=RESP_ID,
            created_at=CREATED,
            request=fields,
            reply={"role": "assistant", "content": "x"},
            usage=None,
            status="completed",
            conversation_id=req.conversation,
        )
    )


def _parse_or_reject(body: Any) -> None:
    try:
        req = parse_responses_request(orjson.dumps(body))
    except InvalidRequest as exc:
        error = exc
    else:
        _accepted_is_usable(req)
        return
    assert error.code and error.message and error.http_status == 400


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.dictionaries(_fields, _json, max_size=4))
def test_any_json_field_values(extra: dict[str, Any]) -> None:
    _parse_or_reject({"model": "m", **extra})


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(_item, max_size=4), st.lists(_tool, max_size=3), _json)
def test_any_items_and_tools(items: list[dict[str, Any]], tools: list[dict[str, Any]], choice: Any) -> None:
    _parse_or_reject({"model": "m", "input": items})
    _parse_or_reject({"model": "m", "tools": tools, "tool_choice": choice})


@settings(deadline=None)
@given(_json)
def test_any_json_body(body: Any) -> None:
    _parse_or_reject(body)


@settings(deadline=None)
@given(st.binary(max_size=64))
def test_any_bytes(raw: bytes) -> None:
    try:
        parse_responses_request(raw)
    except InvalidRequest:
        pass


_fragment = st.fixed_dictionaries(
    {"index": st.integers(0, 2)},
    optional={
        "id": st.sampled_from(["call_x", "call_y", ""]),
        "function": st.fixed_dictionaries({}, optional={"name": st.sampled_from(["f", "g", ""]), "arguments": _text}),
    },
)
_delta = st.fixed_dictionaries(
    {},
    optional={
        "content": st.none() | _text,
        "reasoning_content": st.none() | _text,
        "tool_calls": st.lists(_fragment, max_size=2),
    },
)
_chunks = st.lists(
    st.builds(chunk, _delta, st.none() | st.sampled_from(["stop", "length", "tool_calls"]))
    | st.builds(chunk, st.none(), st.none(), st.just(USAGE)),
    max_size=10,
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_chunks)
def test_any_chunk_sequence_gives_events_the_sdk_accepts(chunks: list[dict[str, Any]]) -> None:
    fields = request_fields(parse({"model": "m"}))
    raw, events = run_stream(chunks, fields)
    check_events(events)
    sdk_round_trip(events[-1]["response"])
    assembler = ReplyAssembler()
    for c in chunks:
        assembler.add(c)
    text = "".join(
        part["text"]
        for item in events[-1]["response"]["output"]
        if item["type"] == "message"
        for part in item["content"]
    )
    assert text == (assembler.message().get("content") or "")

    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, headers={"content-type": "text/event-stream"}, content=raw)

    with sdk_client(handler).responses.stream(model="m", input="hi") as stream:
        for _ in stream:
            pass
        if events[-1]["type"] == "response.completed":
            final = stream.get_final_response()
            assert _without_parsed(final.to_dict()) == events[-1]["response"]
