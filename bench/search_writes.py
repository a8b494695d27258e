"""The write-cost part of ``bench.search``: a copy of the benchmark's SQLite database without the search index,
the sizes of both, turns written to each (through ``ConversationStore.append_turn``, and as chat turns through a
gateway), the time migration m012 takes on an existing database, and the table of it all.
"""

from __future__ import annotations

import shutil
import sqlite3
import statistics
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import aiohttp

from bench.load import quantile
from bench.search_corpus import owner_of, turn_pairs


@contextmanager
def connection(db: Path) -> Iterator[sqlite3.Connection]:
    """A connection to ``db`` for one transaction, closed at the end: the last connection to close checkpoints
    the WAL into the file, which is then whole for a copy."""
    conn = sqlite3.connect(db)
    try:
        with conn:
            yield conn
    finally:
        conn.close()


def index_objects(conn: sqlite3.Connection) -> tuple[list[str], list[str]]:
    """The search index's FTS5 tables and the triggers that keep them (m012), found by what they are."""
    tables = [
        name
        for (name,) in conn.execute(
            "SELECT name FROM sqlite_master WHERE type = 'table' AND sql LIKE 'CREATE VIRTUAL TABLE%fts5%'"
        )
    ]
    triggers = [
        name
        for name, sql in conn.execute("SELECT name, sql FROM sqlite_master WHERE type = 'trigger'")
        if any(table in sql for table in tables)
    ]
    return tables, triggers


def copy_without_index(db: Path, plain: Path) -> tuple[list[str], list[str]]:
    with connection(db):
        pass
    shutil.copyfile(db, plain)
    with connection(plain) as conn:
        tables, triggers = index_objects(conn)
        for name in triggers:  # identifiers from sqlite_master: they cannot be parameters
            conn.execute(f'DROP TRIGGER "{name}"')
        for name in tables:
            conn.execute(f'DROP TABLE "{name}"')
    return tables, triggers


def mib(db: Path) -> tuple[float, float]:
    """(pages in use, the FTS5 tables' pages: dbstat), in MiB."""
    with connection(db) as conn:
        tables, _ = index_objects(conn)
        (size,) = conn.execute(
            "SELECT (page_count - freelist_count) * page_size FROM pragma_page_count, pragma_freelist_count, "
            "pragma_page_size"
        ).fetchone()
        index = sum(
            conn.execute(
                "SELECT coalesce(sum(pgsize), 0) FROM dbstat WHERE name = ? OR name LIKE ? || '\\_%' ESCAPE '\\'",
                (t, t),
            ).fetchone()[0]
            for t in tables
        )
    return size / 2**20, index / 2**20


async def store_writes(dbs: dict[str, Path], turns: int, block: int = 250) -> dict[str, list[float]]:
    """Seconds each ``append_turn`` took, per database; the databases take turns block by block."""
    from gateway.core.records import Turn
    from gateway.storage.sqlite.store import ConversationStore

    stores = {name: await ConversationStore.open(path, cache_messages=50_000) for name, path in dbs.items()}
    pairs, owner = turn_pairs(turns), owner_of("bench-search-writer")
    times: dict[str, list[float]] = {name: [] for name in dbs}
    try:
        for start in range(0, turns, block):
            order = list(stores.items()) if start // block % 2 == 0 else list(reversed(stores.items()))
            for name, store in order:
                for i in range(start, min(turns, start + block)):
                    user, reply = pairs[i]
                    turn = Turn(
                        owner,
                        f"write-{i // 8}",
                        "qwen-plus",
                        None,
                        [user],
                        reply,
                        False,
                        {"prompt_tokens": 40 + i % 8 * 60, "completion_tokens": 30},
                        existed=i % 8 > 0,
                    )
                    sent = time.perf_counter()
                    await store.append_turn(turn)
                    times[name].append(time.perf_counter() - sent)
    finally:
        for store in stores.values():
            await store.close()
    return times


async def http_turns(urls: dict[str, str], turns: int, block: int = 250) -> dict[str, list[float]]:
    """Seconds per chat turn with memory through each gateway, one at a time, the gateways taking turns."""
    pairs = turn_pairs(turns)
    times: dict[str, list[float]] = {name: [] for name in urls}
    async with aiohttp.ClientSession() as session:
        for start in range(0, turns, block):
            order = list(urls.items()) if start // block % 2 == 0 else list(reversed(urls.items()))
            for name, url in order:
                for i in range(start, min(turns, start + block)):
                    headers = {"Authorization": "Bearer bench-search-http", "X-Conversation-Id": f"http-{i // 8}"}
                    body = {"model": "qwen-plus", "messages": [pairs[i][0]]}
                    sent = time.perf_counter()
                    async with session.post(url, json=body, headers=headers) as response:
                        await response.read()
                        assert response.status == 200, response.status
                    times[name].append(time.perf_counter() - sent)
    return times


def us(values: list[float], fraction: float | None = None) -> float:
    if fraction is None:
        return statistics.fmean(values) * 1e6
    return quantile(values, fraction) * 1e6


async def backfill(db: Path) -> float:
    """Seconds migration m012 takes on ``db`` (without the index), as on an upgrade of an existing database."""
    import aiosqlite

    from gateway.storage.sqlite.migrations import migrate

    with connection(db) as conn:
        conn.execute("DELETE FROM schema_migrations WHERE name LIKE 'm012%'")
    async with aiosqlite.connect(db, isolation_level=None) as conn:
        started = time.perf_counter()
        applied = await migrate(conn)
        took = time.perf_counter() - started
    if [name[:4] for name in applied] != ["m012"]:
        raise SystemExit(f"bench.search: the backfill applied {applied}")
    return took


def write_lines(
    writes: dict[str, list[float]],
    http: dict[str, list[float]],
    sizes: dict[str, tuple[float, float]],
    dropped: list[str],
    turns: int,
) -> list[str]:
    w, bulk, wo = writes["with"], writes["bulk"], writes["without"]
    lines = [
        f"| a turn's write ({turns:,} turns, user message + reply, 8 per conversation) | with the index "
        "| with the index, just bulk-loaded | without | with - without |",
        "|---|---:|---:|---:|---:|",
    ]
    for label, fraction in (("p50", 0.5), ("p99", 0.99), ("mean", None)):
        a, b = us(w, fraction), us(wo, fraction)
        lines.append(
            f"| append_turn {label}, us | {a:.0f} | {us(bulk, fraction):.0f} | {b:.0f} | {a - b:+.0f} "
            f"({(a - b) / b * 100:+.0f}%) |"
        )
    a, b = us(http["with"], 0.5), us(http["without"], 0.5)
    lines.append(
        f"| chat turn through the gateway ({len(http['with']):,}), p50 us | {a:.0f} | - | {b:.0f} | {a - b:+.0f} "
        f"({(a - b) / b * 100:+.0f}%) |"
    )
    (size, index), (bulk_size, _), (plain, _) = sizes["with"], sizes["bulk"], sizes["without"]
    lines.append(
        f"| database size, MiB (pages in use) | {size:.0f} | {bulk_size:.0f} | {plain:.0f} | {size - plain:+.0f} "
        f"({(size - plain) / plain * 100:+.0f}%) |"
    )
    return [
        *lines,
        "",
        f"Without the index: a copy of the populated file with {', '.join(dropped)} dropped. The FTS5 tables "
        f"hold {index:.0f} MiB (dbstat). append_turn: the store's write path called directly, one turn at a time "
        "(synchronous = normal, as config.toml), the databases taking turns in blocks of 250; the chat turns: HTTP "
        "through a gateway on each file against bench.upstream, memory on.",
        "",
    ]
