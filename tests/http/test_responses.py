"""OpenAI's Responses API, with the real ``openai`` SDK's ``client.responses.*`` as the client, against the real app
and the fake upstream: memory through ``previous_response_id`` (appending, or forking from an older response),
``conversation`` (shared with the chat completions path), ``store``, streaming (the SDK's own accumulation of our
events), retrieve, input items, delete, function tools, item references, owners, and failures mid-stream."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import aiohttp
import openai
import pytest

from tests.clients.checks import WEATHER_CALL
from tests.conftest import Gateway, make_config, start_gateway, user
from tests.fake_upstream import FakeUpstream, Script, request_texts
from tests.stored import all_messages_count, conversations, find_conversation, messages, stored

SYSTEM = "You sell phones. Ask one question at a time."
WEATHER_TOOL: dict[str, Any] = {
    "type": "function",
    "name": "get_weather",
    "description": "The current weather in a city.",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
}


async def test_previous_response_id_carries_the_whole_history_over_four_turns(
    gateway: Gateway, upstream: FakeUpstream
) -> None:
    client = gateway.sdk()
    first = await client.responses.create(model="qwen-plus", instructions=SYSTEM, input="I want a phone")
    assert first.object == "response" and first.id.startswith("resp_") and first.status == "completed"
    assert first.output_text == "reply 1" and first.output[0].type == "message"
    assert first.usage is not None and (first.usage.input_tokens, first.usage.output_tokens) == (10, 5)
    previous = first
    for text in ("6.7 inch", "4K", "The black one"):
        response = await client.responses.create(
            model="qwen-plus", instructions=SYSTEM, input=text, previous_response_id=previous.id
        )
        assert response.previous_response_id == previous.id
        previous = response
    assert previous.output_text == "reply 4"
    assert request_texts(upstream.last) == [
        ("system", SYSTEM), ("user", "I want a phone"), ("assistant", "reply 1"), ("user", "6.7 inch"),
        ("assistant", "reply 2"), ("user", "4K"), ("assistant", "reply 3"), ("user", "The black one"),
    ]  # fmt: skip
    assert upstream.last["model"] == "qwen-plus" and "input" not in upstream.last
    # One conversation holds the chain, named in every response (and in X-Conversation-Id).
    assert first.conversation is not None and previous.conversation is not None
    assert previous.conversation.id == first.conversation.id
    assert len(await stored(gateway, first.conversation.id)) == 8


async def test_continuing_an_older_response_forks_and_the_original_chain_goes_on(
    gateway: Gateway, upstream: FakeUpstream
) -> None:
    client = gateway.sdk()
    first = await client.responses.create(model="qwen-plus", input="one")
    second = await client.responses.create(model="qwen-plus", input="two", previous_response_id=first.id)
    branch = await client.responses.create(model="qwen-plus", input="two, again", previous_response_id=first.id)
    assert request_texts(upstream.last) == [("user", "one"), ("assistant", "reply 1"), ("user", "two, again")]
    assert first.conversation and second.conversation and branch.conversation
    assert branch.conversation.id != first.conversation.id
    fork = await find_conversation(gateway, branch.conversation.id)
    assert fork is not None and fork["metadata"]["forked_from"] == first.conversation.id
    # The original chain is untouched and still continues from its latest response by appending.
    third = await client.responses.create(model="qwen-plus", input="three", previous_response_id=second.id)
    assert third.conversation and third.conversation.id == first.conversation.id
    assert request_texts(upstream.last) == [
        ("user", "one"), ("assistant", "reply 1"), ("user", "two"), ("assistant", "reply 2"), ("user", "three")
    ]  # fmt: skip
    # ... and so does the branch.
    await client.responses.create(model="qwen-plus", input="branch on", previous_response_id=branch.id)
    assert request_texts(upstream.last)[-3:] == [
        ("user", "two, again"),
        ("assistant", "reply 3"),
        ("user", "branch on"),
    ]


async def test_two_requests_racing_from_the_same_response_both_succeed_one_appending_one_forking(
    gateway: Gateway, upstream: FakeUpstream
) -> None:
    client = gateway.sdk()
    first = await client.responses.create(model="qwen-plus", input="one")
    upstream.script(Script(content="slow", delay=0.3), Script(content="fast"))
    a, b = await asyncio.gather(
        client.responses.create(model="qwen-plus", input="a", previous_response_id=first.id),
        client.responses.create(model="qwen-plus", input="b", previous_response_id=first.id),
    )
    assert a.conversation and b.conversation and a.conversation.id != b.conversation.id
    for request in upstream.requests[1:]:
        assert request_texts(request.body)[:2] == [("user", "one"), ("assistant", "reply 1")]
        assert len(request.body["messages"]) == 3
    assert len(await conversations(gateway)) == 2


async def test_conversation_is_shared_with_the_chat_completions_path(gateway: Gateway, upstream: FakeUpstream) -> None:
    client = gateway.sdk()
    await client.responses.create(model="qwen-plus", input="one (responses)", conversation="shop-1")
    await gateway.sdk("shop-1").chat.completions.create(model="qwen-plus", messages=[user("two (chat)")])
    assert request_texts(upstream.last) == [
        ("user", "one (responses)"),
        ("assistant", "reply 1"),
        ("user", "two (chat)"),
    ]
    third = await client.responses.create(model="qwen-plus", input="three (responses)", conversation={"id": "shop-1"})
    assert third.conversation is not None and third.conversation.id == "shop-1"
    assert request_texts(upstream.last) == [
        ("user", "one (responses)"), ("assistant", "reply 1"), ("user", "two (chat)"), ("assistant", "reply 2"),
        ("user", "three (responses)"),
    ]  # fmt: skip
    # A response made in the conversation continues it with previous_response_id too.
    await client.responses.create(model="qwen-plus", input="four", previous_response_id=third.id)
    assert len(upstream.last["messages"]) == 7
    assert len(await stored(gateway, "shop-1")) == 8


async def test_the_x_conversation_id_header_names_the_conversation_when_the_body_does_not(
    gateway: Gateway, upstream: FakeUpstream
) -> None:
    client = gateway.sdk("header-conv")
    await client.chat.completions.create(model="qwen-plus", messages=[user("one (chat)")])
    response = await client.responses.with_raw_response.create(model="qwen-plus", input="two (responses)")
    assert response.headers["X-Conversation-Id"] == "header-conv"
    assert request_texts(upstream.last) == [
        ("user", "one (chat)"),
        ("assistant", "reply 1"),
        ("user", "two (responses)"),
    ]


async def test_store_false_records_nothing_and_cannot_be_continued(gateway: Gateway, upstream: FakeUpstream) -> None:
    client = gateway.sdk()
    unstored = await client.responses.create(model="qwen-plus", input="secret", store=False)
    assert unstored.output_text == "reply 1" and unstored.store is False
    assert await all_messages_count(gateway.db_path) == 0
    with pytest.raises(openai.BadRequestError) as raised:
        await client.responses.create(model="qwen-plus", input="more", previous_response_id=unstored.id)
    assert raised.value.body == {
        "message": f"Previous response with id '{unstored.id}' not found.",
        "type": "invalid_request_error",
        "param": "previous_response_id",
        "code": "previous_response_not_found",
    }
    with pytest.raises(openai.NotFoundError):
        await client.responses.retrieve(unstored.id)
    assert len(upstream.requests) == 1


async def test_store_false_reads_the_history_it_continues_and_leaves_it_as_it_was(
    gateway: Gateway, upstream: FakeUpstream
) -> None:
    client = gateway.sdk()
    first = await client.responses.create(model="qwen-plus", input="one")
    second = await client.responses.create(model="qwen-plus", input="two", previous_response_id=first.id)
    # From an older response, without storing: that history, no fork, nothing written.
    await client.responses.create(model="qwen-plus", input="what if", previous_response_id=first.id, store=False)
    assert request_texts(upstream.last) == [("user", "one"), ("assistant", "reply 1"), ("user", "what if")]
    assert len(await conversations(gateway)) == 1
    await client.responses.create(model="qwen-plus", input="peek", previous_response_id=second.id, store=False)
    assert len(upstream.last["messages"]) == 5
    assert first.conversation is not None and len(await stored(gateway, first.conversation.id)) == 4
    # The chain still continues from its latest response by appending.
    await client.responses.create(model="qwen-plus", input="three", previous_response_id=second.id)
    assert len(await conversations(gateway)) == 1


async def test_another_owners_response_is_exactly_as_unknown(gateway: Gateway, upstream: FakeUpstream) -> None:
    mine = await gateway.sdk().responses.create(model="qwen-plus", input="mine")
    other = gateway.sdk(api_key="sk-someone-else")
    bodies = []
    for response_id in (mine.id, "resp_" + "0" * 32):
        with pytest.raises(openai.BadRequestError) as raised:
            await other.responses.create(model="qwen-plus", input="hi", previous_response_id=response_id)
        bodies.append({**raised.value.body, "message": raised.value.body["message"].replace(response_id, "ID")})
        with pytest.raises(openai.NotFoundError) as missing:
            await other.responses.retrieve(response_id)
        assert missing.value.body["message"] == f"Response with id '{response_id}' not found."
        with pytest.raises(openai.NotFoundError):
            await other.responses.input_items.list(response_id)
        with pytest.raises(openai.NotFoundError):
            await other.responses.delete(response_id)
    assert bodies[0] == bodies[1]
    assert (await gateway.sdk().responses.retrieve(mine.id)).output_text == "reply 1"


async def test_previous_response_id_with_conversation_is_refused(gateway: Gateway, upstream: FakeUpstream) -> None:
    client = gateway.sdk()
    first = await client.responses.create(model="qwen-plus", input="one")
    with pytest.raises(openai.BadRequestError) as raised:
        await client.responses.create(
            model="qwen-plus", input="two", previous_response_id=first.id, conversation="elsewhere"
        )
    assert raised.value.code == "mutually_exclusive_parameters"
    assert len(upstream.requests) == 1


async def test_retrieve_input_items_and_delete(gateway: Gateway, upstream: FakeUpstream) -> None:
    client = gateway.sdk()
    first = await client.responses.create(model="qwen-plus", instructions=SYSTEM, input="one", metadata={"k": "v"})
    second = await client.responses.create(
        model="qwen-plus",
        previous_response_id=first.id,
        input=[
            {"role": "user", "content": [{"type": "input_text", "text": "two"}]},
            {"type": "message", "role": "user", "content": "and three"},
        ],
        temperature=0.5,
    )
    got = await client.responses.retrieve(second.id)
    assert (got.id, got.output_text, got.previous_response_id, got.status) == (
        second.id, "reply 2", first.id, "completed"
    )  # fmt: skip
    assert got.temperature == 0.5 and got.model == "qwen-plus"
    assert got.output[0].id == second.output[0].id
    assert (await client.responses.retrieve(first.id)).metadata == {"k": "v"}
    # Input items: newest first by default, paged by the SDK's own cursor.
    items = [item async for item in client.responses.input_items.list(second.id, limit=1)]
    assert [(i.type, i.role) for i in items] == [("message", "user"), ("message", "user")]  # type: ignore[union-attr]
    assert [i.content[0].text for i in items] == ["and three", "two"]  # type: ignore[union-attr]
    ascending = await client.responses.input_items.list(second.id, order="asc")
    assert [i.content[0].text for i in ascending.data] == ["two", "and three"]  # type: ignore[union-attr]
    first_items = (await client.responses.input_items.list(first.id)).data
    assert [i.content[0].text for i in first_items] == ["one"]  # type: ignore[union-attr]
    # Deleting the latest response takes what only it holds; an earlier one keeps its messages for the later.
    assert first.conversation is not None
    conversation = first.conversation.id
    await client.responses.delete(second.id)
    with pytest.raises(openai.NotFoundError):
        await client.responses.retrieve(second.id)
    assert [m["content"] for m in await stored(gateway, conversation)] == ["one", "reply 1"]
    third = await client.responses.create(model="qwen-plus", input="again", previous_response_id=first.id)
    assert third.conversation is not None and third.conversation.id == conversation  # latest again: appends
    await client.responses.delete(first.id)
    assert len(await stored(gateway, conversation)) == 4
    with pytest.raises(openai.BadRequestError):
        await client.responses.create(model="qwen-plus", input="x", previous_response_id=first.id)
    assert (await client.responses.retrieve(third.id)).output_text == "reply 3"


async def test_stream_events_come_in_openais_order_and_the_response_is_recorded_before_completed(
    gateway: Gateway, upstream: FakeUpstream
) -> None:
    text = "The 6.7 inch one comes in 2K and 4K."
    upstream.script(Script(content=text, chunk_size=5))
    client = gateway.sdk()
    stream = await client.responses.create(model="qwen-plus", input="tell me", stream=True)
    events = []
    async for event in stream:
        events.append(event)
        if event.type == "response.completed":
            # Recorded already: a follow-up sent the instant the response completes finds it.
            assert (await client.responses.retrieve(event.response.id)).output_text == text
    types = [e.type for e in events]
    deltas = types.count("response.output_text.delta")
    assert deltas >= 2
    assert types == [
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "response.content_part.added",
        *["response.output_text.delta"] * deltas,
        "response.output_text.done",
        "response.content_part.done",
        "response.output_item.done",
        "response.completed",
    ]
    numbers = [e.sequence_number for e in events]
    assert numbers == sorted(set(numbers)) and numbers[0] == 0
    assert "".join(e.delta for e in events if e.type == "response.output_text.delta") == text  # type: ignore[union-attr]
    completed = events[-1].response  # type: ignore[union-attr]
    assert completed.output_text == text and completed.status == "completed"
    assert completed.usage is not None and completed.usage.output_tokens == 5
    assert upstream.last["stream"] is True and upstream.last["stream_options"] == {"include_usage": True}
    # The next turn continues it.
    await client.responses.create(model="qwen-plus", input="ok", previous_response_id=completed.id)
    assert request_texts(upstream.last) == [("user", "tell me"), ("assistant", text), ("user", "ok")]


async def test_the_sdks_stream_helper_accumulates_the_same_final_response(
    gateway: Gateway, upstream: FakeUpstream
) -> None:
    text = "Which screen size would you like?"
    upstream.script(Script(content=text, chunk_size=3, reasoning="The customer wants a phone."))
    client = gateway.sdk()
    async with client.responses.stream(model="qwen-plus", input="I want a phone", instructions=SYSTEM) as stream:
        deltas = [event.delta async for event in stream if event.type == "response.output_text.delta"]
        final = await stream.get_final_response()
    assert "".join(deltas) == text
    assert final.output_text == text and final.status == "completed"
    assert [item.type for item in final.output] == ["reasoning", "message"]
    got = await client.responses.retrieve(final.id)
    assert got.output_text == final.output_text
    assert [item.type for item in got.output] == [item.type for item in final.output]


async def test_function_tools_round_trip_with_function_call_output(gateway: Gateway, upstream: FakeUpstream) -> None:
    upstream.script(Script(tool_calls=[WEATHER_CALL]))
    client = gateway.sdk()
    first = await client.responses.create(
        model="qwen-plus",
        input="What's the weather in Hangzhou?",
        tools=[WEATHER_TOOL],  # type: ignore[list-item]
    )
    assert upstream.last["tools"] == [
        {
            "type": "function",
            "function": {k: v for k, v in WEATHER_TOOL.items() if k != "type"},
        }
    ]
    calls = [item for item in first.output if item.type == "function_call"]
    assert len(calls) == 1
    call = calls[0]
    assert (call.call_id, call.name) == ("call_1", "get_weather")
    assert json.loads(call.arguments) == {"city": "杭州", "unit": "celsius"}
    second = await client.responses.create(
        model="qwen-plus",
        previous_response_id=first.id,
        input=[{"type": "function_call_output", "call_id": call.call_id, "output": "24 degrees, sunny"}],
        tools=[WEATHER_TOOL],  # type: ignore[list-item]
    )
    assert second.output_text == "reply 2"
    sent = upstream.last["messages"]
    assert [m["role"] for m in sent] == ["user", "assistant", "tool"]
    assert sent[1]["tool_calls"][0]["id"] == "call_1"
    assert sent[2] == {"role": "tool", "tool_call_id": "call_1", "content": "24 degrees, sunny"}
    items = (await client.responses.input_items.list(second.id)).data
    assert [i.type for i in items] == ["function_call_output"]


async def test_a_streamed_function_call(gateway: Gateway, upstream: FakeUpstream) -> None:
    upstream.script(Script(tool_calls=[WEATHER_CALL], chunk_size=6))
    client = gateway.sdk()
    async with client.responses.stream(
        model="qwen-plus",
        input="Weather in Hangzhou?",
        tools=[WEATHER_TOOL],  # type: ignore[list-item]
    ) as stream:
        types = [event.type async for event in stream]
        final = await stream.get_final_response()
    assert "response.function_call_arguments.delta" in types and "response.function_call_arguments.done" in types
    call = next(item for item in final.output if item.type == "function_call")
    assert call.call_id == "call_1" and json.loads(call.arguments) == {"city": "杭州", "unit": "celsius"}
    got = await client.responses.retrieve(final.id)
    assert [item.type for item in got.output] == [item.type for item in final.output]


async def test_an_upstream_error_mid_stream_ends_with_response_failed_and_records_nothing(
    gateway: Gateway, upstream: FakeUpstream
) -> None:
    upstream.script(Script(content="some words and then trouble", chunk_size=4, error_chunk_after=3))
    client = gateway.sdk()
    stream = await client.responses.create(model="qwen-plus", input="hi", stream=True)
    events = [event async for event in stream]
    assert events[0].type == "response.created" and events[-1].type == "response.failed"
    failed = events[-1].response  # type: ignore[union-attr]
    assert failed.status == "failed" and failed.error is not None
    assert "overloaded" in (failed.error.code or "") + failed.error.message
    assert await all_messages_count(gateway.db_path) == 0
    with pytest.raises(openai.NotFoundError):
        await client.responses.retrieve(failed.id)


async def test_an_upstream_error_status_reaches_the_client_and_records_nothing(
    gateway: Gateway, upstream: FakeUpstream
) -> None:
    upstream.script(
        Script(status=400, error_body={"error": {"message": "bad temperature", "code": "InvalidParameter"}})
    )
    with pytest.raises(openai.BadRequestError, match="bad temperature"):
        await gateway.sdk().responses.create(model="qwen-plus", input="hi", stream=True)
    assert await all_messages_count(gateway.db_path) == 0


async def test_a_client_hang_up_mid_stream_records_the_partial_reply_as_incomplete(
    gateway: Gateway, upstream: FakeUpstream
) -> None:
    text = "The 6.7 inch model comes in 2K and 4K variants, and the 4K one costs more. " * 5
    upstream.script(Script(content=text, chunk_delay=0.05, chunk_size=5))
    received = ""
    headers = {"Authorization": "Bearer sk-test"}
    async with aiohttp.ClientSession() as session:
        resp = await session.post(
            f"{gateway.url}/v1/responses",
            json={"model": "qwen-plus", "input": "tell me", "stream": True},
            headers=headers,
        )
        while received.count("response.output_text.delta") < 6:
            received += (await resp.content.readuntil(b"\n\n")).decode()
        resp.close()
    await asyncio.wait_for(upstream.aborted_event.wait(), timeout=3)
    created = json.loads(received.split("data: ", 1)[1].split("\n", 1)[0])
    response_id = created["response"]["id"]
    seen = "".join(
        json.loads(line.removeprefix("data: "))["delta"]
        for line in received.split("\n")
        if line.startswith("data: ") and '"response.output_text.delta"' in line
    )
    client = gateway.sdk()
    for _ in range(50):  # the interrupted turn is written as the handler unwinds
        try:
            got = await client.responses.retrieve(response_id)
            break
        except openai.NotFoundError:
            await asyncio.sleep(0.05)
    assert got.status == "incomplete"
    assert got.output_text.startswith(seen) and len(got.output_text) < len(text)
    assert got.conversation is not None
    recorded = await messages(gateway, got.conversation.id)
    assert [(m["role"], m["interrupted"]) for m in recorded] == [("user", False), ("assistant", True)]
    # The model next sees what the user saw.
    await client.responses.create(model="qwen-plus", input="go on", previous_response_id=response_id)
    assert upstream.last["messages"][1] == {"role": "assistant", "content": got.output_text}


async def test_bad_input_is_a_400_naming_the_parameter(gateway: Gateway, upstream: FakeUpstream) -> None:
    client = gateway.sdk()
    with pytest.raises(openai.BadRequestError) as raised:
        await client.responses.create(model="qwen-plus", input="hi", tools=[{"type": "web_search"}])
    assert raised.value.param is not None and raised.value.param.startswith("tools")
    assert "web_search" in raised.value.message
    assert upstream.requests == []


async def test_truncation_disabled_refuses_what_auto_trims(tmp_path: Path, upstream: FakeUpstream) -> None:
    window = '[models."qwen-plus"]\ncontext_tokens = 3000\nreserve_tokens = 500\n'
    gateway = await start_gateway(make_config(tmp_path, upstream.url, window))
    try:
        client = gateway.sdk()
        upstream.script(Script(content="word " * 1500))
        first = await client.responses.create(model="qwen-plus", input="long answer please")
        upstream.script(Script(content="word " * 1500))
        second = await client.responses.create(model="qwen-plus", input="again", previous_response_id=first.id)
        with pytest.raises(openai.BadRequestError) as raised:
            await client.responses.create(model="qwen-plus", input="once more", previous_response_id=second.id)
        assert raised.value.code == "context_length_exceeded"
        requests = len(upstream.requests)
        trimmed = await client.responses.with_raw_response.create(
            model="qwen-plus", input="once more", previous_response_id=second.id, truncation="auto"
        )
        assert int(trimmed.headers["X-Conversation-Trimmed"]) > 0
        assert len(upstream.requests) == requests + 1
    finally:
        await gateway.stop()


async def test_a_native_upstream_serves_responses_too(tmp_path: Path, upstream: FakeUpstream) -> None:
    config = make_config(
        tmp_path, upstream.url, upstream__protocol="native", upstream__native_base_url=upstream.native_url
    )
    gateway = await start_gateway(config)
    try:
        client = gateway.sdk()
        first = await client.responses.create(model="qwen-plus", instructions=SYSTEM, input="I want a phone")
        assert first.output_text == "reply 1" and first.usage is not None and first.usage.input_tokens == 12
        async with client.responses.stream(model="qwen-plus", input="6.7 inch", previous_response_id=first.id) as s:
            final = await s.get_final_response()
        assert final.output_text == "reply 2"
        assert [m["content"] for m in upstream.last["input"]["messages"]] == [
            SYSTEM, "I want a phone", "reply 1", "6.7 inch"
        ]  # fmt: skip
    finally:
        await gateway.stop()


async def test_routes_under_v1_responses_that_the_gateway_does_not_serve_are_not_forwarded(
    gateway: Gateway, upstream: FakeUpstream, http: aiohttp.ClientSession
) -> None:
    headers = {"Authorization": "Bearer sk-test"}
    async with http.post(gateway.url + "/v1/responses/resp_1/cancel", headers=headers) as resp:
        assert resp.status == 405
    async with http.put(gateway.url + "/v1/responses", headers=headers) as resp:
        assert resp.status == 405
    assert upstream.others == [] and upstream.requests == []


# --- item_reference -----------------------------------------------------------------------------------------

TEXT_AND_CALL = Script(content="Let me check.", tool_calls=[WEATHER_CALL])


def _output_of(tool_result: str = "24 degrees, sunny") -> dict[str, Any]:
    return {"type": "function_call_output", "call_id": "call_1", "output": tool_result}


async def _text_and_call(client: openai.AsyncOpenAI, *, stream: bool, **fields: Any) -> openai.types.responses.Response:
    """A response whose model says something, then calls the tool: output [message, function_call]."""
    create: dict[str, Any] = {"model": "qwen-plus", "tools": [WEATHER_TOOL], **fields}
    if not stream:
        return await client.responses.create(**create)
    async with client.responses.stream(**create) as events:
        async for _ in events:
            pass
        return await events.get_final_response()


@pytest.mark.parametrize("stream", [False, True], ids=["plain", "streamed"])
async def test_item_references_resend_a_tool_step_as_the_items_themselves(
    gateway: Gateway, upstream: FakeUpstream, stream: bool
) -> None:
    """The AI SDK's tool step (store true): its input again, the model's text as an item_reference, the call as an
    id-only reference (OpenAI's other form) and the tool's output, with no previous_response_id."""
    upstream.script(TEXT_AND_CALL)
    client = gateway.sdk()
    first = await _text_and_call(client, stream=stream, input="Weather in Hangzhou?")
    message, call = first.output
    assert (message.type, call.type) == ("message", "function_call")
    second = await client.responses.create(
        model="qwen-plus",
        tools=[WEATHER_TOOL],  # type: ignore[list-item]
        input=[
            {"role": "user", "content": "Weather in Hangzhou?"},
            {"type": "item_reference", "id": message.id},
            {"id": call.id},  # type: ignore[typeddict-item]
            _output_of(),  # type: ignore[list-item]
        ],
    )
    assert second.output_text == "reply 2"
    expected = [
        {"role": "user", "content": "Weather in Hangzhou?"},
        {"role": "assistant", "content": "Let me check.", "tool_calls": [WEATHER_CALL]},
        {"role": "tool", "tool_call_id": "call_1", "content": "24 degrees, sunny"},
    ]
    assert upstream.last["messages"] == expected
    # Its new conversation holds the items as if sent, and its input items list them so.
    assert second.conversation is not None
    assert await stored(gateway, second.conversation.id) == [*expected, {"role": "assistant", "content": "reply 2"}]
    items = (await client.responses.input_items.list(second.id, order="asc")).data
    assert [i.type for i in items] == ["message", "message", "function_call", "function_call_output"]


async def test_item_references_in_a_conversation_are_recognised_as_its_history(
    gateway: Gateway, upstream: FakeUpstream
) -> None:
    """Referenced items that repeat what the conversation holds are resent history, not new messages."""
    upstream.script(TEXT_AND_CALL)
    client = gateway.sdk()
    first = await _text_and_call(client, stream=False, input="Weather in Hangzhou?", conversation="refs-1")
    message, call = first.output
    await client.responses.create(
        model="qwen-plus",
        conversation="refs-1",
        tools=[WEATHER_TOOL],  # type: ignore[list-item]
        input=[
            {"role": "user", "content": "Weather in Hangzhou?"},
            {"type": "item_reference", "id": message.id},
            {"type": "item_reference", "id": call.id},
            _output_of(),  # type: ignore[list-item]
        ],
    )
    assert [m["role"] for m in upstream.last["messages"]] == ["user", "assistant", "tool"]
    assert [m["role"] for m in await stored(gateway, "refs-1")] == ["user", "assistant", "tool", "assistant"]


async def test_item_references_with_previous_response_id_to_a_later_response_and_input_items(
    gateway: Gateway, upstream: FakeUpstream
) -> None:
    """The AI SDK's second turn: previous_response_id names the last turn's response, the input resends this turn's
    first step by reference, a response after it; the user message is referenced by its input item id too."""
    client = gateway.sdk()
    first = await client.responses.create(model="qwen-plus", input="Hi")
    upstream.script(TEXT_AND_CALL)
    step = await _text_and_call(client, stream=False, input="Weather in Hangzhou?", previous_response_id=first.id)
    message, call = step.output
    (asked,) = (await client.responses.input_items.list(step.id)).data
    assert asked.id is not None and asked.id.startswith("msg_")
    second = await client.responses.create(
        model="qwen-plus",
        previous_response_id=first.id,
        tools=[WEATHER_TOOL],  # type: ignore[list-item]
        input=[
            {"type": "item_reference", "id": asked.id},  # an input item of the conversation first continues
            {"type": "item_reference", "id": message.id},
            {"type": "item_reference", "id": call.id},
            _output_of(),  # type: ignore[list-item]
        ],
    )
    assert upstream.last["messages"] == [
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "reply 1"},
        {"role": "user", "content": "Weather in Hangzhou?"},
        {"role": "assistant", "content": "Let me check.", "tool_calls": [WEATHER_CALL]},
        {"role": "tool", "tool_call_id": "call_1", "content": "24 degrees, sunny"},
    ]
    # From a response that is no longer the latest: a fork, as ever; the step's chain is untouched.
    assert second.conversation is not None and first.conversation is not None
    assert second.conversation.id != first.conversation.id
    assert len(await stored(gateway, first.conversation.id)) == 4


async def test_an_item_reference_to_another_owners_item_is_exactly_as_unknown(
    gateway: Gateway, upstream: FakeUpstream
) -> None:
    upstream.script(TEXT_AND_CALL)
    mine = gateway.sdk()
    first = await _text_and_call(mine, stream=False, input="Weather?", conversation="refs-mine")
    (asked,) = (await mine.responses.input_items.list(first.id)).data
    assert asked.id is not None
    other = gateway.sdk(api_key="sk-someone-else")
    requests = len(upstream.requests)
    bodies = []
    unknown = ["msg_" + "0" * 32 + "_0", first.output[0].id[:-1] + "7", "msg_999999", "msg_x", "resp_1", "fc_1_x"]
    for client, item_id in [
        (other, first.output[0].id),
        (other, first.output[1].id),
        (other, asked.id),  # mine, even naming my conversation: the other owner has no such one
        *[(mine, i) for i in unknown],
    ]:
        with pytest.raises(openai.BadRequestError) as raised:
            await client.responses.create(
                model="qwen-plus",
                conversation="refs-mine",
                input=[{"role": "user", "content": "hi"}, {"type": "item_reference", "id": item_id}],
            )
        assert raised.value.body["message"] == f"Item with id '{item_id}' not found.", item_id  # type: ignore[index]
        bodies.append({**raised.value.body, "message": "ID"})  # type: ignore[dict-item]
    assert bodies == [
        {"message": "ID", "type": "invalid_request_error", "param": "input[1]", "code": "item_not_found"}
    ] * len(bodies)
    assert len(upstream.requests) == requests  # refused before any upstream call, nothing recorded
    assert len(await stored(gateway, "refs-mine")) == 2
    # The owner's own reference works, the same conversation named; with an unknown previous response, an input
    # item id is not looked for: the answer is that response's.
    await mine.responses.create(
        model="qwen-plus", conversation="refs-mine", input=[{"type": "item_reference", "id": asked.id}]
    )
    with pytest.raises(openai.BadRequestError) as raised:
        await mine.responses.create(
            model="qwen-plus",
            previous_response_id="resp_" + "0" * 32,
            input=[{"type": "item_reference", "id": asked.id}],
        )
    assert (raised.value.code, raised.value.param) == ("previous_response_not_found", "previous_response_id")
