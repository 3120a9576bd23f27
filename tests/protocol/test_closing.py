"""Constraint.closing_path (issue 24): from a state part way through a schema's answer, a short
token sequence the grammar accepts that leaves it complete, found with llguidance's own mask over
Qwen3's real vocabulary (the scripted GGUF's), and the live matcher left exactly as it was."""

from __future__ import annotations

import json

import jsonschema
import llama_cpp
import numpy as np
import pytest

from edge.protocol.grammar import plan_constraints
from edge.protocol.guidance import Constraint, JsonDepth, compile_grammar, tokenizer_for

NEEDS_B = {"type": "object", "properties": {"a": {"type": "array", "items": {"type": "integer"}},
                                            "b": {"type": "string"}}, "required": ["a", "b"]}


@pytest.fixture(scope="module")
def vocab(scripted_gguf):
    llm = llama_cpp.Llama(str(scripted_gguf), vocab_only=True, verbose=False)
    yield llm
    llm.close()


def constraint_at(llm, schema, prefix: str) -> Constraint:
    lark = plan_constraints(response_format={"type": "json_schema", "json_schema": {"name": "t", "schema": schema}})
    c = compile_grammar(tokenizer_for(llm), lark.answer_grammar)
    for token in llm.tokenize(prefix.encode(), add_bos=False, special=True):
        c.accept(token)
    return c


def mask_of(c: Constraint) -> bytes:
    return c.matcher.compute_bitmask()


def closed(llm, c: Constraint, prefix: str, limit: int = 64) -> str:
    path = c.closing_path(limit)
    assert path is not None, prefix
    return prefix + llm.detokenize(path).decode()


@pytest.mark.parametrize("schema, prefix, most", [
    (NEEDS_B, '{"a": [1, 2', 8),                                   # an array open, a required key missing
    (NEEDS_B, '{"a": [1], "b": "hel', 2),                           # inside a string
    ({}, '{"k": [{"x": "y', 4),                                     # any JSON, three levels open
    ({"type": "object"}, '{"free', 4),                              # inside a free key: it owes a value
    ({"type": "array", "items": {"type": "string", "minLength": 4}}, '["a', 6),  # too short to close yet
    ({"type": "object", "properties": {"n": {"type": "number", "minimum": 5.5, "maximum": 6}},
      "required": ["n"]}, '{"n": 5', 5),                            # 5 is below the minimum
    ({"type": "object", "properties": {"e": {"type": "string", "format": "email"}},
      "required": ["e"]}, '{"e": "bob', 16),                        # a format that needs an @ and a dot
])
def test_the_closing_completes_the_answer_and_validates(vocab, schema, prefix, most):
    c = constraint_at(vocab, schema, prefix)
    text = closed(vocab, c, prefix)
    jsonschema.validate(json.loads(text), schema, format_checker=jsonschema.Draft202012Validator.FORMAT_CHECKER)
    assert len(c.closing_path(64)) <= most, text


def test_the_matcher_is_left_exactly_as_it_was(vocab):
    """The search walks a copy: the live matcher's mask, its completeness and what it accepts next
    are what they were, and the answer goes on as if no search had run."""
    c = constraint_at(vocab, NEEDS_B, '{"a": [1, 2')
    before = mask_of(c)
    assert c.closing_path(64)
    assert mask_of(c) == before and not c.matcher.is_accepting() and not c.matcher.is_error()
    rest = '3], "b": "z"}'
    for token in vocab.tokenize(rest.encode(), add_bos=False, special=True):
        c.accept(token)
    assert c.matcher.is_accepting()


def test_no_closing_within_a_limit_too_short_and_none_needed_when_complete(vocab):
    c = constraint_at(vocab, NEEDS_B, '{"a": [1, 2')
    assert c.closing_path(2) is None           # `],"b":""}` takes more than two tokens
    assert c.closing_path(64)
    done = constraint_at(vocab, NEEDS_B, '{"a": [], "b": ""}')
    assert done.closing_path(5) == []


@pytest.mark.parametrize("schema, prefix", [
    ({}, '{"k": [{"x": "y'),
    ({"type": "object", "properties": {"e": {"type": "string", "format": "email"}}, "required": ["e"]}, '{"e": "bob'),
    ({"type": "object", "properties": {"d": {"type": "string", "format": "date-time"}}, "required": ["d"]}, '{"d": "2024'),
])
def test_a_closing_under_way_never_grows(vocab, schema, prefix):
    """Each token taken from the closing found leaves the rest of it as the closing: the next search
    returns no longer a path (inside a format a fresh search often finds a longer one, which would
    overrun the budget)."""
    c = constraint_at(vocab, schema, prefix)
    path = c.closing_path(64)
    while path:
        c.accept(path[0])
        shorter = c.closing_path(64)
        assert shorter is not None and len(shorter) <= len(path) - 1
        path = shorter
    assert c.matcher.is_accepting()


def test_json_depth_counts_what_is_still_owed():
    assert JsonDepth().feed(b'{"a": [1, {"b": "x').open() == 4      # { [ { and the string
    assert JsonDepth().feed(b'{"a').open() == 3                     # the key owes a value
    assert JsonDepth().feed(b'{"a": 1,').open() == 2                # a member owed after the comma
    assert JsonDepth().feed(b'{"a": "\\"}"}').open() == 0           # an escaped quote stays in the string
    assert JsonDepth().feed(b'<tool_call>\n{"n": 1}').open() == 0


def test_the_closer_table_is_small_and_holds_what_closings_need(vocab):
    table = tokenizer_for.__globals__["closer_table"](tokenizer_for(vocab))
    texts = {table.text[t] for t in table.ids.tolist()}
    assert len(table.ids) < 2000 < vocab.n_vocab()
    assert {b'"', b"}", b"]", b'"}', b"0", b"null", b'""', b"@", b"."} <= texts
    assert np.all(np.diff(table.ids) > 0)
