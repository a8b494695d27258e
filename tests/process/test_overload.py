"""Overload answers fast and blames no one it should not: the 503 for upstream.max_in_flight goes out before the
body is read, and a request that waited too long for a free upstream connection (upstream.pool_size) gets a 503
after upstream.pool_timeout_seconds, never a 504 that blames the upstream (gateway.upstream.pool)."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path

import aiohttp

from tests.conftest import chat_body, make_config, start_gateway, user
from tests.fake_upstream import FakeUpstream, Script


async def test_requests_waiting_for_a_pooled_connection_get_503_after_pool_timeout_never_504(
    tmp_path: Path, upstream: FakeUpstream, http: aiohttp.ClientSession
) -> None:
    # Pool 5, connect timeout 1 s, 20 slow requests (1 s each): three rounds of five fit in the 2.5 s a request may
    # wait for a connection; the fourth round would get one at 3 s, too late.
    config = make_config(
        tmp_path,
        upstream.url,
        upstream__pool_size=5,
        upstream__connect_timeout=1.0,
        upstream__pool_timeout_seconds=2.5,
    )
    gateway = await start_gateway(config)
    upstream.script(*(Script(delay=1.0) for _ in range(20)))
    started = time.monotonic()

    async def one(n: int) -> tuple[int, float, dict[str, object], str | None]:
        async with http.post(gateway.url + "/v1/chat/completions", json=chat_body(user(f"slow {n}"))) as resp:
            return resp.status, time.monotonic() - started, await resp.json(), resp.headers.get("Retry-After")

    results = await asyncio.gather(*(one(n) for n in range(20)))
    statuses = sorted(status for status, _, _, _ in results)
    assert statuses == [200] * 15 + [503] * 5
    for status, elapsed, body, retry_after in results:
        if status == 503:
            assert body["error"]["code"] == "upstream_busy"  # type: ignore[index]
            assert retry_after == "1"
            assert 2.5 <= elapsed < 3.0  # after pool_timeout, not at the connect timeout (1 s)
    assert len(upstream.requests) == 15  # the 503s never left the gateway
    await gateway.stop()


async def test_pool_slots_come_back_after_errors_streams_and_hang_ups(
    tmp_path: Path, upstream: FakeUpstream, http: aiohttp.ClientSession
) -> None:
    # One connection in the pool and little patience: a slot that leaked would turn the next request into a 503.
    config = make_config(tmp_path, upstream.url, upstream__pool_size=1, upstream__pool_timeout_seconds=1.0)
    gateway = await start_gateway(config)
    url = gateway.url + "/v1/chat/completions"
    upstream.script(Script(status=500), Script(reset=True), Script(content="a long answer " * 40, chunk_delay=0.02))
    for _ in range(2):  # an error status; a connection reset before headers
        async with http.post(url, json=chat_body(user("x"))) as resp:
            assert resp.status in (500, 502)
    async with http.post(url, json=chat_body(user("x"), stream=True)) as resp:
        await resp.content.readuntil(b"\n\n")
        resp.close()  # a client hang-up mid-stream
    await asyncio.sleep(0.2)
    for n in range(3):
        async with http.post(url, json=chat_body(user(f"after {n}"), stream=n == 1)) as resp:
            assert resp.status == 200
            await resp.read()
    await gateway.stop()


async def test_over_max_in_flight_the_503_comes_before_the_body_is_sent(
    tmp_path: Path, upstream: FakeUpstream, http: aiohttp.ClientSession
) -> None:
    gateway = await start_gateway(make_config(tmp_path, upstream.url, upstream__max_in_flight=1))
    upstream.script(Script(delay=1.0))
    held = asyncio.create_task(http.post(gateway.url + "/v1/chat/completions", json=chat_body(user("slow"))))
    await asyncio.sleep(0.2)
    host, port = gateway.url.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    writer.write(
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        b"Content-Length: 100000\r\n\r\n"  # and not a byte of the body
    )
    started = time.monotonic()
    status_line = await asyncio.wait_for(reader.readline(), 2)
    assert status_line.startswith(b"HTTP/1.1 503")
    assert time.monotonic() - started < 0.1
    head = (await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 1)).decode().lower().split("\r\n")
    length = int(next(line for line in head if line.startswith("content-length:")).split(":")[1])
    assert json.loads(await reader.readexactly(length))["error"]["code"] == "overloaded"
    writer.close()
    resp = await held
    assert resp.status == 200
    resp.release()
    await gateway.stop()
