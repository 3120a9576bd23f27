"""Issue 20's small things end to end on scripted models (exact text through llama.cpp): per-turn
max_tokens and stop strings, arguments checked at the door, a conversation restored from a messages
list, a repeated <think> dropped, a call in an unclosed think block kept out of the streamed
reasoning, and `run` refusing a cut JSON answer or a bad argument in one line."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from cli.main import app
from edge.chat import ArgumentError, Chat, ChatError
from edge.runtime.engine import Engine
from quantize import quantize_model
from tests.model_factory import FIXTURES
from tests.scripted_model import QWEN3_SCRIPT, SCRIPT_ANSWER_TEXT, SCRIPT_THINKING_TEXT, build_scripted_model
from tests.tool_scripts import THINKING_TEXT, WEATHER_TOOL

runner = CliRunner(env={"COLUMNS": "200"})


@pytest.fixture(scope="module")
def engine(scripted_gguf):
    with Engine.load(scripted_gguf, n_ctx=1024) as e:
        yield e


def answers(events) -> str:
    return "".join(e.text for e in events if e.kind == "answer")


@pytest.mark.parametrize("stop, expected", [
    ([" forty"], "The answer is"),        # on a token boundary
    ("is for", "The answer "),            # split across " is" and " forty"
    (["ty-t", "nothing"], "The answer is for"),
])
def test_stop_strings_cut_the_answer_streamed_and_not(engine, stop, expected):
    chat = Chat(engine, mode="no_think", seed=1)
    events = list(chat.stream("Hi", stop=stop))
    reply = events[-1].reply
    assert answers(events) == reply.answer == expected and reply.stop_reason == "stop"
    assert chat.history[-1].content == expected                       # the history holds the cut answer
    assert Chat(engine, mode="no_think", seed=1).send("Hi", stop="no such text").answer == SCRIPT_ANSWER_TEXT


def test_stop_strings_leave_the_thinking_alone(engine):
    reply = Chat(engine, seed=2).send("Hi", stop=["count", " forty"])
    assert reply.thinking == SCRIPT_THINKING_TEXT and reply.answer == "The answer is"


def test_max_tokens_per_turn(engine):
    chat = Chat(engine, mode="no_think", seed=3, max_tokens=100)
    short = chat.send("Hi", max_tokens=3)
    assert short.generated_tokens == 3 and short.stop_reason == "length" and short.answer == "The answer is"
    assert chat.send("Again").answer == SCRIPT_ANSWER_TEXT            # the chat's own cap again


@pytest.mark.parametrize("kwargs, fragment", [
    ({"mode": "fast"}, "mode takes 'think', 'no_think' or 'auto', not 'fast'"),
    ({"budget": -1}, "budget takes a whole number of thinking tokens (0 or more), 'auto' or None, not -1"),
    ({"sampling": {"temperature": -1}}, "temperature takes a number from 0 to 2, not -1"),
    ({"max_tokens": 0}, "max_tokens takes"),
    ({"seed": "7"}, "seed takes a whole number"),
])
def test_bad_chat_arguments_raise_one_named_line(engine, kwargs, fragment):
    with pytest.raises(ArgumentError) as e:
        Chat(engine, **kwargs)
    assert isinstance(e.value, ValueError) and isinstance(e.value, ChatError) and fragment in str(e.value)


def test_bad_turn_arguments_change_nothing(engine):
    chat = Chat(engine, mode="no_think", seed=4)
    chat.send("Hi")
    before = list(chat.history)
    for kwargs in ({"max_tokens": -5}, {"stop": [""]}, {"stop": 3}):
        with pytest.raises(ArgumentError):
            chat.send("Again", **kwargs)
    with pytest.raises(ArgumentError, match="mode takes"):
        chat.mode = "fast"
    assert chat.history == before and chat.mode.value == "no_think"


def test_restore_from_a_messages_list(engine):
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"},
                {"role": "assistant", "content": "Hello.", "reasoning_content": "greet"},
                {"role": "user", "content": "Count"}, {"role": "assistant", "content": SCRIPT_ANSWER_TEXT}]
    chat = Chat(engine, seed=5)
    chat.restore(messages)
    assert chat.system == "Be brief." and chat.messages() == [
        {"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello.", "reasoning_content": "greet"},
        {"role": "user", "content": "Count"}, {"role": "assistant", "content": SCRIPT_ANSWER_TEXT}]
    reply = chat.send("Again")
    assert reply.answer == SCRIPT_ANSWER_TEXT and len(chat.history) == 6
    for bad, fragment in (([{"role": "robot", "content": "x"}], "messages[0].role"), ("Hi", "list of message dicts"),
                          ([{"role": "tool", "content": "x", "tool_call_id": "c1"}], "answers no call")):
        with pytest.raises(ChatError, match=fragment.replace("[", r"\[").replace("]", r"\]")):
            chat.restore(bad)
    assert len(chat.history) == 6 and chat.system == "Be brief."      # a bad list changed nothing


@pytest.fixture(scope="module")
def reopening(tmp_path_factory):
    """The plain script (it writes <think> first) under the Thinking-2507 template, which already
    opened <think> in the prompt: the model writes the tag a second time."""
    root = tmp_path_factory.mktemp("reopen")
    folder = build_scripted_model(root / "hf", QWEN3_SCRIPT)
    cfg = json.loads((folder / "tokenizer_config.json").read_text())
    cfg["chat_template"] = (FIXTURES.parent / "templates" / "qwen3-thinking-2507.jinja").read_text()
    (folder / "tokenizer_config.json").write_text(json.dumps(cfg))
    with Engine.load(Path(quantize_model(folder, "f16", root / "reopen.gguf").output), n_ctx=1024) as e:
        yield e


def test_a_repeated_think_tag_is_not_reasoning(reopening):
    events = list(Chat(reopening, seed=6).stream("Hi"))
    reply = events[-1].reply
    assert (reply.thinking, reply.answer) == (SCRIPT_THINKING_TEXT, SCRIPT_ANSWER_TEXT)
    assert "".join(e.text for e in events if e.kind == "thinking") == SCRIPT_THINKING_TEXT


def test_a_call_in_unclosed_thinking_never_streams_as_reasoning(tool_ggufs):
    with Engine.load(tool_ggufs["open_think"], n_ctx=1024) as engine:
        events = list(Chat(engine, tools=[WEATHER_TOOL], seed=4).stream("Weather?"))
    reply = events[-1].reply
    streamed = "".join(e.text for e in events if e.kind == "thinking")
    assert streamed == reply.thinking == THINKING_TEXT and "<tool_" not in streamed
    assert [e.call.name for e in events if e.kind == "tool_call"] == ["get_weather"]


def one_error_line(stderr: str) -> str:
    lines = [line for line in stderr.splitlines() if line.strip() and not line.startswith("llama")]
    assert len(lines) == 1, stderr
    return lines[0]


def test_run_refuses_a_json_answer_cut_by_max_tokens(scripted_gguf, tmp_path):
    """An answer the closing cannot complete within max_tokens (two required keys need more than 4
    tokens) is cut, printed, and refused: exit 1 and the reason."""
    schema = tmp_path / "s.json"
    keys = ["a_rather_long_property_name_one", "another_rather_long_property_name"]
    schema.write_text(json.dumps({"type": "object", "properties": {k: {"type": "string"} for k in keys},
                                  "required": keys}))
    args = ["run", str(scripted_gguf), "Extract", "--seed", "1", "--max-tokens", "4", "--no-think",
            "--json-schema", str(schema)]
    r = runner.invoke(app, args + ["--json"])
    assert r.exit_code == 1, r.output
    d = json.loads(r.stdout)
    assert d["answer"].lstrip().startswith("{") and d["stop_reason"] == "length"
    assert "not complete JSON" in d["schema_error"] and "token limit" in one_error_line(r.stderr)
    r = runner.invoke(app, args)
    assert r.exit_code == 1 and r.stdout.lstrip().startswith("{") and "token limit" in one_error_line(r.stderr)


def test_run_closes_a_json_answer_within_max_tokens_when_it_can(scripted_gguf):
    """--json-object with 6 tokens: the closing ends the object in time; it validates, so run
    exits 0, and the reply says it was closed early (stop_reason stays length)."""
    r = runner.invoke(app, ["run", str(scripted_gguf), "Extract", "--seed", "1", "--max-tokens", "6", "--no-think",
                            "--json-object", "--json"])
    assert r.exit_code == 0, r.output
    d = json.loads(r.stdout)
    assert isinstance(json.loads(d["answer"]), dict) and d["stop_reason"] == "length" and d["schema_error"] is None
    assert any("closed early to end within max_tokens 6" in n for n in d["notices"])


def test_run_names_a_bad_argument(scripted_gguf):
    r = runner.invoke(app, ["run", str(scripted_gguf), "Hi", "--temperature", "-1"])
    assert r.exit_code == 1 and "temperature takes a number from 0 to 2, not -1" in one_error_line(r.stderr)


def test_a_chat_after_engine_close_is_a_clear_error(scripted_gguf):
    """Before: a segmentation fault (llama.cpp's context was freed under the Chat)."""
    engine = Engine.load(scripted_gguf, n_ctx=512)
    chat = Chat(engine, mode="no_think", seed=1)
    chat.send("Hi")
    before = list(chat.history)
    engine.close()
    with pytest.raises(ChatError, match="the engine is closed"):
        chat.send("Again")
    with pytest.raises(ChatError, match="the engine is closed"):
        Chat(engine)
    assert chat.history == before
    engine.close()   # twice is harmless
