"""`qwen3-edge info` tells which kind a GGUF is (from its template), its native context (from its
rope metadata) and the sampling preset it carries, as a table and in --json."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from cli.main import app
from tests.model_factory import TEMPLATES, gguf_kv_bytes, rewrite_gguf_metadata

runner = CliRunner(env={"COLUMNS": "200"})


def variant(base: Path, out: Path, template: str | None, *, context: int = 262144, freq_base: float = 5e6,
            temp: float = 0.6, top_p: float = 0.95, extra: list = (), drop: tuple = ()) -> Path:
    """`base` with another template and the rope and sampling values of a 2507 model."""
    entries = [gguf_kv_bytes("qwen3.context_length", 4, context), gguf_kv_bytes("qwen3.rope.freq_base", 6, freq_base),
               gguf_kv_bytes("general.sampling.temp", 6, temp), gguf_kv_bytes("general.sampling.top_p", 6, top_p),
               *extra]
    if template is not None:
        entries.append(gguf_kv_bytes("tokenizer.chat_template", 8, template))
    return rewrite_gguf_metadata(base, out, entries, drop)


def info(path: Path) -> tuple[str, dict]:
    table = runner.invoke(app, ["info", str(path)])
    assert table.exit_code == 0, table.output
    js = runner.invoke(app, ["info", str(path), "--json"])
    assert js.exit_code == 0, js.output
    return table.stdout, json.loads(js.stdout)


def row(table: str, name: str) -> str:
    """The text of one table row (rows are `name  value`)."""
    (line,) = [ln for ln in table.splitlines() if ln.startswith(name + "  ")]
    return line[len(name):].strip()


def test_original_model(converted):
    table, d = info(converted("tied", "f16"))
    assert d["kind"] == "hybrid" and d["native_context"] == 32768 and d["max_context"] == 131072
    assert d["sampling"] == {"top_k": 20, "top_p": 0.95, "temp": 0.6}        # Qwen3's generation_config.json
    assert row(table, "kind") == "hybrid"
    assert row(table, "native context") == "32,768 tokens (YaRN up to 131,072)"
    assert row(table, "sampling") == "top_k 20 · top_p 0.95 · temp 0.6"


@pytest.mark.parametrize("name, kind, temp, top_p", [("qwen3-thinking-2507.jinja", "thinking-only", 0.6, 0.95),
                                                     ("qwen3-instruct-2507.jinja", "non-thinking-only", 0.7, 0.8)])
def test_2507_models(converted, tmp_path, name, kind, temp, top_p):
    path = variant(converted("tied", "f16"), tmp_path / "m.gguf", (TEMPLATES / name).read_text(), temp=temp, top_p=top_p)
    table, d = info(path)
    assert d["kind"] == kind and d["native_context"] == 262144 and d["max_context"] == 4 * 262144
    assert d["sampling"] == {"top_k": 20, "top_p": top_p, "temp": temp}
    assert row(table, "kind") == kind
    assert row(table, "native context") == "262,144 tokens (YaRN up to 1,048,576)"
    assert row(table, "sampling") == f"top_k 20 · top_p {top_p:g} · temp {temp:g}"


def test_yarn_gguf_names_its_native_context(converted, tmp_path):
    yarn = [gguf_kv_bytes("qwen3.rope.scaling.type", 8, "yarn"), gguf_kv_bytes("qwen3.rope.scaling.factor", 6, 2.0),
            gguf_kv_bytes("qwen3.rope.scaling.original_context_length", 4, 65536)]
    _, d = info(variant(converted("tied", "f16"), tmp_path / "y.gguf", None, extra=yarn))
    assert d["native_context"] == 65536 and d["max_context"] == 131072


def test_no_template_is_qwens_and_no_preset_says_so(converted, tmp_path):
    path = rewrite_gguf_metadata(converted("tied", "f16"), tmp_path / "n.gguf",
                                 drop=("tokenizer.chat_template", "general.sampling.temp", "general.sampling.top_p",
                                       "general.sampling.top_k"))
    table, d = info(path)
    assert d["kind"] == "hybrid" and d["chat_template"] is None and d["sampling"] == {}
    assert row(table, "sampling").startswith("none")


def test_what_the_runtime_would_refuse_is_shown_not_crashed_on(converted, tmp_path):
    bad_rope = [gguf_kv_bytes("qwen3.rope.scaling.type", 8, "yarn"), gguf_kv_bytes("qwen3.rope.scaling.factor", 6, 4.0)]
    path = variant(converted("tied", "f16"), tmp_path / "b.gguf", "{% if %}", extra=bad_rope)
    table, d = info(path)
    assert d["kind"] is None and "syntax error" in d["kind_error"]
    assert d["native_context"] is None and "original_context_length" in d["native_context_error"]
    assert row(table, "kind").startswith("unknown (chat template syntax error")
    assert row(table, "native context").startswith("refused (GGUF YaRN original_context_length")
