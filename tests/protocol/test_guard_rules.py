"""Pure tests of the rule holders behind the newer claims (issue 21): stop strings cut across any
split, streamed tool-call deltas, the answer reserve under max_tokens, tool results that must answer
the assistant message right before them, the hub named in a download hint, seeds folded onto
llama.cpp's 32-bit range, and the usage / completion shapes. No model is loaded here; the
end-to-end checks of the same claims are in tests/chat/test_guard_e2e.py."""

from __future__ import annotations

import itertools
import json

import pytest

from edge.protocol.budget import answer_reserve
from edge.chat import Reply
from edge.models.hub import _with_hint
from edge.serve.openai_api import (RequestError, StopFilter, chunk, completion_response, completion_id, finish_reason, parse_request,
                             tool_call_deltas, usage)
from edge.models.sources import PullError, get_source
from edge.protocol.tool_calls import Content, InvalidCall, ToolCall, ToolCallParser

HI = [{"role": "user", "content": "Hi"}]
ANSWER = "The answer is forty-two."


def completion(cid: str, model: str, reply, answer: str, reason: str) -> dict:
    """One choice's chat.completion object, as the server shapes it (openai_api.completion_response)."""
    from types import SimpleNamespace
    from edge.serve.completion import Choice
    return completion_response(cid, model, SimpleNamespace(hide_reasoning=False), [Choice(0, reply, answer, reason)])


def stop_output(pieces: list[str], stops: list[str]) -> tuple[str, bool]:
    f = StopFilter(stops)
    out = "".join(f.feed(p) for p in pieces)
    stopped = f.stopped
    return out + f.flush(), stopped


def splits(text: str, cuts: int):
    """Every way to cut `text` into cuts + 1 pieces (empty pieces included)."""
    for points in itertools.combinations_with_replacement(range(len(text) + 1), cuts):
        bounds = [0, *points, len(text)]
        yield [text[a:b] for a, b in zip(bounds, bounds[1:])]


# ---- stop strings --------------------------------------------------------------------------------
@pytest.mark.parametrize("stop, expected", [("forty-two", "The answer is "), (" forty", "The answer is"),
                                            ("-two", "The answer is forty"), (".", "The answer is forty-two"),
                                            ("The", "")])
def test_every_split_of_the_answer_cuts_before_the_stop_string(stop, expected):
    """However the text arrives (a stop string split over two or three tokens, empty pieces), the
    output is the text before the stop string's first occurrence, and nothing after it."""
    for cuts in (1, 2):
        for pieces in splits(ANSWER, cuts):
            assert stop_output(pieces, [stop]) == (expected, True), pieces


def test_text_without_a_stop_string_comes_out_whole_under_every_split():
    """What was held back because it might start a stop string ("for", "forty-t") is given back."""
    for pieces in splits(ANSWER, 2):
        assert stop_output(pieces, ["forty-three", "seven"]) == (ANSWER, False), pieces


def test_the_earliest_of_several_stop_strings_wins():
    for pieces in splits(ANSWER, 2):
        assert stop_output(pieces, [".", "forty", "answer"]) == ("The ", True), pieces


def test_a_stop_string_that_overlaps_itself_is_found():
    """"aab" inside "aaab": the held-back tail must be the longest suffix that starts a stop string."""
    for pieces in splits("xaaabz", 2):
        assert stop_output(pieces, ["aab"]) == ("xa", True), pieces


def test_nothing_that_may_start_a_stop_string_is_released_early():
    f = StopFilter(["forty-two"])
    assert f.feed("The answer is fo") == "The answer is "
    assert f.feed("rty-t") == ""
    assert f.feed("wo. And more") == "" and f.stopped
    assert f.feed("after") == "" and f.flush() == ""


# ---- streamed tool calls -------------------------------------------------------------------------
def test_a_streamed_call_gives_id_type_and_name_first_then_only_arguments():
    call = ToolCall("call_abc", "get_weather", {"city": "Paris", "days": [1, 2]})
    first, *rest = tool_call_deltas(3, call)
    (head,) = first["tool_calls"]
    assert head["index"] == 3 and head["id"] == "call_abc" and head["type"] == "function"
    assert head["function"]["name"] == "get_weather"
    assert rest, "the arguments come after the head"
    arguments = head["function"].get("arguments", "")
    for delta in rest:
        (part,) = delta["tool_calls"]
        assert part["index"] == 3 and set(part) == {"index", "function"} and set(part["function"]) == {"arguments"}
        arguments += part["function"]["arguments"]
    assert json.loads(arguments) == call.arguments


# ---- the answer reserve under max_tokens ---------------------------------------------------------
@pytest.mark.parametrize("max_tokens, reserve", [(1, 1), (3, 1), (4, 1), (8, 2), (400, 100), (4095, 1023),
                                                 (4096, 1024), (4100, 1024), (8192, 1024), (131072, 1024)])
def test_answer_reserve_is_a_quarter_at_most_1024_at_least_1(max_tokens, reserve):
    assert answer_reserve(max_tokens) == reserve


# ---- tool results answer the call right before them ----------------------------------------------
def call_message(call_id: str) -> dict:
    return {"role": "assistant", "content": None,
            "tool_calls": [{"id": call_id, "type": "function", "function": {"name": "f", "arguments": "{}"}}]}


def test_a_tool_result_after_a_new_user_message_answers_no_call():
    messages = [*HI, call_message("c1"), {"role": "user", "content": "never mind"},
                {"role": "tool", "tool_call_id": "c1", "content": "sunny"}]
    with pytest.raises(RequestError) as e:
        parse_request({"messages": messages}, 1024)
    assert e.value.param == "messages[3].tool_call_id" and "c1" in e.value.message


def test_a_tool_result_answers_only_the_latest_assistant_message():
    messages = [*HI, call_message("c1"), {"role": "tool", "tool_call_id": "c1", "content": "a"},
                call_message("c2"), {"role": "tool", "tool_call_id": "c1", "content": "b"}]
    with pytest.raises(RequestError) as e:
        parse_request({"messages": messages}, 1024)
    assert e.value.param == "messages[4].tool_call_id"
    messages[-1]["tool_call_id"] = "c2"
    assert parse_request({"messages": messages}, 1024).user is None


def test_each_call_is_answered_once():
    messages = [*HI, call_message("c1"), {"role": "tool", "tool_call_id": "c1", "content": "a"},
                {"role": "tool", "tool_call_id": "c1", "content": "again"}]
    with pytest.raises(RequestError) as e:
        parse_request({"messages": messages}, 1024)
    assert e.value.param == "messages[3].tool_call_id"


# ---- the hub a download hint names ---------------------------------------------------------------
@pytest.mark.parametrize("down, other, title", [("hf", "modelscope", "ModelScope"), ("modelscope", "hf", "Hugging Face")])
def test_an_unreachable_hub_names_the_other_hub_and_its_flag(down, other, title):
    def fetch():
        raise PullError("cannot download Qwen/Qwen3-0.6B: cannot reach http://127.0.0.1:1 (refused)", unreachable=True)
    with pytest.raises(PullError) as e:
        _with_hint(fetch, get_source(down), named=False)
    message = str(e.value)
    assert f"{title} may be reachable: --source {other}" in message and "\n" not in message
    assert e.value.unreachable
    assert f"{get_source(down).title} may be reachable" not in message and f"--source {down}" not in message


def test_a_reachable_or_named_hub_names_no_other():
    def refused():
        raise PullError("cannot download Qwen/Qwen3-0.6B: 404 not found")
    def down():
        raise PullError("cannot download Qwen/Qwen3-0.6B: cannot reach x", unreachable=True)
    for fetch, named in ((refused, False), (down, True)):
        with pytest.raises(PullError) as e:
            _with_hint(fetch, get_source("hf"), named=named)
        assert "ModelScope" not in str(e.value) and "--source" not in str(e.value)


# ---- seeds ---------------------------------------------------------------------------------------
def test_seeds_fold_onto_llama_cpps_32_bit_range_and_stay_distinct():
    """0xFFFFFFFF is llama.cpp's "random seed" marker: no request seed may become it, and seeds that
    differ within 32 bits stay different."""
    seed = lambda s: parse_request({"messages": HI, "seed": s}, 1024).seed  # noqa: E731
    assert [seed(s) for s in (0, 1, 7, 0xFFFFFFFE)] == [0, 1, 7, 0xFFFFFFFE]
    assert seed(0xFFFFFFFF) == 0 and seed(-1) == 0xFFFFFFFE and seed(2**63 - 1) == (2**63 - 1) % 0xFFFFFFFF
    assert parse_request({"messages": HI}, 1024).seed is None and parse_request({"messages": HI, "seed": None}, 1024).seed is None
    for bad in (2**63, -(2**63) - 1, 1.5, "1", True):
        with pytest.raises(RequestError) as e:
            parse_request({"messages": HI, "seed": bad}, 1024)
        assert e.value.param == "seed"
    assert seed(-(2**63)) == -(2**63) % 0xFFFFFFFF


# ---- usage and response shapes -------------------------------------------------------------------
def reply(**fields) -> Reply:
    base = dict(thinking="", answer="", stop_reason="eos", budget_hit=False, thinking_enabled=True, prompt_tokens=30,
                evaluated_tokens=12, generated_tokens=9, thinking_tokens=4, ttft_s=0.1, tokens_per_s=5.0, seconds=1.0)
    return Reply(**{**base, **fields})


def test_usage_counts_prompt_cache_and_reasoning():
    assert usage(reply()) == {"prompt_tokens": 30, "completion_tokens": 9, "total_tokens": 39,
                              "prompt_tokens_details": {"cached_tokens": 18},
                              "completion_tokens_details": {"reasoning_tokens": 4}}


@pytest.mark.parametrize("stop_reason, reason", [("eos", "stop"), ("length", "length"), ("tool_calls", "tool_calls"),
                                                 ("cancelled", "stop")])
def test_finish_reasons(stop_reason, reason):
    assert finish_reason(stop_reason) == reason


def test_a_completion_that_calls_has_null_content_and_the_calls():
    call = ToolCall("call_1", "get_weather", {"city": "Paris"})
    body = completion("chatcmpl-x", "m", reply(thinking="hmm", tool_calls=(call,), stop_reason="tool_calls"), "", "tool_calls")
    (choice,) = body["choices"]
    message = choice["message"]
    assert body["object"] == "chat.completion" and body["id"] == "chatcmpl-x" and body["model"] == "m"
    assert choice["index"] == 0 and choice["finish_reason"] == "tool_calls"
    assert message["role"] == "assistant" and message["content"] is None and message["reasoning_content"] == "hmm"
    assert message["tool_calls"] == [{"id": "call_1", "type": "function",
                                      "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}}]
    assert body["usage"] == usage(reply())


def test_a_completion_without_calls_or_thinking_has_text_content_only():
    message = completion("c", "m", reply(), "", "stop")["choices"][0]["message"]
    assert message == {"role": "assistant", "content": ""}
    message = completion("c", "m", reply(thinking="t"), "Hello", "stop")["choices"][0]["message"]
    assert message == {"role": "assistant", "content": "Hello", "reasoning_content": "t"}


def test_a_completion_carries_its_notices_and_creation_time():
    body = completion("c", "m", reply(notices=("thinking was cut",)), "Hi", "stop")
    assert body["choices"][0]["message"]["notices"] == ["thinking was cut"]
    assert isinstance(body["created"], int) and body["created"] > 1_600_000_000


def test_completion_ids_are_openai_shaped_and_distinct():
    a, b = completion_id(), completion_id()
    assert a.startswith("chatcmpl-") and len(a) == len("chatcmpl-") + 24 and a != b


def test_chunk_shapes():
    body = chunk("c", "m", {"content": "Hi"})
    assert body == {"id": "c", "object": "chat.completion.chunk", "created": body["created"], "model": "m",
                    "choices": [{"index": 0, "delta": {"content": "Hi"}, "finish_reason": None}]}
    assert isinstance(body["created"], int) and body["created"] > 1_600_000_000
    assert chunk("c", "m", {}, "stop")["choices"][0]["finish_reason"] == "stop"
    last = chunk("c", "m", {}, usage_=usage(reply()))
    assert last["choices"] == [] and last["usage"] == usage(reply()) and last["object"] == "chat.completion.chunk"


@pytest.mark.parametrize("stop, expected", [(None, []), ("", []), ([], []), ("x", ["x"]), (["a", "b"], ["a", "b"]),
                                            (["a", "b", "c", "d"], ["a", "b", "c", "d"])])
def test_stop_takes_a_string_or_up_to_four(stop, expected):
    assert parse_request({"messages": HI, "stop": stop}, 1024).stop == expected


@pytest.mark.parametrize("stop", [[str(i) for i in range(17)], [""], ["a", ""], [1], {"a": 1}, 5])
def test_other_stops_are_refused(stop):
    with pytest.raises(RequestError) as e:
        parse_request({"messages": HI, "stop": stop}, 1024)
    assert e.value.param == "stop"


def test_arguments_text_keeps_non_ascii_as_written():
    assert ToolCall("c", "f", {"city": "Zürich", "note": "東京"}).arguments_json == '{"city": "Zürich", "note": "東京"}'


def parsed(pieces: list[str]) -> list[tuple]:
    parser = ToolCallParser()
    out: list[tuple] = []
    for item in [i for p in pieces for i in parser.feed(p)] + parser.close():
        if isinstance(item, Content) and out and out[-1][0] == "content":
            out[-1] = ("content", out[-1][1] + item.text)
        elif isinstance(item, Content):
            out.append(("content", item.text))
        elif isinstance(item, ToolCall):
            out.append(("call", item.name, item.arguments))
        else:
            assert isinstance(item, InvalidCall)
            out.append(("invalid", item.text))
    return out


@pytest.mark.parametrize("text, expected", [
    ('<tool_call>{"name": "f", "arguments": {}}</tool_call>\nDone, and more words.',
     [("call", "f", {}), ("content", "Done, and more words.")]),
    ("The answer ends on <tool_ca", [("content", "The answer ends on <tool_ca")]),
    ("<tool_call></tool_call> after", [("invalid", "<tool_call></tool_call>"), ("content", " after")]),
])
def test_text_after_a_call_and_a_partial_marker_at_the_end_survive_every_split(text, expected):
    """Spaces inside the content after a call are kept wherever a chunk starts; a generation that
    ends on what might have become <tool_call> gives it back; an empty block is closed at once."""
    for pieces in splits(text, 2):
        assert parsed(pieces) == expected, pieces
