"""`pull`, `list`, `chat` (default model, pulled on first use) and `rm` through the CLI, against
the fake Hub on 127.0.0.1 (HF_ENDPOINT pointed at it, as a user would)."""

from __future__ import annotations

from typer.testing import CliRunner

from cli.main import app
from tests.fake_hub import closed_port_url
from tests.models.test_hub_pull import checkpoint, hermetic, hub  # noqa: F401  (fixtures)

runner = CliRunner(env={"COLUMNS": "200"})


def test_pull_list_run_chat_rm(hub, tmp_path):
    r = runner.invoke(app, ["pull", "qwen3-0.6b", "--type", "q8_0"])
    assert r.exit_code == 0, r.output
    stored = tmp_path / "store" / "models" / "qwen3-0.6b" / "q8_0.gguf"
    assert stored.is_file() and "ready" in r.stdout
    listing = runner.invoke(app, ["list"]).stdout
    assert "qwen3-0.6b" in listing and "q8_0" in listing
    r = runner.invoke(app, ["run", "qwen3-0.6b:q8_0", "Hi", "--max-tokens", "3", "--no-think", "--json"])
    assert r.exit_code == 0, r.output
    # chat with no MODEL: the default qwen3-0.6b:q4_k_m is pulled on first use, from the HF cache
    r = runner.invoke(app, ["chat", "--max-tokens", "3", "--no-think"], input="Hello\n/exit\n")
    assert r.exit_code == 0, r.output
    assert (tmp_path / "store" / "models" / "qwen3-0.6b" / "q4_k_m.gguf").is_file()
    assert "3 tokens" in r.stdout
    r = runner.invoke(app, ["rm", "qwen3-0.6b"])
    assert r.exit_code == 0 and not stored.exists()
    assert "no models" in runner.invoke(app, ["list"]).stdout


def test_offline_default_chat_says_how_to_use_a_local_model(monkeypatch):
    monkeypatch.setenv("HF_ENDPOINT", closed_port_url())
    r = runner.invoke(app, ["chat"], input="Hello\n")
    assert r.exit_code == 1
    lines = [line for line in r.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, r.stderr
    assert "cannot download Qwen/Qwen3-0.6B" in lines[0] and "GGUF" in lines[0] and "Hugging Face folder" in lines[0]


def test_pull_unknown_name():
    r = runner.invoke(app, ["pull", "qwen3-70b"])
    assert r.exit_code == 1 and "qwen3-0.6b" in r.stderr
