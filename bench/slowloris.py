"""Slowloris against the real gateway: slow sockets hold connections while well-behaved probes must get through.

Method (loopback only, bounded in sockets and seconds, stops by itself): ``bench.upstream`` as the model, the
gateway as its own process (``python -m gateway serve`` with this repository's ``config.toml``) whose open-file
limit is lowered in ``preexec_fn`` (``--open-files``, soft and hard, so start-up cannot raise it), and in this
process:

- the **attack**: ``--sockets`` connections, half sending a request's headers a byte every second (never
  finishing them), half sending complete headers of ``POST /v1/chat/completions`` and then its body a byte every
  2 s.  A socket the gateway closes is opened again after ``--reconnect-delay`` seconds, so the attack keeps
  its count up for ``--seconds``;
- the **probes**, from ``--warm-up`` seconds into the attack until its end: every 50 ms, on a fresh connection
  each, alternately ``GET /healthz`` and a chat completion (with memory), each allowed 5 s.

Printed: the share of probes answered 200 and their latency, the gateway's log (bytes, lines, the events in it),
its peak of open file descriptors against the limit, and what the attack saw.  Criterion: >= 95% of probes
succeed and the log stays under 1 MB.  ``tests/process/test_connections.py`` runs a small version of it.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import json
import resource
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp

from bench.load import quantile
from bench.serving import REPO, server

PYTHON = sys.executable
_HEADER_START = b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: "
_BODY_LENGTH = 10_000
_BODY_HEADERS = (
    b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer slow\r\n"
    b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n{" % _BODY_LENGTH
)


@dataclass
class AttackSeen:
    opened: int = 0
    connect_failures: int = 0
    closed_by_gateway: int = 0  # without an answer: refused, evicted, or past the header deadline
    answered: collections.Counter[int] = field(default_factory=collections.Counter)  # status -> count


@dataclass
class Probes:
    latencies: list[float] = field(default_factory=list)  # seconds, answered 200
    failures: collections.Counter[str] = field(default_factory=collections.Counter)

    @property
    def sent(self) -> int:
        return len(self.latencies) + sum(self.failures.values())

    @property
    def success(self) -> float:
        return len(self.latencies) / self.sent if self.sent else float("nan")


def limit_open_files(count: int) -> Callable[[], None]:
    """A ``preexec_fn`` that gives the child ``count`` open files, soft and hard."""

    def lower() -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (count, count))

    return lower


async def _slow_socket(port: int, body: bool, deadline: float, reconnect_delay: float, seen: AttackSeen) -> None:
    """One attacking socket, opened again each time the gateway closes it, until ``deadline``."""
    loop = asyncio.get_running_loop()
    interval = 2.0 if body else 1.0
    while loop.time() < deadline:
        try:
            reader, writer = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port), 3)
        except (OSError, TimeoutError):
            seen.connect_failures += 1
            await asyncio.sleep(min(reconnect_delay, max(0.0, deadline - loop.time())))
            continue
        seen.opened += 1
        closed = asyncio.create_task(reader.read(200))  # the gateway's answer, or b"" when it just closes
        try:
            writer.write(_BODY_HEADERS if body else _HEADER_START)
            while loop.time() < deadline:
                done, _ = await asyncio.wait([closed], timeout=min(interval, max(0.0, deadline - loop.time())))
                if done:
                    break
                writer.write(b" " if body else b"x")
        except OSError:
            pass
        if closed.done() and not closed.cancelled() and closed.exception() is None:
            head = closed.result()
            if head.startswith(b"HTTP/1.1 "):
                seen.answered[int(head[9:12])] += 1
            else:
                seen.closed_by_gateway += 1
        else:
            closed.cancel()
        writer.close()
        await asyncio.sleep(min(reconnect_delay, max(0.0, deadline - loop.time())))


async def attack(
    port: int, sockets: int, seconds: float, *, reconnect_delay: float = 0.5, body_share: float = 0.5
) -> AttackSeen:
    """``sockets`` slow sockets for ``seconds``; what they saw."""
    seen = AttackSeen()
    deadline = asyncio.get_running_loop().time() + seconds
    bodies = round(sockets * body_share)
    await asyncio.gather(
        *(_slow_socket(port, n < bodies, deadline, reconnect_delay, seen) for n in range(sockets)),
        return_exceptions=False,
    )
    return seen


async def probe(base: str, seconds: float, *, every: float = 0.05, timeout: float = 5.0) -> Probes:
    """Well-behaved requests on fresh connections, alternately /healthz and a chat turn, for ``seconds``."""
    probes = Probes()
    chat = {"model": "qwen-plus", "messages": [{"role": "user", "content": "Is the 6.7 inch in stock?"}]}
    connector = aiohttp.TCPConnector(force_close=True, limit=0)
    async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=timeout)) as session:

        async def one(n: int) -> None:
            sent = time.perf_counter()
            try:
                if n % 2:
                    headers = {"Authorization": "Bearer probe", "X-Conversation-Id": f"probe-{n}"}
                    request = session.post(f"{base}/v1/chat/completions", json=chat, headers=headers)
                else:
                    request = session.get(f"{base}/healthz")
                async with request as response:
                    await response.read()
                    if response.status == 200:
                        probes.latencies.append(time.perf_counter() - sent)
                    else:
                        probes.failures[f"http_{response.status}"] += 1
            except TimeoutError:
                probes.failures["timeout"] += 1
            except aiohttp.ClientError as exc:
                probes.failures[type(exc).__name__] += 1

        tasks = []
        loop = asyncio.get_running_loop()
        started = loop.time()
        for n in range(int(seconds / every)):
            tasks.append(asyncio.create_task(one(n)))
            await asyncio.sleep(max(0.0, started + (n + 1) * every - loop.time()))
        await asyncio.gather(*tasks)
    return probes


def open_descriptors(pid: int) -> int:
    try:
        return len(list(Path(f"/proc/{pid}/fd").iterdir()))
    except OSError:
        return -1


async def peak_descriptors(pid: int, seconds: float) -> int:
    peak = 0
    deadline = asyncio.get_running_loop().time() + seconds
    while asyncio.get_running_loop().time() < deadline:
        peak = max(peak, open_descriptors(pid))
        await asyncio.sleep(0.1)
    return peak


def log_figures(log: Path) -> tuple[int, int, collections.Counter[str], collections.Counter[str]]:
    """The log's size in bytes, its lines, and how many lines and bytes of each event (request lines by status;
    lines that are not JSON, such as tracebacks, count as "(text)")."""
    text = log.read_bytes()
    events: collections.Counter[str] = collections.Counter()
    sizes: collections.Counter[str] = collections.Counter()
    lines = text.splitlines()
    for line in lines:
        try:
            event = json.loads(line)
            name = event.get("event", "?")
            name = f"{name} {event['status']}" if name == "request" else name
        except (ValueError, KeyError, AttributeError):
            name = "(text)"
        events[name] += 1
        sizes[name] += len(line) + 1
    return len(text), len(lines), events, sizes


def _ms(values: list[float], fraction: float) -> float:
    return quantile(values, fraction) * 1000


async def _run(args: argparse.Namespace, workdir: Path) -> str:
    with server([PYTHON, "-m", "bench.upstream"], workdir / "upstream.log", "port ") as (up_port, _):
        gateway_args = [PYTHON, "-m", "gateway", "serve", "--config", str(REPO / "config.toml"), "--port", "0"]
        gateway_args += ["--db", str(workdir / "slowloris.db"), "--upstream-base-url", f"http://127.0.0.1:{up_port}/v1"]
        log = workdir / "gateway.log"
        with server(gateway_args, log, '"server_started"', preexec_fn=limit_open_files(args.open_files)) as (
            port,
            pid,
        ):
            started = time.perf_counter()
            attacking = asyncio.create_task(
                attack(port, args.sockets, args.seconds, reconnect_delay=args.reconnect_delay)
            )
            peak = asyncio.create_task(peak_descriptors(pid, args.seconds))
            await asyncio.sleep(args.warm_up)
            probes = await probe(f"http://127.0.0.1:{port}", args.seconds - args.warm_up)
            seen, fd_peak = await attacking, await peak
            elapsed = time.perf_counter() - started
            size, lines, events, sizes = log_figures(log)
    limit_line = next((json.loads(line) for line in log.read_text().splitlines() if "open_files_limit" in line), {})
    criteria = probes.success >= 0.95 and size < 1_000_000
    return "\n".join(
        [
            "## Slowloris",
            "",
            f"{args.sockets} slow sockets (half headers a byte a second, half bodies a byte every 2 s, reopened "
            f"{args.reconnect_delay:g} s after the gateway closes them) for {elapsed:.0f} s against the gateway "
            f"limited to {args.open_files} open files (max_connections {limit_line.get('max_connections', '?')}).",
            "",
            f"- probes: {len(probes.latencies)}/{probes.sent} answered 200 ({probes.success:.1%}); latency p50 "
            f"{_ms(probes.latencies, 0.5):.1f} ms, p99 {_ms(probes.latencies, 0.99):.1f} ms; failures "
            f"{dict(probes.failures) or 'none'}",
            f"- gateway log: {size:,} bytes, {lines} lines; by event: "
            + ", ".join(f"{name} {count} ({sizes[name]:,} bytes)" for name, count in events.most_common()),
            f"- gateway open files: peak {fd_peak} of {args.open_files}",
            f"- the attack: {seen.opened} connections opened, {seen.closed_by_gateway} closed by the gateway without "
            f"an answer, answers {dict(seen.answered) or 'none'}, {seen.connect_failures} connects failed",
            "",
            f"Criterion (>= 95% of probes answered, log under 1 MB): {'met' if criteria else 'MISSED'}.",
        ]
    )


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.slowloris", description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--sockets", type=int, default=1100)
    parser.add_argument("--open-files", type=int, default=1024)
    parser.add_argument("--seconds", type=float, default=45.0)
    parser.add_argument("--warm-up", type=float, default=5.0, help="seconds of attack before the probes start")
    parser.add_argument("--reconnect-delay", type=float, default=0.5)
    args = parser.parse_args()
    if not 0 < args.warm_up < args.seconds <= 300 or not 0 < args.sockets <= 5000:
        parser.error("need 0 < --warm-up < --seconds <= 300 and 0 < --sockets <= 5000")
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < args.sockets + 256:  # this process holds every slow socket and the probes
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, args.sockets + 1024), hard))
    with tempfile.TemporaryDirectory(prefix="gateway-slowloris-") as tmp:
        print(asyncio.run(_run(args, Path(tmp))))


if __name__ == "__main__":
    main()
