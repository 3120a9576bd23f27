"""`chat`, `run`, `list`, `rm` and `bench` through Typer's CliRunner, on the scripted model."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import llama_cpp
import pytest
from typer.testing import CliRunner

from cli.chat_commands import CommandError, parse_budget, parse_command
from cli.main import app
from edge.runtime.engine import detect_backend
from tests.llama_probe import LoadSettings, load_settings, record_sampling
from tests.scripted_model import SCRIPT_ANSWER_TEXT, SCRIPT_THINKING_TEXT
from tests.tiny_gguf import write_foreign_gguf

runner = CliRunner(env={"COLUMNS": "200"})


@pytest.fixture(autouse=True)
def store_home(tmp_path, monkeypatch) -> Path:
    home = tmp_path / "home"
    monkeypatch.setenv("QWEN3_EDGE_HOME", str(home))
    return home


def chat(model, lines: list[str], *args: str):
    return runner.invoke(app, ["chat", str(model), "--seed", "1", *args], input="\n".join(lines) + "\n")


def test_chat_session_with_commands(scripted_gguf, tmp_path):
    transcript = tmp_path / "t.json"
    r = chat(scripted_gguf, ["Hello", "/no_think", "Again", "/budget 3", "/think", "Count", "/history",
                             f"/save {transcript}", "/stats", "/exit"])
    assert r.exit_code == 0, r.output
    o = r.stdout
    assert "Thinking…" in o and SCRIPT_THINKING_TEXT in o and SCRIPT_ANSWER_TEXT in o
    assert "mode: no_think" in o and "thinking budget: 3" in o and "mode: think" in o
    assert "thinking 13/∞" in o and "no thinking" in o and "thinking 3/3 · budget reached" in o
    assert o.count("user:") == 3 and "prompt" in o and "evaluated" in o
    saved = json.loads(transcript.read_text())
    assert [m["role"] for m in saved["messages"]] == ["user", "assistant"] * 3
    assert saved["messages"][0] == {"role": "user", "content": "Hello", "thinking": ""}
    assert saved["messages"][1]["content"] == SCRIPT_ANSWER_TEXT
    assert saved["messages"][1]["thinking"] == SCRIPT_THINKING_TEXT


def test_chat_bad_commands_keep_the_chat_going(scripted_gguf, tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    r = chat(scripted_gguf, ["Hello", "/budget lots", "/frobnicate", f"/load {bad}", f"/load {tmp_path / 'nope.json'}",
                             "/save", "/history", "/exit"], "--no-think")
    assert r.exit_code == 0, r.output
    o = r.stdout
    assert "/budget takes a whole number" in o and "unknown command /frobnicate" in o
    assert "not a qwen3-edge transcript" in o and "nope.json: not found" in o and "/save needs an argument" in o
    assert "user: Hello" in o and f"assistant: {SCRIPT_ANSWER_TEXT}" in o  # history survived


def test_chat_load_transcript_then_continue(scripted_gguf, tmp_path):
    transcript = tmp_path / "t.json"
    transcript.write_text(json.dumps({"version": 1, "system": "Be brief.", "mode": "no_think", "budget": None,
                                      "messages": [{"role": "user", "content": "Earlier"},
                                                   {"role": "assistant", "content": "Earlier answer"}]}))
    r = chat(scripted_gguf, [f"/load {transcript}", "Next", "/history", "/reset", "/history"])
    assert r.exit_code == 0, r.output
    assert "loaded 2 messages" in r.stdout and "system: Be brief." in r.stdout
    assert "assistant: Earlier answer" in r.stdout and "no thinking" in r.stdout
    assert "new conversation" in r.stdout and "(no messages yet)" in r.stdout


def test_chat_soft_switch_goes_to_the_model_with_the_message(scripted_gguf):
    r = chat(scripted_gguf, ["Quick one /no_think", "/history"], "--hide-thinking")
    assert "user: Quick one /no_think" in r.stdout and "no thinking" in r.stdout


def record_loads(monkeypatch) -> list[LoadSettings]:
    """What llama.cpp was given for each model the CLI opens, read while the model is open.
    Coupling: the CLI opens models through Engine.load."""
    from edge.runtime.engine import Engine
    real, seen = Engine.load.__func__, []

    def load(cls, path, *args, **kwargs):
        engine = real(cls, path, *args, **kwargs)
        seen.append(load_settings(engine.llama, path))
        return engine

    monkeypatch.setattr(Engine, "load", classmethod(load))
    return seen


def test_chat_options(scripted_gguf, monkeypatch):
    loads, samplers = record_loads(monkeypatch), record_sampling(monkeypatch)
    r = chat(scripted_gguf, ["Hi"], "--auto", "--ctx", "1024", "--budget", "2", "--system", "S",
             "--threads", "3", "--gpu-layers", "0", "--kv-cache", "q8_0", "--temperature", "0.5", "--top-p", "0.9",
             "--top-k", "10", "--min-p", "0.01", "--presence-penalty", "1.5", "--max-tokens", "50", "--hide-thinking",
             "--no-mmap")
    assert r.exit_code == 0, r.output
    assert "mode auto" in r.stdout and "ctx 1024" in r.stdout
    assert SCRIPT_ANSWER_TEXT in r.stdout and "no thinking" in r.stdout and "Thinking…" not in r.stdout
    # llama.cpp got a q8_0 KV cache (with flash attention, which a quantized V cache needs), 3
    # threads, and weights read in rather than mapped; the sampler got every override.
    assert loads == [LoadSettings(n_ctx=1024, n_threads=3, n_threads_batch=3, type_k=llama_cpp.GGML_TYPE_Q8_0,
                                  type_v=llama_cpp.GGML_TYPE_Q8_0, flash_attn_type=llama_cpp.LLAMA_FLASH_ATTN_TYPE_ENABLED,
                                  load_mode=llama_cpp.LLAMA_LOAD_MODE_NONE, file_mapped=False)]
    assert samplers == [(0.5, 0.9, 10, 0.01, 1.5, 1)]


def test_chat_defaults_reach_llama_cpp(scripted_gguf, monkeypatch):
    """Without options: an F16 KV cache, flash attention off on the CPU, the GGUF memory-mapped,
    Qwen's thinking preset."""
    loads, samplers = record_loads(monkeypatch), record_sampling(monkeypatch)
    r = chat(scripted_gguf, ["Hi"], "--ctx", "1024", "--threads", "1", "--hide-thinking")
    assert r.exit_code == 0, r.output
    assert loads == [LoadSettings(n_ctx=1024, n_threads=1, n_threads_batch=1, type_k=llama_cpp.GGML_TYPE_F16,
                                  type_v=llama_cpp.GGML_TYPE_F16, flash_attn_type=llama_cpp.LLAMA_FLASH_ATTN_TYPE_DISABLED,
                                  load_mode=llama_cpp.LLAMA_LOAD_MODE_MMAP, file_mapped=True)]
    assert samplers == [(0.6, 0.95, 20, 0.0, 0.0, 1)]


def test_flash_attention_asked_on_the_command_line_reaches_llama_cpp(scripted_gguf, monkeypatch):
    """--flash-attn wins over the calibration's choice (and the fixed default, off on the CPU), in
    chat and run alike (serve takes the same option through load_engine)."""
    loads = record_loads(monkeypatch)
    assert chat(scripted_gguf, ["Hi"], "--ctx", "1024", "--threads", "1", "--flash-attn").exit_code == 0
    r = runner.invoke(app, ["run", str(scripted_gguf), "Hi", "--ctx", "1024", "--threads", "1", "--flash-attn"])
    assert r.exit_code == 0, r.output
    assert [x.flash_attn_type for x in loads] == [llama_cpp.LLAMA_FLASH_ATTN_TYPE_ENABLED] * 2


def test_run_streams_answer_and_json(scripted_gguf):
    r = runner.invoke(app, ["run", str(scripted_gguf), "Hi", "--seed", "2"])
    assert r.exit_code == 0, r.output
    assert r.stdout.strip() == SCRIPT_ANSWER_TEXT and SCRIPT_THINKING_TEXT in r.stderr
    r = runner.invoke(app, ["run", str(scripted_gguf), "Hi", "--json", "--budget", "4"])
    d = json.loads(r.stdout)
    assert d["answer"] == SCRIPT_ANSWER_TEXT and d["budget_hit"] and d["thinking_tokens"] == 4
    assert {"thinking", "stop_reason", "ttft_s", "tokens_per_s", "prompt_tokens", "generated_tokens"} <= set(d)
    r = runner.invoke(app, ["run", str(scripted_gguf), "-", "--no-think", "--hide-thinking"], input="from stdin\n")
    assert r.stdout.strip() == SCRIPT_ANSWER_TEXT and r.stderr == ""


def test_hf_folder_is_quantized_into_the_store_once(models, store_home):
    folder = models["tied"]
    r = runner.invoke(app, ["run", str(folder), "Hi", "--max-tokens", "2", "--no-think"])
    assert r.exit_code == 0, r.output
    stored = store_home / "models" / "local--tiny-tied" / "q4_k_m.gguf"   # a name that says it is local
    mtime = stored.stat().st_mtime_ns
    runner.invoke(app, ["run", str(folder), "Hi", "--max-tokens", "2", "--no-think"])
    assert stored.stat().st_mtime_ns == mtime
    listed = json.loads(runner.invoke(app, ["list", "--json"]).stdout)
    assert [(e["name"], e["type"], e["source"]) for e in listed] == [("local--tiny-tied", "q4_k_m", "local")]
    assert "local--tiny-tied" in runner.invoke(app, ["list"]).stdout
    r = runner.invoke(app, ["rm", "local--tiny-tied:q4_k_m"])
    assert r.exit_code == 0 and not stored.exists()
    assert "no models" in runner.invoke(app, ["list"]).stdout


def test_store_names_resolve(scripted_gguf, store_home):
    target = store_home / "models" / "scripted" / "f16.gguf"
    target.parent.mkdir(parents=True)
    shutil.copy(scripted_gguf, target)
    r = runner.invoke(app, ["run", "scripted:f16", "Hi", "--no-think"])
    assert r.exit_code == 0 and r.stdout.strip() == SCRIPT_ANSWER_TEXT


@pytest.mark.parametrize("args, fragment", [
    (["run", "missing.gguf", "Hi"], "missing.gguf: no such file"),
    (["run", "my-model", "Hi"], "my-model: not in the store"),
    (["run", "qwen3-0.6b:q9_z", "Hi"], "unknown --type"),
    (["rm", "qwen3-0.6b"], "not in the store"),
])
def test_bad_model_references(args, fragment):
    r = runner.invoke(app, args)
    assert r.exit_code == 1
    lines = [line for line in r.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and fragment in lines[0], r.stderr


def test_other_architecture_is_refused(tmp_path):
    path = write_foreign_gguf(tmp_path / "llama.gguf")
    r = runner.invoke(app, ["chat", str(path)])
    assert r.exit_code == 1 and "is not qwen3" in r.stderr


def test_bench_json(scripted_gguf):
    r = runner.invoke(app, ["bench", str(scripted_gguf), "-p", "32", "-n", "8", "--json"])
    assert r.exit_code == 0, r.output
    d = json.loads(r.stdout)
    assert d["n_prompt"] == 32 and d["n_gen"] == 8 and d["backend"] == detect_backend(-1)
    assert d["pp_tokens_per_s"] > 0 and d["tg_tokens_per_s"] > 0 and d["ttft_s"] > 0 and d["load_s"] > 0
    assert d["peak_rss_bytes"] > 0
    r = runner.invoke(app, ["bench", str(scripted_gguf), "-p", "16", "-n", "4"])
    assert "pp16" in r.stdout and "tg4" in r.stdout


def test_every_command_has_help():
    for cmd in ("chat", "run", "pull", "list", "rm", "bench", "quantize", "info"):
        r = runner.invoke(app, [cmd, "--help"])
        assert r.exit_code == 0 and "Usage" in r.stdout, cmd


@pytest.mark.parametrize("line, expected", [
    ("hello", None), ("hello /think", None), ("/think", ("/think", "")), ("/budget 8", ("/budget", "8")),
    ("/system Be nice.", ("/system", "Be nice.")), ("/EXIT", ("/exit", "")), ("/quit", ("/exit", "")),
])
def test_parse_command(line, expected):
    c = parse_command(line)
    assert (c if c is None else (c.name, c.argument)) == expected


def test_parse_budget():
    assert parse_budget("8") == 8 and parse_budget("off") is None and parse_budget("0") is None
    for bad in ("x", "-3", "1.5"):
        with pytest.raises(CommandError):
            parse_budget(bad)
