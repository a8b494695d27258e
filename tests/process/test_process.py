"""The gateway as a real process: acknowledged turns survive SIGKILL, SIGTERM shuts down cleanly, and bad
settings stop start-up with one line and exit status 2."""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO, GatewayProcess, spawn_gateway, user
from tests.fake_upstream import FakeUpstream, Script


async def test_acknowledged_turns_survive_sigkill(
    tmp_path: Path, upstream: FakeUpstream, processes: list[GatewayProcess]
) -> None:
    db = tmp_path / "crash.db"
    gp = await spawn_gateway(tmp_path, "--db", str(db), "--upstream-base-url", upstream.url)
    processes.append(gp)
    client = gp.sdk("durable")
    acknowledged = 0
    for i in range(12):
        if i % 2:
            stream = await client.chat.completions.create(model="qwen-plus", messages=[user(f"m{i}")], stream=True)
            async for _ in stream:
                pass
        else:
            await client.chat.completions.create(model="qwen-plus", messages=[user(f"m{i}")])
        acknowledged += 1
    gp.proc.send_signal(signal.SIGKILL)
    gp.proc.wait()

    restarted = await spawn_gateway(tmp_path, "--db", str(db), "--upstream-base-url", upstream.url)
    processes.append(restarted)
    await restarted.sdk("durable").chat.completions.create(model="qwen-plus", messages=[user("after crash")])
    history = upstream.last["messages"]
    assert [m["content"] for m in history if m["role"] == "user"] == [f"m{i}" for i in range(acknowledged)] + [
        "after crash"
    ]
    assert len(history) == 2 * acknowledged + 1


async def test_sigterm_finishes_the_stream_in_flight_and_closes_the_database(
    tmp_path: Path, upstream: FakeUpstream, processes: list[GatewayProcess]
) -> None:
    db = tmp_path / "term.db"
    gp = await spawn_gateway(tmp_path, "--db", str(db), "--upstream-base-url", upstream.url)
    processes.append(gp)
    upstream.script(Script(content="a reply that takes a moment to stream", chunk_delay=0.05))
    stream = await gp.sdk("term").chat.completions.create(model="qwen-plus", messages=[user("hi")], stream=True)
    first = await anext(aiter(stream))
    gp.proc.send_signal(signal.SIGTERM)
    rest = [c.choices[0].delta.content or "" async for c in stream if c.choices]
    assert (first.choices[0].delta.content or "") + "".join(rest) == "a reply that takes a moment to stream"
    assert await asyncio.to_thread(gp.proc.wait, 10) == 0
    events = [e["event"] for e in gp.log_events()]
    # The stream in flight finished (its request line) after the stop began and before the database closed.
    assert events[-4:] == ["server_stopping", "request", "database_closed", "server_stopped"]
    assert not Path(f"{db}-wal").exists()  # the last connection closed cleanly and checkpointed
    import sqlite3

    with sqlite3.connect(db) as conn:
        assert conn.execute("SELECT count(*) FROM messages").fetchone() == (2,)


def _run_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    import os

    base = {k: v for k, v in os.environ.items() if not k.startswith(("GATEWAY_", "DASHSCOPE_"))}
    return subprocess.run(
        [sys.executable, "-m", "gateway", *args],
        capture_output=True,
        text=True,
        env={**base, **(env or {})},
        cwd=REPO,
        timeout=30,
    )


@pytest.mark.parametrize(
    ("args", "env", "names"),
    [
        (["--port", "http"], {}, "server.port (from --port)"),
        (["--port", "70000"], {}, "server.port"),
        ([], {"GATEWAY_PORT": "eighty"}, "server.port (from GATEWAY_PORT)"),
        (["--upstream-base-url", "ftp://x"], {}, "upstream.base_url"),
        ([], {"GATEWAY_UPSTREAM_BASE_URL": "not a url"}, "upstream.base_url (from GATEWAY_UPSTREAM_BASE_URL)"),
        (["--config", "/nonexistent/gateway.toml"], {}, "config file '/nonexistent/gateway.toml'"),
        ([], {"GATEWAY_CONFIG": "/nonexistent/x.toml"}, "config file '/nonexistent/x.toml'"),
        (["--db", "/proc/forbidden/gateway.db"], {}, "storage.path"),
    ],
)
def test_bad_setting_stops_startup_with_one_line_and_status_2(args: list[str], env: dict[str, str], names: str) -> None:
    result = _run_cli("serve", *args, env=env)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("gateway: error: ") and names in lines[0]
    assert "Traceback" not in result.stderr + result.stdout


def test_bad_config_file_values_are_named(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    cases = {
        "[server]\nport = -1\n": "server.port",
        "[storage]\nsynchronous = 'sometimes'\n": "storage.synchronous",
        "[upstream]\nidle_timeout = 0\n": "upstream.idle_timeout",
        "[server]\ncolour = 'blue'\n": "server.colour: unknown setting",
        "[server\n": "invalid TOML",
        "server = 1\n": "server: expected a [server] table",
    }
    for text, name in cases.items():
        bad.write_text(text)
        result = _run_cli("serve", "--config", str(bad))
        assert result.returncode == 2, text
        assert name in result.stderr and len(result.stderr.strip().splitlines()) == 1, result.stderr


async def test_port_in_use_is_a_clear_error(tmp_path: Path) -> None:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        result = await asyncio.to_thread(
            _run_cli, "serve", "--port", str(sock.getsockname()[1]), "--db", str(tmp_path / "x.db")
        )
    assert result.returncode == 2
    assert "cannot listen on" in result.stderr and len(result.stderr.strip().splitlines()) == 1


async def test_environment_and_flags_configure_the_process(
    tmp_path: Path, upstream: FakeUpstream, processes: list[GatewayProcess]
) -> None:
    env_db = tmp_path / "from-env.db"
    gp = await spawn_gateway(
        tmp_path,
        env={"GATEWAY_DB": str(env_db), "GATEWAY_UPSTREAM_BASE_URL": upstream.url, "DASHSCOPE_API_KEY": "sk-env-key"},
    )
    processes.append(gp)
    await gp.sdk("env").chat.completions.create(model="qwen-plus", messages=[user("hi")])
    assert env_db.exists()
    assert upstream.requests[-1].headers["Authorization"] == "Bearer sk-env-key"
    started = next(e for e in gp.log_events() if e["event"] == "server_started")
    assert json.dumps(started).find("sk-env-key") == -1


def test_python_dash_m_and_console_script_share_the_cli() -> None:
    result = _run_cli("serve", "--help")
    assert result.returncode == 0
    for flag in ("--config", "--host", "--port", "--db", "--upstream-base-url"):
        assert flag in result.stdout
    script = Path(sys.executable).parent / "gateway"
    assert subprocess.run([str(script), "serve", "--help"], capture_output=True, check=False).returncode == 0
