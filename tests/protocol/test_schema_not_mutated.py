"""The caller's schema is never changed by planning: the server plans each request twice (once to
check it, once in the Chat), so a planner that rewrote "$ref"s in place refused every nested
pydantic model on the second pass ("Unsupported ref")."""

from __future__ import annotations

import copy

from edge.protocol.grammar import plan_constraints

NESTED = {  # pydantic's model_json_schema() of a model with a nested model and an enum class
    "$defs": {"Step": {"properties": {"explanation": {"type": "string"}, "output": {"type": "string"}},
                       "required": ["explanation", "output"], "type": "object"},
              "Colour": {"enum": ["red", "green"], "type": "string"}},
    "properties": {"steps": {"items": {"$ref": "#/$defs/Step"}, "type": "array"},
                   "colour": {"$ref": "#/$defs/Colour"}, "final_answer": {"type": "string"}},
    "required": ["steps", "colour", "final_answer"], "type": "object",
}


def test_planning_twice_leaves_the_schema_as_given():
    schema = copy.deepcopy(NESTED)
    rf = {"type": "json_schema", "json_schema": {"name": "MathReasoning", "schema": schema}}
    first = plan_constraints(response_format=rf)
    assert schema == NESTED
    assert plan_constraints(response_format=rf) == first


def test_tool_parameters_with_refs_are_left_as_given():
    tool = {"type": "function", "function": {"name": "record", "parameters": copy.deepcopy(NESTED)}}
    plan_constraints([tool], "required")
    plan_constraints([tool], "required")
    assert tool["function"]["parameters"] == NESTED
