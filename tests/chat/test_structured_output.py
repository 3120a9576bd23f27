"""Structured output on llguidance: the mask written into llama.cpp's logits row before the
sampler chain, objects closed to their listed properties while decoding, the finished answer
validated (jsonschema, Draft 2020-12, formats) and flagged when it fails, and a fast subset of
the case list (tests/schema_cases.py; the whole run is benchmarks/bench_schemas.py)."""

from __future__ import annotations

import copy
import json

import jsonschema
import numpy as np
import pytest

from edge import Chat, Engine
from edge.protocol.answer_check import answer_problem, reply_problems
from edge.protocol.grammar import closed_objects, plan_constraints
from edge.protocol.guidance import apply_mask
from edge.protocol.tool_calls import ToolCall
from tests.schema_cases import Profile, app_cases, suite_cases

FORMAT_CHECKER = jsonschema.Draft202012Validator.FORMAT_CHECKER


def valid(value, schema) -> bool:
    return jsonschema.Draft202012Validator(schema, format_checker=FORMAT_CHECKER).is_valid(value)


def rf(schema) -> dict:
    return {"type": "json_schema", "json_schema": {"name": "case", "schema": schema}}


# ---- pure: the rules ----------------------------------------------------------------------------
@pytest.mark.parametrize("n", [151936, 40, 33, 7])
def test_mask_forbids_exactly_the_clear_bits(n):
    """Bit i of word w is token 32*w+i (llguidance's layout), whole words and mixed ones alike."""
    rng = np.random.default_rng(n)
    allowed = rng.random(n) < 0.3
    allowed[: (n // 64) * 32] = False          # whole words of zeros
    allowed[(n // 64) * 32: (n // 32) * 32 // 2 + 16] |= n > 64  # and some of ones
    words = np.packbits(np.concatenate([allowed, np.zeros(-n % 32, bool)]), bitorder="little").view(np.int32)
    row = rng.standard_normal(n).astype(np.float32)
    expected = np.where(allowed, row, -np.inf)
    assert apply_mask(row, words) == allowed.sum()
    assert np.array_equal(row, expected)


def test_objects_are_closed_only_where_it_cannot_change_what_validates():
    schema = Profile.model_json_schema()
    before = copy.deepcopy(schema)
    closed = closed_objects(schema)
    assert schema == before  # a copy: the caller's schema is untouched
    assert closed["additionalProperties"] is False and closed["$defs"]["Person"]["additionalProperties"] is False
    open_ones = [{"type": "object", "properties": {"a": {}}, "additionalProperties": {"type": "integer"}},
                 {"type": "object", "properties": {"a": {}}, "required": ["a", "b"]},       # b must be extra
                 {"type": "object", "properties": {"a": {}}, "minProperties": 2},
                 {"allOf": [{"properties": {"a": {}}}, {"properties": {"b": {}}}]}]          # branches combine
    for s in open_ones:
        assert closed_objects(s) == s
    assert closed_objects({"type": "string", "maxLength": 2.0}) == {"type": "string", "maxLength": 2}


def test_answer_problems_name_where_and_why():
    schema = Profile.model_json_schema()
    good = {"person": {"name": "A", "age": 30, "email": "a@b.co", "born": "2000-01-02",
                       "address": {"street": "s", "city": "c", "postcode": "1", "country": "IT"}, "colour": "red"},
            "joined": "2024-05-01T10:00:00Z", "role": "admin", "level": 3}
    assert answer_problem(json.dumps(good), schema) is None
    bad = copy.deepcopy(good)
    bad["person"]["age"] = 121
    assert "at .person.age" in answer_problem(json.dumps(bad), schema)
    bad = copy.deepcopy(good)
    bad["person"]["email"] = "not-an-email"
    assert "email" in answer_problem(json.dumps(bad), schema)  # formats are checked
    assert "not complete JSON" in answer_problem('{"person": {', schema)
    call = ToolCall("call_1", "f", {"n": "x"})
    problems = reply_problems("", (call,), None, {"f": {"type": "object", "properties": {"n": {"type": "integer"}}}})
    assert len(problems) == 1 and "arguments of f (call call_1)" in problems[0]


def test_every_app_schema_is_accepted():
    """pydantic's schemas and the OpenAI SDK's strict ones (nested models, enums, ge/le, formats,
    recursion): the engine takes them all (the previous planner refused most)."""
    for name, schema in app_cases():
        plan_constraints(response_format=rf(schema))


# ---- through llama.cpp -----------------------------------------------------------------------------
@pytest.fixture(scope="module")
def plain(scripted_gguf):
    with Engine.load(scripted_gguf, n_ctx=2048, n_threads=1) as e:
        yield e


@pytest.fixture(scope="module")
def random_gguf(models, tmp_path_factory):
    from quantize import quantize_model
    return quantize_model(models["tied"], "f16", tmp_path_factory.mktemp("rnd") / "tied-f16.gguf").output


@pytest.fixture(scope="module")
def random_model(random_gguf):
    with Engine.load(random_gguf, n_ctx=2048, n_threads=1) as e:
        yield e


@pytest.mark.parametrize("mode", ["think", "no_think"])
def test_pydantic_model_with_everything_gives_a_valid_answer(plain, mode):
    """Nested models, an enum class, Field(ge, le), EmailStr, date and datetime, Literal: the
    scripted model wants to say something else; the answer validates, the thinking stays the script's."""
    schema = Profile.model_json_schema()
    reply = Chat(plain, mode=mode, seed=1, max_tokens=600).send("Profile?", response_format=rf(schema))
    assert reply.stop_reason == "eos" and reply.schema_error is None, reply
    assert valid(json.loads(reply.answer), schema)
    assert (reply.thinking != "") == (mode == "think")


def test_mask_comes_before_the_sampler_chain(plain):
    """top_k 1 after the mask is greedy among the allowed tokens: every seed gives the same
    answer. (Were the chain run on the free row first, its single survivor is the script's
    token, which the schema forbids, and nothing could be drawn.)"""
    schema = {"type": "object", "properties": {"n": {"type": "integer", "minimum": 3, "maximum": 9}}, "required": ["n"]}
    answers = {Chat(plain, mode="no_think", seed=s, sampling={"top_k": 1}).send("n?", response_format=rf(schema)).answer
               for s in range(3)}
    assert len(answers) == 1
    assert valid(json.loads(answers.pop()), schema)


def test_keyword_the_engine_cannot_enforce_is_flagged_not_silent(plain):
    """uniqueItems is checked on the finished answer: two items that can only be equal make an
    answer that fails, which comes back as it is with schema_error and a notice."""
    schema = {"type": "array", "items": {"const": 1}, "minItems": 2, "maxItems": 2, "uniqueItems": True}
    events = list(Chat(plain, mode="no_think", seed=2).stream("x", response_format=rf(schema)))
    reply = events[-1].reply
    assert json.loads(reply.answer) == [1, 1]
    assert "non-unique" in reply.schema_error
    assert any(e.kind == "notice" and e.text == reply.schema_error for e in events)


def test_answer_cut_by_max_tokens_is_flagged(plain):
    reply = Chat(plain, mode="no_think", seed=3, max_tokens=3).send(
        "x", response_format=rf({"type": "object", "properties": {"a": {"type": "string"}}, "required": ["a"]}))
    assert reply.stop_reason == "length" and "not complete JSON" in reply.schema_error


def test_parallel_slots_each_get_their_own_mask(scripted_gguf):
    """On the scheduler's path the mask goes into the slot's own copy of its row."""
    import threading
    schemas = [{"type": "object", "properties": {"k": {"enum": ["x", "y"]}}, "required": ["k"]},
               {"type": "array", "items": {"type": "boolean"}, "minItems": 1, "maxItems": 3}]
    replies = [None, None]
    with Engine.load(scripted_gguf, n_ctx=1024, n_threads=1, parallel=2) as engine:
        def one(i):
            replies[i] = Chat(engine, mode="no_think", seed=i, max_tokens=100).send("x", response_format=rf(schemas[i]))
        threads = [threading.Thread(target=one, args=(i,)) for i in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    for reply, schema in zip(replies, schemas):
        assert reply.schema_error is None and valid(json.loads(reply.answer), schema), reply


FAST_SUITE = ["allOf#0", "anyOf#0", "const#2", "enum#1", "exclusiveMinimum#0", "maximum#0", "multipleOf#0",
              "minProperties#0", "prefixItems#0", "boolean_schema#0", "format/email#0", "format/date-time#0",
              "format/uuid#0", "format/ipv4#0", "ref#0", "oneOf#0"]


def test_suite_subset_is_valid_or_flagged_on_a_random_model(random_model):
    """A fast subset of the JSON-Schema-Test-Suite at temperature 1 on a tiny random-weight model
    (the whole list is benchmarks/bench_schemas.py): every schema is accepted and every answer
    either validates or comes back flagged, never silently invalid. This model often loops inside
    a free string until max_tokens (most of these schemas allow one): those answers are closed
    within the budget (issue 24) and validate; a cut one would be flagged."""
    cases = {n.split(" ")[0].removeprefix("suite:"): s for n, s in suite_cases()}
    valid_answers, flagged, closed = [], [], []
    for name in FAST_SUITE:
        schema = cases[name]
        reply = Chat(random_model, mode="no_think", seed=0, max_tokens=200, sampling={"temperature": 1.0}).send(
            "JSON?", response_format=rf(schema))
        try:
            ok = valid(json.loads(reply.answer), schema)
        except json.JSONDecodeError:
            ok = False
        assert ok == (reply.schema_error is None), (name, reply.answer[:200], reply.schema_error)
        (valid_answers if ok else flagged).append(name)
        if any(n.startswith("the answer was closed early") for n in reply.notices):
            closed.append(name)
            assert reply.stop_reason == "length", name
    assert not flagged and closed  # every answer validates, some because they were closed in time


OPEN_SCHEMAS = [{"type": "object"}, {"type": "array", "items": {"type": "string"}},
                {"type": "object", "properties": {"a": {"type": "array", "items": {}}, "b": {"type": "string"}},
                 "required": ["a", "b"]}]


@pytest.mark.parametrize("schema", OPEN_SCHEMAS, ids=["object", "strings", "required"])
def test_an_open_schema_is_closed_within_max_tokens(random_model, schema):
    """Issue 24: open schemas let the random model write until max_tokens, which cut the answer
    (invalid JSON, flagged). Near the limit the grammar's shortest completion is now forced: the
    answer parses and validates, within max_tokens, still "length" (the limit ended it), and a
    notice says it was closed early."""
    for seed in range(2):
        events = list(Chat(random_model, mode="no_think", seed=seed, max_tokens=32,
                           sampling={"temperature": 1.0}).stream("JSON?", response_format=rf(schema)))
        reply = events[-1].reply
        assert reply.schema_error is None and valid(json.loads(reply.answer), schema), (seed, reply.answer)
        assert reply.stop_reason == "length" and reply.generated_tokens <= 32
        note = "the answer was closed early to end within max_tokens 32"
        assert any(n.startswith(note) for n in reply.notices), reply.notices
        assert any(e.kind == "notice" and e.text.startswith(note) for e in events)


def test_a_narrowed_schema_is_said_and_its_answer_validates(plain):
    """Overlapping patternProperties (llguidance refuses them) narrow the answer to the listed
    properties: the reply validates against the schema as sent and its notices say why."""
    schema = {"type": "object", "properties": {"x": {"type": "integer"}}, "required": ["x"],
              "patternProperties": {"a*": {"type": "integer"}, "aaa*": {"maximum": 20}}}
    events = list(Chat(plain, mode="no_think", seed=4).stream("x", response_format=rf(schema)))
    reply = events[-1].reply
    assert reply.schema_error is None and valid(json.loads(reply.answer), schema)
    assert any("patternProperties overlap" in n for n in reply.notices)
    assert any(e.kind == "notice" and "patternProperties overlap" in e.text for e in events)


def test_an_open_schema_is_closed_before_the_context_ends(random_gguf):
    """Without max_tokens the context's end is the budget: the answer is closed before it."""
    with Engine.load(random_gguf, n_ctx=96, n_threads=1) as engine:
        reply = Chat(engine, mode="no_think", seed=1, sampling={"temperature": 1.0}).send(
            "JSON?", response_format=rf({"type": "object"}))
    assert reply.schema_error is None and valid(json.loads(reply.answer), {"type": "object"}), reply.answer
    assert reply.stop_reason == "length" and reply.prompt_tokens + reply.generated_tokens <= 96
    assert any(n.startswith("the answer was closed early to end within the 96-token context") for n in reply.notices)


def test_a_tool_call_closed_within_max_tokens_says_tool_call(random_model):
    """A required call on an open parameters schema is closed like an answer; the notice names
    what was closed (a tool call, not an answer) and the call's arguments validate."""
    params = {"type": "object", "properties": {"q": {"type": "string"}, "tags": {"type": "array"}},
              "required": ["q", "tags"]}
    tools = [{"type": "function", "function": {"name": "search", "parameters": params}}]
    closed = 0
    for seed in range(3):
        reply = Chat(random_model, mode="no_think", seed=seed, max_tokens=40, sampling={"temperature": 1.0}).send(
            "search", tools=tools, tool_choice="required")
        assert not any(n.startswith("the answer was closed early") for n in reply.notices), reply.notices
        if any(n.startswith("the tool call was closed early to end within max_tokens 40") for n in reply.notices):
            closed += 1
            assert reply.tool_calls and valid(reply.tool_calls[0].arguments, params), reply.tool_calls
    assert closed
