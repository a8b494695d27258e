"""Client connections (gateway.http.connections, gateway.http.channel.read_body): the header, body and keep-alive
deadlines on raw sockets, the connection cap's eviction and refusal, the open-file limit at start-up, and a small
slowloris against the real gateway process limited to 256 open files (bench/slowloris.py is the full-size run)."""

from __future__ import annotations

import asyncio
import json
import resource
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest
from structlog.testing import capture_logs

from bench.slowloris import attack, log_figures, open_descriptors, probe
from gateway.http.connections import quiet_accept_errors
from tests.conftest import REPO, Gateway, GatewayProcess, make_config, spawn_gateway, start_gateway
from tests.fake_upstream import FakeUpstream, Script

Stream = tuple[asyncio.StreamReader, asyncio.StreamWriter]
HEALTHZ = b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"


def _chat_head(length: int) -> bytes:
    return (
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer sk-slow\r\n"
        b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n" % length
    )


async def _connect(gateway: Gateway) -> Stream:
    host, port = gateway.url.removeprefix("http://").split(":")
    return await asyncio.open_connection(host, int(port))


async def _response(reader: asyncio.StreamReader) -> tuple[int, dict[str, str], bytes]:
    """One HTTP/1.1 response with a Content-Length body (all the gateway sends here)."""
    status = int((await reader.readline()).split()[1])
    headers = {}
    while (line := await reader.readline()) not in (b"\r\n", b""):
        name, _, value = line.decode().partition(":")
        headers[name.strip().lower()] = value.strip()
    return status, headers, await reader.readexactly(int(headers.get("content-length", "0")))


async def _closed_after(reader: asyncio.StreamReader, limit: float = 5.0) -> float:
    """Seconds until the gateway closes the connection (every byte before that is discarded)."""
    started = time.monotonic()
    async with asyncio.timeout(limit):
        while await reader.read(1024):
            pass
    return time.monotonic() - started


async def _still_open(reader: asyncio.StreamReader) -> bool:
    try:
        async with asyncio.timeout(0.2):
            return bool(await reader.read(1))
    except TimeoutError:
        return True


async def _trickle(writer: asyncio.StreamWriter, byte: bytes, every: float, count: int = 100) -> int:
    """Send ``byte`` every ``every`` seconds until the connection breaks; return how many went out."""
    sent = 0
    for _ in range(count):
        try:
            writer.write(byte)
            await writer.drain()
        except ConnectionError:
            break
        sent += 1
        await asyncio.sleep(every)
    return sent


@pytest.fixture
async def strict(tmp_path: Path, upstream: FakeUpstream) -> AsyncIterator[Gateway]:
    config = make_config(
        tmp_path,
        upstream.url,
        server__header_timeout_seconds=1.0,
        server__body_timeout_seconds=1.0,
        server__keepalive_timeout_seconds=3.0,
        server__max_connections=16,
    )
    gateway = await start_gateway(config)
    yield gateway
    await gateway.stop()


async def test_headers_trickled_a_byte_a_second_are_cut_at_the_header_deadline(strict: Gateway) -> None:
    reader, writer = await _connect(strict)
    writer.write(b"GET /healthz HTTP/1.1\r\nX-Slow: ")
    trickling = asyncio.create_task(_trickle(writer, b"x", 0.2))  # faster than a byte a second, even
    assert 0.9 < await _closed_after(reader) < 1.6
    assert await trickling >= 4  # bytes kept coming; the deadline did not move
    writer.close()


async def test_a_connection_that_sends_nothing_is_closed_at_the_header_deadline(strict: Gateway) -> None:
    reader, writer = await _connect(strict)
    assert 0.9 < await _closed_after(reader) < 1.6  # not at keepalive_timeout (3 s), nor aiohttp's hour
    writer.close()


async def test_a_body_trickled_past_the_body_deadline_gets_408(strict: Gateway) -> None:
    reader, writer = await _connect(strict)
    writer.write(_chat_head(100))
    trickling = asyncio.create_task(_trickle(writer, b" ", 0.3))
    started = time.monotonic()
    status, headers, body = await asyncio.wait_for(_response(reader), 5)
    assert 0.9 < time.monotonic() - started < 1.6
    assert status == 408 and headers["content-type"].startswith("application/json")
    assert json.loads(body)["error"]["code"] == "request_timeout"
    trickling.cancel()
    writer.close()


async def test_a_slow_body_that_arrives_within_the_deadline_is_served(tmp_path: Path, upstream: FakeUpstream) -> None:
    gateway = await start_gateway(make_config(tmp_path, upstream.url, server__body_timeout_seconds=3.0))
    body = json.dumps({"model": "qwen-plus", "messages": [{"role": "user", "content": "hi"}]}).encode()
    reader, writer = await _connect(gateway)
    writer.write(_chat_head(len(body)))
    for part in (body[:10], body[10:20], body[20:]):
        writer.write(part)
        await asyncio.sleep(0.3)
    status, _, reply = await asyncio.wait_for(_response(reader), 5)
    assert status == 200 and json.loads(reply)["choices"][0]["message"]["content"] == "reply 1"
    writer.close()
    await gateway.stop()


async def test_an_idle_keep_alive_connection_is_closed_after_keepalive_timeout(
    tmp_path: Path, upstream: FakeUpstream
) -> None:
    config = make_config(
        tmp_path, upstream.url, server__keepalive_timeout_seconds=1.0, server__header_timeout_seconds=5.0
    )
    gateway = await start_gateway(config)
    reader, writer = await _connect(gateway)
    writer.write(HEALTHZ)
    assert (await _response(reader))[0] == 200
    assert 0.9 < await _closed_after(reader) < 1.8
    writer.close()
    await gateway.stop()


async def test_a_kept_alive_connection_has_the_header_deadline_from_the_first_byte_of_its_next_request(
    strict: Gateway,
) -> None:
    reader, writer = await _connect(strict)
    writer.write(HEALTHZ)
    assert (await _response(reader))[0] == 200
    await asyncio.sleep(1.5)  # idle past header_timeout (1 s) but within keepalive_timeout (3 s): still open
    writer.write(HEALTHZ)
    assert (await _response(reader))[0] == 200
    writer.write(b"GET /healthz HTTP/1.1\r\nX-Slow: ")  # the next request starts, and then trickles
    trickling = asyncio.create_task(_trickle(writer, b"x", 0.2))
    assert 0.9 < await _closed_after(reader) < 1.6
    trickling.cancel()
    writer.close()


async def test_at_the_cap_a_new_connection_evicts_the_one_idle_longest(strict: Gateway) -> None:
    idle = []
    for _ in range(16):
        idle.append(await _connect(strict))
        await asyncio.sleep(0.01)  # an order of arrival the gateway can see
    reader, writer = await _connect(strict)
    writer.write(HEALTHZ)
    assert (await asyncio.wait_for(_response(reader), 2))[0] == 200
    assert await _closed_after(idle[0][0], 1) < 1  # the oldest went
    assert all(await asyncio.gather(*(_still_open(r) for r, _ in idle[1:])))  # (well within header_timeout)
    for _, w in [*idle, (reader, writer)]:
        w.close()


async def test_at_the_cap_a_request_still_sending_its_body_can_be_evicted(strict: Gateway) -> None:
    slow = []
    for _ in range(16):
        reader, writer = await _connect(strict)
        writer.write(_chat_head(100) + b"{")  # headers complete, then the body stops
        slow.append((reader, writer))
        await asyncio.sleep(0.02)
    reader, writer = await _connect(strict)
    writer.write(HEALTHZ)
    assert (await asyncio.wait_for(_response(reader), 2))[0] == 200
    assert await _closed_after(slow[0][0], 1) < 1
    for _, w in [*slow, (reader, writer)]:
        w.close()


async def test_at_the_cap_with_every_request_being_worked_on_a_new_connection_is_refused_at_once(
    strict: Gateway, upstream: FakeUpstream
) -> None:
    upstream.script(*(Script(delay=1.5) for _ in range(16)))
    body = json.dumps({"model": "qwen-plus", "messages": [{"role": "user", "content": "hi"}]}).encode()
    busy = []
    for _ in range(16):
        reader, writer = await _connect(strict)
        writer.write(_chat_head(len(body)) + body)
        busy.append((reader, writer))
    await asyncio.sleep(0.3)  # every one is waiting for the upstream now
    reader, writer = await _connect(strict)
    writer.write(HEALTHZ)
    try:
        answer = await asyncio.wait_for(reader.read(100), 0.5)
    except ConnectionResetError:
        answer = b""
    assert answer == b""  # closed at once without a byte, not left hanging
    assert [(await asyncio.wait_for(_response(r), 5))[0] for r, _ in busy] == [200] * 16  # untouched
    for _, w in [*busy, (reader, writer)]:
        w.close()


def _limit(soft: int, hard: int) -> Callable[[], None]:
    def lower() -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))

    return lower


async def _spawn(tmp_path: Path, soft: int, hard: int, *args: str) -> GatewayProcess:
    """The gateway as a process with its open-file limit lowered before it starts."""
    return await spawn_gateway(tmp_path, *args, preexec_fn=_limit(soft, hard))


async def test_the_soft_open_file_limit_is_raised_to_the_hard_one_and_logged(
    tmp_path: Path, upstream: FakeUpstream, processes: list[GatewayProcess]
) -> None:
    gp = await _spawn(tmp_path, 256, 512, "--upstream-base-url", upstream.url, "--db", str(tmp_path / "f.db"))
    processes.append(gp)
    (event,) = [e for e in gp.log_events() if e["event"] == "open_files_limit"]
    # 512 less the upstream pool (100), one accept burst (128) and the gateway's own files (64)
    assert (event["soft_before"], event["soft"], event["hard"], event["max_connections"]) == (256, 512, 512, 220)


def test_an_open_file_limit_with_no_room_for_clients_stops_start_up_with_one_line(tmp_path: Path) -> None:
    empty = tmp_path / "empty.toml"
    empty.touch()
    done = subprocess.run(
        [sys.executable, "-m", "gateway", "serve", "--config", str(empty), "--port", "0", "--db", str(tmp_path / "x")],
        capture_output=True,
        cwd=REPO,
        preexec_fn=_limit(256, 256),  # 256 files cannot hold a pool of 100 beside the accept burst and the rest
        timeout=30,
        check=False,
    )
    assert done.returncode == 2
    assert done.stderr.decode().startswith("gateway: error: server.max_connections: the open-file limit (256)")


async def test_slowloris_against_a_gateway_limited_to_256_open_files(
    tmp_path: Path, upstream: FakeUpstream, processes: list[GatewayProcess]
) -> None:
    config = tmp_path / "small.toml"
    config.write_text("[server]\nheader_timeout_seconds = 2.0\nbody_timeout_seconds = 3.0\n[upstream]\npool_size = 8\n")
    gp = await _spawn(
        tmp_path, 256, 256, "--config", str(config), "--upstream-base-url", upstream.url, "--db", str(tmp_path / "s.db")
    )
    processes.append(gp)
    peak = 0

    async def sample() -> None:
        nonlocal peak
        while True:
            peak = max(peak, open_descriptors(gp.proc.pid))
            await asyncio.sleep(0.05)

    sampler = asyncio.create_task(sample())
    attacking = asyncio.create_task(attack(gp.port, 300, 5.0, reconnect_delay=0.2))
    await asyncio.sleep(1.0)  # the attack is established: the gateway is at its cap of 56 connections
    probes = await probe(gp.url, 3.5, every=0.05, timeout=3.0)
    seen = await attacking
    sampler.cancel()
    size, _, events, _ = log_figures(gp.log_path)
    assert probes.success >= 0.95, probes.failures
    assert seen.opened > 300  # the gateway shed connections and the attack kept coming back
    assert peak < 256  # accept() never ran out of descriptors ...
    assert events["(text)"] == 0  # ... so no asyncio traceback, nor any other unstructured line
    assert size < 1_000_000


async def test_accept_running_out_of_descriptors_is_one_line_per_interval_not_a_traceback_each_time() -> None:
    loop = asyncio.get_running_loop()
    previous = loop.get_exception_handler()
    quiet_accept_errors(loop, every=0.2)
    context = {"message": "socket.accept() out of system resource", "exception": OSError(24, "Too many open files")}
    try:
        with capture_logs() as logs:
            for _ in range(1000):
                loop.call_exception_handler(context)
            await asyncio.sleep(0.3)
    finally:
        loop.set_exception_handler(previous)
    assert [(e["event"], e.get("failures")) for e in logs] == [
        ("accept_out_of_resources", None),
        ("accept_out_of_resources", 999),
    ]
