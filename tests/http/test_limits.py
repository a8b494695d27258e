"""Per-key limits under parallel load, with exact counts, and the request-size limits (413, 400, 431)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest

from gateway.http.state import STORE
from tests.conftest import Gateway, chat_body, make_config, start_gateway, user
from tests.fake_upstream import FakeUpstream, Script
from tests.stored import cli_list


async def _limited_gateway(tmp_path: Path, upstream: FakeUpstream, toml: str = "", **flags: object) -> Gateway:
    return await start_gateway(make_config(tmp_path, upstream.url, toml, **flags))


@pytest.fixture
async def rpm_gateway(tmp_path: Path, upstream: FakeUpstream) -> AsyncIterator[Gateway]:
    gw = await _limited_gateway(
        tmp_path,
        upstream,
        "[tenants.small]\nrequests_per_minute = 2\n",
        limits__requests_per_minute=5,
        upstream__api_key="sk-limits-upstream",  # keys are created while it runs: keys mode needs the upstream key
    )
    yield gw
    await gw.stop()


async def _post(http: aiohttp.ClientSession, gateway: Gateway, key: str) -> tuple[int, str | None, dict[str, str]]:
    async with http.post(
        gateway.url + "/v1/chat/completions", json=chat_body(user("hi")), headers={"Authorization": f"Bearer {key}"}
    ) as resp:
        body = await resp.json()
        code = body["error"]["code"] if resp.status != 200 else None
        return resp.status, code, dict(resp.headers)


async def test_requests_per_minute_hold_exactly_under_parallel_load(
    rpm_gateway: Gateway, upstream: FakeUpstream, http: aiohttp.ClientSession
) -> None:
    results = await asyncio.gather(*(_post(http, rpm_gateway, "sk-one") for _ in range(20)))
    statuses = sorted(status for status, _, _ in results)
    assert statuses == [200] * 5 + [429] * 15
    assert len(upstream.requests) == 5  # decided before anything went upstream
    for status, code, headers in results:
        if status == 429:
            assert code == "rate_limit_exceeded" and 1 <= int(headers["Retry-After"]) <= 60
    other = await asyncio.gather(*(_post(http, rpm_gateway, "sk-two") for _ in range(8)))
    assert sorted(status for status, _, _ in other) == [200] * 5 + [429] * 3  # each credential its own budget


async def test_tenant_overrides_apply_to_every_key_of_the_tenant(
    rpm_gateway: Gateway, http: aiohttp.ClientSession
) -> None:
    store = rpm_gateway.runner.app[STORE].keys
    (first, _), (second, _) = await store.create("small", None, False), await store.create("small", None, False)
    results = await asyncio.gather(*(_post(http, rpm_gateway, key) for key in [first] * 6 + [second] * 6))
    assert sorted(status for status, _, _ in results[:6]) == [200] * 2 + [429] * 4
    assert sorted(status for status, _, _ in results[6:]) == [200] * 2 + [429] * 4  # per key


async def test_concurrent_requests_hold_exactly_and_free_up_when_streams_end(
    tmp_path: Path, upstream: FakeUpstream, http: aiohttp.ClientSession
) -> None:
    gateway = await _limited_gateway(tmp_path, upstream, limits__concurrent_requests=3)
    gate = asyncio.Event()
    upstream.script(*(Script(gate=gate) for _ in range(3)))
    headers = {"Authorization": "Bearer sk-busy"}
    streams = [
        await http.post(gateway.url + "/v1/chat/completions", json=chat_body(user("hi"), stream=True), headers=headers)
        for _ in range(3)
    ]
    try:
        for stream in streams:
            assert stream.status == 200
            await stream.content.readline()  # all three are under way
        refused = await asyncio.gather(*(_post(http, gateway, "sk-busy") for _ in range(10)))
        assert {(status, code, headers["Retry-After"]) for status, code, headers in refused} == {
            (429, "concurrency_limit_exceeded", "1")
        }
        assert (await _post(http, gateway, "sk-other"))[0] == 200  # another credential is not held up
    finally:
        gate.set()
        for stream in streams:
            await stream.read()
            stream.release()
    assert (await _post(http, gateway, "sk-busy"))[0] == 200
    await gateway.stop()


async def test_too_many_messages_is_400_and_nothing_goes_upstream(
    tmp_path: Path, upstream: FakeUpstream, http: aiohttp.ClientSession
) -> None:
    gateway = await _limited_gateway(tmp_path, upstream, limits__max_messages=3)
    async with http.post(gateway.url + "/v1/chat/completions", json=chat_body(*[user("x")] * 4)) as resp:
        assert resp.status == 400
        assert (await resp.json())["error"]["code"] == "too_many_messages"
    assert upstream.requests == []
    await gateway.stop()


async def test_an_oversized_header_is_431_in_openai_shape(gateway: Gateway, http: aiohttp.ClientSession) -> None:
    async with http.post(
        gateway.url + "/v1/chat/completions", json=chat_body(user("hi")), headers={"X-Big": "x" * 20000}
    ) as resp:
        assert resp.status == 431
        body = await resp.json()
    assert body["error"]["code"] == "request_header_fields_too_large"
    assert await cli_list(gateway.db_path) == []  # no conversation, of any owner
