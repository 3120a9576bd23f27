"""The quantize and info commands as a user runs them."""

from __future__ import annotations

import json

from typer.testing import CliRunner

from cli.main import app
from quantize import default_output_name, quant_type

runner = CliRunner(env={"COLUMNS": "200"})


def test_version_and_help():
    r = runner.invoke(app, ["--version"])
    assert r.exit_code == 0 and r.stdout.startswith("qwen3-edge 0.")
    for cmd in (["--help"], ["quantize", "--help"], ["info", "--help"]):
        r = runner.invoke(app, cmd)
        assert r.exit_code == 0 and "Usage" in r.stdout


def test_quantize_derives_output_name_and_prints_summary(models, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    r = runner.invoke(app, ["quantize", str(models["tied"]), "--type", "q8_0"])
    assert r.exit_code == 0, r.output
    out = tmp_path / "tiny-tied-q8_0.gguf"
    assert out.is_file()
    assert f"wrote {out}" in r.stdout and "q8_0" in r.stdout and "bits/weight" in r.stdout


def test_quantize_json(models, tmp_path):
    r = runner.invoke(app, ["quantize", str(models["tied"]), "-t", "Q4_K_M", "-o", str(tmp_path / "m.gguf"), "--json"])
    assert r.exit_code == 0, r.output
    d = json.loads(r.stdout)
    assert set(d) == {"source", "output", "type", "size_bytes", "parameters", "bits_per_weight", "seconds"}
    assert d["type"] == "q4_k_m" and d["size_bytes"] == (tmp_path / "m.gguf").stat().st_size
    assert d["parameters"] == 9_822_656


def test_default_output_name_replaces_type_suffix(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert default_output_name(tmp_path / "qwen3-0.6b-f16.gguf", quant_type("q4_0")) == tmp_path / "qwen3-0.6b-q4_0.gguf"
    assert default_output_name(tmp_path / "Qwen3-0.6B", quant_type("q8_0")) == tmp_path / "qwen3-0.6b-q8_0.gguf"


def test_info_table_and_json(converted):
    path = converted("untied", "q4_k_m")
    r = runner.invoke(app, ["info", str(path)])
    assert r.exit_code == 0, r.output
    for text in ("qwen3", "q4_k_m", "Q4_K", "Q6_K", "151,936 tokens", "<|im_end|> (151645)", "thinking yes"):
        assert text in r.stdout, text
    d = json.loads(runner.invoke(app, ["info", str(path), "--json"]).stdout)
    assert d["architecture"] == "qwen3" and d["file_type"] == "q4_k_m"
    assert d["hyperparameters"]["embedding_length"] == 256
    assert d["tokenizer"]["eos"] == {"id": 151645, "text": "<|im_end|>"}
    assert d["tensors"]["count"] == 25 and d["chat_template"]["thinking"] is True


def test_info_bad_file(tmp_path):
    (tmp_path / "x.gguf").write_bytes(b"GGUF\x03\x00")
    r = runner.invoke(app, ["info", str(tmp_path / "x.gguf")])
    assert r.exit_code == 1 and "x.gguf" in r.stderr and "corrupt or truncated" in r.stderr
