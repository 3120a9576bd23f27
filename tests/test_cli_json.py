"""`run --json-schema FILE` and `run --json-object`: the answer on stdout is JSON a shell script can
parse, the thinking stays free on stderr, and a bad schema is one line with exit status 1."""

from __future__ import annotations

import json

import jsonschema
from typer.testing import CliRunner

from cli.main import app
from tests.scripted_model import SCRIPT_THINKING_TEXT

runner = CliRunner(env={"COLUMNS": "200"})
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


def test_run_json_object_with_json_output(scripted_gguf):
    r = runner.invoke(app, ["run", str(scripted_gguf), "Extract", "--seed", "1", "--max-tokens", "200", "--no-think",
                            "--json-object", "--json"])
    assert r.exit_code == 0, r.output
    d = json.loads(r.stdout)
    assert isinstance(json.loads(d["answer"]), dict) and d["schema_error"] is None


def test_bad_schema_files_are_one_line(scripted_gguf, tmp_path):
    cases = {"missing.json": None, "broken.json": "{not json", "list.json": "[1]",
             "minimum.json": json.dumps({"type": "integer", "minimum": 1})}
    for name, content in cases.items():
        path = tmp_path / name
        if content is not None:
            path.write_text(content)
        r = runner.invoke(app, ["run", str(scripted_gguf), "Hi", "--json-schema", str(path)])
        assert r.exit_code != 0 and "Traceback" not in r.output, (name, r.output)
        lines = [line for line in r.stderr.splitlines() if line.strip() and not line.startswith("llama")]
        assert len(lines) <= 3 and any(("minimum" if name == "minimum.json" else name) in l for l in lines), r.stderr
