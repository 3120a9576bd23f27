"""Killed conversions leave nothing that looks finished, and the next run cleans up after them;
transcripts are replaced atomically."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from edge.chat import Chat, ChatError, load_transcript, save_transcript
from quantize import quantize_model

ROOT = Path(__file__).resolve().parent.parent


def start_quantize(src: Path, out: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "cli", "quantize", str(src), "-t", "f32", "-o", str(out), "--json"],
                            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def wait_for_temporary(folder: Path, proc: subprocess.Popen) -> list[Path]:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        temps = [p for p in folder.iterdir() if p.name.endswith(".partial") and p.stat().st_size > 1 << 20]
        if temps:
            return temps
        assert proc.poll() is None, proc.stderr.read()
        time.sleep(0.02)
    raise AssertionError("no temporary file appeared")


def test_sigkill_leaves_no_output_and_next_run_cleans_up(models, tmp_path):
    out = tmp_path / "m.gguf"
    proc = start_quantize(models["untied"], out)
    temps = wait_for_temporary(tmp_path, proc)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not out.exists() and all(t.exists() for t in temps)
    quantize_model(models["untied"], "f16", out)
    assert out.is_file() and sorted(p.name for p in tmp_path.iterdir()) == ["m.gguf"]


def test_sigterm_removes_its_temporary(models, tmp_path):
    out = tmp_path / "m.gguf"
    proc = start_quantize(models["untied"], out)
    wait_for_temporary(tmp_path, proc)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(60) == 130
    assert "interrupted" in proc.stderr.read()
    assert list(tmp_path.iterdir()) == []


def test_a_running_writers_temporary_is_left_alone(models, tmp_path):
    """Only temporaries of dead processes are removed: a live run's file is not pulled away."""
    out = tmp_path / "m.gguf"
    live = tmp_path / f".m.gguf.{os.getppid()}.abc.partial"
    live.write_bytes(b"in progress")
    quantize_model(models["tied"], "f16", out)
    assert live.exists() and out.is_file()


def test_transcript_save_is_atomic(scripted_gguf, tmp_path, monkeypatch):
    from edge.engine import Engine
    with Engine.load(scripted_gguf, n_ctx=512) as engine:
        chat = Chat(engine, mode="no_think", seed=1)
        chat.send("Hi")
        path = tmp_path / "t.json"
        save_transcript(chat, path)
        before = path.read_text()
        chat.send("More")

        def crash(*args, **kwargs):
            raise OSError(28, "No space left on device")

        monkeypatch.setattr(Path, "write_text", crash)
        with pytest.raises(ChatError, match="cannot write"):
            save_transcript(chat, path)
        monkeypatch.undo()
        assert path.read_text() == before and [p.name for p in tmp_path.iterdir()] == ["t.json"]
        load_transcript(chat, path)
        assert len(chat.history) == 2 and json.loads(before)["messages"][1]["content"] == chat.history[1].content
