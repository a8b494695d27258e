"""The gateway's upstream key never comes back from the upstream: an error body or a stream's error event that
quotes it reaches neither the client nor the log, on chat (plain and streamed), the native route, a native
upstream and the pass-through, also when the key is split across two chunks or the body is compressed."""

from __future__ import annotations

import asyncio
import gzip
import json
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import structlog
from aiohttp import web
from structlog.testing import capture_logs

from gateway.upstream.secrets import Scrubber
from tests.conftest import Gateway, chat_body, make_config, start_gateway, user
from tests.fake_upstream import FakeUpstream, Script
from tests.stored import all_messages_count

KEY = "sk-SENTINEL-scrub-4b7e2d9a61"
NATIVE_PATH = "/api/v1/services/aigc/text-generation/generation"
QUOTED = {"message": f"Incorrect API key provided: {KEY}.", "type": "invalid_request_error", "code": KEY}


@pytest.fixture
async def keyed(tmp_path: Path, upstream: FakeUpstream) -> AsyncIterator[Gateway]:
    gateway = await start_gateway(make_config(tmp_path, upstream.url, upstream__api_key=KEY))
    yield gateway
    await gateway.stop()


@pytest.fixture
async def native_upstream(tmp_path: Path, upstream: FakeUpstream) -> AsyncIterator[Gateway]:
    config = make_config(
        tmp_path,
        upstream.url,
        upstream__api_key=KEY,
        upstream__protocol="native",
        upstream__native_base_url=upstream.native_url,
    )
    gateway = await start_gateway(config)
    yield gateway
    await gateway.stop()


@contextmanager
def logs_searched() -> Iterator[list[dict[str, Any]]]:
    """Every log event of the block; at its end, none may hold the key or either half of it."""
    with capture_logs(processors=[structlog.contextvars.merge_contextvars]) as logs:
        yield logs
    text = str(logs)
    assert KEY not in text and KEY[:12] not in text and KEY[12:] not in text


async def _canonical_line(logs: list[dict[str, Any]]) -> dict[str, Any]:
    """The request's canonical line, written just after the response went out."""
    for _ in range(100):
        lines = [event for event in logs if event["event"] == "request"]
        if lines:
            return lines[-1]
        await asyncio.sleep(0.01)
    raise AssertionError("no request line logged")


def _clean(body: bytes) -> bytes:
    assert KEY.encode() not in body
    assert KEY[:12].encode() not in body and KEY[12:].encode() not in body
    return body


def _stream(*pieces: bytes, delay: float = 0.05) -> Script:
    return Script(raw_stream=list(pieces), chunk_delay=delay)


def _split_error_event() -> list[bytes]:
    """A content chunk, then an error event whose key is cut in two between writes."""
    content = {"id": "c", "object": "chat.completion.chunk", "choices": [{"index": 0, "delta": {"content": "hi"}}]}
    event = f"data: {json.dumps(content)}\n\ndata: {json.dumps({'error': QUOTED})}\n\n".encode()
    cut = event.index(KEY.encode()) + 12
    return [event[:cut], event[cut:]]


def test_a_secret_split_at_any_point_is_masked_whole() -> None:
    text = f"data: before {KEY} after\n\n".encode()
    scrubber = Scrubber([KEY])
    for cut in range(1, len(text)):
        stream = scrubber.stream()
        out = [stream.feed(text[:cut]), stream.feed(text[cut:]), stream.flush()]
        assert b"".join(out) == text.replace(KEY.encode(), b"*" * len(KEY)), cut
        assert all(KEY[:12].encode() not in piece for piece in out)


def test_text_that_only_begins_like_the_secret_comes_through_unchanged() -> None:
    stream = Scrubber([KEY]).stream()
    assert stream.feed(b"ends with " + KEY[:9].encode()) == b"ends with "
    assert stream.feed(b" and goes on\n\n") == KEY[:9].encode() + b" and goes on\n\n"
    assert stream.feed(b"last " + KEY[:5].encode()) + stream.flush() == b"last " + KEY[:5].encode()


async def test_an_upstream_400_quoting_the_key_reaches_the_client_without_it(
    keyed: Gateway, upstream: FakeUpstream, http: aiohttp.ClientSession
) -> None:
    upstream.script(Script(status=400, error_body={"error": QUOTED}))
    with logs_searched() as logs:
        async with http.post(keyed.url + "/v1/chat/completions", json=chat_body(user("hi"))) as resp:
            assert resp.status == 400
            body = _clean(await resp.read())
        await _canonical_line(logs)
    assert json.loads(body)["error"]["message"] == f"Incorrect API key provided: {'*' * len(KEY)}."


async def test_an_error_chunk_quoting_the_key_in_a_stream_reaches_the_client_without_it(
    keyed: Gateway, upstream: FakeUpstream, http: aiohttp.ClientSession
) -> None:
    upstream.script(Script(error_chunk_after=2, error_chunk=QUOTED))
    with logs_searched() as logs:
        body = chat_body(user("hi"), stream=True)
        async with http.post(keyed.url + "/v1/chat/completions", json=body, headers={"X-Conversation-Id": "s"}) as resp:
            assert resp.status == 200
            text = _clean(await resp.read())
        assert (await _canonical_line(logs))["stream_error"] == "*" * len(KEY)
    assert b"Incorrect API key provided" in text and b"[DONE]" not in text
    assert await all_messages_count(keyed.db_path) == 0  # of any owner


async def test_a_key_split_across_two_stream_chunks_is_scrubbed(
    keyed: Gateway, upstream: FakeUpstream, http: aiohttp.ClientSession
) -> None:
    upstream.script(_stream(*_split_error_event()))
    with logs_searched() as logs:
        async with http.post(keyed.url + "/v1/chat/completions", json=chat_body(user("hi"), stream=True)) as resp:
            text = _clean(await resp.read())
        await _canonical_line(logs)
    assert b'"content": "hi"' in text and b"Incorrect API key provided" in text


async def test_the_native_route_answers_an_upstream_400_quoting_the_key_without_it(
    keyed: Gateway, upstream: FakeUpstream, http: aiohttp.ClientSession
) -> None:
    upstream.script(Script(status=400, error_body={"error": QUOTED}))
    native = {"model": "qwen-plus", "input": {"messages": [user("hi")]}}
    with logs_searched() as logs:
        async with http.post(keyed.url + NATIVE_PATH, json=native) as resp:
            assert resp.status == 400
            answer = json.loads(_clean(await resp.read()))
        await _canonical_line(logs)
    assert answer["message"].startswith("Incorrect API key provided: ***")


async def test_the_native_route_streams_an_error_chunk_quoting_the_key_without_it(
    keyed: Gateway, upstream: FakeUpstream, http: aiohttp.ClientSession
) -> None:
    upstream.script(_stream(*_split_error_event()))
    native = {"model": "qwen-plus", "input": {"messages": [user("hi")]}}
    with logs_searched() as logs:
        async with http.post(keyed.url + NATIVE_PATH, json=native, headers={"X-DashScope-SSE": "enable"}) as resp:
            text = _clean(await resp.read())
        await _canonical_line(logs)
    assert b"event:error" in text


async def test_a_native_upstream_quoting_the_key_in_its_error_body_is_scrubbed(
    native_upstream: Gateway, upstream: FakeUpstream, http: aiohttp.ClientSession
) -> None:
    upstream.script(Script(status=400, error_body={"code": "InvalidParameter", "message": f"bad key {KEY}"}))
    with logs_searched() as logs:
        async with http.post(native_upstream.url + "/v1/chat/completions", json=chat_body(user("hi"))) as resp:
            assert resp.status == 400
            _clean(await resp.read())
        await _canonical_line(logs)


async def test_a_native_upstream_error_event_with_the_key_split_across_chunks_is_scrubbed(
    native_upstream: Gateway, upstream: FakeUpstream, http: aiohttp.ClientSession
) -> None:
    event = f'id:1\nevent:error\n:HTTP_STATUS/400\ndata:{{"code":"InvalidApiKey","message":"bad key {KEY}"}}\n\n'
    cut = event.index(KEY) + 12
    upstream.script(_stream(event[:cut].encode(), event[cut:].encode()))
    with logs_searched() as logs:
        body = chat_body(user("hi"), stream=True)
        async with http.post(native_upstream.url + "/v1/chat/completions", json=body) as resp:
            text = _clean(await resp.read())
        await _canonical_line(logs)
    assert b"bad key ***" in text


def _answer_with(status: int, body: bytes, **headers: str) -> Any:
    async def handler(request: web.Request) -> web.StreamResponse:
        return web.Response(status=status, body=body, headers={"Content-Type": "application/json", **headers})

    return handler


async def test_a_pass_through_error_body_quoting_the_key_is_scrubbed(
    keyed: Gateway, upstream: FakeUpstream, http: aiohttp.ClientSession
) -> None:
    upstream.others_handler = _answer_with(400, json.dumps({"error": QUOTED}).encode())
    with logs_searched() as logs:
        async with http.post(keyed.url + "/v1/embeddings-ish", json={"input": "x"}) as resp:
            assert resp.status == 400
            body = _clean(await resp.read())
            assert int(resp.headers["Content-Length"]) == len(body)
        await _canonical_line(logs)
    assert json.loads(body)["error"]["code"] == "*" * len(KEY)


async def test_a_compressed_pass_through_error_body_quoting_the_key_is_scrubbed_and_sent_decoded(
    keyed: Gateway, upstream: FakeUpstream
) -> None:
    compressed = gzip.compress(json.dumps({"error": QUOTED}).encode())
    upstream.others_handler = _answer_with(400, compressed, **{"Content-Encoding": "gzip"})
    async with (
        aiohttp.ClientSession(auto_decompress=False) as raw,
        raw.get(keyed.url + "/v1/files/f-1", headers={"Accept-Encoding": "gzip"}) as resp,
    ):
        assert resp.status == 400 and "Content-Encoding" not in resp.headers
        body = _clean(await resp.read())
    assert json.loads(body)["error"]["message"].startswith("Incorrect API key provided: ***")


async def test_a_compressed_pass_through_error_body_without_the_key_goes_back_as_it_came(
    keyed: Gateway, upstream: FakeUpstream
) -> None:
    compressed = gzip.compress(b'{"error": {"message": "no such file", "code": "not_found"}}')
    upstream.others_handler = _answer_with(404, compressed, **{"Content-Encoding": "gzip"})
    async with (
        aiohttp.ClientSession(auto_decompress=False) as raw,
        raw.get(keyed.url + "/v1/files/f-2", headers={"Accept-Encoding": "gzip"}) as resp,
    ):
        assert resp.headers["Content-Encoding"] == "gzip"
        assert await resp.read() == compressed


async def test_a_pass_through_error_body_the_gateway_cannot_decode_is_not_passed_on(
    keyed: Gateway, upstream: FakeUpstream, http: aiohttp.ClientSession
) -> None:
    upstream.others_handler = _answer_with(400, b"\x8b\x00 opaque " + KEY.encode(), **{"Content-Encoding": "br"})
    async with http.get(keyed.url + "/v1/files/f-3", headers={"Accept-Encoding": "br"}) as resp:
        assert resp.status == 502
        assert (await resp.json())["error"]["code"] == "upstream_invalid_response"
        _clean(await resp.read())


async def test_a_pass_through_event_stream_with_the_key_split_across_chunks_is_scrubbed(
    keyed: Gateway, upstream: FakeUpstream, http: aiohttp.ClientSession
) -> None:
    pieces = _split_error_event()

    async def handler(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        for piece in pieces:
            await response.write(piece)
            await asyncio.sleep(0.05)
        return response

    upstream.others_handler = handler
    with logs_searched() as logs:
        async with http.post(keyed.url + "/v1/batches", json={"stream": True}) as resp:
            text = _clean(await resp.read())
        await _canonical_line(logs)
    assert text == b"".join(pieces).replace(KEY.encode(), b"*" * len(KEY))


async def test_a_gzip_compressed_pass_through_event_stream_is_scrubbed_and_sent_decoded(
    keyed: Gateway, upstream: FakeUpstream
) -> None:
    event = b"".join(_split_error_event())

    async def handler(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Content-Encoding": "gzip"})
        await response.prepare(request)
        await response.write(gzip.compress(event))
        return response

    upstream.others_handler = handler
    async with (
        aiohttp.ClientSession(auto_decompress=False) as raw,
        raw.post(keyed.url + "/v1/batches", json={"stream": True}, headers={"Accept-Encoding": "gzip"}) as resp,
    ):
        assert "Content-Encoding" not in resp.headers
        assert _clean(await resp.read()) == event.replace(KEY.encode(), b"*" * len(KEY))
