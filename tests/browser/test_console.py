"""The web console in a real browser (headless Chromium): signing in, the list and its pages, search (a Chinese
word), a conversation with its tool call beside its result, reasoning, an interrupted reply and the context cut,
fork, rewind, delete, export, the admin's tenant field, open mode's sign-in, and message text that is never HTML.
(tests/browser/test_console_serving.py: the console's HTTP side.)

Screenshots of the list and of a conversation go to the test's temp folder, and with CONSOLE_SCREENSHOT=PATH one
is also copied there (the README's)."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import aiohttp
import pytest
from playwright.async_api import Browser

from gateway.http.state import STORE
from tests.browser.conftest import CUT_ARRIVED, PHONE_STORE, REASONING, SUMMARY, XSS_PROBE, Console
from tests.conftest import chat_body, make_config, start_gateway, user
from tests.fake_upstream import FakeUpstream

pytestmark = pytest.mark.asyncio(loop_scope="module")


async def test_signing_in_shows_the_conversations_newest_first(console: Console) -> None:
    await console.sign_in()
    page = console.page
    ids = await page.locator("tr.conversation").evaluate_all("rows => rows.map(row => row.dataset.id)")
    assert ids[:3] == ["phone-store", "weather-tool", "xss-probe"]
    assert {"delete-me", "rewind-me", "long-chat", "cut-off"} <= set(ids)
    row = page.locator('tr.conversation[data-id="phone-store"]')
    assert await row.locator("td").nth(1).text_content() == "qwen-plus"
    assert await row.locator("td").nth(2).text_content() == "6"
    await row.locator("td.cost", has_text="$").wait_for()  # fetched per row: qwen-plus has built-in prices


async def test_the_key_stays_in_session_storage_and_out_of_urls(console: Console) -> None:
    await console.sign_in()
    page = console.page
    stored = await page.evaluate("JSON.parse(sessionStorage.getItem('gateway-console')).key")
    assert stored == console.site.key
    assert console.site.key not in page.url
    assert await page.evaluate("localStorage.length") == 0
    assert await page.context.cookies() == []
    await page.click("#signout")
    await page.locator("#signin").wait_for()
    assert await page.evaluate("sessionStorage.length") == 0
    await page.reload()
    await page.locator("#signin-form").wait_for()  # nothing left to sign in with


async def test_a_wrong_key_is_refused(console: Console) -> None:
    await console.open()
    await console.page.fill("#key", "gw-not-a-key")
    await console.page.click("#signin-form button")
    await console.page.locator("#notice.error", has_text="does not accept this key").wait_for()
    assert await console.page.locator("#list").is_hidden()


async def test_the_list_pages_through_many_conversations(console: Console) -> None:
    key, _ = await console.site.gateway.runner.app[STORE].keys.create("many", None, False)
    for number in range(23):
        assert (await console.site.api("POST", "/v1/conversations", {"id": f"page-{number:02}"}, key=key))[0] == 200
    await console.sign_in(key)
    page = console.page
    rows = page.locator("tr.conversation")
    assert await rows.count() == 20 and await rows.first.get_attribute("data-id") == "page-22"
    assert await page.locator(".pager .previous").is_disabled()
    await page.click(".pager .next")
    await page.locator("#list .tally", has_text="page 2").wait_for()
    assert await rows.evaluate_all("rows => rows.map(row => row.dataset.id)") == ["page-02", "page-01", "page-00"]
    assert await page.locator(".pager .next").is_disabled()
    await page.click(".pager .previous")
    await page.locator('tr.conversation[data-id="page-22"]').wait_for()
    assert await rows.count() == 20


async def test_search_for_a_chinese_word_finds_the_phone_store(console: Console) -> None:
    await console.sign_in()
    await console.search("英寸")
    page = console.page
    assert await page.locator("tr.conversation").evaluate_all("rows => rows.map(row => row.dataset.id)") == [
        "phone-store"
    ]
    matches = page.locator('tr.matches[data-id="phone-store"] li')
    assert await matches.count() == 2  # the customer's message and the reply
    assert await matches.locator("mark").first.text_content() == "英寸"
    assert await matches.first.locator(".snippet").text_content() == PHONE_STORE[1][0]
    await matches.first.locator(".snippet").click()
    await page.locator(".message.focused", has_text=PHONE_STORE[1][0]).wait_for()  # opened at the message


async def test_search_words_in_any_order_across_messages(console: Console) -> None:
    await console.sign_in()
    await console.search("4k lumen")
    ids = await console.page.locator("tr.conversation").evaluate_all("rows => rows.map(row => row.dataset.id)")
    assert ids == ["phone-store"]
    await console.search("nothing-like-this")
    await console.page.locator(".empty", has_text="No conversation holds").wait_for()


async def test_a_conversation_shows_roles_reasoning_and_text(console: Console) -> None:
    await console.sign_in()
    await console.open_conversation("phone-store")
    page = console.page
    messages = page.locator("article.message")
    assert await messages.count() == 6
    assert await messages.locator(".role").all_text_contents() == ["user", "assistant"] * 3
    assert await messages.nth(2).locator(".text").text_content() == PHONE_STORE[1][0]
    reasoning = messages.nth(3).locator("details.reasoning")
    assert await reasoning.get_attribute("open") is None  # collapsed
    assert not await reasoning.locator(".text").is_visible()
    await reasoning.locator("summary").click()
    assert await reasoning.locator(".text").text_content() == REASONING
    await page.locator(".facts", has_text="over 3 replies").wait_for()


async def test_a_tool_call_is_shown_beside_its_result(console: Console) -> None:
    await console.sign_in()
    await console.open_conversation("weather-tool")
    page = console.page
    call = page.locator('section.call[data-call-id="call_weather"]')
    assert await call.locator(".function").text_content() == "get_weather"
    assert json.loads(await call.locator(".arguments").text_content() or "") == {"city": "Hangzhou", "unit": "celsius"}
    result = call.locator(".call-result")
    assert json.loads(await result.locator(".result-text").text_content() or "") == {"temp_c": 21, "sky": "sunny"}
    request_box, result_box = await call.locator(".call-request").bounding_box(), await result.bounding_box()
    assert request_box is not None and result_box is not None
    assert result_box["x"] >= request_box["x"] + request_box["width"] - 1  # beside it, on the same line
    assert abs(result_box["y"] - request_box["y"]) < 2
    assert await page.locator("article.message-tool").count() == 0  # shown with its call, not again on its own
    assert await page.locator("article.message").last.locator(".text").text_content() == (
        "It is 21 °C and sunny in Hangzhou."
    )


async def test_interrupted_replies_and_the_context_cut_are_marked(console: Console) -> None:
    await console.sign_in()
    await console.open_conversation("cut-off")
    page = console.page
    reply = page.locator("article.message-assistant")
    await reply.locator(".badge.interrupted").wait_for()
    assert await reply.locator(".text").text_content() == CUT_ARRIVED  # what arrived before the client hung up
    await page.click(".back")
    await console.open_conversation("long-chat")
    status, conversation = await console.site.api("GET", "/v1/conversations/long-chat")
    start = conversation["context"]["window_start"]
    assert status == 200 and start > 0
    children = page.locator(".messages > *")
    assert await children.nth(start).get_attribute("class") == "cut"  # just before message number `start`
    assert (await page.locator(".cut .summary .text").text_content() or "").endswith(SUMMARY)
    assert await page.locator(".messages > article").count() == 12


async def test_an_unknown_conversation_says_so(console: Console) -> None:
    await console.sign_in()
    await console.page.goto(console.site.url + "/ui/#/c/no-such-conversation")
    await console.page.locator("#notice.error", has_text="No conversation found").wait_for()
    await console.page.click("#conversation .back")
    await console.page.locator("table.conversations").wait_for()


async def test_forking_at_a_message_opens_the_new_conversation(console: Console) -> None:
    await console.sign_in()
    await console.open_conversation("phone-store")
    page = console.page
    second_reply = page.locator("article.message").nth(3)
    at = await second_reply.get_attribute("data-id")
    await second_reply.locator("button.fork").click()
    await page.locator("#notice", has_text=f"at {at} into conv_").wait_for()
    heading = await page.locator(".conversation-id").text_content() or ""
    assert heading.startswith("conv_") and heading in page.url
    assert await page.locator("article.message").count() == 4  # up to and including the message
    assert await page.locator(".facts a", has_text="phone-store").count() == 1  # forked from
    await page.click(".back")
    await page.locator(f'tr.conversation[data-id="{heading}"]').wait_for()
    status, _ = await console.site.api("GET", f"/v1/conversations/{heading}")
    assert status == 200


async def test_rewind_removes_the_last_turn_after_confirmation(console: Console) -> None:
    await console.sign_in()
    await console.open_conversation("rewind-me")
    page = console.page
    page.once("dialog", lambda dialog: dialog.accept())
    await page.click("button.rewind")
    await page.locator("#notice", has_text="Rewound one turn").wait_for()
    assert await page.locator("article.message .text").all_text_contents() == [
        "Is the Aurora Max waterproof?",
        "Yes, IP68.",
    ]


async def test_delete_asks_first_then_the_conversation_is_gone(console: Console) -> None:
    await console.sign_in()
    await console.open_conversation("delete-me")
    page = console.page
    page.once("dialog", lambda dialog: dialog.dismiss())
    await page.click("button.delete")
    assert (await console.site.api("GET", "/v1/conversations/delete-me"))[0] == 200  # dismissed: kept
    page.once("dialog", lambda dialog: dialog.accept())
    await page.click("button.delete")
    await page.locator("#notice", has_text="Deleted delete-me").wait_for()
    await page.locator("table.conversations").wait_for()
    assert await page.locator('tr.conversation[data-id="delete-me"]').count() == 0
    assert await page.locator('tr.conversation[data-id="phone-store"]').count() == 1
    assert (await console.site.api("GET", "/v1/conversations/delete-me"))[0] == 404


async def test_message_text_is_shown_as_text_never_as_html(console: Console) -> None:
    await console.sign_in()
    await console.open_conversation("xss-probe")
    page = console.page
    assert await page.locator("article.message-user .text").text_content() == XSS_PROBE
    assert await page.locator("#conversation img").count() == 0
    await page.click(".back")
    await console.search("onerror")
    assert await page.locator("tr.matches .snippet").first.text_content() == XSS_PROBE
    assert await page.locator("#list img").count() == 0
    assert await page.evaluate("window.__xss") is None  # its handler never ran


async def test_exports_download_through_the_api(console: Console) -> None:
    await console.sign_in()
    await console.open_conversation("weather-tool")
    page = console.page
    async with page.expect_download() as jsonl:
        await page.click("text=Export JSONL")
    download = await jsonl.value
    assert download.suggested_filename == "weather-tool.jsonl"
    lines = [json.loads(line) for line in Path(await download.path()).read_text().splitlines()]
    assert lines[0]["id"] == "weather-tool" and lines[2]["message"]["tool_calls"][0]["id"] == "call_weather"
    async with page.expect_download() as openai_format:
        await page.click("text=Export OpenAI")
    download = await openai_format.value
    assert download.suggested_filename == "weather-tool.json"
    exported = json.loads(Path(await download.path()).read_text())
    assert [m["role"] for m in exported["messages"]] == ["user", "assistant", "tool", "assistant"]


async def test_an_admin_key_views_another_tenant(console: Console) -> None:
    await console.sign_in()
    page = console.page
    assert await page.locator("#tenant-form").is_hidden()  # not an admin key
    await page.click("#signout")
    await console.sign_in(console.site.admin)
    await page.locator(".empty", has_text="No conversations yet").wait_for()  # tenant ops has none
    await page.fill("#tenant", "shop")
    await page.click("#tenant-form button")
    await page.locator('tr.conversation[data-id="phone-store"]').wait_for()
    await page.locator("#notice", has_text="Viewing tenant shop").wait_for()
    await console.open_conversation("phone-store")  # ?tenant=shop on every call
    assert await page.locator("article.message").count() == 6
    assert await page.locator("#tenants option").evaluate_all("options => options.map(o => o.value)") == ["shop"]


async def test_in_open_mode_the_apps_own_key_signs_in_to_its_conversations(
    browser: Browser, console_upstream: FakeUpstream, tmp_path: Path
) -> None:
    gateway = await start_gateway(make_config(tmp_path, console_upstream.url, auth__mode="open"))
    context = await browser.new_context()
    context.set_default_timeout(5000)
    try:
        async with aiohttp.ClientSession() as http:
            headers = {"Authorization": "Bearer sk-the-apps-key", "X-Conversation-Id": "open-chat"}
            body = chat_body(user("Hello from the app"))
            async with http.post(gateway.url + "/v1/chat/completions", json=body, headers=headers) as resp:
                assert resp.status == 200
        page = await context.new_page()
        for key, seen in (("sk-the-apps-key", ["open-chat"]), ("sk-someone-else", [])):
            await page.goto(gateway.url + "/ui/")
            await page.fill("#key", key)
            await page.click("#signin-form button")
            await page.locator("#list table.conversations, #list .empty").wait_for()
            ids = await page.locator("tr.conversation").evaluate_all("rows => rows.map(row => row.dataset.id)")
            assert ids == seen
            assert await page.locator("#tenant-form").is_hidden()
            await page.click("#signout")
    finally:
        await context.close()
        await gateway.stop()


async def test_screenshots_of_the_list_and_a_conversation(console: Console, tmp_path: Path) -> None:
    await console.sign_in()
    page = console.page
    await page.locator('tr.conversation[data-id="phone-store"] td.cost', has_text="$").wait_for()
    await page.screenshot(path=tmp_path / "list.png", full_page=True)
    await console.search("英寸")
    await page.screenshot(path=tmp_path / "search.png", full_page=True)
    await page.click('tr.conversation[data-id="phone-store"] a')
    await page.locator("article.message").first.wait_for()
    await page.locator("article.message").nth(3).locator("details.reasoning summary").click()
    await page.screenshot(path=tmp_path / "conversation.png", full_page=True)
    await page.emulate_media(color_scheme="dark")
    await page.goto(console.site.url + "/ui/#/c/weather-tool")
    await page.locator("section.call").wait_for()
    await page.screenshot(path=tmp_path / "conversation-dark.png", full_page=True)
    for name in ("list", "search", "conversation", "conversation-dark"):
        assert (tmp_path / f"{name}.png").stat().st_size > 10_000
    if target := os.environ.get("CONSOLE_SCREENSHOT"):
        Path(target).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(tmp_path / "conversation.png", target)
