"""Tools, tool_choice and schemas checked and turned into llguidance grammars, compiled against the
GGUF's own vocabulary (guidance.tokenizer_for) and walked token by token as Qwen tokenizes."""

from __future__ import annotations

import json
import time

import llama_cpp
import pytest

from edge.protocol.grammar import MAX_ENUM, GrammarError, plan_constraints, response_schema
from edge.protocol.guidance import compile_grammar, tokenizer_for
from tests.tool_scripts import CALL_JSON, TIME_TOOL, WEATHER_TOOL


@pytest.fixture(scope="module")
def vocab(scripted_gguf):
    llm = llama_cpp.Llama(str(scripted_gguf), vocab_only=True, verbose=False)
    yield llm
    llm.close()


def walk(llm, grammar: str, text: str) -> bool:
    """Whether the grammar takes `text` tokenized as Qwen tokenizes it, token by token."""
    g = compile_grammar(tokenizer_for(llm), grammar)
    for token in llm.tokenize(text.encode(), add_bos=False, special=True):
        if not g.allows(token):
            return False
        g.accept(token)
    return g.allows(llm.token_eos())  # complete: only now may generation end


def test_auto_call_grammar_starts_at_the_tool_call_token(vocab):
    grammar = plan_constraints([WEATHER_TOOL], "auto").call_grammar
    assert walk(vocab, grammar, f"<tool_call>{CALL_JSON}</tool_call>")
    assert walk(vocab, grammar, '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Rome"}}\n</tool_call>')
    assert not walk(vocab, grammar, '<tool_call>{"name":"get_weather","arguments":{"city": "Oslo"}}</tool_call>')
    assert not walk(vocab, grammar, '<tool_call>{"name":"get_time","arguments":{"city": "Paris"}}</tool_call>')
    assert not walk(vocab, grammar, f"<tool_call>{CALL_JSON}")  # not complete without </tool_call>


def test_parallel_calls_only_when_allowed(vocab):
    two = f"<tool_call>{CALL_JSON}</tool_call>\n<tool_call>{CALL_JSON}</tool_call>"
    assert walk(vocab, plan_constraints([WEATHER_TOOL], "required").answer_grammar, "\n\n" + two)
    assert not walk(vocab, plan_constraints([WEATHER_TOOL], "required", parallel_tool_calls=False).answer_grammar,
                    "\n\n" + two)


def test_named_choice_allows_only_that_tool(vocab):
    choice = {"type": "function", "function": {"name": "get_time"}}
    grammar = plan_constraints([WEATHER_TOOL, TIME_TOOL], choice).answer_grammar
    assert walk(vocab, grammar, '<tool_call>{"name": "get_time", "arguments": {"zone": "UTC"}}</tool_call>')
    assert not walk(vocab, grammar, f"<tool_call>{CALL_JSON}</tool_call>")


def test_schema_grammar_refuses_raw_control_characters_in_strings(vocab):
    """The bindings' converter alone lets a raw newline into a JSON string; json.loads refuses it."""
    grammar = plan_constraints(response_format={"type": "object", "properties": {"a": {"type": "string"}}}).answer_grammar
    assert walk(vocab, grammar, '\n\n{"a": "x\\ny"}')
    assert not walk(vocab, grammar, '{"a": "x\ny"}')


def test_response_format_with_auto_tools_allows_either(vocab):
    grammar = plan_constraints([WEATHER_TOOL], "auto", {"type": "json_object"}).answer_grammar
    assert walk(vocab, grammar, '{"k": [1, 2.5, "s", null, true]}')
    assert walk(vocab, grammar, f"<tool_call>{CALL_JSON}</tool_call>")
    assert not walk(vocab, grammar, "Sure! {}")


def test_tool_choice_none_and_no_format_constrain_nothing():
    c = plan_constraints([WEATHER_TOOL], "none")
    assert c.tools is None and c.answer_grammar is None and c.call_grammar is None and not c.parse_calls
    assert plan_constraints() == plan_constraints(None, "auto", None)


@pytest.mark.parametrize("rf, schema", [
    (None, None), ("text", None), ({"type": "text"}, None), ({"type": "json_object"}, {"type": "object"}),
    ({"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "integer"}}}, {"type": "integer"}),
    ({"type": "array"}, {"type": "array"}),
])
def test_response_format_forms(rf, schema):
    assert response_schema(rf) == schema


@pytest.mark.parametrize("args, param, message", [
    (([{"function": {"name": "f"}, "type": "retrieval"}],), "tools[0]", "function"),
    (([{"type": "function", "function": {"name": "bad name!"}}],), "tools[0]", "letters"),
    (([WEATHER_TOOL, WEATHER_TOOL],), "tools[1]", "twice"),
    (([{"type": "function", "function": {"name": "f", "parameters": {"type": "array"}}}],), "tools[0]", "type object"),
    ((None, "required"), "tool_choice", "needs tools"),
    (([WEATHER_TOOL], "sometimes"), "tool_choice", "must be"),
    ((None, "auto", {"type": "json_schema"}), "response_format.json_schema", "schema"),
    ((None, "auto", {"type": "object", "properties": {"n": {"type": "string", "pattern": "(unclosed"}}}),
     "response_format", "not a valid JSON schema"),
    ((None, "auto", {"type": "json_schema", "json_schema": {"schema": False}}), "response_format", "false"),
    ((None, "auto", {"type": "integer", "multipleOf": 0.123456789}), "response_format", "cannot be enforced"),
    ((None, "auto", {"enum": list(range(MAX_ENUM + 1))}), "response_format", "enum"),
    ((None, "auto", {"type": "object", "properties": {"a": {"$ref": "#/$defs/missing"}}}), "response_format",
     "cannot be enforced"),
    ((None, "auto", {"type": "strnig"}), "response_format", "must be text, json_object or json_schema"),
    ((None, "auto", {"type": "object", "properties": {"a": {"type": "strnig"}}}), "response_format",
     r"response_format\.properties\.a is not a valid JSON schema: 'strnig'"),
])
def test_bad_input_names_the_field(args, param, message):
    with pytest.raises(GrammarError, match=message) as err:
        plan_constraints(*args)
    assert err.value.param.startswith(param) and "\n" not in err.value.message


def test_largest_accepted_schema_compiles_and_is_timed(vocab, capsys):
    """Bounds keep conversion and compilation short: the biggest schema the bounds let through
    (64 KB of enums) is converted and compiled here, and the time printed."""
    props = {f"p{i}": {"enum": [f"value-{i}-{j}" for j in range(60)]} for i in range(40)}
    schema = {"type": "object", "properties": props, "required": list(props)}
    assert len(json.dumps(schema)) < 64 * 1024
    started = time.perf_counter()
    grammar = plan_constraints(response_format=schema).answer_grammar
    compile_grammar(tokenizer_for(vocab), grammar)
    with capsys.disabled():
        print(f"\n[grammar] {len(json.dumps(schema))}-byte schema -> {len(grammar)}-byte grammar, "
              f"converted and compiled in {time.perf_counter() - started:.3f}s")


def test_nesting_depth_counts_objects_and_arrays_without_recursion():
    from edge.protocol.grammar import nesting_depth
    assert nesting_depth("x", 10) == 0 and nesting_depth({}, 10) == 1 and nesting_depth([[1], {"a": []}], 10) == 3
    deep: list = []
    for _ in range(100_000):           # far past Python's recursion limit
        deep = [deep]
    assert nesting_depth(deep, 10) == 11   # stops just past the limit


def test_depth_is_refused_before_size_on_every_python():
    """A 3,000-level schema is also over the byte limit; the refusal names the nesting (json.dumps
    on Python 3.12 serializes it where 3.11 raised RecursionError)."""
    from edge.protocol.grammar import GrammarError, MAX_SCHEMA_DEPTH, check_schema
    schema: dict = {"type": "string"}
    for _ in range(3000):
        schema = {"type": "array", "items": schema}
    import sys
    limit = sys.getrecursionlimit()
    sys.setrecursionlimit(20_000)      # as on 3.12, json.dumps now serializes the 3,000 levels
    try:
        with pytest.raises(GrammarError, match="nests deeper"):
            check_schema(schema, "response_format")
    finally:
        sys.setrecursionlimit(limit)
    ok: dict = {"type": "string"}
    for _ in range(MAX_SCHEMA_DEPTH):   # the deepest schema the rule allows, through properties
        ok = {"type": "object", "properties": {"a": ok}}
    check_schema(ok, "response_format")
