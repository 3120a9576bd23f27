"""Killed conversions leave nothing that looks finished, and the next run cleans up after them;
transcripts are replaced atomically."""

from __future__ import annotations

import builtins
import errno
import io
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


class DiskFillsUp:
    """Files opened for writing under `folder` take `room` bytes, then fail with ENOSPC: part of the
    transcript reaches the disk, as when a disk fills mid-write. Covers open() and os.write alike."""

    def __init__(self, folder: Path, room: int):
        self.folder, self.room, self.written = str(folder), room, 0
        self.real_open, self.real_write = io.open, os.write

    def take(self, n: int) -> int:
        """How many of n bytes still fit."""
        return min(n, self.room - self.written)

    def full(self) -> OSError:
        return OSError(errno.ENOSPC, "No space left on device")

    def open(self, file, mode="r", *args, **kwargs):
        f = self.real_open(file, mode, *args, **kwargs)
        if isinstance(file, int) or not str(file).startswith(self.folder) or not set(mode) & set("wax+"):
            return f
        return _FillingFile(f, self)

    def write(self, fd: int, data) -> int:
        fits = self.take(len(data))
        if fits < len(data):
            self.written += self.real_write(fd, bytes(data[:fits])) if fits else 0
            raise self.full()
        self.written += fits
        return self.real_write(fd, data)

    def install(self, monkeypatch) -> None:
        for module in (io, builtins):
            monkeypatch.setattr(module, "open", self.open)
        monkeypatch.setattr(os, "write", self.write)


class _FillingFile:
    def __init__(self, f, disk: DiskFillsUp):
        self._f, self._disk = f, disk

    def write(self, data):
        fits = self._disk.take(len(data))
        if fits < len(data):
            if fits:
                self._f.write(data[:fits])
                self._f.flush()
                self._disk.written += fits
            raise self._disk.full()
        self._disk.written += fits
        return self._f.write(data)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self._f.close()

    def __iter__(self):
        return iter(self._f)

    def __getattr__(self, name):
        return getattr(self._f, name)


def rename_fails(*args, **kwargs):
    raise OSError(errno.EIO, "Input/output error")


@pytest.mark.parametrize("fault", ["disk fills mid-write", "rename fails"])
def test_transcript_save_is_atomic(scripted_gguf, tmp_path, monkeypatch, fault):
    """A save that fails part way leaves the previous transcript whole and no temporary beside it."""
    from edge.engine import Engine
    with Engine.load(scripted_gguf, n_ctx=512) as engine:
        chat = Chat(engine, mode="no_think", seed=1)
        chat.send("Hi")
        path = tmp_path / "t.json"
        save_transcript(chat, path)
        before = path.read_text()
        chat.send("More")

        disk = DiskFillsUp(tmp_path, room=len(before) // 2)
        if fault == "rename fails":
            monkeypatch.setattr(os, "replace", rename_fails)
            monkeypatch.setattr(os, "rename", rename_fails)
        else:
            disk.install(monkeypatch)
        with pytest.raises(ChatError, match="cannot write"):
            save_transcript(chat, path)
        monkeypatch.undo()
        if fault != "rename fails":
            assert disk.written == len(before) // 2      # the failure really came half way through
        assert path.read_text() == before and [p.name for p in tmp_path.iterdir()] == ["t.json"]
        load_transcript(chat, path)
        assert len(chat.history) == 2 and json.loads(before)["messages"][1]["content"] == chat.history[1].content
