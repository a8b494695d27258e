"""``make bench``, second part: streaming, long histories in a large database, and a soak with injected faults.

- **Streaming**: 200 streams (20 chunks, 10 ms apart, from ``bench.upstream``) read with a small aiohttp SSE
  client, one at a time, direct and through the gateway with memory: added time to first byte (p50/p99) and added
  gap between chunks (p50/p99 of each stream's chunk-to-chunk gaps).  No buffering shows as gaps that match.
- **Long history, big database**: a database holding 100,000 conversations plus one of 1,000 turns (2,000
  messages), written straight into the gateway's schema; then, one request at a time, turns on fresh conversations
  and turns on the long one (its first turn reads the history from disk, the rest from the cache).
- **Overload**: ``upstream.max_in_flight`` requests held by a slow upstream, then a burst of 2,000 connections
  at once, each with a chat request: every one must get the 503 at once.  Its server-side latency is each 503's
  ``duration_ms`` in the gateway's log (from its headers parsed to its response written), p50/p99/max;
  criterion p99 <= 50 ms.  The client-side figures include waiting in the kernel's accept queue.
- **Soak**: the gateway at ~60% of its maximum throughput (measured first, memory path, 32 concurrent) for
  ``--soak-seconds`` with 10% of upstream answers failing (a 500, which the gateway retries); every 5 s the
  gateway's resident memory and open file descriptors are sampled; over the second half of the run (the first is
  warm-up, in which the history cache fills to its bound), memory growth is the slope of a least-squares line, in
  MiB per minute.

Results go to stdout and ``bench/results/operations.md``.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import hashlib
import json
import platform
import sqlite3
import statistics
import sys
import tempfile
import time
import tomllib
from pathlib import Path

import aiohttp

from bench.load import Load, quantile, run_load
from bench.serving import REPO, server

RESULTS = REPO / "bench" / "results" / "operations.md"
OVERLOAD_BURST = 2000
PYTHON = sys.executable
LONG_KEY = "bench-long"
_INSERT_CONVERSATION = (
    "INSERT INTO conversations (owner, external_id, created_at, updated_at, message_count) VALUES (?, ?, ?, ?, ?)"
)


def _ms(values: list[float], fraction: float) -> float:
    return quantile(values, fraction) * 1000


async def _streams(url: str, count: int, conversation: bool) -> tuple[list[float], list[float]]:
    """Time to first byte of each stream and every gap between chunks, in seconds."""
    first, gaps = [], []
    body = {"model": "qwen-plus", "stream": True, "messages": [{"role": "user", "content": "describe the phones"}]}
    async with aiohttp.ClientSession() as session:
        for n in range(count):
            headers = {"Authorization": "Bearer bench-key"}
            if conversation:
                headers["X-Conversation-Id"] = f"stream-{n}"
            sent = time.perf_counter()
            async with session.post(url, json=body, headers=headers) as response:
                last = None
                async for _ in response.content.iter_any():
                    now = time.perf_counter()
                    if last is None:
                        first.append(now - sent)
                    else:
                        gaps.append(now - last)
                    last = now
    return first, gaps


def _populate(db: Path, conversations: int, long_turns: int) -> None:
    """Conversations straight into the gateway's schema (the database was migrated by a gateway start)."""
    now = time.time()
    with sqlite3.connect(db) as conn:
        conn.executemany(
            _INSERT_CONVERSATION, ((f"{n % 1000:064x}", f"filler-{n}", now, now, 1) for n in range(conversations))
        )
        conn.execute(
            "INSERT INTO messages (conversation_id, seq, role, body, created_at) "
            'SELECT id, 0, \'user\', \'{"role":"user","content":"hi"}\', created_at FROM conversations '
            "WHERE external_id LIKE 'filler-%'"
        )
        owner = hashlib.sha256(LONG_KEY.encode()).hexdigest()  # what the gateway makes of that bearer key
        conn.execute(_INSERT_CONVERSATION, (owner, "long", now, now, 2 * long_turns))
        (row_id,) = conn.execute("SELECT id FROM conversations WHERE external_id = 'long'").fetchone()
        conn.executemany(
            "INSERT INTO messages (conversation_id, seq, role, body, created_at) VALUES (?, ?, ?, ?, ?)",
            (
                (row_id, seq, role, json.dumps({"role": role, "content": f"{role} message {seq} about phones"}), now)
                for seq in range(2 * long_turns)
                for role in ["user" if seq % 2 == 0 else "assistant"]
            ),
        )


async def _turns(url: str, conversation: str | None, count: int, key: str) -> list[float]:
    latencies = []
    async with aiohttp.ClientSession() as session:
        for n in range(count):
            headers = {"Authorization": f"Bearer {key}", "X-Conversation-Id": conversation or f"fresh-{n}"}
            body = {"model": "qwen-plus", "messages": [{"role": "user", "content": f"and the 6.7 inch? ({n})"}]}
            sent = time.perf_counter()
            async with session.post(url, json=body, headers=headers) as response:
                await response.read()
                assert response.status == 200, response.status
            latencies.append(time.perf_counter() - sent)
    return latencies


def _rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def _fds(pid: int) -> int:
    return len(list(Path(f"/proc/{pid}/fd").iterdir()))


async def _paced(url: str, rate: float, seconds: float) -> tuple[int, int]:
    """Requests at ``rate`` per second (open loop, at most 256 outstanding); returns (ok, failed)."""
    ok = failed = 0
    outstanding = asyncio.Semaphore(256)
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=256)) as session:

        async def one(n: int) -> None:
            nonlocal ok, failed
            headers = {"Authorization": "Bearer soak", "X-Conversation-Id": f"soak-{n // 8}-{n % 500}"}
            body = {"model": "qwen-plus", "messages": [{"role": "user", "content": f"soak turn {n}"}]}
            try:
                async with session.post(url, json=body, headers=headers) as response:
                    await response.read()
                    ok, failed = (ok + 1, failed) if response.status == 200 else (ok, failed + 1)
            except aiohttp.ClientError:
                failed += 1
            finally:
                outstanding.release()

        started, tasks, n = time.perf_counter(), set(), 0
        while (elapsed := time.perf_counter() - started) < seconds:
            if n < elapsed * rate:
                await outstanding.acquire()
                task = asyncio.create_task(one(n))
                tasks.add(task)
                task.add_done_callback(tasks.discard)
                n += 1
            else:
                await asyncio.sleep(min(0.002, n / rate - elapsed))
        await asyncio.gather(*tasks)
    return ok, failed


async def _soak(url: str, pid: int, seconds: float) -> dict[str, float]:
    peak = await run_load(url, Load(concurrency=32, seconds=3.0, conversations=500, id_prefix="peak"))
    rate = 0.6 * peak.requests_per_second
    samples: list[tuple[float, float, int]] = []
    started = time.perf_counter()

    async def sample() -> None:
        while True:
            samples.append((time.perf_counter() - started, _rss_mib(pid), _fds(pid)))
            await asyncio.sleep(5)

    sampler = asyncio.create_task(sample())
    ok, failed = await _paced(url, rate, seconds)
    sampler.cancel()
    # Warm-up: the history cache (storage.cache_messages) fills during the first part of the run, by design.
    warm = [(t, rss, fd) for t, rss, fd in samples if t >= max(30.0, seconds / 2)] or samples
    times, rss = [t / 60 for t, _, _ in warm], [r for _, r, _ in warm]
    slope = statistics.linear_regression(times, rss).slope if len(warm) > 1 else float("nan")
    return {
        "rate": rate,
        "ok": ok,
        "failed": failed,
        "rss_start": warm[0][1],
        "rss_end": warm[-1][1],
        "slope": slope,
        "fd_min": min(fd for _, _, fd in warm),
        "fd_max": max(fd for _, _, fd in warm),
    }


async def _run(workdir: Path, soak_seconds: float, part: str) -> str:
    lines = ["## Operations", ""]
    if part == "all":
        lines += await _streaming_and_history(workdir)
    if part in ("all", "overload"):
        lines += await _overload(workdir, OVERLOAD_BURST)
    if part in ("all", "soak"):
        lines.append(await _soak_line(workdir, soak_seconds))
    return "\n".join(lines)


def _max_in_flight() -> int:
    with (REPO / "config.toml").open("rb") as f:
        return int(tomllib.load(f).get("upstream", {}).get("max_in_flight", 512))


async def _until_in_flight(session: aiohttp.ClientSession, base: str, count: int) -> None:
    """Wait (at most 30 s) until ``count`` requests are in flight, besides the /metrics request asking."""
    for _ in range(300):
        async with session.get(f"{base}/metrics") as response:
            text = await response.text()
        gauge = [line for line in text.splitlines() if line.startswith("gateway_in_flight_requests ")]
        if gauge and float(gauge[0].split()[-1]) >= count + 1:
            return
        await asyncio.sleep(0.1)
    raise SystemExit(f"bench: the gateway never had {count} requests in flight")


async def _overload(workdir: Path, burst: int) -> list[str]:
    held_count = _max_in_flight()
    body = {"model": "qwen-plus", "messages": [{"role": "user", "content": "is the 6.7 inch in stock?"}]}
    headers = {"Authorization": "Bearer overload"}
    with server([PYTHON, "-m", "bench.upstream", "--delay", "60"], workdir / "slow.log", "port ") as (up_port, _):
        gateway_args = [PYTHON, "-m", "gateway", "serve", "--config", str(REPO / "config.toml"), "--port", "0"]
        gateway_args += ["--db", str(workdir / "overload.db"), "--upstream-base-url", f"http://127.0.0.1:{up_port}/v1"]
        log = workdir / "overload.log"
        with server(gateway_args, log, '"server_started"') as (gw_port, _):
            base = f"http://127.0.0.1:{gw_port}"
            url = f"{base}/v1/chat/completions"
            timeout = aiohttp.ClientTimeout(total=90)
            async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0), timeout=timeout) as holder:

                async def held() -> None:
                    async with holder.post(url, json=body, headers=headers) as response:
                        await response.read()

                holding = [asyncio.create_task(held()) for _ in range(held_count)]
                await _until_in_flight(holder, base, held_count)
                statuses: collections.Counter[int] = collections.Counter()
                client: list[float] = []
                connector = aiohttp.TCPConnector(limit=0, force_close=True)
                async with aiohttp.ClientSession(connector=connector, timeout=timeout) as burster:

                    async def one() -> None:
                        sent = time.perf_counter()
                        try:
                            async with burster.post(url, json=body, headers=headers) as response:
                                await response.read()
                                statuses[response.status] += 1
                        except aiohttp.ClientError as exc:
                            statuses[-1] += 1
                            print(f"bench: overload burst: {exc!r}", file=sys.stderr)
                        client.append(time.perf_counter() - sent)

                    await asyncio.gather(*(one() for _ in range(burst)))
                for task in holding:  # hanging up aborts their upstream calls
                    task.cancel()
                await asyncio.gather(*holding, return_exceptions=True)
    server_side = [
        event["duration_ms"] / 1000
        for event in map(json.loads, (line for line in log.read_text().splitlines() if line.startswith("{")))
        if event.get("event") == "request" and event.get("status") == 503 and event.get("error_code") == "overloaded"
    ]
    p99 = _ms(server_side, 0.99)
    return [
        f"| overload: {burst} connections at once, {held_count} requests in flight | p50 ms | p99 ms | max ms |",
        "|---|---:|---:|---:|",
        f"| 503 server-side (log duration_ms, {len(server_side)} of them) | {_ms(server_side, 0.5):.2f} "
        f"| {p99:.2f} | {max(server_side, default=float('nan')) * 1000:.2f} |",
        f"| 503 client-side (connect included) | {_ms(client, 0.5):.2f} | {_ms(client, 0.99):.2f} "
        f"| {max(client, default=float('nan')) * 1000:.2f} |",
        "",
        f"Overload answers: {dict(sorted(statuses.items()))} (-1: connection error), gateway on Python "
        f"{platform.python_version()}. Criterion server-side p99 <= 50 ms: {'met' if p99 <= 50 else 'MISSED'}.",
        "",
    ]


async def _streaming_and_history(workdir: Path) -> list[str]:
    lines: list[str] = []
    up_args = [PYTHON, "-m", "bench.upstream", "--fault-rate", "0"]
    with server(up_args, workdir / "upstream.log", "port ") as (up_port, _):
        upstream = f"http://127.0.0.1:{up_port}/v1"
        db = workdir / "ops.db"
        gateway_args = [PYTHON, "-m", "gateway", "serve", "--config", str(REPO / "config.toml"), "--port", "0"]
        gateway_args += ["--db", str(db), "--upstream-base-url", upstream]
        with server(gateway_args, workdir / "gateway.log", '"server_started"') as (gw_port, _):
            gw = f"http://127.0.0.1:{gw_port}/v1/chat/completions"
            direct_first, direct_gaps = await _streams(f"{upstream}/chat/completions", 200, conversation=False)
            first, gaps = await _streams(gw, 200, conversation=True)
        lines += [
            "| streaming (200 streams, 20 chunks 10 ms apart) | p50 ms | p99 ms |",
            "|---|---:|---:|",
            f"| time to first byte, direct | {_ms(direct_first, 0.5):.2f} | {_ms(direct_first, 0.99):.2f} |",
            f"| time to first byte, gateway with memory | {_ms(first, 0.5):.2f} | {_ms(first, 0.99):.2f} |",
            f"| added time to first byte | {_ms(first, 0.5) - _ms(direct_first, 0.5):.2f} "
            f"| {_ms(first, 0.99) - _ms(direct_first, 0.99):.2f} |",
            f"| gap between chunks, direct | {_ms(direct_gaps, 0.5):.2f} | {_ms(direct_gaps, 0.99):.2f} |",
            f"| gap between chunks, gateway | {_ms(gaps, 0.5):.2f} | {_ms(gaps, 0.99):.2f} |",
            f"| added gap | {_ms(gaps, 0.5) - _ms(direct_gaps, 0.5):.2f} "
            f"| {_ms(gaps, 0.99) - _ms(direct_gaps, 0.99):.2f} |",
            "",
        ]
        _populate(db, 100_000, 1000)
        with server(gateway_args, workdir / "gateway2.log", '"server_started"') as (gw_port, _):
            gw = f"http://127.0.0.1:{gw_port}/v1/chat/completions"
            fresh = await _turns(gw, None, 200, LONG_KEY)
            cold = await _turns(gw, "long", 1, LONG_KEY)
            warm = await _turns(gw, "long", 200, LONG_KEY)
        lines += [
            "| database of 100,000 conversations, one request at a time | p50 ms | p99 ms |",
            "|---|---:|---:|",
            f"| turn on a fresh conversation | {_ms(fresh, 0.5):.2f} | {_ms(fresh, 0.99):.2f} |",
            f"| first turn on the 1,000-turn conversation (history read from disk) | {cold[0] * 1000:.2f} | |",
            f"| later turns on it (1,000-1,200 turns, from the cache) | {_ms(warm, 0.5):.2f} | {_ms(warm, 0.99):.2f} |",
            "",
        ]
    return lines


async def _soak_line(workdir: Path, soak_seconds: float) -> str:
    faulty_args = [PYTHON, "-m", "bench.upstream", "--fault-rate", "0.1"]
    with server(faulty_args, workdir / "faulty.log", "port ") as (up_port, _):
        gateway_args = [PYTHON, "-m", "gateway", "serve", "--config", str(REPO / "config.toml"), "--port", "0"]
        gateway_args += ["--db", str(workdir / "soak.db"), "--upstream-base-url", f"http://127.0.0.1:{up_port}/v1"]
        with server(gateway_args, workdir / "soak.log", '"server_started"') as (gw_port, pid):
            soak = await _soak(f"http://127.0.0.1:{gw_port}/v1/chat/completions", pid, soak_seconds)
    return (
        f"Soak: {soak_seconds:.0f} s at {soak['rate']:.0f} req/s (60% of the measured maximum), 10% of upstream "
        f"answers a 500: {soak['ok']} answered 200, {soak['failed']} failed (a fault that repeated on every "
        f"attempt). Resident memory over the second half: {soak['rss_start']:.1f} -> {soak['rss_end']:.1f} MiB, "
        f"slope {soak['slope']:+.2f} MiB/min; open file descriptors {soak['fd_min']}-{soak['fd_max']}."
    )


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.operations", description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--soak-seconds", type=float, default=180.0)
    parser.add_argument("--soak-only", action="store_true", help="run only the soak")
    parser.add_argument("--overload-only", action="store_true", help="run only the overload burst")
    args = parser.parse_args()
    part = "soak" if args.soak_only else "overload" if args.overload_only else "all"
    with tempfile.TemporaryDirectory(prefix="gateway-ops-") as tmp:
        report = asyncio.run(_run(Path(tmp), args.soak_seconds, part))
    results = RESULTS if part == "all" else RESULTS.with_name(f"{part}.md")
    results.parent.mkdir(parents=True, exist_ok=True)
    results.write_text(report + "\n")
    print("\n" + report + f"\n\n(written to {results.relative_to(REPO)})")


if __name__ == "__main__":
    main()
