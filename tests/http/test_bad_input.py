"""Bad input gets an OpenAI-shaped 400 (413 for an oversized body); nothing goes upstream or into the store."""

from __future__ import annotations

from pathlib import Path

import aiohttp
import pytest

from tests.conftest import Gateway, make_config, start_gateway
from tests.fake_upstream import FakeUpstream
from tests.stored import cli_list

URL = "/v1/chat/completions"

BAD_BODIES = {
    "invalid_json": (b'{"model": "qwen-plus", "messages": [', "invalid_json"),
    "not_utf8": (b'{"messages": "\xff\xfe"}', "invalid_json"),
    "nan_literal": (b'{"messages": [{"role": "user", "content": "hi"}], "temperature": NaN}', "invalid_json"),
    "array_body": (b'[{"role": "user", "content": "hi"}]', "invalid_request"),
    "string_body": (b'"hello"', "invalid_request"),
    "messages_missing": (b'{"model": "qwen-plus"}', "invalid_messages"),
    "messages_empty": (b'{"messages": []}', "invalid_messages"),
    "messages_not_list": (b'{"messages": {"role": "user"}}', "invalid_messages"),
    "message_not_object": (b'{"messages": ["hi"]}', "invalid_messages"),
    "role_missing": (b'{"messages": [{"content": "hi"}]}', "invalid_role"),
    "role_unknown": (b'{"messages": [{"role": "robot", "content": "hi"}]}', "invalid_role"),
    "role_not_string": (b'{"messages": [{"role": 1, "content": "hi"}]}', "invalid_role"),
}


@pytest.mark.parametrize("case", BAD_BODIES)
@pytest.mark.parametrize("with_memory", [True, False])
async def test_bad_body_is_400_and_touches_nothing(
    gateway: Gateway, upstream: FakeUpstream, http: aiohttp.ClientSession, case: str, with_memory: bool
) -> None:
    raw, code = BAD_BODIES[case]
    headers = {"Content-Type": "application/json", **({"X-Conversation-Id": "bad"} if with_memory else {})}
    async with http.post(gateway.url + URL, data=raw, headers=headers) as resp:
        assert resp.status == 400
        assert resp.content_type == "application/json"
        error = (await resp.json())["error"]
    assert error["type"] == "invalid_request_error"
    assert error["code"] == code
    assert error["message"]
    assert upstream.requests == []
    assert await cli_list(gateway.db_path) == []  # no conversation, of any owner


async def test_body_over_the_limit_is_413(tmp_path: Path, upstream: FakeUpstream, http: aiohttp.ClientSession) -> None:
    gw = await start_gateway(make_config(tmp_path, upstream.url, server__max_body_bytes=4096))
    try:
        big = b'{"messages": [{"role": "user", "content": "' + b"x" * 5000 + b'"}]}'
        async with http.post(gw.url + URL, data=big, headers={"X-Conversation-Id": "big"}) as resp:
            assert resp.status == 413
            assert (await resp.json())["error"]["code"] == "request_too_large"

        async def chunked() -> object:  # no Content-Length: the limit holds while reading
            for _ in range(10):
                yield b"x" * 1000

        async with http.post(gw.url + URL, data=chunked(), headers={"X-Conversation-Id": "big"}) as resp:
            assert resp.status == 413
        assert upstream.requests == []
        assert await cli_list(gw.db_path) == []
    finally:
        await gw.stop()


async def test_unknown_route_and_method_get_openai_shaped_errors(gateway: Gateway, http: aiohttp.ClientSession) -> None:
    # Under /v1/ every other route goes upstream (tests/http/test_passthrough.py); outside it nothing does.
    async with http.get(gateway.url + "/nothing") as resp:
        assert resp.status == 404
        assert (await resp.json())["error"]["type"] == "not_found_error"
    async with http.put(gateway.url + "/v1/conversations/c-1") as resp:
        assert resp.status == 405
        assert (await resp.json())["error"]["type"] == "invalid_request_error"
