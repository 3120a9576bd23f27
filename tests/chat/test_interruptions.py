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
import tempfile
import threading
import time
from pathlib import Path

import pytest

from edge.chat import Chat, ChatError, load_transcript, save_transcript
from quantize import quantize_model

ROOT = Path(__file__).resolve().parents[2]


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
    quantize_model(models["tied"], "f16", out)      # any next run cleans up: the small model will do
    assert out.is_file() and sorted(p.name for p in tmp_path.iterdir()) == ["m.gguf"]


def test_sigterm_removes_its_temporary(models, tmp_path):
    out = tmp_path / "m.gguf"
    proc = start_quantize(models["untied"], out)
    wait_for_temporary(tmp_path, proc)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(60) == 130
    assert "interrupted" in proc.stderr.read()
    assert list(tmp_path.iterdir()) == []


# Loaded into the child: each tensor llama.cpp quantizes reports through this callback, which now
# takes 0.1 s, so the tiny model's quantize stage lasts a few seconds instead of milliseconds and a
# signal sent once it has started lands inside it (on a quiet machine it used to finish first).
SLOW_QUANTIZER = """
import signal
import time
# Ctrl-C as at a terminal: a suite started in the background (`cmd &`) hands its children SIGINT
# ignored, which Python keeps, so the signal would be dropped and the run end 0 (as `nohup` wants).
signal.signal(signal.SIGINT, signal.default_int_handler)
import quantize.pipeline as pipeline
_real = pipeline.llama_quantize
def _slow(src, dst, file_type, threads=None, progress=None):
    def report(p):
        time.sleep(0.1)
        if progress is not None:
            progress(p)
    return _real(src, dst, file_type, threads, report)
pipeline.llama_quantize = _slow
"""


class KQuantRun:
    """`quantize -t q4_k_m` in a child whose progress bars (forced on through a pipe) say when
    llama.cpp's quantizer is at work: the "quantizing" bar is drawn from inside its log callback.
    Given the tied model: nearly as many tensors (so as long a slowed quantize stage) as the untied one,
    and a far smaller float file to write before it."""

    def __init__(self, src: Path, out: Path):
        hooks = Path(tempfile.mkdtemp(prefix="slow-quantizer-"))
        (hooks / "sitecustomize.py").write_text(SLOW_QUANTIZER)
        env = dict(os.environ, FORCE_COLOR="1", COLUMNS="200",
                   PYTHONPATH=os.pathsep.join([str(hooks), str(ROOT), os.environ.get("PYTHONPATH", "")]))
        self.proc = subprocess.Popen([sys.executable, "-m", "cli", "quantize", str(src), "-t", "q4_k_m", "-o", str(out)],
                                     cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        self.err = bytearray()
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self) -> None:
        for chunk in iter(lambda: self.proc.stderr.read1(1 << 16), b""):
            self.err.extend(chunk)

    def wait_for_quantizer(self, timeout: float = 120) -> None:
        deadline = time.monotonic() + timeout
        while b"quantizing" not in self.err:
            assert self.proc.poll() is None, f"ended before quantizing: {self.stderr()}"
            assert time.monotonic() < deadline, "llama.cpp's quantizer never started"
            time.sleep(0.02)

    def stderr(self) -> str:
        self.reader.join(10)
        return self.err.decode(errors="replace")


def temporaries(folder: Path) -> list[str]:
    """The kinds of file in `folder`: "float" (the float GGUF llama.cpp reads), "partial" (its output)."""
    kinds = {".float.gguf": "float", ".partial": "partial"}
    return sorted(next((k for s, k in kinds.items() if p.name.endswith(s)), p.name) for p in folder.iterdir())


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_interrupt_inside_llama_quantizer_leaves_nothing(models, tmp_path, sig):
    """Ctrl-C or SIGTERM while llama.cpp quantizes: exit 130 soon, the float file and the output
    temporary both gone, nothing at the output name."""
    out = tmp_path / "m.gguf"
    for attempt in range(3):
        run = KQuantRun(models["tied"], out)
        try:
            run.wait_for_quantizer()
            assert temporaries(tmp_path) == ["float", "partial"]   # both exist when the signal lands
            run.proc.send_signal(sig)
            code = run.proc.wait(60)
        finally:
            run.proc.kill()
        if code == 0 and out.is_file() and attempt < 2:
            # On a loaded machine the tiny model's last tensors can finish between the check above
            # and the signal: that run interrupted nothing, so it proves nothing. Try again.
            out.unlink()
            continue
        break
    assert code == 130, run.stderr()
    assert "interrupted" in run.stderr()
    assert list(tmp_path.iterdir()) == []


def test_sigkill_inside_llama_quantizer_next_run_cleans_up(models, tmp_path):
    out = tmp_path / "m.gguf"
    run = KQuantRun(models["tied"], out)
    try:
        run.wait_for_quantizer()
    finally:
        run.proc.send_signal(signal.SIGKILL)
        run.proc.wait()
    assert temporaries(tmp_path) == ["float", "partial"] and not out.exists()
    quantize_model(models["tied"], "f16", out)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.gguf"]


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
    from edge.runtime.engine import Engine
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
