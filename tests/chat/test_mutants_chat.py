"""edge/chat.py's rules that need no generation, on Chats without a model (the end-to-end tests on
the scripted model take over a minute a run): the messages the template gets, the tool results a
chat awaits, wait_timeout's check, the presence penalty reaching the sampler, what a single-mode
model says about a mode it ignores, and a transcript saved and loaded whole."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest

from edge.chat import ArgumentError, Chat, ChatError, Message, load_transcript, save_transcript
from edge.protocol.model_kind import ModelKind
from edge.protocol.modes import Mode
from edge.protocol.tool_calls import ToolCall

CALLS = (ToolCall("call_1", "get_weather", {"city": "Paris"}), ToolCall("call_2", "get_time", {"tz": "CET"}))


def bare_chat(kind: ModelKind = ModelKind.HYBRID, mode: Mode = Mode.THINK, sampling_defaults=None) -> Chat:
    """A Chat's state without an engine's llama.cpp parts (what the rules below read)."""
    chat = Chat.__new__(Chat)
    chat.engine = SimpleNamespace(kind=kind, info=SimpleNamespace(sampling_defaults=sampling_defaults))
    chat.system, chat.mode, chat.budget, chat.history = None, mode, None, []
    chat.presence_penalty, chat.seed, chat.sampling_overrides = 0.0, None, {}
    return chat


def test_the_template_gets_an_assistants_reasoning_and_calls_and_a_tools_call_id():
    m = Message("assistant", "", "thinking it over", CALLS)
    assert m.for_template() == {"role": "assistant", "content": "", "reasoning_content": "thinking it over",
                                "tool_calls": [c.to_openai() for c in CALLS]}
    assert Message("assistant", "Hi").for_template() == {"role": "assistant", "content": "Hi"}
    assert Message("tool", "18C", tool_call_id="call_1").for_template() == {"role": "tool", "content": "18C",
                                                                            "tool_call_id": "call_1"}
    assert Message("user", "Hi", thinking="x").for_template() == {"role": "user", "content": "Hi"}


def test_tool_results_answer_the_last_replys_open_calls_each_once():
    chat = bare_chat()
    chat.history = [Message("user", "Weather and time?"), Message("assistant", "", tool_calls=CALLS)]
    assert chat._open_calls() == ["call_1", "call_2"]
    chat.add_tool_result("call_2", "12:00")
    assert chat._open_calls() == ["call_1"] and chat.history[-1] == Message("tool", "12:00", tool_call_id="call_2")
    with pytest.raises(ChatError, match=r"no call 'call_2' awaits a result \(open calls: call_1\)"):
        chat.add_tool_result("call_2", "again")
    chat.add_tool_result("call_1", "18C")
    assert chat._open_calls() == []
    chat.history.append(Message("user", "Thanks"))
    assert chat._open_calls() == []                      # a user message closes what was open
    with pytest.raises(ChatError, match="must be a string"):
        chat.add_tool_result("call_1", {"t": 18})


@pytest.mark.parametrize("value", [-1, True, "5", float("nan")])
def test_a_bad_wait_timeout_is_an_argument_error(value):
    with pytest.raises(ArgumentError, match="wait_timeout must be a number of seconds"):
        Chat(SimpleNamespace(closed=True), wait_timeout=value)


@pytest.mark.parametrize("value", [None, 0, 2.5])
def test_a_good_wait_timeout_passes_on_to_the_engine_check(value):
    with pytest.raises(ChatError) as e:          # the stand-in engine is closed: the next check refuses it
        Chat(SimpleNamespace(closed=True), wait_timeout=value)
    assert not isinstance(e.value, ArgumentError)


def test_the_presence_penalty_and_seed_reach_the_sampler():
    chat = bare_chat()
    chat.presence_penalty, chat.seed = 1.5, 7
    params = chat.sampling_params(thinking=True)
    assert (params.presence_penalty, params.seed) == (1.5, 7)


@pytest.mark.parametrize("kind, mode, switch, expected", [
    (ModelKind.THINKING, Mode.THINK, None, (True, None)),
    (ModelKind.THINKING, Mode.NO_THINK, None, (True, "it always thinks, so /no_think has no effect")),
    (ModelKind.THINKING, Mode.AUTO, None, (True, "it always thinks, so auto mode has no effect")),
    (ModelKind.THINKING, Mode.THINK, Mode.THINK, (True, None)),
    (ModelKind.THINKING, Mode.NO_THINK, Mode.NO_THINK, (True, "so /no_think has no effect")),
    (ModelKind.NON_THINKING, Mode.THINK, None, (False, None)),        # the default mode: nothing to say
    (ModelKind.NON_THINKING, Mode.THINK, Mode.THINK, (False, "it never thinks, so /think has no effect")),
    (ModelKind.NON_THINKING, Mode.NO_THINK, None, (False, None)),
    (ModelKind.NON_THINKING, Mode.AUTO, None, (False, "so auto mode has no effect")),
])
def test_a_single_mode_model_says_when_a_mode_asked_has_no_effect(kind, mode, switch, expected):
    thinking, notice = bare_chat(kind, mode)._thinking_for("Hi", switch)
    assert thinking is expected[0]
    if expected[1] is None:
        assert notice is None
    else:
        assert notice.startswith(f"this model is {kind.value}: ") and notice.endswith(expected[1])


def test_a_hybrid_model_thinks_as_its_mode_says():
    assert bare_chat(mode=Mode.THINK)._thinking_for("Hi", None) == (True, None)
    assert bare_chat(mode=Mode.NO_THINK)._thinking_for("Hi", None) == (False, None)


def test_a_transcript_with_calls_and_results_loads_back_whole(tmp_path):
    chat = bare_chat(mode=Mode.NO_THINK)
    chat.system, chat.budget = "Be brief.", "auto"
    chat.history = [Message("user", "Weather?"), Message("assistant", "", "let me look", CALLS[:1]),
                    Message("tool", "18C", tool_call_id="call_1"), Message("assistant", "It is 18C.")]
    path = tmp_path / "t.json"
    save_transcript(chat, path)
    data = json.loads(path.read_text(encoding="utf-8"))
    assert (data["version"], data["system"], data["mode"], data["budget"]) == (1, "Be brief.", "no_think", "auto")
    assert data["messages"][1] == {"role": "assistant", "content": "", "thinking": "let me look",
                                   "tool_calls": [{"id": "call_1", "name": "get_weather", "arguments": {"city": "Paris"}}]}
    assert data["messages"][2] == {"role": "tool", "content": "18C", "thinking": "", "tool_call_id": "call_1"}
    other = bare_chat()
    load_transcript(other, path)
    assert (other.system, other.mode, other.budget, other.history) == ("Be brief.", Mode.NO_THINK, "auto", chat.history)
    assert not list(tmp_path.glob(".*partial"))


# ---- through llama.cpp, on the scripted models (a second or two each) ----------------------------
@pytest.fixture(scope="module")
def scripted(scripted_gguf):
    from edge.runtime.engine import Engine
    with Engine.load(scripted_gguf, n_ctx=1024) as e:
        yield e


def test_without_thinking_a_response_format_holds_the_answer_from_its_first_token(scripted):
    """No thinking: the prompt holds the empty think block, so the answer grammar is armed before
    the first token (the script's own answer is not JSON)."""
    reply = Chat(scripted, mode="no_think", seed=5, max_tokens=60).send(
        "Yes?", response_format={"type": "json_schema", "json_schema": {"name": "yn", "schema": {"enum": ["yes", "no"]}}})
    assert json.loads(reply.answer) in ("yes", "no") and reply.schema_error is None and reply.thinking == ""


def test_a_reply_that_calls_a_tool_ends_with_stop_reason_tool_calls(tool_ggufs):
    from edge.runtime.engine import Engine
    from tests.tool_scripts import WEATHER_TOOL
    with Engine.load(tool_ggufs["think_then_call"], n_ctx=1024) as engine:
        reply = Chat(engine, tools=[WEATHER_TOOL], seed=4).send("Weather?")
    assert reply.stop_reason == "tool_calls" and [c.name for c in reply.tool_calls] == ["get_weather"]
