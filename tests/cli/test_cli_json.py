"""`run --json-schema FILE` and `run --json-object`: the answer on stdout is JSON a shell script can
parse, the thinking stays free on stderr, and a bad schema is one line with exit status 1."""

from __future__ import annotations

import json

import jsonschema
from typer.testing import CliRunner

from cli.main import app
from tests.scripted_model import SCRIPT_THINKING_TEXT

runner = CliRunner(env={"COLUMNS": "200"})
FORMATS = jsonschema.Draft202012Validator.FORMAT_CHECKER
SCHEMA = {"type": "object", "properties": {"name": {"type": "string", "maxLength": 8},
                                           "score": {"type": "number"}, "tags": {"type": "array", "maxItems": 2,
                                                                                 "items": {"enum": ["x", "y"]}}},
          "required": ["name", "score", "tags"], "additionalProperties": False}


def test_run_json_schema_prints_a_valid_answer(scripted_gguf, tmp_path):
    path = tmp_path / "person.json"
    path.write_text(json.dumps(SCHEMA))
    for think in ("--think", "--no-think"):
        r = runner.invoke(app, ["run", str(scripted_gguf), "Extract", "--seed", "3", "--max-tokens", "200",
                                think, "--json-schema", str(path)])
        assert r.exit_code == 0, r.output
        jsonschema.validate(json.loads(r.stdout), SCHEMA)
        assert (SCRIPT_THINKING_TEXT in r.stderr) == (think == "--think")


def test_run_json_object_closed_within_max_tokens_prints_an_object(scripted_gguf):
    """Six tokens would cut a random object short; the closing ends it in time (README "Closing
    within the budget"): plain output is an object a script can parse, exit 0. A cut that cannot
    be closed is test_small_things' test_run_refuses_a_json_answer_cut_by_max_tokens."""
    r = runner.invoke(app, ["run", str(scripted_gguf), "Extract", "--seed", "1", "--max-tokens", "6", "--no-think",
                            "--json-object"])
    assert r.exit_code == 0, r.output
    assert isinstance(json.loads(r.stdout), dict)


def test_bad_schema_files_are_one_line(scripted_gguf, tmp_path):
    cases = {"missing.json": None, "broken.json": "{not json", "list.json": "[1]",
             "digits.json": json.dumps({"type": "integer", "multipleOf": 0.123456789})}
    for name, content in cases.items():
        path = tmp_path / name
        if content is not None:
            path.write_text(content)
        r = runner.invoke(app, ["run", str(scripted_gguf), "Hi", "--json-schema", str(path)])
        assert r.exit_code != 0 and "Traceback" not in r.output, (name, r.output)
        lines = [line for line in r.stderr.splitlines() if line.strip() and not line.startswith("llama")]
        assert len(lines) <= 3 and any(("multipleOf" if name == "digits.json" else name) in l for l in lines), r.stderr


def test_run_json_schema_with_a_pydantic_model(scripted_gguf, tmp_path):
    """The issue's model (nested models, enum class, Field(ge, le), EmailStr, datetime, Literal)
    as `run --json-schema`, thinking on and off: the answer validates."""
    from tests.schema_cases import Profile
    schema = Profile.model_json_schema()
    path = tmp_path / "profile.json"
    path.write_text(json.dumps(schema))
    for think in ("--think", "--no-think"):
        r = runner.invoke(app, ["run", str(scripted_gguf), "Profile", "--seed", "1", "--max-tokens", "600",
                                think, "--json-schema", str(path)])
        assert r.exit_code == 0, r.output
        assert jsonschema.Draft202012Validator(schema, format_checker=FORMATS).is_valid(json.loads(r.stdout))


def test_run_json_schema_exits_1_on_an_answer_that_fails_its_schema(scripted_gguf, tmp_path):
    """An answer the engine could not hold to the schema (uniqueItems is checked at the end) is
    printed as it came, and the exit status and one stderr line say it fails."""
    path = tmp_path / "pair.json"
    path.write_text(json.dumps({"type": "array", "items": {"const": 1}, "minItems": 2, "maxItems": 2,
                                "uniqueItems": True}))
    r = runner.invoke(app, ["run", str(scripted_gguf), "x", "--no-think", "--json-schema", str(path)])
    assert r.exit_code == 1
    assert json.loads(r.stdout) == [1, 1]
    errors = [line for line in r.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "non-unique" in errors[0]
