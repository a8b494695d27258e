"""The CLI never prints a traceback: every bad file, path, argument or variable gets one line on stderr and exit
status 2 (a stray GATEWAY_* variable a one-line warning), run as the real command in its own process."""

from __future__ import annotations

import asyncio
from importlib import metadata
from pathlib import Path

import pytest

from tests.conftest import CliResult, run_cli


def _one_line_error(result: CliResult, *needles: str) -> str:
    assert result.status == 2, result
    assert "Traceback" not in result.err and "Traceback" not in result.out
    lines = result.err.strip().splitlines()
    assert len(lines) == 1, result.err
    assert lines[0].startswith("gateway: error: ")
    for needle in needles:
        assert needle in lines[0]
    return lines[0]


@pytest.fixture
def empty(tmp_path: Path) -> str:
    path = tmp_path / "empty.toml"
    path.touch()
    return str(path)


async def test_a_config_file_that_is_not_utf8_is_one_line(tmp_path: Path) -> None:
    config = tmp_path / "latin1.toml"
    config.write_bytes('[server]\nhost = "caf\xe9"\n'.encode("latin-1"))
    result = await run_cli("serve", "--config", str(config))
    _one_line_error(result, str(config), "not UTF-8")


async def test_a_database_path_that_is_a_directory_is_one_line_every_time(tmp_path: Path, empty: str) -> None:
    # Ten processes, as the thread of a failed aiosqlite connection used to print tracebacks in most runs.
    results = await asyncio.gather(
        *(run_cli("serve", "--config", empty, "--db", str(tmp_path), "--port", "0") for _ in range(10))
    )
    for result in results:
        _one_line_error(result, "storage.path", str(tmp_path))


async def test_a_database_path_that_cannot_be_created_is_one_line_for_keys_create(empty: str) -> None:
    result = await run_cli("keys", "create", "--tenant", "t", "--config", empty, "--db", "/proc/forbidden/g.db")
    _one_line_error(result, "storage.path", "/proc/forbidden/g.db")


async def test_a_file_that_is_not_a_database_is_one_line(tmp_path: Path, empty: str) -> None:
    notes = tmp_path / "notes.txt"
    notes.write_text("not a database, but long enough to have a header of its own. " * 4)
    result = await run_cli("conversations", "list", "--config", empty, "--db", str(notes))
    _one_line_error(result, "storage.path", "not a database")


@pytest.mark.parametrize("action", [["list"], ["revoke", "key_0123456789abcdef"]])
async def test_keys_commands_refuse_a_missing_database_and_create_none(
    tmp_path: Path, empty: str, action: list[str]
) -> None:
    typo = tmp_path / "gatway.db"
    result = await run_cli("keys", *action, "--config", empty, "--db", str(typo))
    _one_line_error(result, "storage.path: no database at", str(typo))
    assert list(tmp_path.glob("gatway.db*")) == []


async def test_keys_create_still_creates_the_database(tmp_path: Path, empty: str) -> None:
    db = tmp_path / "new" / "gateway.db"
    result = await run_cli("keys", "create", "--tenant", "t", "--config", empty, "--db", str(db))
    assert result.status == 0 and result.out.startswith("gw-") and db.is_file()


@pytest.mark.parametrize("days", ["-1", "nan", "inf", "-inf", "1e999", "soon"])
async def test_purge_refuses_idle_days_that_are_negative_or_not_finite(tmp_path: Path, empty: str, days: str) -> None:
    result = await run_cli("purge", f"--idle-days={days}", "--config", empty, "--db", str(tmp_path / "g.db"))
    _one_line_error(result, "--idle-days", repr(days))


async def test_a_bad_argument_is_one_line_naming_the_help(empty: str) -> None:
    result = await run_cli("conversations", "list", "--limit", "0", "--config", empty)
    _one_line_error(result, "--limit", "gateway conversations list --help")


async def test_version_prints_the_package_version() -> None:
    result = await run_cli("--version")
    assert result.status == 0 and result.err == ""
    assert result.out.strip() == f"gateway {metadata.version('memory-gateway')}"


async def test_an_unknown_gateway_variable_is_one_warning_line_and_ignored(tmp_path: Path, empty: str) -> None:
    db = tmp_path / "g.db"
    known = {"GATEWAY_DB": str(db), "GATEWAY_CONFIG": empty, "GATEWAY_URL": "http://x/v1", "GATEWAY_AUTH_MODE": "open"}
    result = await run_cli("keys", "create", "--tenant", "t", env={**known, "GATEWAY_PROT": "9000"})
    assert result.status == 0 and db.is_file()  # GATEWAY_DB and GATEWAY_CONFIG counted, the typo only warned of
    warnings = [line for line in result.err.splitlines() if line.startswith("gateway: warning:")]
    assert warnings == [
        "gateway: warning: GATEWAY_PROT: unknown environment variable, ignored (did you mean GATEWAY_PORT?)"
    ]


async def test_a_setting_whose_variable_is_named_otherwise_is_suggested_by_that_name(
    tmp_path: Path, empty: str
) -> None:
    env = {"GATEWAY_UPSTREAM_API_KEY": "sk-misplaced"}
    result = await run_cli(
        "keys", "create", "--tenant", "t", "--config", empty, "--db", str(tmp_path / "g.db"), env=env
    )
    assert result.status == 0 and "did you mean DASHSCOPE_API_KEY?" in result.err
    assert "sk-misplaced" not in result.err
