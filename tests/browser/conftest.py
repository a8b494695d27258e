"""Fixtures of the console's browser tests: one gateway (keys mode, the fake upstream) per module with
conversations seeded through its API as an application would make them, and one headless Chromium per module:
the distribution's (``tests/install-servers.sh`` installs it), driven by Playwright, nothing downloaded.  Each test
gets a fresh browser context (its own session storage), and fails on any script error or CSP violation the page
reports."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import pytest_asyncio
from playwright.async_api import Browser, Page, async_playwright

from gateway.http.state import STORE
from tests.conftest import Gateway, chat_body, make_config, start_gateway, user
from tests.fake_upstream import FakeUpstream, Script
from tests.postgres import missing_server

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
UPSTREAM_KEY = "sk-upstream-console"
XSS_PROBE = '<img src=x onerror="window.__xss = 1">'
WEATHER_CALL = {
    "id": "call_weather",
    "type": "function",
    "function": {"name": "get_weather", "arguments": '{"city": "Hangzhou", "unit": "celsius"}'},
}
SUMMARY = "The customer compares phones and wants a large screen."
# The first turns of the phone-store dialogue (bench/cache_cost.py), in English and Chinese: (customer, reply).
PHONE_STORE = (
    ("Hi, I'd like to buy a new phone.", "Welcome! Which screen size would you like, 6.1, 6.5 or 6.7 inch?"),
    ("我想要6.7英寸的", "好的，6.7英寸，大屏看视频和玩游戏都很舒服。您想要2K还是4K分辨率？"),  # noqa: RUF001 - Chinese punctuation
    ("4K, please.", "4K it is: the Nimbus Pro, the Aurora Max and the Lumen Ultra come in 6.7 inch 4K."),
)
CUT_REPLY = "It comes in four colours: midnight blue, starlight silver, graphite black and mint green."
CUT_ARRIVED = CUT_REPLY[: len(CUT_REPLY) // 2 + 1]  # the first of its two chunks
# What DashScope would bill each of those turns: the history grows, and its context cache serves the prefix.
PHONE_USAGE = ((412, 36, 0), (471, 58, 384), (552, 61, 448))
REASONING = "The customer chose 6.7 inch; the next question is the resolution."


def chromium() -> str | None:
    if os.access(CHROMIUM, os.X_OK):
        return str(CHROMIUM)
    return shutil.which("chromium")


@dataclass
class Site:
    """The seeded gateway: ``key`` is tenant shop's (every seeded conversation is shop's), ``admin`` an admin key
    of tenant ops."""

    gateway: Gateway
    upstream: FakeUpstream
    key: str
    admin: str

    @property
    def url(self) -> str:
        return self.gateway.url

    async def api(self, method: str, path: str, body: Any = None, key: str | None = None) -> tuple[int, Any]:
        headers = {"Authorization": f"Bearer {key or self.key}"}
        async with (
            aiohttp.ClientSession() as http,
            http.request(method, self.url + path, json=body, headers=headers) as resp,
        ):
            return resp.status, await resp.json()


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def console_upstream() -> AsyncIterator[FakeUpstream]:
    fake = await FakeUpstream().start()
    yield fake
    await fake.close()


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def site(tmp_path_factory: pytest.TempPathFactory, console_upstream: FakeUpstream) -> AsyncIterator[Site]:
    upstream = console_upstream
    config = make_config(
        tmp_path_factory.mktemp("console"),
        upstream.url,
        auth__mode="keys",
        upstream__api_key=UPSTREAM_KEY,
        memory__max_turns=4,  # a conversation of six turns gets a context cut, and a summary of what it left out
        memory__summarize=True,
    )
    gateway = await start_gateway(config)
    keys = gateway.runner.app[STORE].keys
    key, _ = await keys.create("shop", "console test", False)
    admin, _ = await keys.create("ops", "console admin", True)
    prompt = config.summary_prompt
    upstream.chooser = lambda body: Script(content=SUMMARY) if body["messages"][0]["content"] == prompt else None
    try:
        async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {key}"}) as http:
            await _seed(Seeder(http, gateway.url, upstream))
        yield Site(gateway, upstream, key, admin)
    finally:
        await gateway.stop()


@dataclass
class Seeder:
    http: aiohttp.ClientSession
    url: str
    upstream: FakeUpstream
    made: list[str] = field(default_factory=list)

    async def turn(self, conversation: str, *messages: dict[str, Any], script: Script | None = None) -> None:
        self.upstream.script(script or Script())
        headers = {"X-Conversation-Id": conversation}
        async with self.http.post(self.url + "/v1/chat/completions", json=chat_body(*messages), headers=headers) as r:
            assert r.status == 200, await r.text()

    async def create(self, body: dict[str, Any]) -> None:
        async with self.http.post(self.url + "/v1/conversations", json=body) as r:
            assert r.status == 200, await r.text()

    async def cut_stream(self, conversation: str, text: str) -> None:
        """A streamed turn whose client hangs up after the first chunk: the reply is stored as interrupted."""
        self.upstream.script(Script(content=CUT_REPLY, chunk_size=len(CUT_ARRIVED), chunk_delay=0.5))
        body = chat_body(user(text), stream=True)
        headers = {"X-Conversation-Id": conversation}
        resp = await self.http.post(self.url + "/v1/chat/completions", json=body, headers=headers)
        while not _content_of(await resp.content.readline()):
            pass
        resp.close()  # half the reply arrived; the other half is half a second away
        for _ in range(200):
            async with self.http.get(self.url + f"/v1/conversations/{conversation}/messages") as r:
                if any(m.get("interrupted") for m in (await r.json())["data"]):
                    return
            await asyncio.sleep(0.02)
        raise AssertionError("the interrupted reply was not stored")


def _content_of(line: bytes) -> str:
    if not line.startswith(b"data: {"):
        return ""
    choices = json.loads(line.removeprefix(b"data: "))["choices"]
    return str(choices[0]["delta"].get("content") or "") if choices else ""


async def _seed(seed: Seeder) -> None:
    """Oldest first: the list shows the newest activity first."""
    await seed.create(
        {"id": "delete-me", "messages": [user("Please forget this."), {"role": "assistant", "content": "Forgotten."}]}
    )
    await seed.create(
        {
            "id": "rewind-me",
            "messages": [
                user("Is the Aurora Max waterproof?"),
                {"role": "assistant", "content": "Yes, IP68."},
                user("And the Lumen Ultra?"),
                {"role": "assistant", "content": "IP67."},
            ],
        }
    )
    for turn in range(6):
        await seed.turn("long-chat", user(f"Turn {turn}: tell me once more about the screen sizes."))
    await seed.cut_stream("cut-off", "Which colours does the Nimbus Pro come in?")
    await seed.turn("xss-probe", user(XSS_PROBE), script=Script(content="That is an HTML tag; it is shown as text."))
    await seed.turn("weather-tool", user("What's the weather in Hangzhou?"), script=Script(tool_calls=[WEATHER_CALL]))
    result = {"role": "tool", "tool_call_id": "call_weather", "content": '{"temp_c": 21, "sky": "sunny"}'}
    await seed.turn("weather-tool", result, script=Script(content="It is 21 °C and sunny in Hangzhou."))
    for number, ((customer, reply), (prompt, completion, cached)) in enumerate(
        zip(PHONE_STORE, PHONE_USAGE, strict=True)
    ):
        usage = {
            "prompt_tokens": prompt,
            "completion_tokens": completion,
            "total_tokens": prompt + completion,
            "prompt_tokens_details": {"cached_tokens": cached},
        }
        reasoning = REASONING if number == 1 else None
        script = Script(content=reply, reasoning=reasoning, usage=usage)
        await seed.turn("phone-store", user(customer), script=script)


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def browser() -> AsyncIterator[Browser]:
    path = chromium()
    if path is None:
        missing_server("Chromium is not installed (apt-get install chromium; make test does it as root)")
    async with async_playwright() as playwright:
        # launch() gives the browser a fresh profile (user-data dir) of its own, removed when it closes.
        launched = await playwright.chromium.launch(executable_path=path, headless=True, args=CHROMIUM_ARGS)
        yield launched
        await launched.close()


@dataclass
class Console:
    """A fresh tab on the console, and what went wrong in it (script errors, CSP violations)."""

    page: Page
    site: Site
    problems: list[str]

    async def open(self, path: str = "/ui/") -> None:
        await self.page.goto(self.site.url + path)

    async def sign_in(self, key: str | None = None) -> None:
        await self.open()
        await self.page.fill("#key", key or self.site.key)
        await self.page.click("#signin-form button")
        await self.page.locator("#list table.conversations, #list .empty").wait_for()

    async def search(self, q: str) -> None:
        await self.page.fill("#q", q)
        await self.page.click("#search button")
        await self.page.locator("#list .tally", has_text="matching").wait_for()

    async def open_conversation(self, conversation: str) -> None:
        await self.page.click(f'tr.conversation[data-id="{conversation}"] a')
        await self.page.locator("#conversation .conversation-id", has_text=conversation).wait_for()


@pytest_asyncio.fixture(loop_scope="module")
async def console(browser: Browser, site: Site) -> AsyncIterator[Console]:
    context = await browser.new_context(viewport={"width": 1280, "height": 900}, accept_downloads=True)
    context.set_default_timeout(5000)  # everything here answers in milliseconds: fail fast, not after 30 s
    page = await context.new_page()
    problems: list[str] = []
    page.on("pageerror", lambda error: problems.append(f"script error: {error}"))
    # Chromium reports CSP violations on the console; failed requests too (a 401 or 403 the page handles), which
    # are not problems.
    page.on(
        "console",
        lambda message: (
            problems.append(f"console: {message.text}")
            if message.type == "error" and "Failed to load resource" not in message.text
            else None
        ),
    )
    try:
        yield Console(page, site, problems)
    finally:
        await context.close()
    assert problems == []
