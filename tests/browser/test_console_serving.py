"""The console over plain HTTP: no key needed for the page, strict security headers on every console response,
only the shipped files served, ``server.console = false``, and in open auth mode no console on a public address
(``auth.mode = "auto"``: until a key exists)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
from structlog.testing import capture_logs

from gateway.http.console import SECURITY_HEADERS, is_loopback
from gateway.http.state import STORE
from tests.conftest import Gateway, make_config, start_gateway
from tests.fake_upstream import FakeUpstream


@pytest.fixture
async def keyed(tmp_path: Path, upstream: FakeUpstream) -> AsyncIterator[Gateway]:
    """Keys mode, with a key: every API call needs one, the console's page does not."""
    config = make_config(tmp_path, upstream.url, auth__mode="keys", upstream__api_key="sk-upstream")
    gateway = await start_gateway(config)
    await gateway.runner.app[STORE].keys.create("shop", None, False)
    yield gateway
    await gateway.stop()


async def test_console_responses_carry_the_security_headers(keyed: Gateway) -> None:
    async with aiohttp.ClientSession() as http:  # no key: the page signs in by itself
        for path, status, content_type in [
            ("/ui/", 200, "text/html"),
            ("/ui/app.js", 200, "text/javascript"),
            ("/ui/app.css", 200, "text/css"),
            ("/ui/no-such-file.js", 404, "text/plain"),
        ]:
            async with http.get(keyed.url + path) as resp:
                assert (resp.status, resp.content_type) == (status, content_type), path
                assert {name: resp.headers.get(name) for name in SECURITY_HEADERS} == SECURITY_HEADERS, path
        async with http.get(keyed.url + "/ui", allow_redirects=False) as resp:
            assert (resp.status, resp.headers["Location"]) == (308, "ui/")
            assert resp.headers["Content-Security-Policy"] == SECURITY_HEADERS["Content-Security-Policy"]
        async with http.get(keyed.url + "/v1/conversations") as resp:
            assert resp.status == 401  # what the page calls needs a key
        async with http.get(keyed.url + "/ui/app.js") as resp:
            etag = resp.headers["ETag"]
        async with http.get(keyed.url + "/ui/app.js", headers={"If-None-Match": etag}) as resp:
            assert resp.status == 304 and resp.headers["X-Frame-Options"] == "DENY"


async def test_only_the_shipped_files_are_served(keyed: Gateway) -> None:
    async with aiohttp.ClientSession() as http:
        for path in ("/ui/__init__.py", "/ui/..%2F__init__.py", "/ui/static", "/ui/%2E%2E/routes.py", "/ui/a/b.js"):
            async with http.get(keyed.url + path) as resp:
                assert resp.status == 404, path
                assert "import" not in await resp.text()


async def test_the_page_holds_no_inline_script_or_style(keyed: Gateway) -> None:
    async with aiohttp.ClientSession() as http, http.get(keyed.url + "/ui/") as resp:
        page = await resp.text()
    assert "<script>" not in page and "style=" not in page and "<style" not in page and "onclick" not in page


async def _console_status(
    tmp_path: Path, upstream: FakeUpstream, **flags: object
) -> tuple[int, list[dict[str, object]]]:
    tmp_path.mkdir(exist_ok=True)
    with capture_logs() as logs:
        gateway = await start_gateway(make_config(tmp_path, upstream.url, **flags))
    try:
        async with aiohttp.ClientSession() as http, http.get(gateway.url + "/ui/") as resp:
            return resp.status, [log for log in logs if str(log["event"]).startswith("console_")]
    finally:
        await gateway.stop()


async def test_server_console_false_serves_no_console(tmp_path: Path, upstream: FakeUpstream) -> None:
    status, logs = await _console_status(tmp_path, upstream, server__console=False)
    assert status == 404 and logs == []


async def test_open_mode_serves_the_console_only_on_a_loopback_address(tmp_path: Path, upstream: FakeUpstream) -> None:
    status, logs = await _console_status(tmp_path / "loopback", upstream, auth__mode="open")
    assert status == 200 and [log["event"] for log in logs] == ["console_enabled"]
    # 0.0.0.0 takes connections on 127.0.0.1 too: the address the server listens on decides, not the caller's.
    status, logs = await _console_status(tmp_path / "public", upstream, auth__mode="open", server__host="0.0.0.0")
    assert status == 404
    assert [(log["event"], log["log_level"], log["host"]) for log in logs] == [
        ("console_disabled", "warning", "0.0.0.0")
    ]


async def test_auto_mode_on_a_public_address_serves_the_console_once_a_key_exists(
    tmp_path: Path, upstream: FakeUpstream
) -> None:
    gateway = await start_gateway(make_config(tmp_path, upstream.url, server__host="0.0.0.0"))
    try:
        async with aiohttp.ClientSession() as http:
            async with http.get(gateway.url + "/ui/") as resp:
                assert resp.status == 404
            await gateway.runner.app[STORE].keys.create("shop", None, False)
            async with http.get(gateway.url + "/ui/") as resp:
                assert resp.status == 200
    finally:
        await gateway.stop()


def test_loopback_addresses() -> None:
    assert all(is_loopback(host) for host in ("127.0.0.1", "127.8.9.10", "::1", "localhost"))
    assert not any(is_loopback(host) for host in ("0.0.0.0", "::", "10.0.0.1", "gateway.example.com", ""))
