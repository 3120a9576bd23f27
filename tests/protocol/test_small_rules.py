"""Pure rules of issue 20's small things: stop strings, Chat's argument checks, a <tool_call> held
out of the streamed reasoning, a repeated <think>, the JSON-answer check, the umask mode, and the
official-name guard of the store. No model is loaded here (see test_small_things.py for those)."""

from __future__ import annotations

import os

import pytest

from edge.protocol.chat_args import (budget_problem, chat_arguments_problem, max_tokens_problem, mode_problem,
                            sampling_problem, seed_problem, stop_list, stop_problem, think_time_problem)
from edge.models.hub import not_official
from edge.protocol.json_answer import json_answer_problem
from edge.protocol.stop_strings import StopCutter
from edge.models.store import ModelRef
from edge.protocol.thinking_calls import ThinkingCallHold
from edge.protocol.thinking_parser import ThinkingParser
from quantize.atomic import current_umask, user_file_mode

ANSWER = "The answer is forty-two. Done."


def cut(stops: list[str], pieces: list[str]) -> tuple[str, bool]:
    c = StopCutter(stops)
    out = "".join(c.feed(p) for p in pieces)
    return out + c.flush(), c.stopped


def splits(text: str):
    """Every way to cut the text in two pieces, and one piece per character."""
    yield [text]
    yield list(text)
    for i in range(1, len(text)):
        yield [text[:i], text[i:]]


@pytest.mark.parametrize("stops, expected", [
    ([" forty"], ("The answer is", True)),
    (["two", "answer"], ("The ", True)),        # the first one in the text wins, not the first listed
    (["Done.!"], (ANSWER, False)),               # a stop string that never completes: all released
    (["."], ("The answer is forty-two", True)),
])
def test_stop_cuts_before_the_first_stop_string_wherever_tokens_split(stops, expected):
    for pieces in splits(ANSWER):
        assert cut(stops, pieces) == expected, pieces


def test_stop_holds_back_only_what_may_begin_a_stop_string():
    c = StopCutter(["forty-two"])
    assert c.feed("The answer is for") == "The answer is "     # "for" may begin it: held
    assert c.feed("mal.") == "formal."                         # it did not: released at once
    assert c.flush() == ""


def test_stop_list_and_checks():
    assert stop_list(None) == [] and stop_list("x") == ["x"] and stop_list(("a", "b")) == ["a", "b"]
    assert stop_problem(None) is None and stop_problem("x") is None and stop_problem(["a", "b"]) is None
    for bad in ("", [""], [1], 5, {"a": 1}):
        assert "stop takes" in stop_problem(bad)


@pytest.mark.parametrize("problem, value, fragment", [
    (mode_problem, "fast", "mode takes 'think', 'no_think' or 'auto', not 'fast'"),
    (budget_problem, -1, "budget takes a whole number of thinking tokens (0 or more)"),
    (budget_problem, 1.5, "not 1.5"),
    (budget_problem, True, "not True"),
    (max_tokens_problem, 0, "max_tokens takes a whole number of tokens (1 or more)"),
    (think_time_problem, 0, "think_time takes a number of seconds above 0"),
    (think_time_problem, float("nan"), "think_time takes"),
    (seed_problem, -1, "seed takes a whole number from 0 to 4294967294, not -1"),
    (sampling_problem, {"temperature": -0.5}, "temperature takes a number from 0 to 2, not -0.5"),
    (sampling_problem, {"top_p": 1.5}, "top_p takes a number from 0 to 1"),
    (sampling_problem, {"top_k": 2.5}, "top_k takes a whole number 0 or more"),
    (sampling_problem, {"temprature": 0.5}, "sampling takes temperature, top_p, top_k, min_p, frequency_penalty, repeat_penalty, logit_bias, not 'temprature'"),
    (sampling_problem, [0.5], "sampling takes a dict"),
])
def test_bad_arguments_are_named_with_what_they_take(problem, value, fragment):
    assert fragment in problem(value)


@pytest.mark.parametrize("problem, value", [
    (mode_problem, "think"), (mode_problem, "auto"), (budget_problem, None), (budget_problem, 0),
    (budget_problem, "auto"), (max_tokens_problem, None), (max_tokens_problem, 1), (think_time_problem, 0.5),
    (seed_problem, None), (seed_problem, 0), (seed_problem, 0xFFFFFFFE),
    (sampling_problem, {"temperature": 0, "top_p": 1, "top_k": 20, "min_p": 0.0}), (sampling_problem, None),
])
def test_good_arguments_pass(problem, value):
    assert problem(value) is None


def test_chat_arguments_reports_the_first_problem():
    good = dict(mode="think", budget=None, max_tokens=None, presence_penalty=0.0, seed=None, sampling=None,
                think_time=None, system=None)
    assert chat_arguments_problem(**good) is None
    assert "presence_penalty takes a number from -2 to 2, not 3" in chat_arguments_problem(**{**good, "presence_penalty": 3})
    assert "system takes a string" in chat_arguments_problem(**{**good, "system": 5})
    assert chat_arguments_problem(**{**good, "mode": "fast", "budget": -1}).startswith("mode takes")


def test_call_hold_streams_reasoning_up_to_the_tag_and_holds_the_rest():
    text = "Let me check <tool_call>{\"name\": \"f\"}</tool_call> more"
    for pieces in splits(text):
        hold = ThinkingCallHold()
        shown = "".join(hold.feed(p) for p in pieces)
        assert shown == "Let me check " and "<tool_call>" not in shown, pieces
        assert hold.holding and hold.release() == text[len("Let me check "):]


def test_call_hold_releases_a_partial_tag_that_was_not_one():
    hold = ThinkingCallHold()
    assert hold.feed("a <tool") == "a " and hold.feed("s and") == "<tools and" and not hold.holding
    assert hold.release() == ""


def parse(pieces: list[str], opened: bool) -> tuple[str, str]:
    p = ThinkingParser(opened=opened)
    out = [x for piece in pieces for x in p.feed(piece)] + p.close()
    return ("".join(x.text for x in out if x.kind == "thinking"), "".join(x.text for x in out if x.kind == "answer"))


def test_a_repeated_think_tag_is_dropped_from_the_reasoning():
    text = "<think>\nLet me count.\n</think>\n\nForty-two."
    for pieces in splits(text):
        assert parse(pieces, opened=True) == ("Let me count.", "Forty-two."), pieces
        assert parse(pieces, opened=False) == ("Let me count.", "Forty-two."), pieces
    # only once, at the start: a <think> later in the reasoning is the model's text
    assert parse(["<think><think>x <think> y</think>z"], opened=True) == ("<think>x <think> y", "z")


def test_json_answer_problems():
    schema_fmt = {"type": "json_schema", "json_schema": {"name": "p", "schema": {
        "type": "object", "properties": {"age": {"type": "integer"}}, "required": ["age"]}}}
    assert json_answer_problem('{"age": 3}', schema_fmt, "eos") is None
    assert json_answer_problem("anything", None, "length") is None
    cut_short = json_answer_problem('{"name":', schema_fmt, "length")
    assert "not complete JSON" in cut_short and "token limit (max_tokens)" in cut_short
    assert "'age' is a required property" in json_answer_problem('{"x": 1}', schema_fmt, "eos")
    assert "['age']" in json_answer_problem('{"age": "3"}', schema_fmt, "eos")
    assert "is not of type 'object'" in json_answer_problem("[1]", {"type": "json_object"}, "eos")
    assert json_answer_problem("", {"type": "json_object"}, "cancelled") == "the answer is empty (it was cancelled)"


def test_user_file_mode_follows_the_umask():
    old = os.umask(0o027)
    try:
        assert current_umask() == 0o027 and user_file_mode() == 0o640
        os.umask(0o022)
        assert user_file_mode() == 0o644
    finally:
        os.umask(old)


def test_official_name_guard():
    ref = ModelRef("qwen3-0.6b", "q4_k_m")
    official = {"source": "hf", "repo": "Qwen/Qwen3-0.6B", "revision": "abc"}
    assert not_official(ref, official) is None
    assert not_official(ref, {"source": "hf", "repo": "Qwen/Qwen3-0.6B-GGUF"}) is None     # --prebuilt
    assert not_official(ref, {}) is None                                                 # no record: cannot tell
    local = not_official(ref, {"source": "local", "repo": "/home/me/Qwen3-0.6B"})
    assert "converted from the local folder /home/me/Qwen3-0.6B" in local and "qwen3-edge rm qwen3-0.6b:q4_k_m" in local
    assert "from hf someone/finetune" in not_official(ref, {"source": "hf", "repo": "someone/finetune"})
    assert not_official(ModelRef("local--qwen3-0.6b", "q4_k_m"), {"source": "local", "repo": "/x"}) is None
