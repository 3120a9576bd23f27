"""schema_narrowing.py (issue 24): the copy of a schema llguidance decodes with only removes
answers, never adds one, and the schemas refused up front are those no value can meet.

Soundness is checked on the JSON-Schema-Test-Suite's own instances: for every schema of the
case list and every instance its file lists, an instance the narrowed copy accepts is one the
schema as sent accepts (jsonschema, Draft 2020-12, formats checked)."""

from __future__ import annotations

import json

import jsonschema
import pytest

from edge.protocol.grammar import GrammarError, plan_constraints
from edge.protocol.schema_narrowing import (NARROWED_CONDITIONAL, NARROWED_NOT, NARROWED_ONE_OF, accepts_every,
                                            narrow_for_decoding, rejects_every, unsatisfiable)
from edge.protocol.schema_validator import validator_for
from tests.schema_cases import SUITE


def suite_groups():
    for path in sorted(SUITE.rglob("*.json")):
        for i, group in enumerate(json.loads(path.read_text(encoding="utf-8"))):
            yield f"{path.stem}#{i}", group["schema"], [t["data"] for t in group["tests"]]


def valid(schema, instance) -> bool:
    return validator_for(schema).is_valid(instance)


def test_every_narrowed_suite_schema_accepts_only_what_the_schema_accepts():
    narrowed_count = 0
    for name, schema, instances in suite_groups():
        narrowed, _ = narrow_for_decoding(schema)
        if narrowed == schema:
            continue
        narrowed_count += 1
        for instance in instances:
            if valid(narrowed, instance):
                assert valid(schema, instance), (name, instance, narrowed)
    assert narrowed_count >= 20   # the rewrites reach the suite's propertyNames, if and not files


@pytest.mark.parametrize("schema, instances", [
    ({"propertyNames": {"maxLength": 3}}, [{"abc": 1}, {"abcd": 1}, {}, "x"]),
    ({"propertyNames": {"enum": ["a.b", "c"]}, "properties": {"c": {"type": "integer"}}},
     [{"a.b": 1}, {"axb": 1}, {"c": "no"}, {"c": 1}]),
    ({"propertyNames": {"pattern": "^x"}, "additionalProperties": {"type": "number"}}, [{"xa": 1}, {"xa": "s"}, {"y": 1}]),
    ({"if": {"type": "string"}, "then": {"minLength": 2}, "else": {"type": "integer"}}, ["a", "ab", 3, 3.5]),
    ({"type": ["integer", "string"], "not": {"type": "integer"}}, [1, "s", 2.5, None]),
    ({"not": {"type": "number"}}, [1, 1.5, "s", [1]]),
    ({"oneOf": [{"required": ["a"]}, {"minLength": 2}]}, [{"a": 1}, {}, "ab", "a", 3, None]),
    ({"oneOf": [{"type": "number"}, {}]}, [1, "s", None, {}]),
])
def test_the_rewrites_agree_with_the_schema_on_what_they_accept(schema, instances):
    narrowed, _ = narrow_for_decoding(schema)
    assert narrowed != schema
    for instance in instances:
        if valid(narrowed, instance):
            assert valid(schema, instance), instance


def test_property_names_become_patterns_exactly():
    narrowed, notices = narrow_for_decoding({"type": "object", "propertyNames": {"maxLength": 3},
                                             "additionalProperties": {"type": "number"}})
    assert narrowed["additionalProperties"] is False and list(narrowed["patternProperties"].values()) == [
        {"type": "number"}]
    assert notices == ()   # exact: nothing to say
    for keys, ok in [({"abc": 1}, True), ({"abcd": 1}, False), ({"ab": "x"}, False)]:
        assert valid(narrowed, keys) is ok


def test_property_names_the_listed_properties_break_are_left_to_the_answer_check():
    schema = {"properties": {"long_name": {"type": "string"}}, "propertyNames": {"maxLength": 3}}
    assert narrow_for_decoding(schema)[0] == schema


def test_a_conditional_keeps_its_if_and_then_and_says_so():
    schema = {"if": {"type": "string"}, "then": {"minLength": 2}, "else": {"type": "integer"}}
    narrowed, notices = narrow_for_decoding(schema)
    assert narrowed == {"allOf": [{"type": "string"}, {"minLength": 2}]} and notices == (NARROWED_CONDITIONAL,)
    assert narrow_for_decoding({"if": False, "then": {"const": 1}, "else": {"const": 2}}) == (
        {"allOf": [{"const": 2}]}, ())   # a condition known false is exact: the else branch
    assert narrow_for_decoding({"if": {"const": 1}, "then": False}) == ({"if": {"const": 1}, "then": False}, ())


def test_a_not_of_types_becomes_the_other_types():
    narrowed, notices = narrow_for_decoding({"properties": {"a": {"not": {"type": ["integer", "boolean"]}}}})
    assert narrowed == {"properties": {"a": {"type": ["null", "object", "array", "string"]}}}
    assert notices == (NARROWED_NOT,)
    assert narrow_for_decoding({"type": "integer", "not": {"type": "number"}})[0] == {
        "type": "integer", "not": {"type": "number"}}   # nothing left: checked on the answer


def test_narrowing_never_changes_the_callers_schema():
    schema = {"if": {"type": "string"}, "then": {"minLength": 2}, "propertyNames": {"maxLength": 1},
              "not": {"type": "null"}, "properties": {"x": {"if": True, "then": {"const": 1}}}}
    before = json.dumps(schema, sort_keys=True)
    narrow_for_decoding(schema)
    assert json.dumps(schema, sort_keys=True) == before


@pytest.mark.parametrize("schema, words", [
    ({"not": {}}, "its not excludes every value"),
    ({"not": True, "title": "x"}, "its not excludes every value"),
    ({"enum": []}, "its enum is empty"),
    ({"oneOf": [True, {"description": "any"}]}, "two branches of its oneOf"),
    ({"allOf": [{"type": "string"}, {"anyOf": [False, {"not": {}}]}]}, "allOf[1]: no branch of its anyOf"),
])
def test_a_schema_no_value_can_meet_is_refused_up_front(schema, words):
    assert words in unsatisfiable(schema)
    with pytest.raises(GrammarError) as e:
        plan_constraints(response_format={"type": "json_schema", "json_schema": {"name": "t", "schema": schema}})
    assert "response_format can never be met" in e.value.message and words in e.value.message


@pytest.mark.parametrize("schema", [
    {"not": {"type": "string"}}, {"oneOf": [True, False]}, {"oneOf": [{"type": "string"}, {}]},
    {"anyOf": [False, {"type": "null"}]}, {"properties": {"x": False}}, {"not": {"format": "email"}},
])
def test_a_schema_some_value_meets_is_not_called_unsatisfiable(schema):
    assert unsatisfiable(schema) is None


def test_every_suite_schema_called_unsatisfiable_has_no_valid_instance_in_its_file():
    called = 0
    for name, schema, instances in suite_groups():
        if unsatisfiable(schema) is not None:
            called += 1
            assert not any(valid(schema, i) for i in instances), name
    assert called >= 9


@pytest.mark.parametrize("schema", [
    {"$ref": "#/properties/a", "properties": {"a": {"if": {"type": "string"}, "then": {"minLength": 1}}}},
    {"$ref": "http://example.com/if", "if": {"$id": "http://example.com/if", "type": "integer"}, "then": {}},
    {"$ref": "#/$defs/a/not", "$defs": {"a": {"not": {"type": "string"}}}},
    {"$dynamicAnchor": "n", "items": {"$dynamicRef": "#n"}, "not": {"type": "string"}},
])
def test_a_schema_whose_refs_could_lose_their_target_is_not_rewritten(schema):
    assert narrow_for_decoding(schema) == (schema, ())


def test_refs_to_whole_definitions_are_rewritten_with_them():
    schema = {"$ref": "#/$defs/a", "$defs": {"a": {"not": {"type": "string"}}}}
    narrowed, _ = narrow_for_decoding(schema)
    assert narrowed["$defs"]["a"]["type"] == ["null", "boolean", "object", "array", "number"]


def test_a_one_of_keeps_to_the_types_not_two_branches_accept_wholly():
    narrowed, notices = narrow_for_decoding({"oneOf": [{"properties": {"a": {"type": "integer"}}, "required": ["a"]},
                                                       {"properties": {"b": {}}, "required": ["b"]}]})
    assert narrowed["type"] == "object" and notices == ()    # any other value meets both branches
    assert narrow_for_decoding({"oneOf": [{"type": "number"}, {"title": "any"}]})[0]["type"] == [
        "null", "boolean", "object", "array", "string"]
    narrowed, notices = narrow_for_decoding({"oneOf": [{"type": "integer"}, {"minimum": 2}]})
    assert narrowed["type"] == ["null", "boolean", "object", "array", "string"]   # numbers may meet both
    assert notices == (NARROWED_ONE_OF,)
    assert narrow_for_decoding({"oneOf": [{"type": "integer"}, {"type": "string"}]}) == (
        {"oneOf": [{"type": "integer"}, {"type": "string"}], "type": ["number", "string"]}, ())  # exact
    assert narrow_for_decoding({"oneOf": [{"$ref": "#/$defs/a"}, {"$ref": "#/$defs/b"}],
                                "$defs": {"a": {"type": "object"}, "b": {"type": "object"}}})[1] == ()
    assert narrow_for_decoding({"oneOf": [{"required": ["a"]}, {"enum": [1, 2]}]})[0] == {
        "oneOf": [{"required": ["a"]}, {"enum": [1, 2]}]}    # an enum accepts no type wholly


def test_the_hand_list_of_unsatisfiable_cases_matches_the_rule_and_the_suite():
    """tests/schema_cases.UNSATISFIABLE (the coverage goal's denominator) against unsatisfiable() and
    the suite's own instances: every listed case has no valid instance, and the rule calls every
    listed one but the $ref (llguidance refuses that one when it resolves it)."""
    from tests.schema_cases import UNSATISFIABLE
    called = set()
    for name, schema, instances in suite_groups():
        key = f"suite:{name}"
        if key in UNSATISFIABLE:
            assert not any(valid(schema, i) for i in instances), key
        if unsatisfiable(schema) is not None:
            called.add(key)
    assert called == set(UNSATISFIABLE) - {"suite:ref#10"}


def test_a_not_of_a_schema_that_accepts_whole_types_excludes_them_and_stays():
    negated = {"anyOf": [True, {"properties": {"foo": True}}], "unevaluatedProperties": False}
    narrowed, notices = narrow_for_decoding({"not": negated})
    assert narrowed == {"not": negated, "type": "object"} and notices == ()


@pytest.mark.parametrize("schema, accepts, rejects", [
    ({"type": "integer"}, set(), {"null", "boolean", "object", "array", "string"}),
    ({"type": ["number", "string"], "minLength": 1}, {"number"}, {"null", "boolean", "object", "array"}),
    ({"anyOf": [{"type": "string"}, {"type": "null"}]}, {"string", "null"}, {"boolean", "object", "array", "number"}),
    ({"allOf": [{"type": ["string", "null"]}, {"type": "null"}]}, {"null"}, {"boolean", "object", "array", "number",
                                                                          "string"}),
    ({"enum": ["a"]}, set(), set()),
    (False, set(), {"null", "boolean", "object", "array", "number", "string"}),
])
def test_whole_types_a_schema_accepts_and_rejects(schema, accepts, rejects):
    assert accepts_every(schema) == accepts and rejects_every(schema) == rejects


def test_exact_rewrites_only_leave_every_answer_the_schema_allows():
    conditional = {"if": {"type": "string"}, "then": {"minLength": 2}}
    assert narrow_for_decoding(conditional, narrowing=False) == (conditional, ())
    one_of = {"oneOf": [{"type": "integer"}, {"minimum": 2}]}
    assert narrow_for_decoding(one_of, narrowing=False) == (one_of, ())
    negated = {"not": {"type": "integer"}}
    assert narrow_for_decoding(negated, narrowing=False) == (negated, ())
    names = {"type": "object", "propertyNames": {"enum": ["a", "b"]}}
    assert narrow_for_decoding(names, narrowing=False)[0]["patternProperties"] == {"^(a|b)$": True}


def test_a_tools_parameters_get_the_exact_rewrites_and_no_notice():
    tool = {"type": "function", "function": {"name": "tally", "parameters": {
        "type": "object", "properties": {"counts": {"type": "object", "propertyNames": {"enum": ["a", "b"]},
                                                    "additionalProperties": {"type": "integer"}},
                                         "when": {"if": {"type": "string"}, "then": {"minLength": 2}}},
        "required": ["counts"]}}}
    plan = plan_constraints(tools=[tool], tool_choice="required")
    assert '"^(a|b)$"' in plan.answer_grammar and plan.notices == ()
    assert '"if"' in plan.answer_grammar     # the conditional is left to the answer check


# ---- each rule's table, entry by entry (the mutation run of schema_narrowing.py) -------------------
def test_every_subschema_position_is_visited():
    from edge.protocol.schema_narrowing import each_subschema
    schema = {k: {"a": {}} for k in ("properties", "patternProperties", "$defs", "definitions", "dependentSchemas")}
    schema |= {k: [{}] for k in ("allOf", "anyOf", "oneOf", "prefixItems")}
    schema |= {k: {} for k in ("items", "contains", "additionalProperties", "not", "if", "then", "else",
                               "propertyNames", "unevaluatedItems", "unevaluatedProperties")}
    schema["enum"] = [{}]     # a value, not a subschema
    seen = each_subschema(schema, lambda sub: "seen")
    assert {k: v for k, v in seen.items() if k != "enum"} == {
        k: ({"a": "seen"} if isinstance(v, dict) and v else ["seen"] if isinstance(v, list) else "seen")
        for k, v in schema.items() if k != "enum"}
    assert seen["enum"] == [{}]


@pytest.mark.parametrize("keyword", ["$schema", "$id", "$comment", "$anchor", "$defs", "definitions", "title",
                                     "description", "default", "examples", "deprecated", "readOnly", "writeOnly"])
def test_an_annotation_alone_accepts_every_value(keyword):
    from edge.protocol.schema_narrowing import always_valid
    assert always_valid({keyword: {}}) and not always_valid({keyword: {}, "minimum": 1})


@pytest.mark.parametrize("kind, keyword, value", [
    ("object", "properties", {}), ("object", "required", ["a"]), ("object", "additionalProperties", False),
    ("object", "patternProperties", {}), ("object", "minProperties", 1), ("object", "maxProperties", 1),
    ("object", "propertyNames", {}), ("object", "dependentRequired", {}), ("object", "dependentSchemas", {}),
    ("object", "unevaluatedProperties", False),
    ("array", "items", {}), ("array", "prefixItems", [{}]), ("array", "minItems", 1), ("array", "maxItems", 1),
    ("array", "uniqueItems", True), ("array", "contains", {}), ("array", "minContains", 1),
    ("array", "maxContains", 1), ("array", "unevaluatedItems", False),
    ("string", "minLength", 1), ("string", "maxLength", 1), ("string", "pattern", "a"), ("string", "format", "date"),
    ("string", "contentEncoding", "base64"), ("string", "contentMediaType", "application/json"),
    ("number", "minimum", 1), ("number", "maximum", 1), ("number", "exclusiveMinimum", 1),
    ("number", "exclusiveMaximum", 1), ("number", "multipleOf", 2),
])
def test_a_keyword_of_one_type_leaves_the_others_wholly_accepted(kind, keyword, value):
    others = {"null", "boolean", "object", "array", "number", "string"} - {kind}
    assert accepts_every({keyword: value}) == others


def test_a_single_pattern_is_not_narrowed():
    from edge.protocol.schema_narrowing import narrow_pattern_properties
    one = {"patternProperties": {"^a": {"type": "integer"}}}
    assert narrow_pattern_properties(one) == one


@pytest.mark.parametrize("names, keys, rule", [
    (True, {"anything": 1}, None),
    (False, {}, None),
    ({"type": "string", "maxLength": 3}, {"": 1, "abc": 2}, "^[\\s\\S]{0,3}$"),
    ({"enum": ["a.b", "c\\d"]}, {"a.b": 1, "c\\d": 2}, "^(a\\.b|c\\\\d)$"),
])
def test_property_names_rewrites_keep_every_key_the_schema_allows(names, keys, rule):
    schema = {"type": "object", "properties": {}, "propertyNames": names}
    narrowed, _ = narrow_for_decoding(schema)
    assert "propertyNames" not in narrowed and valid(narrowed, keys)
    if rule is not None:
        assert list(narrowed["patternProperties"]) == [rule]
    listed = {"properties": {"a": {}}, "propertyNames": names}
    if names is True:
        assert narrow_for_decoding(listed)[0] == {"properties": {"a": {}}}


def test_conditionals_whose_condition_is_certain_keep_their_allof_and_say_nothing():
    assert narrow_for_decoding({"if": {"not": {}}, "then": {"const": 1}, "else": {"const": 2}}) == (
        {"allOf": [{"const": 2}]}, ())                      # a condition no value meets: the else branch
    assert narrow_for_decoding({"if": False, "then": {"const": 1}}) == ({}, ())   # no else: anything
    assert narrow_for_decoding({"allOf": [{"type": "string"}], "if": {"maxLength": 3}, "then": {"minLength": 2}})[0] == {
        "allOf": [{"type": "string"}, {"maxLength": 3}, {"minLength": 2}]}


@pytest.mark.parametrize("names, rule", [
    ({"minLength": 1, "maxLength": 3}, "^[\\s\\S]{1,3}$"),
    ({"minLength": 2}, "^[\\s\\S]{2,}$"),
    ({"const": "X"}, "^(X)$"),
    ({"enum": ["X-1", "a|b"]}, "^(X\\-1|a\\|b)$"),
])
def test_property_names_patterns_exactly(names, rule):
    narrowed, _ = narrow_for_decoding({"type": "object", "propertyNames": names})
    assert narrowed["patternProperties"] == {rule: True}


@pytest.mark.parametrize("schema", [
    {"patternProperties": {"^x": {"type": "integer"}}, "propertyNames": {"maxLength": 2}},  # its patterns stay
    {"propertyNames": {"format": "email"}},
    {"propertyNames": {"enum": [1, "a"]}},
    {"propertyNames": {"maxLength": 2.5}},
])
def test_property_names_outside_the_handled_shapes_are_left_to_the_answer_check(schema):
    assert narrow_for_decoding(schema) == (schema, ())


def test_property_names_false_allows_no_key_at_all():
    narrowed, _ = narrow_for_decoding({"type": "object", "propertyNames": False})
    assert narrowed == {"type": "object", "additionalProperties": False}


def test_a_condition_that_always_holds_takes_the_then_branch_even_without_one():
    assert narrow_for_decoding({"if": True, "else": {"const": 2}}) == ({}, ())
    assert narrow_for_decoding({"if": {}, "then": {"const": 1}, "else": {"const": 2}}) == ({"allOf": [{"const": 1}]}, ())


def test_unevaluated_members_alone_mean_an_empty_object_or_array():
    schema = {"$defs": {"A": {"unevaluatedProperties": False}}, "properties": {"p": {"type": "string"}},
              "$ref": "#/$defs/A"}
    narrowed, notices = narrow_for_decoding(schema)
    assert narrowed["$defs"]["A"] == {"maxProperties": 0} and notices == ()
    assert narrow_for_decoding({"unevaluatedItems": False, "title": "t"})[0] == {"title": "t", "maxItems": 0}
    beside = {"properties": {"a": {}}, "unevaluatedProperties": False}
    assert narrow_for_decoding(beside)[0] == beside           # `properties` evaluates `a`: left as it is
    assert narrow_for_decoding({"unevaluatedProperties": {"type": "string"}})[0] == {
        "unevaluatedProperties": {"type": "string"}}
