"""Placement of DashScope's explicit cache markers (gateway.core.cache_markers), pure."""

from __future__ import annotations

import copy
from typing import Any

import orjson
import pytest

from gateway.core.cache_markers import MARKER, CacheMarkers, marker_positions, place_markers
from gateway.core.tokens import TokenCounter
from gateway.settings.models import BUILT_IN, ModelTable, parse_models

SYSTEM = {"role": "system", "content": "You sell phones."}


def _tokens(message: dict[str, Any]) -> int:
    return 100  # every message 100 tokens: 11 messages pass the 1,024 minimum


def _conversation(turns: int) -> list[dict[str, Any]]:
    messages: list[dict[str, Any]] = [SYSTEM]
    for turn in range(turns):
        messages += [
            {"role": "user", "content": f"question {turn}"},
            {"role": "assistant", "content": f"answer {turn}"},
        ]
    return messages


def _request(turns: int) -> tuple[list[dict[str, Any]], int]:
    """A request continuing ``turns`` stored turns with one new user message; the prefix is all but that."""
    history = _conversation(turns)
    return [*history, {"role": "user", "content": "next"}], len(history)


def _marked(messages: list[dict[str, Any]]) -> list[int]:
    return [i for i, m in enumerate(messages) if isinstance(m["content"], list)]


def test_the_marker_goes_on_the_last_block_of_the_stable_prefix() -> None:
    messages, end = _request(6)
    sent = place_markers(messages, end, "auto", _tokens)
    assert _marked(sent) == [end - 1]
    assert sent[end - 1] == {
        "role": "assistant",
        "content": [{"type": "text", "text": "answer 5", "cache_control": {"type": "ephemeral"}}],
    }
    assert sent[end] == messages[end]  # the new message is not part of what the next turn repeats


def test_the_text_the_model_sees_is_unchanged() -> None:
    messages, end = _request(8)
    sent = place_markers(messages, end, "explicit", _tokens)
    texts = [m["content"] if isinstance(m["content"], str) else m["content"][0]["text"] for m in sent]
    assert texts == [m["content"] for m in messages]


def test_the_stored_messages_are_left_as_they_are() -> None:
    messages, end = _request(8)
    before = copy.deepcopy(messages)
    place_markers(messages, end, "explicit", _tokens)
    assert messages == before


def test_the_marker_moves_only_when_the_prefix_moves() -> None:
    messages, end = _request(6)
    again = place_markers(messages, end, "auto", _tokens)
    assert _marked(again) == _marked(place_markers(messages, end, "auto", _tokens)) == [end - 1]
    later, later_end = _request(7)
    assert _marked(place_markers(later, later_end, "auto", _tokens)) == [later_end - 1]


def test_a_marked_message_has_the_same_bytes_every_turn() -> None:
    # The marker of one turn is a checkpoint (or the end) the next: the same message must encode the same way.
    first = place_markers(*_request(10), "auto", _tokens)
    second = place_markers(*_request(10), "auto", _tokens)
    assert orjson.dumps(first) == orjson.dumps(second)
    messages, end = _request(12)
    for index in marker_positions(messages[:end]):
        marked = place_markers(messages, end, "auto", _tokens)[index]
        assert orjson.dumps(marked) == orjson.dumps(place_markers(messages, end, "auto", _tokens)[index])


def test_the_clients_own_markers_win() -> None:
    messages, end = _request(6)
    own = {"role": "user", "content": [{"type": "text", "text": "hi", "cache_control": dict(MARKER)}]}
    messages[1] = own
    assert place_markers(messages, end, "explicit", _tokens) == messages
    messages[1] = {"role": "user", "content": "hi", "cache_control": dict(MARKER)}  # even where it does nothing
    assert place_markers(messages, end, "explicit", _tokens) == messages


def test_implicit_models_get_no_markers() -> None:
    messages, end = _request(20)
    assert place_markers(messages, end, "implicit", _tokens) == messages
    models = ModelTable(BUILT_IN)
    assert models["qwen-turbo"].cache == models["qwen-max"].cache == models["gpt-4o"].cache == "implicit"
    assert models["qwen-plus-2025-07-28"].cache == models["qwen3-max"].cache == "auto"


def test_a_short_prefix_gets_no_marker_under_auto_but_does_under_explicit() -> None:
    messages, end = _request(2)  # 5 messages of 100 tokens: under 1,024
    assert place_markers(messages, end, "auto", _tokens) == messages
    assert _marked(place_markers(messages, end, "explicit", _tokens)) == [end - 1]


def test_a_prefix_grown_past_20_blocks_gets_checkpoints_every_20_blocks_up_to_4() -> None:
    messages, end = _request(30)  # 61 prefix messages, one block each
    # Blocks 20, 40 and 60 (messages 19, 39, 59) and the end (60): four in all.
    assert _marked(place_markers(messages, end, "auto", _tokens)) == [19, 39, 59, 60]
    messages, end = _request(60)  # 121 messages: only the newest three checkpoints and the end
    assert _marked(place_markers(messages, end, "auto", _tokens)) == [79, 99, 119, 120]


def test_checkpoints_stay_put_as_the_conversation_grows() -> None:
    earlier = _marked(place_markers(*_request(25), "auto", _tokens))
    later = _marked(place_markers(*_request(26), "auto", _tokens))
    assert earlier == [19, 39, 50] and later == [19, 39, 52]


def test_array_content_counts_its_blocks_and_keeps_its_parts() -> None:
    image = {"type": "image_url", "image_url": {"url": "https://example.com/a.png"}}
    parts: list[Any] = [{"type": "text", "text": "look"}, image]
    messages: list[dict[str, Any]] = [
        SYSTEM,
        {"role": "user", "content": parts},
        {"role": "assistant", "content": "a phone"},
    ]
    sent = place_markers([*messages, {"role": "user", "content": "more"}], 3, "explicit", _tokens)
    assert _marked(sent) == [1, 2]  # message 1 was already array-form; only message 2 carries the marker
    assert sent[1] == messages[1]
    user_blocks = [{"role": "user", "content": [{"type": "text", "text": str(i)} for i in range(25)]}]
    assert marker_positions([SYSTEM, *user_blocks]) == [1]
    last = place_markers([SYSTEM, *user_blocks], 2, "explicit", _tokens)[1]["content"]
    assert last[-1] == {"type": "text", "text": "24", "cache_control": MARKER} and "cache_control" not in last[0]


def test_a_bare_tool_call_passes_the_marker_to_the_message_before_it() -> None:
    call = {"id": "c1", "type": "function", "function": {"name": "stock", "arguments": "{}"}}
    messages = [*_conversation(6), {"role": "user", "content": "in stock?"}]
    messages.append({"role": "assistant", "content": None, "tool_calls": [call]})
    new = {"role": "tool", "tool_call_id": "c1", "content": "yes"}
    sent = place_markers([*messages, new], len(messages), "auto", _tokens)
    assert _marked(sent) == [len(messages) - 2]


def test_a_window_cut_resets_the_marker_to_the_new_prefix() -> None:
    messages, _ = _request(40)
    cut = [SYSTEM, *messages[61:]]  # the window left the oldest 30 turns out
    end = len(cut) - 1
    assert _marked(place_markers(cut, end, "auto", _tokens)) == [19, end - 1]


def test_the_models_cache_policy_is_configurable() -> None:
    models = parse_models({"qwen-plus": {"cache": "implicit"}, "my-model": {"cache": "explicit"}}, ValueError)
    assert models["qwen-plus"].cache == "implicit" and models["my-model"].cache == "explicit"
    with pytest.raises(ValueError, match=r'^models\."qwen-plus"\.cache: must be one of explicit, implicit, auto'):
        parse_models({"qwen-plus": {"cache": "always"}}, ValueError)


def test_cache_markers_use_the_models_policy() -> None:
    markers = CacheMarkers(ModelTable(BUILT_IN), TokenCounter())
    long = "a phone with a large screen " * 200  # thousands of bytes: past 1,024 tokens at any count
    messages = [SYSTEM, {"role": "user", "content": long}, {"role": "assistant", "content": "ok"}]
    request = [*messages, {"role": "user", "content": "next"}]
    assert _marked(markers.mark(request, 3, "qwen-plus")) == [2]
    assert markers.mark(request, 3, "qwen-turbo") == request
