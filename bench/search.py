"""``python -m bench.search``: full-text search (``GET /v1/conversations?q=``) over a 100,000-conversation
database, and what the search index costs a turn's write.

- **Corpus** (``bench.search_corpus``): 100,000 phone-store conversations (~810,000 messages, English and
  Chinese), one big tenant holding 50,000 of them and 1,000 small owners 50 each.  A gateway start migrates the
  file; the rows then go straight into its schema by SQL (as ``bench.operations`` does, 5,000 messages a
  statement), so the search index's insert trigger fills the index; the time that takes is printed.
- **Search latency**: through a running gateway, one request at a time (aiohttp), a short warm-up, then up to
  ``--requests`` requests per query (fewer when a query is slow: at most ``--seconds`` each); p50/p99 for the big
  tenant and for one small owner.  Every first page is checked against the corpus (how many conversations each
  query should find, counted in Python): a page that is not the newest matches, in order, is marked.
- **Write cost** (``bench.search_writes``): ``ConversationStore.append_turn`` (the store's own write path, the
  one a turn takes: the ``turn_writes`` trigger, then the index's triggers on ``messages``) called directly, one
  turn at a time, on the database with the index (merged after the bulk load), on a copy taken just after the
  bulk load (its merging still to do, as after m012's backfill) and on a copy with the index's triggers and table
  dropped, in alternating blocks so drift in the machine's speed hits all alike; each turn a user message and a
  reply, 8 turns per conversation.  Called directly because through HTTP the ~1 ms of a whole turn buries the
  100-odd microseconds being compared; chat turns through a gateway on each file are timed too.  Plus the
  database's size with and without the index, and (``--backfill``) how long m012 takes on the copy without it.
- **PostgreSQL** (``--postgres``, when its server is installed; off by default for time): the same corpus copied
  into a fresh database (``tests.postgres``), the same search latencies.

Results go to stdout and ``bench/results/search.md``.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import shutil
import sqlite3
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

import aiohttp
import orjson

from bench import search_writes
from bench.load import quantile
from bench.search_corpus import BIG_KEY, CONVERSATIONS, QUERIES, SMALL_KEY, Corpus, build_corpus
from bench.serving import REPO, server

RESULTS = REPO / "bench" / "results" / "search.md"
PYTHON = sys.executable
PAGE = 20


# The messages of many conversations in one statement: the index's insert trigger fires for every row, and FTS5
# writes what it gathered at the statement's end (an index segment per statement), so one statement per message
# (an ``executemany``) would write 810,000 tiny segments and merge them: 85-120 s rather than ~20 (measured).
_INSERT_MESSAGES = """
INSERT INTO messages (conversation_id, seq, role, body, created_at)
SELECT json_extract(value, '$[0]'), json_extract(value, '$[1]'), json_extract(value, '$[2]'),
       json_extract(value, '$[3]'), json_extract(value, '$[4]')
  FROM json_each(?)
"""
_BATCH = 5000


def _populate_sqlite(db: Path, corpus: Corpus) -> float:
    """Insert the corpus into a migrated database; the seconds it took (the index's triggers included)."""
    started = time.perf_counter()
    with search_writes.connection(db) as conn:
        conn.executemany(
            "INSERT INTO conversations (id, owner, external_id, created_at, updated_at, model, message_count, "
            "history_bytes) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            corpus.conversations,
        )
        for start in range(0, len(corpus.messages), _BATCH):
            conn.execute(_INSERT_MESSAGES, (orjson.dumps(corpus.messages[start : start + _BATCH]).decode(),))
    return time.perf_counter() - started


# --- search latency ---------------------------------------------------------------------------------------------


@dataclass
class Timing:
    latencies: list[float]
    correct: bool  # the first page is the newest matching conversations, in order

    def ms(self, fraction: float) -> float:
        return quantile(self.latencies, fraction) * 1000


async def _time_search(
    session: aiohttp.ClientSession, base: str, key: str, q: str, expected: list[int], requests: int, seconds: float
) -> Timing:
    url = f"{base}/v1/conversations?q={quote(q)}&limit={PAGE}"
    headers = {"Authorization": f"Bearer {key}"}

    async def get() -> dict[str, Any]:
        async with session.get(url, headers=headers) as response:
            body = await response.read()
            if response.status != 200:
                raise SystemExit(f"bench.search: {q!r} answered {response.status}: {body[:300]!r}")
            return dict(orjson.loads(body))

    page = await get()
    for _ in range(4):  # warm-up: the pages this query reads are in the cache from here on
        await get()
    ids = [item["id"] for item in page["data"]]
    newest = [f"conv-{n}" for n in reversed(expected[-PAGE:])]
    latencies: list[float] = []
    deadline = time.perf_counter() + seconds
    while len(latencies) < requests and (len(latencies) < 10 or time.perf_counter() < deadline):
        sent = time.perf_counter()
        await get()
        latencies.append(time.perf_counter() - sent)
    return Timing(latencies, ids == newest and page["has_more"] == (len(expected) > PAGE))


async def _search_table(base: str, corpus: Corpus, requests: int, seconds: float) -> dict[tuple[str, str], Timing]:
    timings = {}
    async with aiohttp.ClientSession() as session:
        for _, q in QUERIES:
            for key in (BIG_KEY, SMALL_KEY):
                timings[q, key] = await _time_search(session, base, key, q, corpus.matching[q, key], requests, seconds)
                t = timings[q, key]
                print(
                    f"  {q!r} as {key}: p50 {t.ms(0.5):.2f} ms, p99 {t.ms(0.99):.2f} ms ({len(t.latencies)})",
                    flush=True,
                )
    return timings


def _search_lines(title: str, corpus: Corpus, timings: dict[tuple[str, str], Timing]) -> list[str]:
    lines = [
        f"| {title} | q | matching conversations: all / big tenant / small owner | big tenant p50 ms | p99 ms "
        "| small owner p50 ms | p99 ms | requests each |",
        "|---|---|---:|---:|---:|---:|---:|---|",
    ]
    for label, q in QUERIES:
        big, small = timings[q, BIG_KEY], timings[q, SMALL_KEY]
        wrong = [name for name, t in (("big", big), ("small", small)) if not t.correct]
        note = f" **wrong first page: {', '.join(wrong)}**" if wrong else ""
        share = corpus.everywhere[q] / CONVERSATIONS * 100
        lines.append(
            f"| {label} | `{q}` | {corpus.everywhere[q]:,} ({share:.1f}%) / {len(corpus.matching[q, BIG_KEY]):,} "
            f"/ {len(corpus.matching[q, SMALL_KEY])} | {big.ms(0.5):.2f} | {big.ms(0.99):.2f} | {small.ms(0.5):.2f} "
            f"| {small.ms(0.99):.2f} | {len(big.latencies)} / {len(small.latencies)}{note} |"
        )
    return lines


# --- PostgreSQL -------------------------------------------------------------------------------------------------


async def _populate_postgres(url: str, corpus: Corpus) -> float:
    """The corpus by COPY into a migrated database (its GIN index kept up as the rows arrive), then ANALYZE, as
    autovacuum would do before long; the seconds it took."""
    import asyncpg

    conn = await asyncpg.connect(url)
    try:
        started = time.perf_counter()
        columns = ["owner", "external_id", "created_at", "updated_at", "model", "message_count", "history_bytes"]
        await conn.copy_records_to_table(
            "conversations", records=[c[1:] for c in corpus.conversations], columns=columns
        )
        ids = {
            external_id: row_id for external_id, row_id in await conn.fetch("SELECT external_id, id FROM conversations")
        }
        row_ids = [ids[f"conv-{n}"] for n in range(CONVERSATIONS)]
        await conn.copy_records_to_table(
            "messages",
            records=[(row_ids[c - 1], *rest) for c, *rest in corpus.messages],
            columns=["conversation_id", "seq", "role", "body", "created_at"],
        )
        await conn.execute("ANALYZE")
        return time.perf_counter() - started
    finally:
        await conn.close()


async def _postgres(workdir: Path, corpus: Corpus, upstream: str, requests: int, seconds: float) -> list[str]:
    from tests.postgres import PostgresServer, pg_bin

    bin_dir = pg_bin()
    if bin_dir is None:
        return ["PostgreSQL: skipped (no server installed; `make test-servers` installs it).", ""]
    pg = PostgresServer(bin_dir)
    pg.init()
    pg.start()
    try:
        url = pg.create_database()
        args = _gateway_args(url, upstream)
        with server(args, workdir / "pg-migrate.log", '"server_started"'):
            pass
        took = await _populate_postgres(url, corpus)
        print(f"  PostgreSQL populated in {took:.1f} s", flush=True)
        with server(args, workdir / "pg-gateway.log", '"server_started"') as (port, _):
            timings = await _search_table(f"http://127.0.0.1:{port}", corpus, requests, seconds)
        size = pg.psql(f"SELECT pg_database_size('{url.rsplit('/', 1)[1]}')", url.rsplit("/", 1)[1])
        indexes = pg.psql(
            "SELECT coalesce(sum(pg_relation_size(indexrelid)), 0) FROM pg_index WHERE indrelid = 'messages'::regclass "
            "AND pg_get_indexdef(indexrelid) LIKE '%gin%'",
            url.rsplit("/", 1)[1],
        )
    finally:
        pg.stop()
    return [
        *_search_lines("PostgreSQL (pg_trgm GIN)", corpus, timings),
        "",
        f"PostgreSQL: populated by COPY in {took:.1f} s; database {int(size) / 2**20:.0f} MiB, of which the "
        f"trigram GIN index {int(indexes) / 2**20:.0f} MiB.",
        "",
    ]


# --- the run ----------------------------------------------------------------------------------------------------


def _gateway_args(db: Path | str, upstream: str) -> list[str]:
    args = [PYTHON, "-m", "gateway", "serve", "--config", str(REPO / "config.toml"), "--port", "0"]
    return [*args, "--db", str(db), "--upstream-base-url", upstream]


async def _run(workdir: Path, args: argparse.Namespace) -> str:
    started, load = time.perf_counter(), os.getloadavg()[0]  # other work on the machine shows in the figures
    corpus = build_corpus()
    print(f"  corpus: {len(corpus.messages):,} messages built in {time.perf_counter() - started:.1f} s", flush=True)
    with server([PYTHON, "-m", "bench.upstream"], workdir / "upstream.log", "port ") as (up_port, _):
        upstream = f"http://127.0.0.1:{up_port}/v1"
        lines = [
            "## Search",
            "",
            f"Machine: {os.cpu_count()} CPUs, {platform.machine()}, Python {platform.python_version()}, SQLite "
            f"{sqlite3.sqlite_version}; load average at the start {load:.1f}. Corpus (bench/search_corpus.py): "
            f"{CONVERSATIONS:,} conversations, {len(corpus.messages):,} messages, English and Chinese; the big "
            "tenant holds 50,000 of them, the small owner 50 (one of 1,000 such).",
            "",
            *await _sqlite(workdir, corpus, upstream, args),
        ]
        if args.postgres:
            lines += await _postgres(workdir, corpus, upstream, args.requests, args.seconds)
        else:
            lines += ["PostgreSQL: not run (`--postgres` runs the same searches there).", ""]
    lines.append(f"Run time: {time.perf_counter() - started:.0f} s.")
    return "\n".join(lines)


async def _sqlite(workdir: Path, corpus: Corpus, upstream: str, args: argparse.Namespace) -> list[str]:
    db, bulk, plain = workdir / "search.db", workdir / "bulk.db", workdir / "plain.db"
    with server(_gateway_args(db, upstream), workdir / "migrate.log", '"server_started"'):
        pass  # a real start migrates the new file
    with search_writes.connection(db) as conn:
        tables, _ = search_writes.index_objects(conn)
    if not tables:
        raise SystemExit("bench.search: the migrated database has no FTS5 table (is m012 there?)")
    populated = _populate_sqlite(db, corpus)
    shutil.copyfile(db, bulk)  # the index as the bulk load left it
    # FTS5 merges the segments a bulk load wrote a little at every later write (automerge), and the turns measured
    # would pay for that (the "just bulk-loaded" column shows how much: as after m012's backfill); merged into one
    # first, they pay only for merging the segments they write themselves, as on an index that has settled.
    optimized = time.perf_counter()
    with search_writes.connection(db) as conn:
        for table in tables:  # a name from sqlite_master, as in search_writes.copy_without_index
            conn.execute(f'INSERT INTO "{table}" ("{table}") VALUES (\'optimize\')')
    optimized = time.perf_counter() - optimized
    print(f"  SQLite populated in {populated:.1f} s, index merged in {optimized:.1f} s", flush=True)
    with server(_gateway_args(db, upstream), workdir / "gateway.log", '"server_started"') as (port, _):
        timings = await _search_table(f"http://127.0.0.1:{port}", corpus, args.requests, args.seconds)
    dropped_tables, dropped_triggers = search_writes.copy_without_index(db, plain)
    sizes = {"with": search_writes.mib(db), "bulk": search_writes.mib(bulk), "without": search_writes.mib(plain)}
    turns = await search_writes.store_writes({"with": db, "bulk": bulk, "without": plain}, args.turns)
    with (
        server(_gateway_args(db, upstream), workdir / "turns.log", '"server_started"') as (port, _),
        server(_gateway_args(plain, upstream), workdir / "plain.log", '"server_started"') as (plain_port, _),
    ):
        chat = "/v1/chat/completions"
        http = await search_writes.http_turns(
            {"with": f"http://127.0.0.1:{port}{chat}", "without": f"http://127.0.0.1:{plain_port}{chat}"},
            args.turns // 2,
        )
    lines = [
        f"SQLite: populated by SQL (5,000 messages a statement, the index's trigger filling the index) in "
        f"{populated:.1f} s; the index then merged (FTS5 'optimize') in {optimized:.1f} s.",
        "",
        *_search_lines("SQLite (FTS5 trigram)", corpus, timings),
        "",
        *search_writes.write_lines(turns, http, sizes, dropped_tables + dropped_triggers, args.turns),
    ]
    if args.backfill:
        backfill = await search_writes.backfill(plain)
        lines += [f"Upgrade: m012 on the copy without the index (its backfill) took {backfill:.1f} s.", ""]
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.search", description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--requests", type=int, default=200, help="search requests per query and owner")
    parser.add_argument("--seconds", type=float, default=5.0, help="at most this long per query and owner")
    parser.add_argument("--turns", type=int, default=2000, help="turns written per database")
    parser.add_argument("--postgres", action="store_true", help="also search on PostgreSQL")
    parser.add_argument("--backfill", action="store_true", help="also time m012's backfill of the copy")
    parser.add_argument("--keep", type=Path, help="work in this directory and keep its databases and logs")
    args = parser.parse_args()
    if args.keep is not None:
        args.keep.mkdir(parents=True, exist_ok=True)
        for stale in args.keep.glob("*.db*"):
            stale.unlink()
        report = asyncio.run(_run(args.keep, args))
    else:
        with tempfile.TemporaryDirectory(prefix="gateway-search-") as tmp:
            report = asyncio.run(_run(Path(tmp), args))
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(report + "\n")
    print("\n" + report + f"\n\n(written to {RESULTS.relative_to(REPO)})")


if __name__ == "__main__":
    main()
