"""The rules that recognise resent history (gateway.core.history): messages equal in meaning, not in bytes, and what a
transcript that parts from the stored one does.  Pure functions, no server."""

from __future__ import annotations

import json
from typing import Any

import pytest

from gateway.core.history import Match, fingerprint, match_history, plan_turn
from gateway.errors import HistoryMismatch

ARGS = '{"city":"杭州", "unit": "celsius", "days": 2.0}'  # as the upstream sent them: irregular spacing, non-ASCII


def user(text: str) -> dict[str, Any]:
    return {"role": "user", "content": text}


def reply(text: str) -> dict[str, Any]:
    return {"role": "assistant", "content": text}


def tool_call(arguments: str = ARGS, content: Any = None) -> dict[str, Any]:
    call = {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": arguments}}
    return {"role": "assistant", "content": content, "tool_calls": [call]}


def tool_result(content: Any = '{"temp": 21}') -> dict[str, Any]:
    return {"role": "tool", "tool_call_id": "call_1", "content": content}


@pytest.mark.parametrize(
    "resent",
    [
        pytest.param(tool_call('{"city":"杭州","unit":"celsius","days":2}'), id="compact-js-number"),
        pytest.param(tool_call(json.dumps(json.loads(ARGS))), id="json.dumps-ascii-escapes"),
        pytest.param(tool_call(json.dumps(json.loads(ARGS), ensure_ascii=False)), id="json.dumps-spaces"),
        pytest.param(tool_call('{"unit":"celsius","days":2.0,"city":"杭州"}'), id="other-key-order"),
        pytest.param(tool_call(ARGS, content=""), id="empty-content"),
        pytest.param({**tool_call(ARGS), "refusal": None, "annotations": [], "audio": None}, id="sdk-dump-nulls"),
        pytest.param({**tool_call(ARGS), "reasoning_content": "thinking"}, id="reasoning-resent"),
        pytest.param({k: v for k, v in tool_call(ARGS).items() if k != "content"}, id="content-absent"),
    ],
)
def test_a_re_serialized_tool_call_is_the_same_message(resent: dict[str, Any]) -> None:
    assert fingerprint(resent) == fingerprint(tool_call(ARGS))


def test_different_arguments_or_ids_are_different_messages() -> None:
    assert fingerprint(tool_call('{"city":"Paris"}')) != fingerprint(tool_call(ARGS))
    other_id = tool_call(ARGS)
    other_id["tool_calls"][0]["id"] = "call_2"
    assert fingerprint(other_id) != fingerprint(tool_call(ARGS))


def test_arguments_that_are_not_json_compare_as_text_and_empty_ones_as_an_empty_object() -> None:
    assert fingerprint(tool_call("{not json")) == fingerprint(tool_call("{not json"))
    assert fingerprint(tool_call("{not json")) != fingerprint(tool_call("{not  json"))
    assert fingerprint(tool_call("")) == fingerprint(tool_call("{}")) == fingerprint(tool_call(" "))


def test_text_as_a_string_or_as_text_parts_is_the_same_message() -> None:
    parts = {"role": "user", "content": [{"type": "text", "text": "6.7 "}, {"type": "text", "text": "inch"}]}
    assert fingerprint(parts) == fingerprint(user("6.7 inch"))
    assert fingerprint({**user("6.7 inch"), "name": None}) == fingerprint(user("6.7 inch"))
    assert fingerprint(user("6.7 inch")) != fingerprint(user("6.7 inch "))  # text itself is compared exactly


def test_tool_results_compare_as_json_when_they_are_json() -> None:
    assert fingerprint(tool_result('{"temp":21}')) == fingerprint(tool_result('{"temp": 21}'))
    assert fingerprint(tool_result([{"type": "text", "text": "sunny"}])) == fingerprint(tool_result("sunny"))
    assert fingerprint(tool_result('{"temp": 22}')) != fingerprint(tool_result('{"temp": 21}'))


def test_media_parts_compare_by_value_and_a_pathological_one_never_matches() -> None:
    image = [{"type": "image_url", "image_url": {"url": "https://x/a.png"}}, {"type": "text", "text": "what?"}]
    assert fingerprint({"role": "user", "content": image}) == fingerprint({"role": "user", "content": list(image)})
    deep: Any = "x"
    for _ in range(300):  # deeper than orjson serializes
        deep = [deep]
    message = {"role": "user", "content": [{"type": "image_url", "image_url": deep}]}
    assert fingerprint(message) != fingerprint({"role": "user", "content": [{"type": "image_url", "image_url": deep}]})


STORED = [user("q1"), reply("a1"), user("q2"), reply("a2")]


def test_continuation_resends_the_tail_and_adds_the_rest() -> None:
    assert match_history(STORED, [*STORED, user("q3")]) == Match(4)
    assert match_history(STORED, [user("q2"), reply("a2"), user("q3")]) == Match(2)  # a client-side window
    assert match_history(STORED, [user("q3")]) == Match(0)  # stateless


def test_a_request_without_assistant_messages_is_all_new_even_when_it_repeats_a_stored_question() -> None:
    assert match_history(STORED, [user("q1")]) == Match(0)
    assert match_history(STORED, [user("q1"), user("q2")]) == Match(0)


def test_a_retried_last_turn_replaces_the_stored_reply() -> None:
    # The client never saw a2 (timeout, cut stream) and sends the same transcript again, or regenerates.
    assert match_history(STORED, [user("q1"), reply("a1"), user("q2")]) == Match(3, 3)


def test_a_retried_tool_step_replaces_only_the_reply_after_the_tool_result() -> None:
    stored = [user("q1"), tool_call(), tool_result(), reply("sunny")]
    resent = [user("q1"), tool_call('{"city":"杭州","unit":"celsius","days":2}'), tool_result()]
    assert match_history(stored, resent) == Match(3, 3)


def test_an_edited_last_message_replaces_the_last_turn() -> None:
    assert match_history(STORED, [user("q1"), reply("a1"), user("q2, edited")]) == Match(2, 2)


def test_an_edit_before_the_last_turn_is_refused_and_names_the_message() -> None:
    with pytest.raises(HistoryMismatch) as caught:
        match_history(STORED, [user("q1"), reply("a1, edited"), user("q2"), reply("a2"), user("q3")], offset=1)
    assert caught.value.param == "messages[2]"  # offset: one system message came first
    assert caught.value.code == "history_mismatch" and caught.value.status == 409


def test_a_dropped_earlier_message_is_refused() -> None:
    with pytest.raises(HistoryMismatch):
        match_history(STORED, [user("q1"), user("q2"), reply("a2"), user("q3")])


def test_an_edited_first_message_is_refused_although_later_ones_match() -> None:
    with pytest.raises(HistoryMismatch) as caught:
        match_history(STORED, [user("q1, edited"), reply("a1"), user("q2"), reply("a2"), user("q3")])
    assert caught.value.param == "messages[0]"


def test_a_transcript_sharing_nothing_with_history_is_new() -> None:
    few_shot = [user("example question"), reply("example answer"), user("q3")]
    assert match_history(STORED, few_shot) == Match(0)


def test_a_repeated_exchange_aligns_where_the_agreement_is_longest() -> None:
    stored = [user("ok"), reply("fine"), user("ok"), reply("fine"), user("q"), reply("a")]
    assert match_history(stored, [user("ok"), reply("fine"), user("ok"), reply("fine"), user("q, edited")]) == Match(
        4, 4
    )


def test_plan_turn_carries_the_replacement_and_allows_a_pure_retry() -> None:
    system = [{"role": "system", "content": "S"}]
    plan = plan_turn(system, STORED, [*system, user("q1"), reply("a1"), user("q2")])
    assert (plan.new_messages, plan.resent, plan.replace_from) == ([], 3, 3)


def test_fields_of_the_wrong_type_still_compare_and_never_fail() -> None:
    odd = {"role": "user", "content": "q", "name": ["x"], "tool_call_id": {"a": 1}}
    assert fingerprint(odd) == fingerprint(dict(odd))
    hash(fingerprint(odd))
    call = {"role": "assistant", "content": None, "tool_calls": [{"id": 7, "function": {"name": {"a": 1}}}]}
    hash(fingerprint(call))
    assert match_history([user("q"), reply("a")], [reply("zz"), odd]) == Match(0)


def test_a_partial_assistant_prefix_does_not_make_a_transcript() -> None:
    # DashScope's partial mode: the model continues the assistant text given; it is not a stored reply resent.
    prefix = {"role": "assistant", "content": "Sure, the 6.7 inch", "partial": True}
    assert match_history([user("continue"), reply("X")], [user("continue"), prefix]) == Match(0)
