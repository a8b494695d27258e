"""``gateway conversations ...`` and ``gateway purge``: separate processes on the database file of a running gateway."""

from __future__ import annotations

import hashlib
import json
import sqlite3
import time
from pathlib import Path

import aiohttp
import pytest

from tests.conftest import CliResult, Gateway, run_cli, user
from tests.fake_dashscope import DashScopeBilling, Prices
from tests.fake_upstream import FakeUpstream, Script
from tests.stored import cli_dump, cli_list

OWNER_A = hashlib.sha256(b"key-a").hexdigest()
OWNER_B = hashlib.sha256(b"key-b").hexdigest()
SYSTEM = {"role": "system", "content": "You sell phones."}


async def _turn(gateway: Gateway, conversation: str, text: str, api_key: str = "key-a", system: bool = False) -> None:
    client = gateway.sdk(conversation, api_key=api_key)
    messages = [SYSTEM, user(text)] if system else [user(text)]
    await client.chat.completions.create(model="qwen-plus", messages=messages)  # type: ignore[arg-type]


async def _cli(gateway: Gateway, *args: str, stdin: str | None = None) -> CliResult:
    empty = gateway.db_path.parent / "empty.toml"
    empty.touch()
    command, *rest = args
    sub = [command, rest.pop(0)] if command == "conversations" else [command]
    return await run_cli(*sub, "--config", str(empty), "--db", str(gateway.db_path), *rest, stdin=stdin)


async def test_list_shows_every_owner_newest_first_and_filters_by_owner_prefix(gateway: Gateway) -> None:
    await _turn(gateway, "older", "hi")
    await _turn(gateway, "newer", "hi", api_key="key-b")
    listed = await _cli(gateway, "conversations", "list")
    assert listed.status == 0, listed.err
    lines = listed.out.splitlines()
    assert lines[0].split() == ["OWNER", "ID", "MESSAGES", "UPDATED", "MODEL"]
    assert [line.split()[:3] for line in lines[1:]] == [[OWNER_B[:12], "newer", "2"], [OWNER_A[:12], "older", "2"]]
    only_a = await _cli(gateway, "conversations", "list", "--owner", OWNER_A[:6])
    assert [line.split()[1] for line in only_a.out.splitlines()[1:]] == ["older"]
    limited = await _cli(gateway, "conversations", "list", "--limit", "1")
    assert len(limited.out.splitlines()) == 2


async def test_show_prints_a_readable_transcript(gateway: Gateway, upstream: FakeUpstream) -> None:
    call = {"id": "call_1", "type": "function", "function": {"name": "stock", "arguments": '{"size":"6.7"}'}}
    upstream.script(Script(tool_calls=[call]))
    await _turn(gateway, "shop", "is the 6.7 inch in stock?", system=True)
    shown = await _cli(gateway, "conversations", "show", "shop")
    assert shown.status == 0, shown.err
    assert "conversation shop" in shown.out and "model qwen-plus" in shown.out
    assert "system: You sell phones." in shown.out
    assert "user: is the 6.7 inch in stock?" in shown.out
    assert 'assistant: -> stock({"size":"6.7"})' in shown.out


async def test_an_id_of_several_owners_needs_owner(gateway: Gateway) -> None:
    await _turn(gateway, "same", "from a")
    await _turn(gateway, "same", "from b", api_key="key-b")
    ambiguous = await _cli(gateway, "conversations", "show", "same")
    assert ambiguous.status == 1 and "several owners" in ambiguous.err and "Traceback" not in ambiguous.err
    chosen = await _cli(gateway, "conversations", "show", "same", "--owner", OWNER_B[:8])
    assert chosen.status == 0 and "user: from b" in chosen.out
    missing = await _cli(gateway, "conversations", "show", "nope")
    assert missing.status == 1 and missing.err.strip() == "gateway: error: no conversation 'nope'"
    other = await _cli(gateway, "conversations", "show", "same", "--owner", "xyz")
    assert other.status == 1 and other.err.strip() == "gateway: error: no conversation 'same' of owner xyz"


async def test_export_delete_import_round_trips_exactly_while_the_server_runs(
    gateway: Gateway, upstream: FakeUpstream, http: aiohttp.ClientSession
) -> None:
    await _turn(gateway, "trip", "I want a phone", system=True)
    await _turn(gateway, "trip", "6.1 inch")
    await http.patch(
        gateway.url + "/v1/conversations/trip",
        json={"metadata": {"store": "berlin"}},
        headers={"Authorization": "Bearer key-a"},
    )
    exported = await _cli(gateway, "conversations", "export", "trip")
    assert exported.status == 0, exported.err
    lines = [json.loads(line) for line in exported.out.splitlines()]
    assert lines[0]["object"] == "conversation" and lines[0]["owner"] == OWNER_A
    assert lines[0]["metadata"] == {"store": "berlin"} and lines[0]["system"] == [SYSTEM]
    assert [line["message"]["content"] for line in lines[1:]] == ["I want a phone", "reply 1", "6.1 inch", "reply 2"]

    deleted = await _cli(gateway, "conversations", "delete", "trip")
    assert deleted.status == 0 and deleted.out.startswith("deleted trip")
    assert await cli_list(gateway.db_path) == []
    await _turn(gateway, "trip", "hello?")  # the server saw the other process's delete
    assert upstream.last["messages"] == [user("hello?")]
    await _cli(gateway, "conversations", "delete", "trip")

    imported = await _cli(gateway, "conversations", "import", "-", stdin=exported.out)
    assert imported.status == 0, imported.err
    again = await _cli(gateway, "conversations", "export", "trip")
    assert again.out == exported.out  # byte for byte
    await _turn(gateway, "trip", "4K")  # and the server continues the imported history
    assert [m["content"] for m in upstream.last["messages"]] == [
        "You sell phones.", "I want a phone", "reply 1", "6.1 inch", "reply 2", "4K"
    ]  # fmt: skip


async def test_openai_format_export_and_import(gateway: Gateway, tmp_path: Path) -> None:
    await _turn(gateway, "fmt", "hello", system=True)
    exported = await _cli(gateway, "conversations", "export", "fmt", "--format", "openai")
    body = json.loads(exported.out)
    assert body["model"] == "qwen-plus"
    assert body["messages"] == [SYSTEM, user("hello"), {"role": "assistant", "content": "reply 1"}]
    path = tmp_path / "fmt.jsonl"
    path.write_text(exported.out)
    no_owner = await _cli(gateway, "conversations", "import", str(path))
    assert no_owner.status == 1 and "--owner" in no_owner.err
    imported = await _cli(gateway, "conversations", "import", str(path), "--owner", OWNER_B)
    assert imported.status == 0, imported.err
    new_id = imported.out.split()[1]
    copy = await _cli(gateway, "conversations", "export", new_id, "--format", "openai")
    assert json.loads(copy.out)["messages"] == body["messages"]


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ('{"object": "conversation.message", "message": {"role": "user"}}\n', "line 1: a message comes before"),
        ("not json\n", "line 1:"),
        ('{"object": "conversation", "id": "x"}\n', "line 1:"),
        ('{"what": 1}\n', "line 1: expected a conversation"),
    ],
)
async def test_bad_import_files_are_named_by_line_and_import_nothing(
    gateway: Gateway, content: str, message: str
) -> None:
    result = await _cli(gateway, "conversations", "import", "-", stdin=content)
    assert result.status == 1 and message in result.err and "Traceback" not in result.err
    assert await cli_list(gateway.db_path) == []


async def test_import_of_an_existing_id_fails_and_keeps_the_stored_one(gateway: Gateway) -> None:
    await _turn(gateway, "kept", "original")
    exported = await _cli(gateway, "conversations", "export", "kept")
    before = await cli_dump(gateway.db_path)
    result = await _cli(gateway, "conversations", "import", "-", stdin=exported.out)
    assert result.status == 1 and "exists already" in result.err
    assert await cli_dump(gateway.db_path) == before


async def test_delete_several_ids_leaves_no_rows(gateway: Gateway) -> None:
    for name in ("a", "b", "c"):
        await _turn(gateway, name, "hi")
    result = await _cli(gateway, "conversations", "delete", "a", "b")
    assert result.status == 0 and len(result.out.splitlines()) == 2
    assert [c.id for c in await cli_list(gateway.db_path)] == ["c"]
    assert gateway.rows("SELECT count(*) FROM messages") == [(2,)]  # the rows are gone from the file, not hidden


async def test_purge_deletes_idle_conversations(gateway: Gateway) -> None:
    for name in ("stale", "fresh"):
        await _turn(gateway, name, "hi")
    with sqlite3.connect(gateway.db_path) as db:
        db.execute("UPDATE conversations SET updated_at = ? WHERE external_id = 'stale'", (time.time() - 3 * 86400,))
    kept = await _cli(gateway, "purge")
    assert kept.status == 0 and "kept forever" in kept.out  # retention.idle_days defaults to 0
    purged = await _cli(gateway, "purge", "--idle-days", "2")
    assert purged.status == 0 and purged.out.startswith("purged 1 ")
    assert [(c.id, c.messages) for c in await cli_list(gateway.db_path)] == [("fresh", 2)]


async def test_a_missing_database_is_a_bad_setting_not_a_new_file(tmp_path: Path) -> None:
    empty = tmp_path / "empty.toml"
    empty.touch()
    result = await run_cli("conversations", "list", "--config", str(empty), "--db", str(tmp_path / "typo.db"))
    assert result.status == 2 and result.err.startswith("gateway: error: storage.path: no database")
    assert not (tmp_path / "typo.db").exists()


async def test_show_prints_the_cost_at_the_configured_prices(gateway: Gateway, upstream: FakeUpstream) -> None:
    upstream.billing = DashScopeBilling(Prices(0.8, 2.0))
    for turn in range(3):
        await _turn(gateway, "costly", f"turn {turn}: " + "a phone with a big screen, please. " * 150, system=turn == 0)
    config = gateway.db_path.parent / "prices.toml"
    config.write_text('[models."qwen-plus"]\ninput_price = 0.8\noutput_price = 2.0\ncurrency = "CNY"\n')
    shown = await run_cli("conversations", "show", "costly", "--config", str(config), "--db", str(gateway.db_path))
    assert shown.status == 0, shown.err
    cost_line = next(line for line in shown.out.splitlines() if line.startswith("cost: "))
    assert f"{upstream.billing.total_cost:.6f} CNY billed" in cost_line
    assert f"({upstream.billing.total_creation_tokens} written to the cache)" in cost_line
    assert upstream.billing.total_creation_tokens > 0  # qwen-plus is "auto": marked once the prefix is long enough


async def test_search_finds_conversations_of_every_owner_or_of_one(gateway: Gateway, upstream: FakeUpstream) -> None:
    upstream.script(Script(content="您想要6.1、6.5还是6.7英寸的屏幕?"), Script(content="2K or 4K?"))
    await _turn(gateway, "cn", "我想买手机")
    await _turn(gateway, "en", "a 6.7 inch phone", api_key="key-b")
    found = await _cli(gateway, "conversations", "search", "6.7")
    assert found.status == 0, found.err
    lines = found.out.splitlines()
    assert lines[0].split() == ["OWNER", "ID", "UPDATED", "MATCH"]
    assert [line.split()[:2] for line in lines[1:]] == [[OWNER_B[:12], "en"], [OWNER_A[:12], "cn"]]
    assert "assistant: 您想要6.1、6.5还是6.7英寸的屏幕?" in lines[2]
    only_a = await _cli(gateway, "conversations", "search", "英寸", "--owner", OWNER_A[:8])
    assert [line.split()[1] for line in only_a.out.splitlines()[1:]] == ["cn"]
    empty = await _cli(gateway, "conversations", "search", " ")
    assert empty.status == 1 and "at least one word" in empty.err
