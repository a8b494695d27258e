"""Pure pieces in isolation: SSE framing, reply assembly, history merging, configuration precedence."""

from __future__ import annotations

import asyncio
import contextlib
import tomllib
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from gateway.core.history import fingerprint, match_history, plan_turn, replay
from gateway.core.ordering import KeyedLocks
from gateway.core.tokens import FRAMING_TOKENS, MEDIA_TOKENS, TokenCounter, family
from gateway.core.window import Budget, place_window
from gateway.errors import InvalidRequest
from gateway.protocols.sse import ReplyAssembler, SseParser
from gateway.settings.config import ConfigError, load_config
from gateway.settings.declared import SETTINGS
from tests.conftest import REPO

# --- SSE framing ---------------------------------------------------------------------------------------------


def test_sse_events_split_across_reads_and_crlf() -> None:
    parser = SseParser()
    stream = (
        b'data: {"a": 1}\r\n\r\n: keep-alive\r\n\r\nevent: x\r\ndata: line1\r\ndata: line2\r\n\r\ndata: [DONE]\r\n\r\n'
    )
    events = []
    for i in range(len(stream)):  # one byte at a time: the worst case for boundaries
        events += parser.feed(stream[i : i + 1])
    assert [(e.data, e.event) for e in events] == [
        ('{"a": 1}', None),
        (None, None),
        ("line1\nline2", "x"),
        ("[DONE]", None),
    ]
    assert events[0].raw == b'data: {"a": 1}\n\n'
    assert parser.pending == b""


def test_sse_incomplete_event_stays_pending() -> None:
    parser = SseParser()
    assert parser.feed(b'data: {"partial"') == []
    assert parser.pending == b'data: {"partial"'


# --- reply assembly ------------------------------------------------------------------------------------------


def _chunk(delta: dict, finish: str | None = None, index: int = 0) -> dict:
    return {"choices": [{"index": index, "delta": delta, "finish_reason": finish}]}


def test_tool_calls_accumulate_by_index_when_later_fragments_lack_ids() -> None:
    asm = ReplyAssembler()
    asm.add(_chunk({"role": "assistant", "content": None}))
    asm.add(
        _chunk(
            {"tool_calls": [{"index": 0, "id": "c0", "type": "function", "function": {"name": "f", "arguments": ""}}]}
        )
    )
    asm.add(
        _chunk(
            {"tool_calls": [{"index": 1, "id": "c1", "type": "function", "function": {"name": "g", "arguments": "{"}}]}
        )
    )
    asm.add(_chunk({"tool_calls": [{"index": 0, "function": {"arguments": '{"x":'}}]}))
    asm.add(_chunk({"tool_calls": [{"index": 1, "function": {"arguments": "}"}}]}))
    asm.add(_chunk({"tool_calls": [{"index": 0, "function": {"arguments": " 1}"}}]}))
    asm.add(_chunk({}, "tool_calls"))
    assert asm.finished
    assert asm.message() == {
        "role": "assistant",
        "content": None,
        "tool_calls": [
            {"id": "c0", "type": "function", "function": {"name": "f", "arguments": '{"x": 1}'}},
            {"id": "c1", "type": "function", "function": {"name": "g", "arguments": "{}"}},
        ],
    }


def test_tool_call_fragments_without_index_continue_the_last_call() -> None:
    asm = ReplyAssembler()
    asm.add(_chunk({"tool_calls": [{"id": "a", "function": {"name": "f", "arguments": '{"q"'}}]}))
    asm.add(_chunk({"tool_calls": [{"function": {"arguments": ": 2}"}}]}))
    asm.add(_chunk({"tool_calls": [{"id": "b", "function": {"name": "g", "arguments": "{}"}}]}))
    calls = asm.message()["tool_calls"]
    assert [(c["id"], c["function"]["arguments"]) for c in calls] == [("a", '{"q": 2}'), ("b", "{}")]


def test_assembly_keeps_choice_zero_usage_and_drops_partial_tool_calls_when_interrupted() -> None:
    asm = ReplyAssembler()
    asm.add(_chunk({"reasoning_content": "think "}))
    asm.add(_chunk({"reasoning_content": "more"}))
    asm.add(_chunk({"content": "Hel"}))
    asm.add(_chunk({"content": "IGNORED"}, index=1))
    asm.add(_chunk({"content": "lo"}))
    asm.add(_chunk({"tool_calls": [{"index": 0, "id": "c", "function": {"name": "f", "arguments": '{"half'}}]}))
    asm.add({"choices": [], "usage": {"total_tokens": 3}})
    assert not asm.finished
    assert asm.usage == {"total_tokens": 3}
    assert asm.message(interrupted=True) == {"role": "assistant", "content": "Hello", "reasoning_content": "think more"}


# --- history ---------------------------------------------------------------------------------------------------

U1, A1, U2, A2 = (
    {"role": "user", "content": "q1"},
    {"role": "assistant", "content": "a1"},
    {"role": "user", "content": "q2"},
    {"role": "assistant", "content": "a2"},
)


@pytest.mark.parametrize(
    ("history", "incoming", "expected"),
    [
        ([], [U1], 0),
        ([U1, A1], [U2], 0),
        ([U1, A1], [U1, A1, U2], 2),
        ([U1, A1, U2, A2], [U2, A2, U1], 2),
        ([U1, A1, U2, A2], [A2, U1], 1),
        ([U1, A1, U1, A1], [U1, A1, U1], 2),
        ([U1, A1], [U1], 0),  # the same question again is new
        ([U1, A1], [{"role": "user", "content": [{"type": "text", "text": "q1"}]}, {**A1, "refusal": None}, U2], 2),
    ],
)
def test_the_resent_run_matches_the_stored_tail(history: list, incoming: list, expected: int) -> None:
    assert match_history(history, incoming).resent == expected


def test_fingerprint_tells_tool_calls_apart() -> None:
    call = {"id": "1", "type": "function", "function": {"name": "f", "arguments": "{}"}}
    a = {"role": "assistant", "content": None, "tool_calls": [call]}
    b = {"role": "assistant", "content": "", "tool_calls": [{**call, "id": "2"}]}
    assert fingerprint(a) != fingerprint(b)
    assert fingerprint(a) == fingerprint({**a, "content": ""})


def test_plan_turn_merges_system_history_and_new() -> None:
    system = [{"role": "system", "content": "S"}]
    stored = [U1, {**A1, "reasoning_content": "hidden", "annotations": None}]
    plan = plan_turn(system, stored, [U2])
    assert (plan.prompt, plan.new_messages, plan.system) == (system, [U2], None)
    assert plan.new_messages == [U2]
    assert plan.system is None
    replaced = plan_turn(system, stored, [{"role": "developer", "content": "D"}, U1, A1, U2])
    assert replaced.system == [{"role": "developer", "content": "D"}]
    assert replaced.prompt == [{"role": "developer", "content": "D"}] and replaced.new_messages == [U2]
    assert replaced.resent == 2


def test_plan_turn_rejects_a_request_with_nothing_new() -> None:
    with pytest.raises(InvalidRequest):
        plan_turn(None, [U1, A1], [U1, A1])


def test_replay_keeps_null_content_of_tool_call_messages() -> None:
    message = {"role": "assistant", "content": None, "tool_calls": [], "refusal": None, "reasoning_content": "r"}
    assert replay(message) == {"role": "assistant", "content": None, "tool_calls": []}


# --- configuration -------------------------------------------------------------------------------------------


def test_precedence_flags_over_env_over_file_over_defaults(tmp_path: Path) -> None:
    file = tmp_path / "c.toml"
    file.write_text('[server]\nhost = "10.0.0.1"\nport = 1111\n[storage]\npath = "file.db"\n')
    env = {"GATEWAY_PORT": "2222", "GATEWAY_DB": "env.db"}
    config = load_config(str(file), env=env, flags={"storage.path": "flag.db"})
    assert (config.host, config.port, str(config.db_path)) == ("10.0.0.1", 2222, "flag.db")
    assert config.upstream_base_url == "https://dashscope.aliyuncs.com/compatible-mode/v1"


def test_defaults_without_any_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    config = load_config(None, env={}, flags={})
    assert (config.host, config.port, str(config.db_path)) == ("127.0.0.1", 8080, "gateway.db")
    assert config.upstream_api_key == ""


def test_config_file_from_environment_and_api_key(tmp_path: Path) -> None:
    file = tmp_path / "c.toml"
    file.write_text('[upstream]\napi_key = "from-file"\n')
    assert load_config(None, env={"GATEWAY_CONFIG": str(file)}).upstream_api_key == "from-file"
    env = {"GATEWAY_CONFIG": str(file), "DASHSCOPE_API_KEY": "from-env"}
    assert load_config(None, env=env).upstream_api_key == "from-env"


def test_bad_values_name_the_setting_and_source(tmp_path: Path) -> None:
    empty = tmp_path / "e.toml"
    empty.touch()
    with pytest.raises(ConfigError, match=r"^server.port \(from GATEWAY_PORT\): expected an integer"):
        load_config(str(empty), env={"GATEWAY_PORT": "x"})
    with pytest.raises(ConfigError, match=r"^upstream.base_url \(from --upstream-base-url\)"):
        load_config(str(empty), env={}, flags={"upstream.base_url": "localhost:8000"})


def test_shipped_config_toml_lists_every_setting_with_its_default() -> None:
    with (REPO / "config.toml").open("rb") as fh:
        shipped = tomllib.load(fh)
    flat = {f"{section}.{key}": value for section, table in shipped.items() for key, value in table.items()}
    assert flat == {s.key: s.default for s in SETTINGS}
    text = (REPO / "config.toml").read_text()
    for setting in SETTINGS:  # each setting has a comment line right above it
        name = setting.key.split(".")[1]
        line = text.index(f"\n{name} = ")
        assert text[:line].rstrip().splitlines()[-1].startswith("#"), setting.key


def test_readme_configuration_table_lists_every_setting() -> None:
    readme = (REPO / "README.md").read_text()
    for setting in SETTINGS:
        assert f"`{setting.key}`" in readme, setting.key
        if setting.env:
            assert f"`{setting.env}`" in readme, setting.env


def test_place_window_stays_put_then_cuts_to_low_water_on_user_turns() -> None:
    roles = ["user", "assistant", "user", "assistant", "tool", "assistant", "user", "assistant"]
    counts = [10] * 8
    budget = Budget(limit=100, low_water=0.5, max_turns=0)
    assert place_window(roles, counts, fixed=20, start=0, budget=budget) == 0  # 100 fits
    assert place_window(roles, counts, fixed=21, start=0, budget=budget) == 6  # over: down to <= 50, at a user turn
    assert place_window(roles, counts, fixed=21, start=3, budget=budget) == 6  # a start inside a turn moves on
    assert place_window(roles, counts, fixed=45, start=0, budget=budget) == 8  # nothing fits the low water mark
    with pytest.raises(InvalidRequest) as raised:
        place_window(roles, counts, fixed=101, start=0, budget=budget)
    assert raised.value.code == "context_length_exceeded"


def test_place_window_caps_user_turns() -> None:
    roles = ["user", "assistant"] * 5
    budget = Budget(limit=10_000, low_water=0.5, max_turns=4)
    assert place_window(roles, [1] * 10, fixed=0, start=0, budget=budget) == 6  # 5 turns > 4: keep 2
    assert place_window(roles, [1] * 10, fixed=0, start=6, budget=budget) == 6


def test_token_counts_use_qwen_vocabularies_and_an_estimate_elsewhere() -> None:
    counter = TokenCounter()
    asyncio.run(counter.prepare("qwen-plus"))
    assert counter.text("qwen-plus-2025-07-28", "Hello world") == 2  # Qwen's tokenizer
    assert counter.text("gpt-4o", "Hello world") == 4  # ceil(11 bytes / 3): the documented estimate
    assert family("Qwen/Qwen3.6-27B") == "qwen3.6-27b" and family("qwq-plus") == "qwen-plus" and family("x") is None
    image = {"role": "user", "content": [{"type": "image_url", "image_url": {"url": "http://x"}}]}
    assert counter.message("qwen-plus", image) == FRAMING_TOKENS + MEDIA_TOKENS


def test_token_history_counts_only_what_was_appended() -> None:
    counter = TokenCounter()
    first = [U1, A1]
    assert counter.history("k", None, first) == [counter.message(None, U1), counter.message(None, A1)]
    grown = [*first, U2]
    assert len(counter.history("k", None, grown)) == 3
    edited = [dict(U1), A1]  # same content, other objects: a reload from the database counts again
    assert counter.history("k", None, edited) == counter.history("other", None, edited)


def test_every_setting_can_come_from_the_environment(tmp_path: Path) -> None:
    empty = tmp_path / "empty.toml"
    empty.touch()
    config = load_config(str(empty), env={"GATEWAY_AUTH_MODE": "keys", "GATEWAY_MEMORY_MAX_TURNS": "12"})
    assert (config.auth_mode, config.max_turns) == ("keys", 12)
    assert all(setting.variable.startswith(("GATEWAY_", "DASHSCOPE_")) for setting in SETTINGS)


def test_a_window_never_leaves_tool_results_without_their_call() -> None:
    roles = ["user", "assistant", "user", "assistant", "tool", "assistant"]  # the last: tool_calls still open
    counts = [10, 900, 10, 20, 900, 20]
    budget = Budget(limit=2500, low_water=0.5, max_turns=0)
    # A tool result of 900 tokens continues the last turn: keep that turn whole, though it beats the low water.
    assert place_window(roles, counts, fixed=900, start=0, budget=budget, loop_open=True) == 2
    assert place_window(roles, counts, fixed=900, start=0, budget=budget) == 6  # a new user turn may drop it
    with pytest.raises(InvalidRequest):
        place_window(roles, counts, fixed=1700, start=0, budget=budget, loop_open=True)
    one_turn = Budget(limit=10_000, low_water=0.5, max_turns=1)
    assert place_window(["user", "assistant"] * 2, [1] * 4, fixed=0, start=0, budget=one_turn) == 2


class _RecordingLocks:
    """A ``ConversationLocks`` that grants everything and records the order keys were taken in; its rank is the
    reverse of the keys' own order, as hashing may make it."""

    def __init__(self) -> None:
        self.taken: list[tuple[str, str]] = []

    @contextlib.asynccontextmanager
    async def hold(self, key: tuple[str, str]) -> AsyncIterator[None]:
        self.taken.append(key)
        yield

    def rank(self, key: tuple[str, str]) -> int:
        return -ord(key[1][0])


async def test_hold_all_takes_the_shared_locks_in_their_own_order() -> None:
    shared = _RecordingLocks()
    keys = [("o", "a"), ("o", "c"), ("o", "b")]
    async with KeyedLocks(shared).hold_all(keys):
        pass
    # Every process sorts by the shared lock's rank, so overlapping sets never wait for each other in a cycle
    # even where two keys' locks collide; the keys' own order would not be the same order of locks everywhere.
    assert shared.taken == [("o", "c"), ("o", "b"), ("o", "a")]
