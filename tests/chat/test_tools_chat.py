"""Tool calls and structured output in the Chat loop, on scripted models (exact text) through
llama.cpp: calls after thinking and without it, in an unclosed think block, malformed, forced by
tool_choice, a two-step tool loop whose prompts equal Qwen's template, and JSON schemas that bind
only the answer."""

from __future__ import annotations

import json

import jsonschema
import pytest
from jinja2 import Environment

from edge import Chat, ChatError, Engine
from tests.model_factory import FIXTURES
from tests.scripted_model import SCRIPT_ANSWER_TEXT, SCRIPT_THINKING_TEXT
from tests.tool_scripts import ANSWER_TEXT, CALL_JSON, THINKING_TEXT, TIME_TOOL, WEATHER_TOOL

QWEN_TEMPLATE = json.loads((FIXTURES / "tokenizer_config.json").read_text())["chat_template"]
TOOLS = [WEATHER_TOOL]


def reference_prompt(messages, thinking: bool, tools=None) -> str:
    """Qwen's template rendered by plain jinja2, as transformers does (tojson without escaping)."""
    env = Environment(trim_blocks=True, lstrip_blocks=True)
    env.filters["tojson"] = lambda v, **kw: json.dumps(v, ensure_ascii=False, **kw)
    return env.from_string(QWEN_TEMPLATE).render(messages=messages, tools=tools, add_generation_prompt=True,
                                                 enable_thinking=thinking)


@pytest.fixture(scope="module")
def engines(tool_ggufs):
    opened = {k: Engine.load(path, n_ctx=1024) for k, path in tool_ggufs.items()}
    yield opened
    for e in opened.values():
        e.close()


@pytest.fixture(scope="module")
def plain(scripted_gguf):
    with Engine.load(scripted_gguf, n_ctx=1024) as e:
        yield e


def evaluated_prompt(engine, reply) -> str:
    return engine.llama.detokenize(engine.llama.input_ids[: reply.prompt_tokens].tolist(), special=True).decode()


def test_call_after_thinking_is_a_tool_call_event(engines):
    chat = Chat(engines["think_then_call"], tools=TOOLS, seed=1)
    events = list(chat.stream("Weather in Paris?"))
    kinds = [e.kind for e in events]
    calls = [e.call for e in events if e.kind == "tool_call"]
    reply = events[-1].reply
    assert [(c.name, c.arguments) for c in calls] == [("get_weather", {"city": "Paris"})]
    assert kinds.index("tool_call") > max(i for i, k in enumerate(kinds) if k == "thinking")
    assert (reply.thinking, reply.answer, reply.stop_reason) == (THINKING_TEXT, "", "tool_calls")
    assert reply.tool_calls == tuple(calls) and calls[0].id.startswith("call_")
    assert "answer" not in kinds  # the call text never leaks into the answer
    assert chat.history[-1].tool_calls == tuple(calls)


def test_two_step_tool_loop_prompts_equal_qwens_template(engines):
    engine = engines["call_then_answer"]
    chat = Chat(engine, system="Use tools.", tools=TOOLS, mode="no_think", seed=2)
    first = chat.send("Weather in Paris?")
    assert first.stop_reason == "tool_calls" and first.tool_calls[0].arguments == {"city": "Paris"}
    assert evaluated_prompt(engine, first) == reference_prompt(
        [{"role": "system", "content": "Use tools."}, {"role": "user", "content": "Weather in Paris?"}], False, TOOLS)
    call = first.tool_calls[0]
    chat.add_tool_result(call.id, '{"temperature": 21, "sky": "sunny"}')
    chat.mode = "think"
    second = chat.send()
    assert (second.thinking, second.answer, second.stop_reason) == (THINKING_TEXT, ANSWER_TEXT, "eos")
    expected = reference_prompt([
        {"role": "system", "content": "Use tools."}, {"role": "user", "content": "Weather in Paris?"},
        {"role": "assistant", "content": "", "tool_calls": [
            {"id": call.id, "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}}]},
        {"role": "tool", "content": '{"temperature": 21, "sky": "sunny"}', "tool_call_id": call.id}], True, TOOLS)
    assert evaluated_prompt(engine, second) == expected
    assert '<tool_response>\n{"temperature": 21, "sky": "sunny"}\n</tool_response>' in expected
    assert [m.role for m in chat.history] == ["user", "assistant", "tool", "assistant"]


def test_thinking_of_a_tool_chain_in_progress_is_kept_and_dropped_after_the_next_question(engines):
    """Qwen's template keeps the reasoning of assistant turns after the last user message."""
    engine = engines["think_then_call"]
    chat = Chat(engine, tools=TOOLS, seed=3)
    call = chat.send("Weather in Paris?").tool_calls[0]
    chat.add_tool_result(call.id, "sunny")
    in_chain = chat.render(chat.messages(), True, TOOLS)
    assert f"<think>\n{THINKING_TEXT}\n</think>\n\n<tool_call>" in in_chain
    chat.history.append(type(chat.history[0])("assistant", "Sunny."))
    later = chat.render(chat.messages() + [{"role": "user", "content": "Thanks"}], True, TOOLS)
    assert THINKING_TEXT not in later
    assert later == reference_prompt(chat.messages() + [{"role": "user", "content": "Thanks"}], True, TOOLS)


def test_call_inside_an_unclosed_think_block_is_returned_as_a_call(engines):
    reply = Chat(engines["open_think"], tools=TOOLS, seed=4).send("Weather?")
    assert [(c.name, c.arguments) for c in reply.tool_calls] == [("get_weather", {"city": "Paris"})]
    assert reply.thinking == THINKING_TEXT and reply.answer == "" and reply.stop_reason == "tool_calls"


def test_without_tools_a_call_in_the_thinking_stays_thinking(engines):
    reply = Chat(engines["open_think"], seed=4).send("Weather?")
    assert reply.tool_calls == () and "<tool_call>" in reply.thinking


def test_malformed_call_without_grammar_is_content_with_a_notice(engines):
    chat = Chat(engines["broken"], tools=TOOLS, mode="no_think", seed=5)
    events = list(chat.stream("Weather?", tool_choice="auto", constrain_tool_calls=False))
    reply = events[-1].reply
    assert reply.tool_calls == () and reply.stop_reason == "eos"
    assert reply.answer == "<tool_call>" + CALL_JSON[:-3] + "</tool_call>"
    assert len(reply.invalid_tool_calls) == 1 and "JSON" in reply.invalid_tool_calls[0]
    assert any(e.kind == "notice" and "not a valid tool call" in e.text for e in events)


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_auto_grammar_keeps_a_breaking_call_well_formed(engines, seed):
    """The same broken script, with the default lazy grammar armed at <tool_call>: the model is
    held to the tool's schema and the call comes out valid."""
    reply = Chat(engines["broken"], tools=TOOLS, mode="no_think", seed=seed, max_tokens=40).send("Weather?")
    assert [(c.name, c.arguments) for c in reply.tool_calls] == [("get_weather", {"city": "Paris"})]
    assert reply.invalid_tool_calls == () and reply.grammar_rejections >= 1


def test_call_cut_by_max_tokens_is_not_a_call(engines):
    reply = Chat(engines["call_then_answer"], tools=TOOLS, mode="no_think", max_tokens=6, seed=6).send("Weather?")
    assert reply.tool_calls == () and reply.stop_reason == "length"
    assert reply.invalid_tool_calls == ("the call was never closed",)


def test_tool_choice_none_renders_no_tools(engines):
    engine = engines["think_then_call"]
    reply = Chat(engine, tools=TOOLS, mode="no_think", seed=7).send("Hi", tool_choice="none")
    assert reply.answer == ANSWER_TEXT and reply.tool_calls == ()
    assert evaluated_prompt(engine, reply) == reference_prompt([{"role": "user", "content": "Hi"}], False)


@pytest.mark.parametrize("seed", [1, 2, 3, 4])
def test_tool_choice_required_forces_a_valid_call(engines, seed):
    """A model that would answer (non-thinking branch) is held to a call that fits the schema."""
    reply = Chat(engines["think_then_call"], tools=[WEATHER_TOOL, TIME_TOOL], mode="no_think", seed=seed,
                 max_tokens=60).send("Hi", tool_choice="required")
    assert reply.tool_calls and reply.stop_reason == "tool_calls" and reply.answer == ""
    for call in reply.tool_calls:
        tool = {"get_weather": WEATHER_TOOL, "get_time": TIME_TOOL}[call.name]
        jsonschema.validate(call.arguments, tool["function"]["parameters"])


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_named_tool_choice_forces_that_tool(engines, seed):
    choice = {"type": "function", "function": {"name": "get_time"}}
    reply = Chat(engines["think_then_call"], tools=[WEATHER_TOOL, TIME_TOOL], mode="no_think", seed=seed,
                 max_tokens=60).send("Hi", tool_choice=choice, parallel_tool_calls=False)
    assert [c.name for c in reply.tool_calls] == ["get_time"]
    jsonschema.validate(reply.tool_calls[0].arguments, TIME_TOOL["function"]["parameters"])


def test_required_call_leaves_the_thinking_free(engines):
    reply = Chat(engines["think_then_call"], tools=TOOLS, seed=8).send("Weather?", tool_choice="required")
    assert reply.thinking == THINKING_TEXT
    assert [(c.name, c.arguments) for c in reply.tool_calls] == [("get_weather", {"city": "Paris"})]
    assert reply.grammar_rejections == 0  # the script already fits: the grammar only checked it


@pytest.mark.parametrize("budget", [0, 2])
def test_budget_and_soft_switch_work_with_tools(engines, budget):
    """Qwen's phrase ends "</think>\n\n", the token after which call_then_answer calls."""
    chat = Chat(engines["call_then_answer"], tools=TOOLS, budget=budget, seed=9, mode="no_think")
    reply = chat.send("Weather? /think")
    assert reply.budget_hit and reply.thinking_tokens == budget
    assert reply.thinking.endswith("based on the thinking directly now.")
    assert [c.name for c in reply.tool_calls] == ["get_weather"]
    chat.budget = None
    assert chat.send("Just answer").answer == ANSWER_TEXT


SCHEMAS = [
    {"type": "object", "properties": {"name": {"type": "string", "maxLength": 12}, "age": {"type": "integer"}},
     "required": ["name", "age"], "additionalProperties": False},
    {"type": "object", "properties": {"tags": {"type": "array", "items": {"type": "string", "enum": ["a", "b", "c"]},
                                               "minItems": 1, "maxItems": 3}},
     "required": ["tags"]},
    {"type": "object", "properties": {
        "point": {"type": "object", "properties": {"x": {"type": "number"}, "y": {"type": "number"}},
                  "required": ["x", "y"]},
        "ok": {"type": "boolean"}, "kind": {"enum": ["circle", "square", None]}},
     "required": ["point", "ok", "kind"]},
    {"type": "array", "items": {"type": "integer"}, "minItems": 2, "maxItems": 4},
]


@pytest.mark.parametrize("mode", ["think", "no_think"])
@pytest.mark.parametrize("schema_index", range(len(SCHEMAS)))
def test_json_schema_binds_the_answer_only(plain, mode, schema_index):
    """The scripted model wants to say "The answer is forty-two.": the schema makes it write
    JSON that validates, while its thinking stays exactly the script's."""
    schema = SCHEMAS[schema_index]
    reply = Chat(plain, mode=mode, seed=schema_index, max_tokens=200).send(
        "Data?", response_format={"type": "json_schema", "json_schema": {"name": "x", "schema": schema}})
    assert reply.stop_reason == "eos", reply
    jsonschema.validate(json.loads(reply.answer), schema)
    assert reply.thinking == (SCRIPT_THINKING_TEXT if mode == "think" else "")


def test_json_object_mode_starts_an_object(plain):
    """Any JSON object: the answer that would be "The answer..." opens an object instead (a
    random object may run long, so only its start is checked here; schemas above run to the end)."""
    reply = Chat(plain, mode="no_think", seed=3, max_tokens=6).send("Data?", response_format={"type": "json_object"})
    assert reply.answer.lstrip().startswith("{") and reply.grammar_rejections >= 1


def test_schema_the_script_already_fits_costs_no_full_pass(plain):
    schema = {"type": "string", "enum": [SCRIPT_ANSWER_TEXT]}
    reply = Chat(plain, mode="no_think", seed=4).send("x", response_format=schema)
    assert reply.answer == json.dumps(SCRIPT_ANSWER_TEXT) or json.loads(reply.answer) == SCRIPT_ANSWER_TEXT


@pytest.mark.parametrize("kwargs, message", [
    ({"tools": [{"type": "function", "function": {"description": "no name"}}]}, "name"),
    ({"tools": [{"type": "function", "function": {"name": "f", "parameters": "not a schema"}}]}, "parameters"),
    ({"tools": TOOLS, "tool_choice": {"type": "function", "function": {"name": "nope"}}}, "not among the tools"),
    ({"response_format": {"type": "json_schema", "json_schema": {"schema": {
        "type": "integer", "multipleOf": 0.123456789}}}}, "cannot be enforced"),
    ({"response_format": {"type": "object", "properties": {"a": {"enum": list(range(5000))}}}}, "enum"),
    ({"response_format": {"type": "json_schema", "json_schema": {"schema": {"type": "string", "pattern": "(unclosed"}}}},
     "not a valid JSON schema"),
])
def test_bad_tools_and_schemas_are_one_line_errors(plain, kwargs, message):
    chat = Chat(plain, mode="no_think", seed=1)
    chat.send("Hi")
    before = list(chat.history)
    with pytest.raises(ChatError, match=message) as err:
        chat.send("Again", **kwargs)
    assert "\n" not in str(err.value) and chat.history == before


def test_deeply_nested_schema_is_refused_quickly(plain):
    schema: dict = {"type": "string"}
    for _ in range(3000):
        schema = {"type": "array", "items": schema}
    chat = Chat(plain, mode="no_think")
    with pytest.raises(ChatError, match="deeper|too deep|nests"):
        chat.send("x", response_format=schema)
    assert chat.history == []


def test_tool_result_must_answer_an_open_call(engines):
    chat = Chat(engines["think_then_call"], tools=TOOLS, seed=10)
    with pytest.raises(ChatError, match="no call"):
        chat.add_tool_result("call_x", "1")
    with pytest.raises(ChatError, match="nothing to answer"):
        chat.send()
    call = chat.send("Weather?").tool_calls[0]
    with pytest.raises(ChatError, match="no call"):
        chat.add_tool_result("call_other", "1")
    chat.add_tool_result(call.id, "sunny")
    with pytest.raises(ChatError, match="no call"):
        chat.add_tool_result(call.id, "twice")


def test_tool_result_with_a_lone_surrogate_is_refused(engines):
    chat = Chat(engines["think_then_call"], tools=TOOLS, seed=11)
    call = chat.send("Weather?").tool_calls[0]
    with pytest.raises(ChatError, match="surrogate"):
        chat.add_tool_result(call.id, "bad \ud800 text")
    chat.add_tool_result(call.id, "fine")
    assert chat.history[-1].content == "fine"
