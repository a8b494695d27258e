"""Keys mode: who may see which conversations (an authorization matrix over every route), revoked and missing
keys, admin keys, the auto mode, and the refusal to serve open mode publicly with an upstream key."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from gateway.http.state import STORE
from tests.conftest import Gateway, chat_body, make_config, run_cli, spawn_gateway, start_gateway, user
from tests.fake_upstream import FakeUpstream
from tests.stored import cli_export, cli_list

URL_KEY = "sk-upstream-test"


@dataclass
class Keys:
    a1: str
    a2: str
    b: str
    admin: str
    revoked: str


async def _create(gateway: Gateway, tenant: str, *, admin: bool = False) -> str:
    secret, _ = await gateway.runner.app[STORE].keys.create(tenant, None, admin)
    return secret


@pytest.fixture
async def keyed(tmp_path: Path, upstream: FakeUpstream) -> AsyncIterator[tuple[Gateway, Keys]]:
    config = make_config(tmp_path, upstream.url, auth__mode="keys", upstream__api_key=URL_KEY)
    gateway = await start_gateway(config)
    store = gateway.runner.app[STORE].keys
    revoked, record = await store.create("a", "old laptop", False)
    await store.revoke(record.id)
    keys = Keys(
        a1=await _create(gateway, "a"),
        a2=await _create(gateway, "a"),
        b=await _create(gateway, "b"),
        admin=await _create(gateway, "ops", admin=True),
        revoked=revoked,
    )
    yield gateway, keys
    await gateway.stop()


def _auth(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


async def _call(
    http: aiohttp.ClientSession, method: str, url: str, headers: dict[str, str], body: Any = None
) -> tuple[int, Any]:
    async with http.request(method, url, headers=headers, json=body) as resp:
        return resp.status, await resp.json()


def _conversation_routes(conversation: str) -> list[tuple[str, str, Any]]:
    base = f"/v1/conversations/{conversation}"
    return [
        ("GET", base, None),
        ("GET", base + "/messages", None),
        ("PATCH", base, {"metadata": {"k": "v"}}),
        ("POST", base + "/rewind", None),
        ("POST", base + "/fork", {"new_id": "stolen"}),
        ("DELETE", base, None),
    ]


async def test_another_tenants_key_finds_nothing_on_any_route_and_changes_nothing(
    keyed: tuple[Gateway, Keys], upstream: FakeUpstream, http: aiohttp.ClientSession
) -> None:
    gateway, keys = keyed
    client = gateway.sdk("plan", api_key=keys.a1)
    await client.chat.completions.create(model="qwen-plus", messages=[user("my secret plan")])
    before = await cli_export(gateway.db_path, "plan", owner="tenant:a")
    for method, path, body in _conversation_routes("plan"):
        theirs = await _call(http, method, gateway.url + path, _auth(keys.b), body)
        missing = await _call(http, method, gateway.url + path.replace("plan", "no-such-id"), _auth(keys.a1), body)
        assert theirs[0] == missing[0] == 404, (method, path)
        assert theirs[1] == {
            "error": {**missing[1]["error"], "message": missing[1]["error"]["message"].replace("no-such-id", "plan")}
        }
    status, listing = await _call(http, "GET", gateway.url + "/v1/conversations", _auth(keys.b))
    assert status == 200 and listing["data"] == []
    # Chat with the same conversation id: tenant b gets a conversation of its own, without a's history.
    other = gateway.sdk("plan", api_key=keys.b)
    await other.chat.completions.create(model="qwen-plus", messages=[user("what is the plan?")])
    assert upstream.last["messages"] == [user("what is the plan?")]
    assert await cli_export(gateway.db_path, "plan", owner="tenant:a") == before  # a's record, exactly as it was
    # The operator's CLI names tenants as owners.
    empty = gateway.db_path.parent / "empty.toml"
    listed = await run_cli(
        "conversations", "list", "--owner", "tenant:b", "--config", str(empty), "--db", str(gateway.db_path)
    )
    assert [line.split()[:2] for line in listed.out.splitlines()[1:]] == [["tenant:b", "plan"]]


async def test_keys_of_one_tenant_share_conversations(
    keyed: tuple[Gateway, Keys], upstream: FakeUpstream, http: aiohttp.ClientSession
) -> None:
    gateway, keys = keyed
    await gateway.sdk("shared", api_key=keys.a1).chat.completions.create(model="qwen-plus", messages=[user("one")])
    await gateway.sdk("shared", api_key=keys.a2).chat.completions.create(model="qwen-plus", messages=[user("two")])
    assert [m["content"] for m in upstream.last["messages"]] == ["one", "reply 1", "two"]
    status, _ = await _call(http, "GET", gateway.url + "/v1/conversations/shared", {"api-key": keys.a2})
    assert status == 200  # the api-key header works as well as a bearer token


async def test_revoked_unknown_and_missing_keys_get_401_everywhere(
    keyed: tuple[Gateway, Keys], upstream: FakeUpstream, http: aiohttp.ClientSession
) -> None:
    gateway, keys = keyed
    routes = [
        ("POST", "/v1/chat/completions", chat_body(user("hi"))),
        ("GET", "/v1/conversations", None),
        ("POST", "/v1/conversations", {}),
        *_conversation_routes("any"),
    ]
    for headers, code in (
        (_auth(keys.revoked), "invalid_api_key"),
        (_auth("gw-not-a-real-key"), "invalid_api_key"),
        (_auth(URL_KEY), "invalid_api_key"),
        ({}, "missing_api_key"),
    ):
        for method, path, body in routes:
            status, answer = await _call(http, method, gateway.url + path, headers, body)
            assert (status, answer["error"]["code"]) == (401, code), (method, path)
            assert keys.revoked not in str(answer) and URL_KEY not in str(answer)
    assert upstream.requests == []
    assert await cli_list(gateway.db_path) == []  # no conversation, of any owner
    status, _ = await _call(http, "GET", gateway.url + "/healthz", {})
    assert status == 200  # probes need no key


async def test_admin_keys_reach_any_tenant_with_the_tenant_parameter(
    keyed: tuple[Gateway, Keys], http: aiohttp.ClientSession
) -> None:
    gateway, keys = keyed
    await gateway.sdk("audit-me", api_key=keys.a1).chat.completions.create(model="qwen-plus", messages=[user("hi")])
    admin = _auth(keys.admin)
    status, listing = await _call(http, "GET", gateway.url + "/v1/conversations?tenant=a", admin)
    assert status == 200 and [c["id"] for c in listing["data"]] == ["audit-me"]
    status, messages = await _call(http, "GET", gateway.url + "/v1/conversations/audit-me/messages?tenant=a", admin)
    assert status == 200 and len(messages["data"]) == 2
    status, answer = await _call(http, "GET", gateway.url + "/v1/conversations?tenant=a", _auth(keys.b))
    assert status == 403 and answer["error"]["code"] == "admin_key_required"
    status, _ = await _call(http, "GET", gateway.url + "/v1/conversations/audit-me", admin)
    assert status == 404  # without ?tenant= an admin key sees its own tenant's
    status, _ = await _call(http, "DELETE", gateway.url + "/v1/conversations/audit-me?tenant=a", admin)
    assert status == 200 and await cli_list(gateway.db_path) == []  # gone, and no other owner holds anything


async def test_the_upstream_gets_the_gateway_key_never_the_clients(
    keyed: tuple[Gateway, Keys], upstream: FakeUpstream
) -> None:
    gateway, keys = keyed
    await gateway.sdk("k", api_key=keys.a1).chat.completions.create(model="qwen-plus", messages=[user("hi")])
    assert upstream.requests[-1].headers["Authorization"] == f"Bearer {URL_KEY}"


@pytest.fixture
async def auto_with_upstream_key(tmp_path: Path, upstream: FakeUpstream) -> AsyncIterator[Gateway]:
    gateway = await start_gateway(make_config(tmp_path, upstream.url, upstream__api_key=URL_KEY))
    yield gateway
    await gateway.stop()


async def test_auto_mode_requires_keys_once_one_exists(
    auto_with_upstream_key: Gateway, upstream: FakeUpstream, http: aiohttp.ClientSession
) -> None:
    gateway = auto_with_upstream_key
    status, _ = await _call(http, "POST", gateway.url + "/v1/chat/completions", {}, chat_body(user("hi")))
    assert status == 200  # no key exists: open mode
    secret = await _create(gateway, "first")
    status, answer = await _call(http, "POST", gateway.url + "/v1/chat/completions", {}, chat_body(user("hi")))
    assert (status, answer["error"]["code"]) == (401, "missing_api_key")
    status, _ = await _call(http, "POST", gateway.url + "/v1/chat/completions", _auth(secret), chat_body(user("hi")))
    assert status == 200


async def test_a_key_revoked_with_the_cli_stops_working_without_a_restart(
    keyed: tuple[Gateway, Keys], http: aiohttp.ClientSession
) -> None:
    gateway, keys = keyed
    status, _ = await _call(http, "GET", gateway.url + "/v1/conversations", _auth(keys.b))
    assert status == 200
    empty = gateway.db_path.parent / "empty.toml"
    empty.touch()
    listed = await run_cli("keys", "list", "--config", str(empty), "--db", str(gateway.db_path))
    key_b = next(line.split()[0] for line in listed.out.splitlines()[1:] if line.split()[1] == "b")
    assert keys.b not in listed.out  # no secrets in the listing
    revoked = await run_cli("keys", "revoke", key_b, "--config", str(empty), "--db", str(gateway.db_path))
    assert revoked.status == 0, revoked.err
    status, _ = await _call(http, "GET", gateway.url + "/v1/conversations", _auth(keys.b))
    assert status == 401


async def test_open_mode_on_a_public_address_with_an_upstream_key_is_refused(tmp_path: Path) -> None:
    empty = tmp_path / "empty.toml"
    empty.touch()
    result = await run_cli(
        "serve", "--config", str(empty), "--db", str(tmp_path / "g.db"), "--host", "0.0.0.0", "--port", "0",
        env={"DASHSCOPE_API_KEY": URL_KEY},
    )  # fmt: skip
    assert result.status == 2
    assert result.err.startswith("gateway: error: auth.allow_open: refusing to serve in open mode on 0.0.0.0")
    assert "Traceback" not in result.err and URL_KEY not in result.err


async def test_open_mode_on_a_public_address_starts_when_allowed_or_keyed(tmp_path: Path, processes: list[Any]) -> None:
    empty = tmp_path / "empty.toml"
    empty.touch()
    db = str(tmp_path / "g.db")
    allow = tmp_path / "allow.toml"
    allow.write_text("[auth]\nallow_open = true\n")
    allowed = await spawn_gateway(
        tmp_path, "--config", str(allow), "--db", db, "--host", "0.0.0.0", env={"DASHSCOPE_API_KEY": URL_KEY}
    )
    processes.append(allowed)
    allowed.proc.terminate()
    allowed.proc.wait(10)
    created = await run_cli("keys", "create", "--tenant", "t", "--config", str(empty), "--db", db)
    assert created.status == 0 and created.out.startswith("gw-")
    keyed = await spawn_gateway(tmp_path, "--db", db, "--host", "0.0.0.0", env={"DASHSCOPE_API_KEY": URL_KEY})
    processes.append(keyed)


# Keys mode needs an upstream key: the gateway's own, or each client's in auth.upstream_key_header.

CLIENT_UPSTREAM_KEY = "sk-client-own-3f9a1c"
NATIVE_PATH = "/api/v1/services/aigc/text-generation/generation"


async def test_keys_mode_without_an_upstream_key_refuses_to_start(tmp_path: Path) -> None:
    config = tmp_path / "keys.toml"
    config.write_text('[auth]\nmode = "keys"\n')
    result = await run_cli("serve", "--config", str(config), "--db", str(tmp_path / "g.db"), "--port", "0")
    assert result.status == 2
    lines = result.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("gateway: error: upstream.api_key: keys mode")
    assert "auth.upstream_key_header" in lines[0] and "Traceback" not in result.err


async def test_auto_mode_with_a_key_and_no_upstream_key_refuses_to_start(tmp_path: Path) -> None:
    empty = tmp_path / "empty.toml"
    empty.touch()
    db = str(tmp_path / "g.db")
    created = await run_cli("keys", "create", "--tenant", "t", "--config", str(empty), "--db", db)
    assert created.status == 0
    result = await run_cli("serve", "--config", str(empty), "--db", db, "--port", "0")
    assert result.status == 2 and "gateway: error: upstream.api_key:" in result.err
    assert len(result.err.strip().splitlines()) == 1 and "Traceback" not in result.err


@pytest.fixture
async def header_keyed(tmp_path: Path, upstream: FakeUpstream) -> AsyncIterator[tuple[Gateway, str]]:
    """Keys mode without an upstream key: each client brings its own in X-Upstream-Key."""
    config = make_config(tmp_path, upstream.url, auth__mode="keys", auth__upstream_key_header="X-Upstream-Key")
    gateway = await start_gateway(config)
    yield gateway, await _create(gateway, "byok")
    await gateway.stop()


async def test_the_upstream_key_header_goes_upstream_as_authorization_on_chat_native_and_pass_through(
    header_keyed: tuple[Gateway, str], upstream: FakeUpstream, http: aiohttp.ClientSession
) -> None:
    gateway, secret = header_keyed
    headers = {**_auth(secret), "X-Upstream-Key": CLIENT_UPSTREAM_KEY, "X-Conversation-Id": "byok"}
    status, _ = await _call(http, "POST", gateway.url + "/v1/chat/completions", headers, chat_body(user("hi")))
    assert status == 200
    native = {"model": "qwen-plus", "input": {"messages": [user("again")]}}
    status, _ = await _call(http, "POST", gateway.url + NATIVE_PATH, headers, native)
    assert status == 200
    status, _ = await _call(http, "GET", gateway.url + "/v1/models", headers)
    assert status == 200
    sent = [r.headers for r in upstream.requests] + [upstream.others[-1].headers]
    assert [h["Authorization"] for h in sent] == [f"Bearer {CLIENT_UPSTREAM_KEY}"] * 3
    for seen in sent:
        assert "X-Upstream-Key" not in seen and secret not in str(seen)
    assert CLIENT_UPSTREAM_KEY not in str(gateway.rows("SELECT * FROM conversations"))


async def test_a_request_without_the_upstream_key_header_gets_401_before_anything_goes_upstream(
    header_keyed: tuple[Gateway, str], upstream: FakeUpstream, http: aiohttp.ClientSession
) -> None:
    gateway, secret = header_keyed
    native = {"model": "qwen-plus", "input": {"messages": [user("hi")]}}
    for method, path, body in (
        ("POST", "/v1/chat/completions", chat_body(user("hi"))),
        ("POST", NATIVE_PATH, native),
        ("GET", "/v1/models", None),
    ):
        async with http.request(method, gateway.url + path, headers=_auth(secret), json=body) as resp:
            assert resp.status == 401, path
            answer = await resp.json()
            text = answer.get("message") or answer["error"]["message"]  # the native shape, or OpenAI's
            assert "X-Upstream-Key" in text
    assert upstream.requests == [] and upstream.others == []


async def test_a_gateway_key_in_the_upstream_key_header_is_refused_not_forwarded(
    header_keyed: tuple[Gateway, str], upstream: FakeUpstream, http: aiohttp.ClientSession
) -> None:
    gateway, secret = header_keyed
    headers = {**_auth(secret), "X-Upstream-Key": secret}
    status, answer = await _call(http, "POST", gateway.url + "/v1/chat/completions", headers, chat_body(user("hi")))
    assert (status, answer["error"]["code"]) == (401, "invalid_upstream_key")
    assert upstream.requests == [] and secret not in str(answer)


async def test_a_first_key_created_while_running_without_an_upstream_key_is_refused_naming_the_settings(
    gateway: Gateway, upstream: FakeUpstream, http: aiohttp.ClientSession
) -> None:
    secret = await _create(gateway, "late")  # auto mode switches to keys mode now, with no upstream key
    for method, path, body in (("POST", "/v1/chat/completions", chat_body(user("hi"))), ("GET", "/v1/models", None)):
        status, answer = await _call(http, method, gateway.url + path, _auth(secret), body)
        assert (status, answer["error"]["code"]) == (500, "upstream_key_not_configured"), path
        assert "upstream.api_key" in answer["error"]["message"]
        assert "auth.upstream_key_header" in answer["error"]["message"]
    assert upstream.requests == [] and upstream.others == []
