"""Every other request under /v1/ and /api/v1/ goes upstream unchanged (gateway.core.passthrough): method, path,
query, headers, body and streaming, status and body back, under the same credential rules, limits, log line and
metrics as chat; only the gateway's own routes and OPTIONS stay home."""

from __future__ import annotations

import gzip
import json
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import openai
import pytest
import structlog
from aiohttp import web
from structlog.testing import capture_logs

from gateway.http.state import STORE
from tests.conftest import Gateway, make_config, start_gateway
from tests.fake_upstream import MODELS, FakeUpstream
from tests.stored import cli_list

UPSTREAM_KEY = "sk-upstream-own"


@pytest.fixture
async def keyed(tmp_path: Path, upstream: FakeUpstream) -> AsyncIterator[tuple[Gateway, str]]:
    """A gateway in keys mode with its own upstream key, and one gateway key."""
    gateway = await start_gateway(
        make_config(tmp_path, upstream.url, auth__mode="keys", upstream__api_key=UPSTREAM_KEY)
    )
    secret, _ = await gateway.runner.app[STORE].keys.create("team", None, False)
    yield gateway, secret
    await gateway.stop()


async def test_the_sdk_lists_and_retrieves_models_through_the_gateway(gateway: Gateway, upstream: FakeUpstream) -> None:
    client = gateway.sdk()
    assert [m.id async for m in client.models.list()] == list(MODELS)
    assert (await client.models.retrieve("qwen-max")).id == "qwen-max"
    with pytest.raises(openai.NotFoundError) as caught:
        await client.models.retrieve("no-such-model")
    assert caught.value.code == "model_not_found"  # the upstream's own error body, unchanged
    assert [o.path for o in upstream.others] == ["/v1/models", "/v1/models/qwen-max", "/v1/models/no-such-model"]


async def test_the_sdk_gets_embeddings_through_the_gateway(gateway: Gateway, upstream: FakeUpstream) -> None:
    result = await gateway.sdk().embeddings.create(model="text-embedding-v4", input=["a", "b"])
    assert [d.embedding for d in result.data] == [[0.1, 0.2, 0.0], [0.1, 0.2, 1.0]]
    assert upstream.requests == []  # nothing went the chat way, nothing was stored
    assert await cli_list(gateway.db_path) == []  # no conversation, of any owner


async def test_method_path_query_headers_and_body_arrive_unchanged(
    gateway: Gateway, upstream: FakeUpstream, http: aiohttp.ClientSession
) -> None:
    headers = {"Authorization": "Bearer sk-client", "X-Custom": "kept", "X-Conversation-Id": "not-forwarded"}
    url = gateway.url + "/v1/files/file%2Fabc/content?purpose=batch&tag=a%20b&tag=c"
    async with http.put(url, data=b"\x00raw bytes\xff", headers=headers) as resp:
        assert resp.status == 201
        echo = await resp.json()
        assert resp.headers["X-Conversation-Id"] == "not-forwarded"  # echoed, as on every route
    other = upstream.others[-1]
    assert (other.method, other.raw) == ("PUT", b"\x00raw bytes\xff")
    assert other.path == "/v1/files/file%2Fabc/content" and echo["method"] == "PUT"
    assert other.query == "purpose=batch&tag=a%20b&tag=c"
    assert other.headers["X-Custom"] == "kept"
    assert other.headers["Authorization"] == "Bearer sk-client"  # open mode, no upstream key: the client's own
    assert "X-Conversation-Id" not in other.headers


async def test_the_native_prefix_goes_under_the_native_base_url(
    gateway: Gateway, upstream: FakeUpstream, http: aiohttp.ClientSession
) -> None:
    async with http.get(gateway.url + "/api/v1/tasks/task-1", headers={"X-DashScope-Async": "enable"}) as resp:
        assert resp.status == 200
    assert upstream.others[-1].path == "/api/v1/tasks/task-1"
    assert upstream.others[-1].headers["X-DashScope-Async"] == "enable"


async def test_a_streamed_answer_is_relayed_as_it_comes(
    gateway: Gateway, upstream: FakeUpstream, http: aiohttp.ClientSession
) -> None:
    async with http.post(gateway.url + "/v1/batches/stream", json={"stream": True}) as resp:
        assert resp.content_type == "text/event-stream"
        body = await resp.read()
    assert body == b'data: {"n": 0}\n\ndata: {"n": 1}\n\ndata: {"n": 2}\n\ndata: [DONE]\n\n'


async def test_a_compressed_answer_goes_back_compressed_as_it_came(gateway: Gateway, upstream: FakeUpstream) -> None:
    async with (
        aiohttp.ClientSession(auto_decompress=False) as raw,
        raw.get(gateway.url + "/v1/anything/gzip", headers={"Accept-Encoding": "gzip"}) as resp,
    ):
        assert resp.headers["Content-Encoding"] == "gzip"
        body = await resp.read()
        assert int(resp.headers["Content-Length"]) == len(body)
    assert json.loads(gzip.decompress(body))["path"] == "/v1/anything/gzip"


async def test_a_body_cut_upstream_is_not_passed_off_as_complete(
    gateway: Gateway, upstream: FakeUpstream, http: aiohttp.ClientSession
) -> None:
    with pytest.raises(aiohttp.ClientPayloadError):
        async with http.get(gateway.url + "/v1/anything/cut") as resp:
            assert resp.status == 200
            await resp.read()


async def test_keys_mode_checks_the_gateway_key_and_sends_only_the_upstream_key(
    keyed: tuple[Gateway, str], upstream: FakeUpstream, http: aiohttp.ClientSession
) -> None:
    gateway, secret = keyed
    async with http.get(gateway.url + "/v1/models") as resp:
        assert resp.status == 401 and (await resp.json())["error"]["code"] == "missing_api_key"
    async with http.get(gateway.url + "/v1/models", headers={"api-key": "gw-wrong"}) as resp:
        assert resp.status == 401
    assert upstream.others == []
    for headers in ({"Authorization": f"Bearer {secret}"}, {"api-key": secret}):
        async with http.get(gateway.url + "/v1/models", headers=headers) as resp:
            assert resp.status == 200
    for other in upstream.others:
        assert other.headers["Authorization"] == f"Bearer {UPSTREAM_KEY}"
        assert secret not in str(other.headers)


async def test_an_upstream_refusing_the_gateways_own_key_is_a_502_without_its_text(
    keyed: tuple[Gateway, str], upstream: FakeUpstream, http: aiohttp.ClientSession
) -> None:
    gateway, secret = keyed

    async def refuse(request: web.Request) -> web.Response:
        return web.json_response({"error": {"message": f"bad key {UPSTREAM_KEY}"}}, status=401)

    upstream.others_handler = refuse
    async with http.get(gateway.url + "/v1/anything/refused", headers={"Authorization": f"Bearer {secret}"}) as resp:
        assert resp.status == 502
        assert UPSTREAM_KEY not in await resp.text()


async def test_limits_apply_to_passed_through_requests(tmp_path: Path, upstream: FakeUpstream) -> None:
    gateway = await start_gateway(make_config(tmp_path, upstream.url, limits__requests_per_minute=2))
    try:
        async with aiohttp.ClientSession() as http:
            statuses = []
            for _ in range(3):
                async with http.get(gateway.url + "/v1/models", headers={"Authorization": "Bearer k"}) as resp:
                    statuses.append(resp.status)
        assert statuses == [200, 200, 429]
        assert len(upstream.others) == 2
    finally:
        await gateway.stop()


async def test_an_unreachable_upstream_is_an_error_in_the_callers_protocol(
    tmp_path: Path, http: aiohttp.ClientSession
) -> None:
    dead = "http://127.0.0.1:9/v1"  # the discard port: nothing listens
    gateway = await start_gateway(make_config(tmp_path, dead))
    try:
        async with http.get(gateway.url + "/v1/models") as resp:
            assert resp.status == 502 and (await resp.json())["error"]["code"] == "upstream_unavailable"
        async with http.get(gateway.url + "/api/v1/tasks/t") as resp:
            assert resp.status == 502 and (await resp.json())["code"] == "upstream_unavailable"
    finally:
        await gateway.stop()


async def test_the_gateways_own_routes_and_options_are_never_forwarded(
    gateway: Gateway, upstream: FakeUpstream, http: aiohttp.ClientSession
) -> None:
    async with http.put(gateway.url + "/v1/conversations/c-1", json={}) as resp:
        assert resp.status == 405
    async with http.options(gateway.url + "/v1/models") as resp:
        assert resp.status == 405  # CORS is off by default (tests/http/test_cors.py)
    async with http.request("TRACE", gateway.url + "/v1/models") as resp:
        assert resp.status == 405
    assert upstream.others == []


async def test_one_canonical_line_and_the_route_pattern_in_metrics(
    gateway: Gateway, upstream: FakeUpstream, http: aiohttp.ClientSession
) -> None:
    with capture_logs(processors=[structlog.contextvars.merge_contextvars]) as logs:
        async with http.get(gateway.url + "/v1/models/qwen-plus", headers={"Authorization": "Bearer sk-x"}) as resp:
            assert resp.status == 200
    lines = [e for e in logs if e["event"] == "request"]
    assert len(lines) == 1
    assert lines[0]["forwarded"] is True and lines[0]["upstream_status"] == 200 and lines[0]["status"] == 200
    assert "sk-x" not in str(lines[0])
    async with http.get(gateway.url + "/metrics") as resp:
        metrics = await resp.text()
    assert 'gateway_requests_total{route="/v1/{upstream_path}",status="200"} 1.0' in metrics


async def test_a_compressed_request_body_goes_upstream_decoded_and_labelled_so(
    gateway: Gateway, upstream: FakeUpstream, http: aiohttp.ClientSession
) -> None:
    body = json.dumps({"model": "text-embedding-v4", "input": "hello"}).encode()
    headers = {"Content-Encoding": "gzip", "Content-Type": "application/json"}
    async with http.post(gateway.url + "/v1/embeddings", data=gzip.compress(body), headers=headers) as resp:
        assert resp.status == 200
    assert upstream.others[-1].raw == body
    assert "Content-Encoding" not in upstream.others[-1].headers
