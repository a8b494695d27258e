"""One canonical structlog line per request with the fields operators need, and never a credential or a word
of message content."""

from __future__ import annotations

import io
import json

import aiohttp
import structlog
from structlog.testing import capture_logs

from gateway.observability.logs import configure_logging
from tests.conftest import Gateway, chat_body, user
from tests.fake_upstream import FakeUpstream, Script

SECRET_KEY = "sk-SENTINEL-KEY-9f8e7d"
SECRET_TEXT = "SENTINEL-MESSAGE-my-card-number-4111"


async def test_one_canonical_line_per_request(gateway: Gateway, upstream: FakeUpstream) -> None:
    upstream.script(Script(usage={"prompt_tokens": 11, "completion_tokens": 3, "total_tokens": 14}))
    with capture_logs(processors=[structlog.contextvars.merge_contextvars]) as logs:
        await gateway.sdk("canon", api_key="sk-abc").chat.completions.create(model="qwen-plus", messages=[user("hi")])
    lines = [e for e in logs if e["event"] == "request"]
    assert len(lines) == 1
    line = lines[0]
    assert line["status"] == 200
    assert line["conversation_id"] == "canon"
    assert len(line["owner"]) == 12
    assert line["model"] == "qwen-plus"
    assert line["stream"] is False
    assert line["prompt_tokens"] == 11
    assert line["completion_tokens"] == 3
    assert line["upstream_ms"] >= 0
    assert line["duration_ms"] >= line["upstream_ms"]
    assert len(line["request_id"]) == 32


async def test_streamed_and_interrupted_requests_are_marked(
    gateway: Gateway, upstream: FakeUpstream, http: aiohttp.ClientSession
) -> None:
    with capture_logs(processors=[structlog.contextvars.merge_contextvars]) as logs:
        async with http.post(
            gateway.url + "/v1/chat/completions",
            json=chat_body(user("x"), stream=True),
            headers={"X-Conversation-Id": "s"},
        ) as resp:
            await resp.read()
    (line,) = [e for e in logs if e["event"] == "request"]
    assert line["stream"] is True
    assert line["status"] == 200


async def test_no_credentials_or_message_text_in_logs(
    gateway: Gateway, upstream: FakeUpstream, http: aiohttp.ClientSession
) -> None:
    upstream.script(Script(content=SECRET_TEXT), Script(status=400), Script(content=SECRET_TEXT, cut_after=2))
    out = io.StringIO()
    configure_logging("debug", "json", out)
    try:
        headers = {"Authorization": f"Bearer {SECRET_KEY}", "X-Conversation-Id": "secret"}
        for body in (
            chat_body(user(SECRET_TEXT)),
            chat_body(user(SECRET_TEXT)),
            chat_body(user(SECRET_TEXT), stream=True),
        ):
            async with http.post(gateway.url + "/v1/chat/completions", json=body, headers=headers) as resp:
                await resp.read()
        async with http.post(gateway.url + "/v1/chat/completions", data=b"{" + SECRET_TEXT.encode(), headers=headers):
            pass
    finally:
        configure_logging("info", "console")
    text = out.getvalue()
    lines = [json.loads(line) for line in text.splitlines()]
    assert sum(e["event"] == "request" for e in lines) == 4
    assert SECRET_KEY not in text
    assert SECRET_TEXT not in text
    assert "Authorization" not in text


def test_console_format_on_a_terminal_and_json_otherwise() -> None:
    class Tty(io.StringIO):
        def isatty(self) -> bool:
            return True

    tty, pipe = Tty(), io.StringIO()
    try:
        configure_logging("info", "auto", tty)
        structlog.get_logger().info("hello_event", answer=42)
        configure_logging("info", "auto", pipe)
        structlog.get_logger().info("hello_event", answer=42)
    finally:
        configure_logging("info", "console")
    assert json.loads(pipe.getvalue())["answer"] == 42
    assert "hello_event" in tty.getvalue()
    assert not tty.getvalue().lstrip().startswith("{")
