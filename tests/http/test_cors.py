"""CORS for browser clients: off by default; with server.cors_origins, preflights answered before access control
and every response to an allowed origin (errors too) readable, with the gateway's headers exposed."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest

from gateway.settings.config import ConfigError, load_config
from tests.conftest import Gateway, chat_body, make_config, start_gateway, user
from tests.fake_upstream import FakeUpstream

APP = "https://chat.example.com"
PREFLIGHT = {
    "Origin": APP,
    "Access-Control-Request-Method": "POST",
    "Access-Control-Request-Headers": "authorization, content-type, x-conversation-id, x-stainless-os",
}


@pytest.fixture
async def cors_gateway(tmp_path: Path, upstream: FakeUpstream) -> AsyncIterator[Gateway]:
    config = make_config(
        tmp_path, upstream.url, server__cors_origins=[APP], auth__mode="keys", upstream__api_key="sk-cors-upstream"
    )
    gateway = await start_gateway(config)
    yield gateway
    await gateway.stop()


async def test_cors_is_off_by_default(gateway: Gateway, http: aiohttp.ClientSession) -> None:
    async with http.options(gateway.url + "/v1/chat/completions", headers=PREFLIGHT) as resp:
        assert resp.status == 405
        assert "Access-Control-Allow-Origin" not in resp.headers
    async with http.get(gateway.url + "/healthz", headers={"Origin": APP}) as resp:
        assert "Access-Control-Allow-Origin" not in resp.headers


async def test_a_preflight_from_an_allowed_origin_needs_no_key(
    cors_gateway: Gateway, upstream: FakeUpstream, http: aiohttp.ClientSession
) -> None:
    async with http.options(cors_gateway.url + "/v1/chat/completions", headers=PREFLIGHT) as resp:
        assert resp.status == 204
        assert resp.headers["Access-Control-Allow-Origin"] == APP
        assert "POST" in resp.headers["Access-Control-Allow-Methods"]
        allowed = {h.strip().lower() for h in resp.headers["Access-Control-Allow-Headers"].split(",")}
        assert {"authorization", "content-type", "x-conversation-id", "x-stainless-os"} <= allowed
        assert resp.headers["Vary"] == "Origin"
    assert upstream.requests == [] and upstream.others == []


async def test_a_preflight_from_another_origin_is_refused(cors_gateway: Gateway, http: aiohttp.ClientSession) -> None:
    async with http.options(
        cors_gateway.url + "/v1/chat/completions", headers={**PREFLIGHT, "Origin": "https://evil.example"}
    ) as resp:
        assert resp.status == 403
        assert "Access-Control-Allow-Origin" not in resp.headers


async def test_responses_to_an_allowed_origin_expose_the_conversation_headers(
    cors_gateway: Gateway, http: aiohttp.ClientSession
) -> None:
    # Keys mode without a key: the 401 must be readable by the page too, or it cannot tell the user why.
    headers = {"Origin": APP, "X-Conversation-Id": "browser-1"}
    async with http.post(cors_gateway.url + "/v1/chat/completions", json=chat_body(user("hi")), headers=headers) as r:
        assert r.status == 401
        assert r.headers["Access-Control-Allow-Origin"] == APP
        exposed = {h.strip() for h in r.headers["Access-Control-Expose-Headers"].split(",")}
        assert {"X-Conversation-Id", "X-Conversation-Trimmed", "X-Conversation-Replaced"} <= exposed
    async with http.get(cors_gateway.url + "/healthz", headers={"Origin": "https://evil.example"}) as resp:
        assert "Access-Control-Allow-Origin" not in resp.headers


async def test_any_origin_with_a_star(tmp_path: Path, upstream: FakeUpstream, http: aiohttp.ClientSession) -> None:
    gateway = await start_gateway(make_config(tmp_path, upstream.url, server__cors_origins=["*"]))
    try:
        async with http.options(gateway.url + "/v1/models", headers={**PREFLIGHT, "Origin": "http://x:3000"}) as r:
            assert r.status == 204 and r.headers["Access-Control-Allow-Origin"] == "*"
            assert "Vary" not in r.headers
        async with http.get(gateway.url + "/v1/models", headers={"Origin": "http://x:3000"}) as resp:
            assert resp.status == 200 and resp.headers["Access-Control-Allow-Origin"] == "*"
    finally:
        await gateway.stop()


def test_origins_are_validated_and_read_comma_separated_from_the_environment(tmp_path: Path) -> None:
    empty = tmp_path / "empty.toml"
    empty.write_text("")
    env = {"GATEWAY_SERVER_CORS_ORIGINS": "https://a.example, http://localhost:5173"}
    assert load_config(str(empty), env=env).cors_origins == ("https://a.example", "http://localhost:5173")
    for bad in (["chat.example.com"], ["https://a.example/path"], "not-a-url", [3]):
        with pytest.raises(ConfigError, match=r"^server\.cors_origins"):
            load_config(str(empty), env={}, flags={"server.cors_origins": bad})
