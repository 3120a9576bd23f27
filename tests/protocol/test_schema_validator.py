"""JSON Schema's regexes are ECMA-262: Unicode property escapes are read when a schema is checked
and when an answer is validated (edge/protocol/schema_validator.py)."""

import pytest

from edge.protocol.answer_check import schema_problem
from edge.protocol.grammar import GrammarError, plan_constraints

LETTERS = r"^\p{Letter}+$"


def _format(schema):
    return {"type": "json_schema", "json_schema": {"name": "case", "schema": schema}}


def test_a_unicode_property_escape_is_a_valid_pattern_and_is_enforced():
    plan = plan_constraints(response_format=_format({"type": "string", "pattern": LETTERS}))
    assert r"\\p{Letter}" in plan.answer_grammar
    assert schema_problem("Zoë", {"type": "string", "pattern": LETTERS}) is None
    assert "does not match" in schema_problem("Zoë1", {"type": "string", "pattern": LETTERS})


def test_pattern_properties_and_additional_properties_read_the_same_regexes():
    schema = {"type": "object", "patternProperties": {LETTERS: {"type": "number"}}, "additionalProperties": False}
    plan_constraints(response_format=_format(schema))
    assert schema_problem({"ab": 1}, schema) is None
    assert "not of type 'number'" in schema_problem({"ab": "x"}, schema)
    assert "'12' was unexpected" in schema_problem({"12": 1}, schema)
    assert schema_problem({"12": "x"}, {"additionalProperties": {"type": "number"}}) is not None
    assert schema_problem({"ab": "x"}, {"patternProperties": {LETTERS: {}}, "additionalProperties": {"type": "number"}}) is None


def test_a_pattern_that_is_no_regex_is_still_refused():
    with pytest.raises(GrammarError, match="is not a 'regex'"):
        plan_constraints(response_format=_format({"type": "string", "pattern": "(("}))


def test_formats_are_still_checked():
    assert schema_problem("2020-01-31", {"format": "date"}) is None
    assert "is not a 'date'" in schema_problem("2020-13-01", {"format": "date"})


OVERLAPPING = {"type": "object", "properties": {"x": {"type": "integer"}},
               "patternProperties": {"a*": {"type": "integer"}, "aaa*": {"maximum": 20}}}


def test_overlapping_pattern_properties_narrow_the_answer_to_the_listed_properties_and_say_so():
    plan = plan_constraints(response_format=_format(OVERLAPPING))
    assert plan.notices and "patternProperties overlap" in plan.notices[0]
    rule = plan.answer_grammar.split("%json ", 1)[1]
    assert '"additionalProperties": false' in rule and "patternProperties" not in rule
    assert OVERLAPPING["patternProperties"] and "additionalProperties" not in OVERLAPPING  # the caller's, untouched
    assert plan.answer_schema == OVERLAPPING  # the answer is still checked against the schema as sent


def test_narrowing_reaches_nested_objects_and_leaves_disjoint_patterns_alone():
    from edge.protocol.schema_narrowing import narrow_pattern_properties
    nested = {"$defs": {"o": OVERLAPPING}, "items": OVERLAPPING, "anyOf": [OVERLAPPING],
              "properties": {"patternProperties": {"type": "object"}}}
    narrowed = narrow_pattern_properties(nested)
    for sub in (narrowed["$defs"]["o"], narrowed["items"], narrowed["anyOf"][0]):
        assert "patternProperties" not in sub and sub["additionalProperties"] is False
    assert narrowed["properties"] == nested["properties"]  # a property *named* patternProperties stays
    disjoint = {"patternProperties": {"^a": {"type": "integer"}, "^b": {"type": "string"}}}
    plan = plan_constraints(response_format=_format(disjoint))
    assert plan.notices == () and '"^a"' in plan.answer_grammar
