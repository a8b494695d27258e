"""Without X-Conversation-Id the gateway is a transparent proxy; upstream failures reach the client as
OpenAI-shaped errors with the upstream's status; the upstream credential is the gateway's or the client's."""

from __future__ import annotations

import asyncio
import socket
import time
from pathlib import Path

import aiohttp

from tests.conftest import Gateway, chat_body, make_config, start_gateway, user
from tests.fake_upstream import FakeUpstream, Script
from tests.stored import all_messages_count, cli_list

URL = "/v1/chat/completions"


async def test_without_header_the_request_passes_through_and_nothing_is_stored(
    gateway: Gateway, upstream: FakeUpstream, http: aiohttp.ClientSession
) -> None:
    raw = b'{"model": "qwen-plus",  "messages": [{"role": "user", "content": "hi"}], "x_extra": [1, 2]}'
    async with http.post(gateway.url + URL, data=raw, headers={"Content-Type": "application/json"}) as resp:
        assert resp.status == 200
        assert resp.headers["Content-Type"].startswith("application/json")
        assert resp.headers["x-request-id"] == "req-1"
        assert "X-Conversation-Id" not in resp.headers
        assert (await resp.json())["choices"][0]["message"]["content"] == "reply 1"
    assert upstream.requests[0].raw == raw
    assert await cli_list(gateway.db_path) == []  # no conversation (so no message) of any owner


async def test_upstream_error_status_and_openai_body_reach_the_client(
    gateway: Gateway, upstream: FakeUpstream, http: aiohttp.ClientSession
) -> None:
    dashscope_error = {
        "error": {
            "message": "Range of input length should be [1, 30720]",
            "type": "invalid_request_error",
            "param": None,
            "code": "invalid_parameter_error",
        },
        "request_id": "abc",
    }
    upstream.script(Script(status=400, error_body=dashscope_error), Script(status=429, headers={"Retry-After": "7"}))
    headers = {"X-Conversation-Id": "err"}
    async with http.post(gateway.url + URL, json=chat_body(user("hi")), headers=headers) as resp:
        assert resp.status == 400
        assert await resp.json() == dashscope_error
    async with http.post(gateway.url + URL, json=chat_body(user("hi")), headers=headers) as resp:
        assert resp.status == 429
        assert resp.headers["Retry-After"] == "7"
        assert (await resp.json())["error"]["code"] == "boom"
    assert await all_messages_count(gateway.db_path) == 0  # of any owner


async def test_non_json_upstream_error_becomes_openai_shaped(
    gateway: Gateway, upstream: FakeUpstream, http: aiohttp.ClientSession
) -> None:
    upstream.script(Script(status=503, error_body=b"<html>Service Unavailable</html>"))
    async with http.post(gateway.url + URL, json=chat_body(user("hi")), headers={"X-Conversation-Id": "e"}) as resp:
        assert resp.status == 503
        error = (await resp.json())["error"]
    assert error == {
        "message": "upstream answered HTTP 503",
        "type": "upstream_error",
        "param": None,
        "code": "upstream_http_503",
    }


async def test_unreachable_upstream_is_502(tmp_path: Path, http: aiohttp.ClientSession) -> None:
    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{sock.getsockname()[1]}/v1"
    gw = await start_gateway(make_config(tmp_path, dead))
    try:
        async with http.post(gw.url + URL, json=chat_body(user("hi")), headers={"X-Conversation-Id": "x"}) as resp:
            assert resp.status == 502
            assert (await resp.json())["error"]["code"] == "upstream_unavailable"
        assert await all_messages_count(gw.db_path) == 0  # of any owner
    finally:
        await gw.stop()


async def test_upstream_that_never_answers_is_504(
    tmp_path: Path, upstream: FakeUpstream, http: aiohttp.ClientSession
) -> None:
    gw = await start_gateway(make_config(tmp_path, upstream.url, upstream__first_byte_timeout=0.5))
    upstream.script(Script(hang=True))
    try:
        started = time.monotonic()
        async with http.post(gw.url + URL, json=chat_body(user("hi")), headers={"X-Conversation-Id": "x"}) as resp:
            assert resp.status == 504
            assert (await resp.json())["error"]["type"] == "timeout_error"
        assert time.monotonic() - started < 3
        assert await all_messages_count(gw.db_path) == 0  # of any owner
    finally:
        await gw.stop()


async def test_non_completion_2xx_body_is_502_with_memory_and_passed_through_without(
    gateway: Gateway, upstream: FakeUpstream, http: aiohttp.ClientSession
) -> None:
    upstream.script(Script(raw_body=b'{"unexpected": true}'), Script(raw_body=b'{"unexpected": true}'))
    async with http.post(gateway.url + URL, json=chat_body(user("hi")), headers={"X-Conversation-Id": "x"}) as resp:
        assert resp.status == 502
        assert (await resp.json())["error"]["code"] == "upstream_invalid_response"
    async with http.post(gateway.url + URL, json=chat_body(user("hi"))) as resp:
        assert resp.status == 200
        assert await resp.read() == b'{"unexpected": true}'
    assert await all_messages_count(gateway.db_path) == 0  # of any owner


async def test_client_authorization_is_forwarded_when_gateway_holds_no_key(
    gateway: Gateway, upstream: FakeUpstream
) -> None:
    await gateway.sdk("auth", api_key="sk-client").chat.completions.create(model="qwen-plus", messages=[user("hi")])
    assert upstream.requests[0].headers["Authorization"] == "Bearer sk-client"


async def test_gateway_key_replaces_the_client_credential(tmp_path: Path, upstream: FakeUpstream) -> None:
    gw = await start_gateway(make_config(tmp_path, upstream.url, upstream__api_key="sk-gateway-held"))
    try:
        await gw.sdk("auth", api_key="sk-client").chat.completions.create(model="qwen-plus", messages=[user("hi")])
        assert upstream.requests[0].headers["Authorization"] == "Bearer sk-gateway-held"
    finally:
        await gw.stop()


async def test_dashscope_headers_are_forwarded(
    gateway: Gateway, upstream: FakeUpstream, http: aiohttp.ClientSession
) -> None:
    headers = {"X-DashScope-DataInspection": '{"input": "disable"}', "X-Conversation-Id": "h"}
    async with http.post(gateway.url + URL, json=chat_body(user("hi")), headers=headers) as resp:
        assert resp.status == 200
    assert upstream.requests[0].headers["X-DashScope-DataInspection"] == '{"input": "disable"}'
    assert "X-Conversation-Id" not in upstream.requests[0].headers


async def test_health_and_readiness(gateway: Gateway, http: aiohttp.ClientSession) -> None:
    async with http.get(gateway.url + "/healthz") as resp:
        assert resp.status == 200 and (await resp.json())["status"] == "ok"
    async with http.get(gateway.url + "/readyz") as resp:
        assert resp.status == 200 and (await resp.json())["database"] == "ok"


async def test_readiness_fails_when_the_database_is_gone(gateway: Gateway, http: aiohttp.ClientSession) -> None:
    from gateway.http.state import STORE

    await gateway.runner.app[STORE].close()
    async with http.get(gateway.url + "/readyz") as resp:
        assert resp.status == 503
        assert (await resp.json())["database"] == "unreachable"
    await asyncio.sleep(0)
