"""Claims of edge/protocol/grammar.py that its mutants showed untested (docs/MUTATION.md, issue 21):
a bare schema of any JSON type is a response format, and what closed_objects does to a schema while
decoding (closing listed properties, inside `contains` too, counts as integers, a caller's email
pattern kept) without touching the caller's schema. Pure and fast: no grammar is compiled."""

from __future__ import annotations

import copy

import pytest

from edge.protocol.grammar import EMAIL_WHILE_DECODING, closed_objects, response_schema

OBJ = {"type": "object", "properties": {"a": {"type": "string"}}, "required": ["a"]}


@pytest.mark.parametrize("kind", ["object", "array", "string", "number", "integer", "boolean", "null"])
def test_a_bare_schema_of_each_json_type_is_a_response_format(kind):
    """Library use: a bare JSON schema whose "type" is any JSON type is taken as the schema itself."""
    assert response_schema({"type": kind}) == {"type": kind}


def test_an_object_listing_properties_is_closed_to_them():
    """An object schema that lists its properties (and says nothing of others) gets
    additionalProperties false while decoding; a property's own object schema too."""
    nested = {"type": "object", "properties": {"inner": OBJ}}
    out = closed_objects(nested)
    assert out["additionalProperties"] is False
    assert out["properties"]["inner"]["additionalProperties"] is False


def test_the_schema_in_contains_is_closed_too():
    """`contains` holds a schema like `items`: its listed object is closed as well."""
    out = closed_objects({"type": "array", "contains": OBJ})
    assert out["contains"]["additionalProperties"] is False


def test_a_callers_email_pattern_is_kept():
    """format "email" gets the common-shape pattern only when the caller gave no pattern of its own."""
    assert closed_objects({"type": "string", "format": "email", "pattern": "^a@b\\.cc$"}) == {
        "type": "string", "format": "email", "pattern": "^a@b\\.cc$"}
    assert closed_objects({"type": "string", "format": "email"}) == {"type": "string", "pattern": EMAIL_WHILE_DECODING}


def test_integer_valued_float_counts_become_integers():
    """"maxLength": 2.0 is the count 2 (llguidance wants an integer); 2.5 and other keywords stay as written."""
    out = closed_objects({"type": "string", "maxLength": 2.0, "minLength": 1.5, "const": 3.0})
    assert out["maxLength"] == 2 and type(out["maxLength"]) is int
    assert out["minLength"] == 1.5 and out["const"] == 3.0 and type(out["const"]) is float


def test_closing_never_changes_the_callers_schema():
    """closed_objects works on a copy: the schema the caller passed is left exactly as it was."""
    schema = {"type": "object", "properties": {"n": {"type": "string", "maxLength": 4.0, "format": "email"},
                                               "inner": copy.deepcopy(OBJ)},
              "$defs": {"d": copy.deepcopy(OBJ)}}
    before = copy.deepcopy(schema)
    closed_objects(schema)
    assert schema == before
    assert type(schema["properties"]["n"]["maxLength"]) is float
