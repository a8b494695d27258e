"""Fixtures: a fake upstream, the real gateway app on an ephemeral port, the official openai SDK as client,
real SQLite files under tmp_path, and a helper to run the gateway as a separate process."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import openai
import pytest
from aiohttp import web

from gateway.app import start
from gateway.settings.config import Config, load_config
from tests.fake_upstream import FakeUpstream, Script
from tests.postgres import PostgresServer, missing_server, pg_bin

REPO = Path(__file__).resolve().parent.parent


def make_config(tmp_path: Path, upstream_url: str, toml: str = "", **flags: Any) -> Config:
    """A config from defaults, ``toml`` (file content) and flags: never the repository's config.toml or the
    caller's environment."""
    empty = tmp_path / ("test.toml" if toml else "empty.toml")
    empty.write_text(toml)
    # One attempt unless a test asks for retries: most tests script a single upstream failure and check that it
    # reaches the client; tests/http/test_faults.py covers retries.
    values = {
        "storage.path": str(tmp_path / "gateway.db"),
        "upstream.base_url": upstream_url,
        # The fake upstream serves DashScope's native paths beside /v1 (the pass-through sends /api/v1/... there).
        "upstream.native_base_url": upstream_url.removesuffix("/v1") + "/api/v1",
        "server.port": 0,
        "upstream.max_attempts": 1,
    }
    values.update({key.replace("__", "."): value for key, value in flags.items()})
    return load_config(str(empty), env={}, flags=values)


def sdk_client(
    base: str, conversation: str | None, api_key: str, registry: list[openai.AsyncOpenAI]
) -> openai.AsyncOpenAI:
    """The official SDK pointed at a gateway; closed by whoever owns ``registry``."""
    headers = {"X-Conversation-Id": conversation} if conversation else None
    client = openai.AsyncOpenAI(base_url=f"{base}/v1", api_key=api_key, default_headers=headers, max_retries=0)
    registry.append(client)
    return client


@dataclass
class Gateway:
    url: str
    config: Config
    runner: web.AppRunner
    clients: list[openai.AsyncOpenAI] = field(default_factory=list)

    @property
    def db_path(self) -> Path:
        return self.config.db_path

    def sdk(self, conversation: str | None = None, api_key: str = "sk-test") -> openai.AsyncOpenAI:
        return sdk_client(self.url, conversation, api_key, self.clients)

    async def stop(self) -> None:
        for client in self.clients:
            await client.close()
        await self.runner.cleanup()

    def rows(self, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        """Read the SQLite file directly, as any other process would: for tests about the file itself.  Tests about
        what the gateway remembers read it through tests/stored.py, which works for any storage backend."""
        with sqlite3.connect(self.db_path) as db:
            return db.execute(sql, params).fetchall()

    def stored(self, conversation: str) -> list[dict[str, Any]]:
        rows = self.rows(
            "SELECT m.body FROM messages m JOIN conversations c ON c.id = m.conversation_id "
            "WHERE c.external_id = ? ORDER BY m.seq",
            (conversation,),
        )
        return [json.loads(body) for (body,) in rows]


async def start_gateway(config: Config) -> Gateway:
    runner, port = await start(config)
    return Gateway(f"http://127.0.0.1:{port}", config, runner)


@pytest.fixture
async def upstream() -> AsyncIterator[FakeUpstream]:
    fake = await FakeUpstream().start()
    yield fake
    await fake.close()


@pytest.fixture
async def gateway(tmp_path: Path, upstream: FakeUpstream) -> AsyncIterator[Gateway]:
    gw = await start_gateway(make_config(tmp_path, upstream.url))
    yield gw
    await gw.stop()


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


def user(text: str) -> dict[str, Any]:
    return {"role": "user", "content": text}


def chat_body(*messages: dict[str, Any], **fields: Any) -> dict[str, Any]:
    return {"model": "qwen-plus", "messages": list(messages), **fields}


async def read_sse(response: aiohttp.ClientResponse) -> list[str]:
    """The data fields of every SSE event in a response, in order."""
    text = (await response.read()).decode()
    return [
        line.removeprefix("data:").strip()
        for line in text.replace("\r\n", "\n").split("\n")
        if line.startswith("data:")
    ]


@asynccontextmanager
async def turn_in_flight(
    gateway: Gateway, upstream: FakeUpstream, conversation: str, text: str, api_key: str = "key-a"
) -> AsyncIterator[None]:
    """A streamed turn on ``conversation`` that is under way for the body of the block, then finishes."""
    gate = asyncio.Event()
    upstream.script(Script(gate=gate))
    headers = {"Authorization": f"Bearer {api_key}", "X-Conversation-Id": conversation}
    async with (
        aiohttp.ClientSession() as http,
        http.post(
            gateway.url + "/v1/chat/completions", json=chat_body(user(text), stream=True), headers=headers
        ) as stream,
    ):
        await stream.content.readline()  # the first chunk arrived: the turn holds its conversation
        try:
            yield
        finally:
            gate.set()
            await stream.read()


@dataclass(frozen=True)
class CliResult:
    status: int
    out: str
    err: str


async def run_cli(*args: str, stdin: str | None = None, env: dict[str, str] | None = None) -> CliResult:
    """``python -m gateway ARGS`` as a separate process, without blocking the event loop (a gateway under test
    may be serving on it at the same time)."""
    env = {**{k: v for k, v in os.environ.items() if not k.startswith(("GATEWAY_", "DASHSCOPE_"))}, **(env or {})}
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "gateway",
        *args,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=env,
        cwd=REPO,
    )
    out, err = await asyncio.wait_for(proc.communicate(stdin.encode() if stdin else None), 30)
    assert proc.returncode is not None
    return CliResult(proc.returncode, out.decode(), err.decode())


@dataclass
class GatewayProcess:
    """The gateway as a real separate process (`python -m gateway serve`), for crash and signal tests."""

    proc: subprocess.Popen[bytes]
    log_path: Path
    port: int
    clients: list[openai.AsyncOpenAI] = field(default_factory=list)

    def sdk(self, conversation: str, api_key: str = "sk-process") -> openai.AsyncOpenAI:
        return sdk_client(self.url, conversation, api_key, self.clients)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def log_events(self) -> list[dict[str, Any]]:
        lines = self.log_path.read_text().splitlines()
        return [json.loads(line) for line in lines if line.startswith("{")]


async def spawn_gateway(
    tmp_path: Path,
    *args: str,
    env: dict[str, str] | None = None,
    preexec_fn: Callable[[], None] | None = None,
) -> GatewayProcess:
    """``python -m gateway serve`` as a separate process on a free port; ``preexec_fn`` runs in the child before
    it starts (to lower its resource limits, say)."""
    log_path = tmp_path / f"gateway-{time.monotonic_ns()}.log"
    empty = tmp_path / "empty.toml"
    empty.touch()
    full_env = {k: v for k, v in os.environ.items() if not k.startswith(("GATEWAY_", "DASHSCOPE_"))}
    full_env.update(env or {})
    with log_path.open("wb") as log_file:
        proc = subprocess.Popen(
            [sys.executable, "-m", "gateway", "serve", "--config", str(empty), "--port", "0", *args],
            stdout=log_file,
            stderr=subprocess.STDOUT,
            env=full_env,
            cwd=REPO,
            preexec_fn=preexec_fn,
        )
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        for line in log_path.read_text().splitlines():
            if '"server_started"' in line:
                return GatewayProcess(proc, log_path, int(json.loads(line)["port"]))
        if proc.poll() is not None:
            raise AssertionError(f"gateway exited early: {log_path.read_text()}")
        await asyncio.sleep(0.05)
    proc.kill()
    raise AssertionError(f"gateway did not start: {log_path.read_text()}")


@pytest.fixture
async def processes() -> AsyncIterator[list[GatewayProcess]]:
    """Gateway processes started by a test; any still running at the end are killed."""
    started: list[GatewayProcess] = []
    yield started
    for gp in started:
        for client in gp.clients:
            await client.close()
        if gp.proc.poll() is None:
            gp.proc.send_signal(signal.SIGKILL)
            gp.proc.wait()


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    """One throwaway PostgreSQL cluster for the whole run (tests/postgres.py); each test takes a database of it
    (``postgres_url``).  Skips when the distribution's server packages are not installed."""
    bin_dir = pg_bin()
    if bin_dir is None:
        missing_server("PostgreSQL is not installed (apt-get install postgresql; make test does it as root)")
    server = PostgresServer(bin_dir)
    server.init()
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def postgres_url(postgres_server: PostgresServer) -> Iterator[str]:
    """A fresh, empty database on the session's PostgreSQL server, dropped after the test."""
    url = postgres_server.create_database()
    try:
        yield url
    finally:
        postgres_server.drop_database(url)
