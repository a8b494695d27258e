"""Fault injection against the scriptable fake upstream: retries, timeouts, broken streams, hang-ups, overload
and storage failures, each with an exact pass criterion."""

from __future__ import annotations

import asyncio
import json
import signal
import sqlite3
import time
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest

from tests.conftest import Gateway, GatewayProcess, chat_body, make_config, read_sse, spawn_gateway, start_gateway, user
from tests.fake_upstream import FakeUpstream, Script
from tests.stored import all_messages, all_messages_count, cli_dump

KEY = "sk-faults"
HEADERS = {"Authorization": f"Bearer {KEY}", "X-Conversation-Id": "faulty"}


@pytest.fixture
async def retrying(tmp_path: Path, upstream: FakeUpstream) -> AsyncIterator[Gateway]:
    config = make_config(
        tmp_path,
        upstream.url,
        upstream__max_attempts=3,
        upstream__backoff_seconds=0.05,
        upstream__first_byte_timeout=1.0,
        upstream__idle_timeout=0.5,
    )
    gateway = await start_gateway(config)
    yield gateway
    await gateway.stop()


async def _chat(http: aiohttp.ClientSession, gateway: Gateway, text: str = "hi", **fields: object) -> tuple[int, bytes]:
    async with http.post(
        gateway.url + "/v1/chat/completions", json=chat_body(user(text), **fields), headers=HEADERS
    ) as r:
        return r.status, await r.read()


async def _stream(http: aiohttp.ClientSession, gateway: Gateway) -> list[str]:
    """A streamed chat turn's SSE data fields (the stream itself always opens with 200)."""
    async with http.post(
        gateway.url + "/v1/chat/completions", json=chat_body(user("hi"), stream=True), headers=HEADERS
    ) as resp:
        assert resp.status == 200
        return await read_sse(resp)


async def gauge(http: aiohttp.ClientSession, gateway: Gateway, name: str) -> float:
    async with http.get(gateway.url + "/metrics") as resp:
        text = await resp.text()
    values = [float(line.split()[-1]) for line in text.splitlines() if line.startswith(name + " ")]
    assert values, name
    return values[0]


async def _stored(gateway: Gateway) -> int:
    """Every message the database holds, of any owner: a turn recorded under the wrong one counts too."""
    return await all_messages_count(gateway.db_path)


async def test_429_with_retry_after_is_waited_out_then_retried(
    retrying: Gateway, upstream: FakeUpstream, http: aiohttp.ClientSession
) -> None:
    upstream.script(Script(status=429, headers={"Retry-After": "1"}))
    status, _ = await _chat(http, retrying)
    assert status == 200
    assert len(upstream.requests) == 2
    assert upstream.received_at[1] - upstream.received_at[0] >= 1.0  # the second attempt waited for Retry-After
    assert await _stored(retrying) == 2


async def test_persistent_503_stops_at_max_attempts_and_reaches_the_client(
    retrying: Gateway, upstream: FakeUpstream, http: aiohttp.ClientSession
) -> None:
    upstream.script(*(Script(status=503) for _ in range(5)))
    status, _ = await _chat(http, retrying)
    assert status == 503 and len(upstream.requests) == 3
    assert await _stored(retrying) == 0
    async with http.get(retrying.url + "/metrics") as resp:
        assert 'gateway_upstream_retries_total{reason="http_503"} 2.0' in await resp.text()


async def test_one_500_then_success_stores_exactly_one_turn(
    retrying: Gateway, upstream: FakeUpstream, http: aiohttp.ClientSession
) -> None:
    upstream.script(Script(status=500))
    status, body = await _chat(http, retrying)
    assert status == 200 and json.loads(body)["choices"][0]["message"]["content"] == "reply 2"
    assert [m["role"] for m in await all_messages(retrying.db_path)] == ["user", "assistant"]  # of any owner


async def test_errors_that_cannot_succeed_are_not_retried(
    retrying: Gateway, upstream: FakeUpstream, http: aiohttp.ClientSession
) -> None:
    arrears = {
        "error": {"message": "Access denied, please make sure your account is in good standing.", "code": "Arrearage"}
    }
    upstream.script(Script(status=429, error_body=arrears))
    status, _ = await _chat(http, retrying)
    assert status == 429 and len(upstream.requests) == 1


async def test_a_reset_before_headers_is_retried(
    retrying: Gateway, upstream: FakeUpstream, http: aiohttp.ClientSession
) -> None:
    upstream.script(Script(reset=True))
    status, _ = await _chat(http, retrying)
    assert status == 200 and len(upstream.requests) == 2
    upstream.script(*(Script(reset=True) for _ in range(3)))
    status, body = await _chat(http, retrying, "again")
    assert status == 502 and json.loads(body)["error"]["code"] == "upstream_unavailable"


async def test_headers_that_never_arrive_are_504_within_the_timeout_and_not_retried(
    retrying: Gateway, upstream: FakeUpstream, http: aiohttp.ClientSession
) -> None:
    upstream.script(Script(hang=True))
    started = time.monotonic()
    status, body = await _chat(http, retrying)
    assert status == 504 and json.loads(body)["error"]["code"] == "upstream_timeout"
    assert time.monotonic() - started < 1.0 + 1.0
    assert len(upstream.requests) == 1


async def test_a_cut_stream_is_an_error_event_nothing_stored_and_no_retry(
    retrying: Gateway, upstream: FakeUpstream, http: aiohttp.ClientSession
) -> None:
    upstream.script(Script(content="a reply long enough to be cut", cut_after=2))
    events = await _stream(http, retrying)
    assert "[DONE]" not in events and "error" in json.loads(events[-1])
    assert await _stored(retrying) == 0 and len(upstream.requests) == 1


async def test_a_stalled_stream_times_out_and_the_next_request_is_fine(
    retrying: Gateway, upstream: FakeUpstream, http: aiohttp.ClientSession
) -> None:
    upstream.script(Script(content="stalls after one chunk", gate=asyncio.Event()))
    started = time.monotonic()
    events = await _stream(http, retrying)
    assert json.loads(events[-1])["error"]["code"] == "upstream_timeout"
    assert time.monotonic() - started < 0.5 + 1.0
    status, _ = await _chat(http, retrying, "next")
    assert status == 200


async def test_an_invalid_json_chunk_ends_the_stream_cleanly(
    retrying: Gateway, upstream: FakeUpstream, http: aiohttp.ClientSession
) -> None:
    upstream.script(Script(content="some words then garbage", bad_chunk_after=2))
    events = await _stream(http, retrying)
    assert json.loads(events[-1])["error"]["code"] == "upstream_invalid_response"
    assert await _stored(retrying) == 0 and len(upstream.requests) == 1  # no retry loop
    status, _ = await _chat(http, retrying, "next")
    assert status == 200


@pytest.mark.parametrize("when", ["before the first token", "mid-stream"])
async def test_a_client_hang_up_aborts_the_upstream_within_a_second(
    retrying: Gateway, upstream: FakeUpstream, http: aiohttp.ClientSession, when: str
) -> None:
    if when == "before the first token":
        upstream.script(Script(delay=30))
    else:
        upstream.script(Script(content="a long answer " * 50, chunk_delay=0.05))
    async with aiohttp.ClientSession() as client:
        resp = await client.post(
            retrying.url + "/v1/chat/completions", json=chat_body(user("hi"), stream=True), headers=HEADERS
        )
        if when == "mid-stream":
            await resp.content.readuntil(b"\n\n")
        else:
            await asyncio.sleep(0.2)
        hung_up = time.monotonic()
        resp.close()
    await asyncio.wait_for(upstream.aborted_event.wait(), timeout=3)
    assert upstream.aborted[0] - hung_up < 1.0
    for _ in range(40):
        if (
            await gauge(http, retrying, "gateway_open_streams") == 0
            and await gauge(http, retrying, "gateway_in_flight_requests") == 1
        ):  # the /metrics request itself
            break
        await asyncio.sleep(0.05)
    assert await gauge(http, retrying, "gateway_open_streams") == 0
    assert await gauge(http, retrying, "gateway_in_flight_requests") == 1


async def test_over_max_in_flight_is_503_at_once(
    tmp_path: Path, upstream: FakeUpstream, http: aiohttp.ClientSession
) -> None:
    gateway = await start_gateway(make_config(tmp_path, upstream.url, upstream__max_in_flight=2))
    upstream.script(Script(delay=1), Script(delay=1))
    held = [asyncio.create_task(_chat(http, gateway, f"slow {i}")) for i in range(2)]
    await asyncio.sleep(0.2)
    started = time.monotonic()
    async with http.post(gateway.url + "/v1/chat/completions", json=chat_body(user("one more"))) as resp:
        assert resp.status == 503 and resp.headers["Retry-After"] == "1"
        assert (await resp.json())["error"]["code"] == "overloaded"
    assert time.monotonic() - started < 0.05
    assert [status for status, _ in await asyncio.gather(*held)] == [200, 200]
    await gateway.stop()


async def test_a_failed_write_is_an_error_the_process_stays_up_and_nothing_partial_is_stored(
    tmp_path: Path, upstream: FakeUpstream, http: aiohttp.ClientSession
) -> None:
    gateway = await start_gateway(make_config(tmp_path, upstream.url, storage__busy_timeout_ms=50))
    await _chat(http, gateway, "before")
    locker = sqlite3.connect(str(gateway.db_path), isolation_level=None, timeout=0)
    locker.execute("BEGIN IMMEDIATE")  # another process holds the write lock past the busy timeout
    status, body = await _chat(http, gateway, "during")
    assert status == 503 and json.loads(body)["error"]["code"] == "storage_unavailable"
    locker.execute("ROLLBACK")
    status, _ = await _chat(http, gateway, "after")
    assert status == 200
    bodies = [m["content"] for m in await all_messages(gateway.db_path)]  # of any owner
    assert bodies == ["before", "reply 1", "after", "reply 3"]  # "during" left nothing behind
    await gateway.stop()


async def test_sigkill_during_parallel_turns_loses_no_acknowledged_turn(
    tmp_path: Path, upstream: FakeUpstream, processes: list[GatewayProcess]
) -> None:
    db = tmp_path / "crash.db"
    gp = await spawn_gateway(tmp_path, "--db", str(db), "--upstream-base-url", upstream.url)
    processes.append(gp)
    acknowledged: list[tuple[str, str]] = []

    async def client(n: int) -> None:
        sdk = gp.sdk(f"conv-{n}")
        for i in range(1000):
            await sdk.chat.completions.create(model="qwen-plus", messages=[user(f"c{n} m{i}")])
            acknowledged.append((f"conv-{n}", f"c{n} m{i}"))

    tasks = [asyncio.create_task(client(n)) for n in range(16)]
    while len(acknowledged) < 200:
        await asyncio.sleep(0.01)
    gp.proc.send_signal(signal.SIGKILL)
    gp.proc.wait()
    seen = list(acknowledged)
    await asyncio.gather(*tasks, return_exceptions=True)
    with sqlite3.connect(db) as conn:
        assert conn.execute("PRAGMA integrity_check").fetchone() == ("ok",)
        stored = {
            (conversation, json.loads(body)["content"])
            for conversation, body in conn.execute(
                "SELECT c.external_id, m.body FROM messages m JOIN conversations c ON c.id = m.conversation_id "
                "WHERE m.role = 'user'"
            )
        }
    assert set(seen) <= stored
    restarted = await spawn_gateway(tmp_path, "--db", str(db), "--upstream-base-url", upstream.url)
    processes.append(restarted)
    await restarted.sdk("conv-0").chat.completions.create(model="qwen-plus", messages=[user("after")])


async def test_sigterm_drain_deadline_ends_open_streams_with_an_error_and_records_them(
    tmp_path: Path, upstream: FakeUpstream, processes: list[GatewayProcess]
) -> None:
    db = tmp_path / "drain.db"
    config = tmp_path / "drain.toml"
    config.write_text("[server]\ndrain_seconds = 1.0\ndrain_grace_seconds = 0.5\n")
    gp = await spawn_gateway(tmp_path, "--config", str(config), "--db", str(db), "--upstream-base-url", upstream.url)
    processes.append(gp)
    upstream.script(Script(content="an endless answer " * 200, chunk_delay=0.05))
    async with aiohttp.ClientSession() as http:
        resp = await http.post(
            gp.url + "/v1/chat/completions", json=chat_body(user("talk"), stream=True), headers=HEADERS
        )
        await resp.content.readuntil(b"\n\n")
        gp.proc.send_signal(signal.SIGTERM)
        await asyncio.sleep(0.2)
        async with http.get(gp.url + "/readyz") as ready:
            assert ready.status == 503 and (await ready.json())["status"] == "draining"
        received = b""
        try:
            while chunk := await resp.content.readany():
                received += chunk
        except aiohttp.ClientPayloadError:
            pass  # the server closed the connection once its deadline passed
    events = [line[5:].strip() for line in received.decode().splitlines() if line.startswith("data:")]
    assert "[DONE]" not in events
    assert json.loads(events[-1])["error"]["code"] == "server_shutting_down"
    assert await asyncio.to_thread(gp.proc.wait, 10) == 0
    # What was recorded, read as an operator would once the process is gone.
    (conversation,) = await cli_dump(db)
    assert [(line["message"]["role"], line["interrupted"]) for line in conversation[1:]] == [
        ("user", False),
        ("assistant", True),
    ]
