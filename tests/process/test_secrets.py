"""Secrets hygiene: a whole session with sentinel keys and sentinel message text, then a search of the logs, the
database files, every error body and the OpenAPI document for them."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import aiohttp
import structlog

from gateway.observability.logs import configure_logging
from tests.conftest import GatewayProcess, chat_body, run_cli, spawn_gateway, user
from tests.fake_upstream import FakeUpstream, Script

UPSTREAM_KEY = "sk-SENTINEL-UPSTREAM-5d1c9e"
WRONG_KEY = "gw-SENTINEL-WRONG-8f2b77"
TEXT = "PURPLE-ELEPHANT-7731"


async def _session(gp: GatewayProcess, key: str, upstream: FakeUpstream) -> list[bytes]:
    """Every kind of request, good and bad; returns every error body."""
    client = gp.sdk("secret-plan", api_key=key)
    await client.chat.completions.create(model="qwen-plus", messages=[user(f"{TEXT} one")])
    stream = await client.chat.completions.create(model="qwen-plus", messages=[user(f"{TEXT} two")], stream=True)
    async for _ in stream:
        pass
    errors: list[bytes] = []
    auth = {"Authorization": f"Bearer {key}"}
    upstream.script(
        Script(status=401, error_body={"error": {"message": f"Incorrect API key provided: {UPSTREAM_KEY}"}}),
        Script(status=400, error_body={"error": {"message": "bad parameter", "code": "invalid_parameter"}}),
    )
    requests: list[tuple[str, str, dict[str, str], Any]] = [
        ("POST", "/v1/chat/completions", {**auth, "X-Conversation-Id": "secret-plan"}, chat_body(user(TEXT))),
        ("POST", "/v1/chat/completions", {**auth, "X-Conversation-Id": "secret-plan"}, chat_body(user(TEXT))),
        ("POST", "/v1/chat/completions", {"Authorization": f"Bearer {WRONG_KEY}"}, chat_body(user(TEXT))),
        ("POST", "/v1/chat/completions", {"api-key": WRONG_KEY}, chat_body(user(TEXT))),
        ("POST", "/v1/chat/completions", auth, {"messages": [{"role": "robot", "content": TEXT}]}),
        ("GET", "/v1/conversations/no-such", auth, None),
        ("PATCH", "/v1/conversations/secret-plan", auth, {"metadata": {TEXT: 1}}),
        ("GET", "/v1/conversations", auth, None),
        ("GET", "/v1/conversations/secret-plan/messages", auth, None),
    ]
    async with aiohttp.ClientSession() as http:
        for method, path, headers, body in requests:
            async with http.request(method, gp.url + path, headers=headers, json=body) as resp:
                if resp.status >= 400:
                    errors.append(await resp.read())
        async with http.get(gp.url + "/openapi.json") as resp:
            errors.append(await resp.read())  # searched like an error body
    return errors


async def test_no_key_reaches_logs_database_or_error_bodies_and_no_message_text_reaches_logs(
    tmp_path: Path, upstream: FakeUpstream, processes: list[GatewayProcess]
) -> None:
    db = tmp_path / "secrets.db"
    config = tmp_path / "keys.toml"
    config.write_text('[auth]\nmode = "keys"\n[log]\nlevel = "debug"\n')
    created = await run_cli("keys", "create", "--tenant", "acme", "--config", str(config), "--db", str(db))
    key = created.out.strip()
    assert key.startswith("gw-")
    gp = await spawn_gateway(
        tmp_path,
        "--config", str(config), "--db", str(db), "--upstream-base-url", upstream.url,
        env={"DASHSCOPE_API_KEY": UPSTREAM_KEY},
    )  # fmt: skip
    processes.append(gp)
    errors = await _session(gp, key, upstream)
    # upstream 401 (as 502), upstream 400, two bad keys, bad role, 404, bad metadata; and the OpenAPI document
    assert len(errors) == 8
    assert {r.headers["Authorization"] for r in upstream.requests} == {f"Bearer {UPSTREAM_KEY}"}
    gp.proc.terminate()
    gp.proc.wait(10)

    logs = gp.log_path.read_text()
    assert '"event":"request"' in logs  # the log is there to search
    stored = b"".join(path.read_bytes() for path in tmp_path.glob("secrets.db*"))
    assert TEXT.encode() in stored  # so is the history
    for secret in (key, key[3:], UPSTREAM_KEY, WRONG_KEY):
        assert secret not in logs
        assert secret.encode() not in stored
        for body in errors:
            assert secret.encode() not in body
    assert TEXT not in logs


def test_tracebacks_are_logged_without_local_variables() -> None:
    out = io.StringIO()
    configure_logging("info", "json", out)
    log = structlog.get_logger("gateway")

    def handler(authorization: str) -> None:
        raise ValueError("boom")

    try:
        handler(f"Bearer {UPSTREAM_KEY}")
    except ValueError:
        log.exception("unhandled_error")
    finally:
        configure_logging("info", "console")
    assert "boom" in out.getvalue() and UPSTREAM_KEY not in out.getvalue()


CLIENT_UPSTREAM_KEY = "sk-SENTINEL-CLIENT-OWN-71d0aa"


async def test_a_clients_own_upstream_key_in_the_upstream_key_header_is_never_logged_or_stored(
    tmp_path: Path, upstream: FakeUpstream, processes: list[GatewayProcess]
) -> None:
    db = tmp_path / "byok.db"
    config = tmp_path / "byok.toml"
    config.write_text('[auth]\nmode = "keys"\nupstream_key_header = "X-Upstream-Key"\n[log]\nlevel = "debug"\n')
    created = await run_cli("keys", "create", "--tenant", "byok", "--config", str(config), "--db", str(db))
    key = created.out.strip()
    gp = await spawn_gateway(tmp_path, "--config", str(config), "--db", str(db), "--upstream-base-url", upstream.url)
    processes.append(gp)
    headers = {"Authorization": f"Bearer {key}", "X-Upstream-Key": CLIENT_UPSTREAM_KEY, "X-Conversation-Id": "own"}
    native = {"model": "qwen-plus", "input": {"messages": [user(TEXT)]}}
    async with aiohttp.ClientSession() as http:
        for path, body in (
            ("/v1/chat/completions", chat_body(user(TEXT))),
            ("/v1/chat/completions", chat_body(user(TEXT), stream=True)),
            ("/api/v1/services/aigc/text-generation/generation", native),
            ("/v1/embeddings", {"model": "text-embedding-v4", "input": TEXT}),
        ):
            async with http.post(gp.url + path, headers=headers, json=body) as resp:
                assert resp.status == 200, await resp.text()
    assert {r.headers["Authorization"] for r in upstream.requests} == {f"Bearer {CLIENT_UPSTREAM_KEY}"}
    gp.proc.terminate()
    gp.proc.wait(10)
    logs = gp.log_path.read_text()
    assert '"event":"request"' in logs
    stored = b"".join(path.read_bytes() for path in tmp_path.glob("byok.db*"))
    assert TEXT.encode() in stored
    assert CLIENT_UPSTREAM_KEY not in logs and CLIENT_UPSTREAM_KEY.encode() not in stored
