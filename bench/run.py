"""``make bench``: direct, floor, gateway and gateway-with-memory measured in one run on one machine.

Method: a fast fake upstream (``bench.upstream``), a do-nothing aiohttp pass-through proxy (``bench.floor``) and the
gateway (``python -m gateway serve`` with the repository's ``config.toml`` and a fresh SQLite file) run as separate
processes on loopback.  The load generator (``bench.load``) drives each target in turn, in rounds whose order
rotates so that drift in the machine's speed spreads evenly: first one request at a time (latency), then 32 at a
time for a fixed duration (throughput).  "Added" latency is a target's percentile minus the direct one.  CPU per
request is the proxy process's own CPU time (user + system, all threads) during the throughput phases.

Results go to stdout and to ``bench/results/latest.md``.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import os
import platform
import sqlite3
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from bench.load import Load, Result, run_load
from bench.serving import server

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "bench" / "results" / "latest.md"
TARGETS = ("direct", "floor", "gateway", "memory")
LABELS = {
    "direct": "direct to upstream",
    "floor": "floor: aiohttp pass-through",
    "gateway": "gateway, no X-Conversation-Id",
    "memory": "gateway with memory",
}
_RUNS = itertools.count()


@dataclass(frozen=True)
class Plan:
    rounds: int
    latency_requests: int
    throughput_seconds: float
    concurrency: int
    conversations: int
    turns: int


@dataclass(frozen=True)
class Target:
    url: str
    proxy_pid: int | None  # the process between client and upstream, if any


@dataclass
class Measured:
    latency: Result = field(default_factory=Result)
    throughput: Result = field(default_factory=Result)
    cpu_seconds: float = 0.0  # proxy process, throughput phases

    @property
    def cpu_us_per_request(self) -> float | None:
        served = len(self.throughput.latencies)
        return self.cpu_seconds / served * 1e6 if served and self.cpu_seconds else None


def _cpu_seconds(pid: int | None) -> float:
    """User + system CPU time of a process (Linux /proc); 0.0 where that is not available."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    except (OSError, TypeError):
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@contextmanager
def _targets(workdir: Path) -> Iterator[dict[str, Target]]:
    python = sys.executable
    with server([python, "-m", "bench.upstream"], workdir / "upstream.log", "port ") as (up_port, _):
        upstream = f"http://127.0.0.1:{up_port}/v1"
        with server([python, "-m", "bench.floor", upstream], workdir / "floor.log", "port ") as (floor_port, floor):
            gateway_args = [python, "-m", "gateway", "serve", "--config", str(REPO / "config.toml")]
            gateway_args += ["--host", "127.0.0.1", "--port", "0", "--db", str(workdir / "bench.db")]
            gateway_args += ["--upstream-base-url", upstream]
            with server(gateway_args, workdir / "gateway.log", '"server_started"') as (gw_port, gateway):
                gateway_url = f"http://127.0.0.1:{gw_port}/v1/chat/completions"
                yield {
                    "direct": Target(f"{upstream}/chat/completions", None),
                    "floor": Target(f"http://127.0.0.1:{floor_port}/v1/chat/completions", floor),
                    "gateway": Target(gateway_url, gateway),
                    "memory": Target(gateway_url, gateway),
                }


async def _measure(targets: dict[str, Target], plan: Plan) -> dict[str, Measured]:
    measured = {name: Measured() for name in TARGETS}
    for name in TARGETS:  # warm up connections, code paths and the database
        await run_load(targets[name].url, _load(name, plan, concurrency=4, requests=200))
    for round_no in range(plan.rounds):
        shift = round_no % len(TARGETS)
        for name in TARGETS[shift:] + TARGETS[:shift]:
            target, m = targets[name], measured[name]
            latency = await run_load(target.url, _load(name, plan, concurrency=1, requests=plan.latency_requests))
            cpu_before = _cpu_seconds(target.proxy_pid)
            throughput = await run_load(
                target.url, _load(name, plan, concurrency=plan.concurrency, seconds=plan.throughput_seconds)
            )
            m.cpu_seconds += _cpu_seconds(target.proxy_pid) - cpu_before
            m.latency.merge(latency)
            m.throughput.merge(throughput)
            print(
                f"  round {round_no + 1}/{plan.rounds} {name:8} p50 {latency.percentile(0.5):6.3f} ms"
                f"  {throughput.requests_per_second:7.0f} req/s",
                flush=True,
            )
    return measured


def _load(
    name: str, plan: Plan, *, concurrency: int, requests: int | None = None, seconds: float | None = None
) -> Load:
    conversations = plan.conversations if name == "memory" else 0
    prefix = f"bench-{next(_RUNS)}"  # every load starts fresh conversations
    return Load(concurrency, requests, seconds, conversations, plan.turns, prefix)


def _stored(db: Path) -> tuple[int, int]:
    with sqlite3.connect(db) as conn:
        conversations = conn.execute("SELECT count(*) FROM conversations").fetchone()[0]
        messages = conn.execute("SELECT count(*) FROM messages").fetchone()[0]
    return int(conversations), int(messages)


def _report(measured: dict[str, Measured], plan: Plan, stored: tuple[int, int]) -> str:
    direct = measured["direct"].latency
    c = plan.concurrency
    lines = [
        f"Machine: {os.cpu_count()} CPUs, {platform.machine()}, Python {platform.python_version()}, "
        f"{platform.system()} {platform.release()}",
        f"Plan: {plan.rounds} rounds; latency = {plan.latency_requests} sequential requests per target and round; "
        f"throughput = {c} concurrent for {plan.throughput_seconds:g} s per target and round; memory: round-robin "
        f"over {plan.conversations} active conversations of {plan.turns} turns each.",
        "",
        f"| target | p50 ms (c=1) | p99 ms (c=1) | added p50 ms | added p99 ms | req/s (c={c}) | p99 ms (c={c}) "
        f"| proxy CPU us/req (c={c}) | errors |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name in TARGETS:
        m = measured[name]
        lat, thr = m.latency, m.throughput
        cpu = m.cpu_us_per_request
        added50, added99 = lat.percentile(0.5) - direct.percentile(0.5), lat.percentile(0.99) - direct.percentile(0.99)
        lines.append(
            f"| {LABELS[name]} | {lat.percentile(0.5):.3f} | {lat.percentile(0.99):.3f} | {added50:.3f} "
            f"| {added99:.3f} "
            f"| {thr.requests_per_second:.0f} | {thr.percentile(0.99):.2f} | {f'{cpu:.0f}' if cpu else '-'} "
            f"| {lat.errors + thr.errors} |"
        )
    lines += ["", *_verdicts(measured), f"- Stored after the run: {stored[0]} conversations, {stored[1]} messages."]
    return "\n".join(lines) + "\n"


def _verdicts(measured: dict[str, Measured]) -> list[str]:
    direct_p50 = measured["direct"].latency.percentile(0.5)
    floor_added = measured["floor"].latency.percentile(0.5) - direct_p50
    memory_added = measured["memory"].latency.percentile(0.5) - direct_p50
    ratio = memory_added / floor_added if floor_added > 0 else float("inf")
    rps_ratio = measured["memory"].throughput.requests_per_second / measured["floor"].throughput.requests_per_second
    errors = sum(m.latency.errors + m.throughput.errors for m in measured.values())
    return [
        f"- Memory path added p50 at c=1: {memory_added:.3f} ms = {ratio:.2f}x the floor's {floor_added:.3f} ms "
        f"(target <= 1.5x): {'met' if ratio <= 1.5 else 'MISSED'}",
        f"- Memory path throughput at c=32: {rps_ratio:.2f}x the floor's (target >= 0.7x): "
        f"{'met' if rps_ratio >= 0.7 else 'MISSED'}",
        f"- Errors: {errors} (target 0): {'met' if errors == 0 else 'MISSED'}",
    ]


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.run", description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a short run, to check that the harness works")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--requests", type=int, default=1000, help="sequential requests per target and round")
    parser.add_argument("--seconds", type=float, default=4.0, help="throughput phase length per target and round")
    parser.add_argument("--conversations", type=int, default=1000, help="active conversations at a time")
    parser.add_argument("--turns", type=int, default=8, help="turns per conversation")
    args = parser.parse_args()
    if args.quick:
        plan = Plan(rounds=1, latency_requests=200, throughput_seconds=1.0, concurrency=32, conversations=100, turns=8)
    else:
        plan = Plan(args.rounds, args.requests, args.seconds, 32, args.conversations, args.turns)
    with tempfile.TemporaryDirectory(prefix="gateway-bench-") as tmp:
        workdir = Path(tmp)
        with _targets(workdir) as targets:
            measured = asyncio.run(_measure(targets, plan))
        report = _report(measured, plan, _stored(workdir / "bench.db"))
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(report)
    print("\n" + report + f"\n(written to {RESULTS.relative_to(REPO)})")


if __name__ == "__main__":
    main()
