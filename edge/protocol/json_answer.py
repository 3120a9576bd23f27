"""Whether a reply held to a response format is what was asked for. The grammar makes every answer
that completes valid, but a reply can stop early (max_tokens, a full context, a cancel): a script
reading `run --json-schema` must hear that the answer is not the JSON it asked for."""

from __future__ import annotations

import json
import jsonschema

CUT_BY = {"length": "it stopped at its token limit (max_tokens) or the context's end",
          "cancelled": "it was cancelled", "stop": "a stop string ended it"}


def format_schema(response_format: dict | None) -> dict | None:
    """The JSON schema an answer must follow: json_object's is any object; None when no format."""
    if not response_format:
        return None
    if response_format.get("type") == "json_object":
        return {"type": "object"}
    if response_format.get("type") == "json_schema":
        return (response_format.get("json_schema") or {}).get("schema") or {}
    return response_format  # a bare schema


def json_answer_problem(answer: str, response_format: dict | None, stop_reason: str) -> str | None:
    """One line saying why `answer` is not the JSON `response_format` asked for, or None."""
    schema = format_schema(response_format)
    if schema is None:
        return None
    cut = f" ({CUT_BY[stop_reason]})" if stop_reason in CUT_BY else ""
    try:
        value = json.loads(answer)
    except json.JSONDecodeError as e:
        what = "empty" if not answer.strip() else f"not complete JSON: {e.msg} at character {e.pos}"
        return f"the answer is {what}{cut}"
    error = jsonschema.exceptions.best_match(jsonschema.validators.validator_for(schema)(schema).iter_errors(value))
    if error is None:
        return None
    where = "".join(f"[{p!r}]" for p in error.absolute_path) or "the top level"
    return f"the answer does not follow the schema at {where}: {error.message}{cut}"
