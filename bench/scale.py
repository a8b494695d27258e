"""``python -m bench.scale``: the memory path on PostgreSQL beside SQLite, and more processes: 1 vs 2 workers on
SQLite, 1 vs 3 replicas on PostgreSQL behind HAProxy, each beside the floor proxy run with the same number of
processes (and behind the same balancer), plus the hand-over time of turns on one hot conversation.

Method: as ``bench.run`` (closed-loop load from ``bench.load``, a fresh database per target, one fake upstream):
for each target, ``--requests`` sequential turns (latency, c=1) then 32 concurrent clients for ``--seconds``
(throughput), over round-robin conversations of 8 turns.  "Added" latency is a target's percentile minus the
direct one.  CPU per turn is the gateway processes' own CPU (all workers or replicas) over the throughput phase;
for PostgreSQL also the database server's processes, and the statements and transactions per turn it counted
(``pg_stat_statements``, ``pg_stat_database``): each statement the gateway sends is one round trip.
Hand-over: 8 clients all on one conversation, whose turns then run strictly one after another: the time per turn
is the lock's hold time plus its hand-over.  Within one process the hand-over is an ``asyncio.Lock``'s (next to
nothing); the difference of a multi-process target from the one-process target of the same backend is what
handing the lock across processes adds (a lock released by one worker or replica and taken by another).

This machine has 2 cores, shared by the load generator, the fake upstream, the balancer, PostgreSQL and the
gateway's processes: more processes cannot show more throughput here; what they show is what each extra process
costs and that the path stays correct.  Results go to stdout and ``bench/results/scale.md``.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import sys
import tempfile
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from bench.load import Load, Result, run_load
from bench.run import REPO
from bench.serving import server
from tests.balancer import balancer
from tests.postgres import PostgresServer, pg_bin

RESULTS = REPO / "bench" / "results" / "scale.md"


@dataclass(frozen=True)
class Plan:
    requests: int
    seconds: float
    concurrency: int = 32
    conversations: int = 200
    turns: int = 8
    hot_clients: int = 8


@dataclass
class Row:
    label: str
    processes: int
    latency: Result = field(default_factory=Result)
    throughput: Result = field(default_factory=Result)
    cpu_us: float | None = None  # gateway (or floor) processes per turn
    db_cpu_us: float | None = None  # the database server per turn (PostgreSQL)
    statements: float | None = None  # per turn (PostgreSQL)
    transactions: float | None = None  # per turn (PostgreSQL)
    hot: Result | None = None  # one conversation, hot_clients at once
    backend: str = ""  # "sqlite" / "pg" for the gateway rows

    @property
    def serial_ms(self) -> float | None:
        """Time per turn while hot_clients queue on one conversation: the lock's hold time plus its hand-over."""
        return 1000 / self.hot.requests_per_second if self.hot and self.hot.requests_per_second else None


def _cpu_seconds(pids: list[int]) -> float:
    total = 0.0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
        except OSError:
            continue
        total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return total


def _tree(pid: int) -> list[int]:
    """``pid`` and all its descendants (a gateway's workers, a floor's forks, PostgreSQL's backends)."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rpartition(")")[2].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    found, todo = [], [pid]
    while todo:
        current = todo.pop()
        found.append(current)
        todo.extend(children.get(current, []))
    return found


class Database:
    """The benchmark's PostgreSQL cluster, with ``pg_stat_statements`` loaded to count statements."""

    def __init__(self) -> None:
        bin_dir = pg_bin()
        if bin_dir is None:
            raise SystemExit("bench.scale: PostgreSQL is not installed (apt-get install postgresql)")
        self.server = PostgresServer(bin_dir)

    def __enter__(self) -> Database:
        self.server.init()
        with (self.server.data / "postgresql.conf").open("a") as conf:
            conf.write("\nshared_preload_libraries = 'pg_stat_statements'\n")
        self.server.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.stop()

    def fresh(self) -> str:
        url = self.server.create_database()
        self.server.psql("CREATE EXTENSION IF NOT EXISTS pg_stat_statements", url.rsplit("/", 1)[1])
        return url

    def counters(self, url: str) -> tuple[float, float]:
        """(statements, transactions) the server has counted for ``url``'s database."""
        name = url.rsplit("/", 1)[1]
        out = self.server.psql(
            "SELECT (SELECT coalesce(sum(calls), 0) FROM pg_stat_statements s JOIN pg_database d ON d.oid = s.dbid"
            f" WHERE d.datname = '{name}'), (SELECT xact_commit + xact_rollback FROM pg_stat_database"
            f" WHERE datname = '{name}')",
            name,
        )
        statements, transactions = out.strip().split("|")
        return float(statements), float(transactions)

    def pids(self) -> list[int]:
        postmaster = int((self.server.data / "postmaster.pid").read_text().split()[0])
        return _tree(postmaster)


@contextmanager
def _gateway(
    workdir: Path, name: str, upstream: str, db: str, *, workers: int = 1, replicas: int = 1, balanced: bool = False
) -> Iterator[tuple[str, list[int]]]:
    """``replicas`` gateway processes (each with ``workers``) on ``db``, behind HAProxy when ``balanced``.  Yields
    the chat URL and the root pids."""
    with ExitStack() as stack:
        ports, pids = [], []
        for i in range(replicas):
            args = [sys.executable, "-m", "gateway", "serve", "--config", str(REPO / "config.toml")]
            args += ["--host", "127.0.0.1", "--port", "0", "--db", db, "--upstream-base-url", upstream]
            args += ["--workers", str(workers)]
            port, pid = stack.enter_context(server(args, workdir / f"{name}-{i}.log", '"server_started"'))
            ports.append(port)
            pids.append(pid)
        if balanced:
            ports = [stack.enter_context(balancer(ports)).port]
        yield f"http://127.0.0.1:{ports[0]}/v1/chat/completions", pids


@contextmanager
def _floor(workdir: Path, name: str, upstream: str, processes: int, balanced: bool) -> Iterator[tuple[str, list[int]]]:
    with ExitStack() as stack:
        args = [sys.executable, "-m", "bench.floor", upstream]
        if balanced:
            ports, pids = [], []
            for i in range(processes):
                port, pid = stack.enter_context(server(args, workdir / f"{name}-{i}.log", "port "))
                ports.append(port)
                pids.append(pid)
            port = stack.enter_context(balancer(ports)).port
        else:
            port, pid = stack.enter_context(
                server([*args, "--processes", str(processes)], workdir / f"{name}.log", "port ")
            )
            pids = [pid]
        yield f"http://127.0.0.1:{port}/v1/chat/completions", pids


async def _measure(row: Row, url: str, pids: list[int], plan: Plan, memory: bool, tag: str) -> None:
    conversations = plan.conversations if memory else 0
    await run_load(url, Load(4, 200, None, conversations, plan.turns, f"{tag}-warm"))
    row.latency = await run_load(url, Load(1, plan.requests, None, conversations, plan.turns, f"{tag}-lat"))
    everyone = [p for pid in pids for p in _tree(pid)]
    before = _cpu_seconds(everyone)
    row.throughput = await run_load(
        url, Load(plan.concurrency, None, plan.seconds, conversations, plan.turns, f"{tag}-thr")
    )
    served = len(row.throughput.latencies)
    row.cpu_us = (_cpu_seconds(everyone) - before) / served * 1e6 if served else None
    if memory:
        # hot_clients all on one conversation (a fresh one every 50 turns): its turns run one after another.
        row.hot = await run_load(url, Load(plan.hot_clients, None, plan.seconds, 1, 50, f"{tag}-hot"))


async def _run(plan: Plan, workdir: Path, database: Database, only: set[str] | None) -> list[Row]:
    rows: list[Row] = []
    python = sys.executable
    with server([python, "-m", "bench.upstream"], workdir / "upstream.log", "port ") as (up_port, _):
        upstream = f"http://127.0.0.1:{up_port}/v1"
        direct = Row("direct to upstream", 0)
        await _measure(direct, f"{upstream}/chat/completions", [], plan, False, "direct")
        rows.append(direct)

        def wanted(group: str) -> bool:
            return only is None or group in only

        cases: list[tuple[str, str, dict[str, object]]] = []
        if wanted("storage") or wanted("workers"):
            cases.append(("floor: aiohttp pass-through, 1 process", "floor", {"processes": 1, "balanced": False}))
        if wanted("storage"):
            cases.append(("gateway with memory, SQLite, 1 process", "gateway", {"db": "sqlite", "workers": 1}))
            cases.append(("gateway with memory, PostgreSQL, 1 process", "gateway", {"db": "pg", "workers": 1}))
        if wanted("workers"):
            cases.append(("floor, 2 processes on one socket", "floor", {"processes": 2, "balanced": False}))
            cases.append(("gateway with memory, SQLite, --workers 2", "gateway", {"db": "sqlite", "workers": 2}))
        if wanted("replicas"):
            cases.append(("floor, 1 process behind HAProxy", "floor", {"processes": 1, "balanced": True}))
            cases.append(("floor, 3 processes behind HAProxy", "floor", {"processes": 3, "balanced": True}))
            cases.append(("gateway, PostgreSQL, 1 replica behind HAProxy", "gateway", {"db": "pg", "replicas": 1}))
            cases.append(("gateway, PostgreSQL, 3 replicas behind HAProxy", "gateway", {"db": "pg", "replicas": 3}))
        for n, (label, kind, options) in enumerate(cases):
            tag = f"case{n}"
            if kind == "floor":
                processes, balanced = int(str(options["processes"])), bool(options["balanced"])
                row = Row(label, processes)
                with _floor(workdir, tag, upstream, processes, balanced) as (url, pids):
                    await _measure(row, url, pids, plan, False, tag)
            else:
                workers, replicas = int(str(options.get("workers", 1))), int(str(options.get("replicas", 1)))
                pg = options["db"] == "pg"
                row = Row(label, workers * replicas, backend="pg" if pg else "sqlite")
                db = database.fresh() if pg else str(workdir / f"{tag}.db")
                # The replica cases sit behind a balancer even with one replica: the same hop as with three.
                balanced = "replicas" in options
                gateway = _gateway(workdir, tag, upstream, db, workers=workers, replicas=replicas, balanced=balanced)
                with gateway as (url, pids):
                    before_counts = database.counters(db) if pg else None
                    db_before = _cpu_seconds(database.pids()) if pg else 0.0
                    await _measure(row, url, pids, plan, True, tag)
                    if pg and before_counts is not None:
                        turns = len(row.latency.latencies) + len(row.throughput.latencies) + 200
                        turns += len(row.hot.latencies if row.hot else [])
                        after = database.counters(db)
                        row.statements = (after[0] - before_counts[0]) / turns
                        row.transactions = (after[1] - before_counts[1]) / turns
                        served = len(row.throughput.latencies)
                        # Database CPU over the whole measurement of this target, per turn of it.
                        row.db_cpu_us = (_cpu_seconds(database.pids()) - db_before) / turns * 1e6 if served else None
            rows.append(row)
            print(
                f"  {label}: p50 {row.latency.percentile(0.5):.3f} ms, "
                f"{row.throughput.requests_per_second:.0f} turns/s",
                flush=True,
            )
    return rows


def _report(rows: list[Row], plan: Plan) -> str:
    direct = rows[0].latency
    c = plan.concurrency
    lines = [
        f"Machine: {os.cpu_count()} CPUs, {platform.machine()}, Python {platform.python_version()}, "
        f"{platform.system()} {platform.release()}",
        f"Plan: latency = {plan.requests} sequential turns; throughput = {c} concurrent for {plan.seconds:g} s; "
        f"round-robin over {plan.conversations} conversations of {plan.turns} turns; hot = {plan.hot_clients} "
        "clients on one conversation.",
        "",
        f"| target | procs | p50 ms | p99 ms | added p50 | added p99 | turns/s (c={c}) | CPU us/turn | DB CPU us/turn "
        "| statements/turn | transactions/turn | hot: ms/turn | hand-over vs 1 process, ms | errors |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    # The in-process hand-over (an asyncio.Lock) is the baseline: what crossing processes adds is the difference.
    baseline = {row.backend: row.serial_ms for row in rows if row.backend and row.processes == 1}
    for row in rows:
        lat, thr = row.latency, row.throughput
        serial, base = row.serial_ms, baseline.get(row.backend)
        handover = serial - base if serial is not None and base is not None and row.processes > 1 else None
        errors = lat.errors + thr.errors + (row.hot.errors if row.hot else 0)
        lines.append(
            f"| {row.label} | {row.processes or '-'} | {lat.percentile(0.5):.3f} | {lat.percentile(0.99):.3f} "
            f"| {lat.percentile(0.5) - direct.percentile(0.5):.3f} "
            f"| {lat.percentile(0.99) - direct.percentile(0.99):.3f} "
            f"| {thr.requests_per_second:.0f} | {_f(row.cpu_us, 0)} | {_f(row.db_cpu_us, 0)} "
            f"| {_f(row.statements, 2)} | {_f(row.transactions, 2)} | {_f(serial, 2)} "
            f"| {_f(handover, 2)} | {errors} |"
        )
    return "\n".join(lines) + "\n"


def _f(value: float | None, digits: int) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.scale", description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a short run, to check that the harness works")
    parser.add_argument("--requests", type=int, default=1000, help="sequential turns per target")
    parser.add_argument("--seconds", type=float, default=5.0, help="throughput phase per target")
    parser.add_argument("--only", action="append", choices=("storage", "workers", "replicas"))
    args = parser.parse_args()
    plan = Plan(200, 1.0) if args.quick else Plan(args.requests, args.seconds)
    with tempfile.TemporaryDirectory(prefix="gateway-scale-") as tmp, Database() as database:
        rows = asyncio.run(_run(plan, Path(tmp), database, set(args.only) if args.only else None))
    report = _report(rows, plan)
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(report)
    print("\n" + report + f"\n(written to {RESULTS.relative_to(REPO)})")


if __name__ == "__main__":
    main()
