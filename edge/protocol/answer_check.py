"""The finished reply checked against the schemas it was held to (jsonschema, Draft 2020-12, formats).

The grammar enforces what llguidance can enforce while decoding; a few keywords it cannot
(``uniqueItems``, ``not``, ``if``/``then``/``else``, ``dependentRequired``, ...), and a reply cut
short (max_tokens, a full context, a cancel) can still leave an answer that does not validate.
The rule (README "Structured output"): such a reply is returned as it is, flagged, never
silently: Reply.schema_error says why, a notice says it too, the server adds it to the
message's notices and `run --json-schema` exits 1.
"""

from __future__ import annotations

import json
from typing import Any

import jsonschema

from edge.protocol.schema_validator import validator_for

MAX_MESSAGE = 240


def schema_problem(value: Any, schema: Any) -> str | None:
    """Why `value` (parsed JSON) fails `schema`, in one line naming where; None when it validates."""
    validator = validator_for(schema)
    try:
        error = jsonschema.exceptions.best_match(validator.iter_errors(value))
    except RecursionError:
        return "the answer nests too deeply to be checked"
    except Exception as e:  # a $ref jsonschema cannot resolve (a remote one): the answer is not checked
        return f"the schema could not be checked ({type(e).__name__}: {e})"[:MAX_MESSAGE]
    if error is None:
        return None
    where = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in error.absolute_path) or "the top level"
    return f"at {where}: {error.message}"[:MAX_MESSAGE]


def answer_problem(answer: str, schema: Any) -> str | None:
    """Why a response-format answer (text) is not a JSON value valid against `schema`, or None."""
    try:
        value = json.loads(answer)
    except json.JSONDecodeError as e:
        return f"the answer is not complete JSON ({e.msg} at character {e.pos})"
    except RecursionError:
        return "the answer nests too deeply to be checked"
    problem = schema_problem(value, schema)
    return problem and f"the answer does not match the schema {problem}"


def reply_problems(answer: str, calls, answer_schema: Any, tool_schemas: dict[str, Any]) -> list[str]:
    """Every way a finished reply breaks its constraints: the answer against the response format
    (when the reply is an answer, not tool calls), each call's arguments against its tool."""
    problems = []
    if answer_schema is not None and not calls:
        if (problem := answer_problem(answer, answer_schema)) is not None:
            problems.append(problem)
    for call in calls:
        schema = tool_schemas.get(call.name)
        if schema is not None and (problem := schema_problem(call.arguments, schema)) is not None:
            problems.append(f"the arguments of {call.name} (call {call.id}) do not match its parameters {problem}")
    return problems
