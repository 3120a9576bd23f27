"""`quantize_model`: a Hugging Face Qwen3 folder or a float GGUF in, a finished GGUF out.

Routes: F32/F16/BF16/Q8_0 from a folder are written by Python in one pass. Other types are
written first as a lossless float GGUF beside the output, then quantized by llama.cpp. A GGUF
input goes straight to llama.cpp. Every route reads and checks all input before writing, and
writes through a temporary name, so a failure never leaves a file that looks finished.
"""

from __future__ import annotations

import re
import threading
import time
from dataclasses import dataclass, asdict
from pathlib import Path
from typing import Any

from .atomic import atomic_path, check_writable_folder, remove_stale_temporaries, scratch_path
from .errors import QuantizeError
from .gguf_header import read_header
from .gguf_info import bits_per_weight, check_float_qwen3
from .hf_to_gguf import HFModel, carrier_type, load_hf_model, write_gguf
from .llama_quantizer import llama_quantize
from .progress import ProgressCallback, ignore_progress
from .types import DEFAULT_TYPE, QUANT_TYPES, QuantType, quant_type


@dataclass(frozen=True)
class QuantizeResult:
    source: str
    output: str
    type: str
    size_bytes: int
    parameters: int
    bits_per_weight: float
    seconds: float

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


_TYPE_SUFFIX = re.compile(r"[-_.](" + "|".join(sorted(QUANT_TYPES, key=len, reverse=True)) + r")$", re.I)


def default_output_name(src: Path, qtype: QuantType) -> Path:
    """`Qwen3-0.6B` + q8_0 -> `qwen3-0.6b-q8_0.gguf` in the current folder; a GGUF's own type
    suffix is replaced (`qwen3-0.6b-f16.gguf` + q4_0 -> `qwen3-0.6b-q4_0.gguf`)."""
    stem = src.resolve().name
    if stem.lower().endswith(".gguf"):
        stem = stem[:-5]
    stem = _TYPE_SUFFIX.sub("", stem)
    return Path.cwd() / f"{stem.lower()}-{qtype.name}.gguf"


def quantize_model(src: str | Path, type_name: str = DEFAULT_TYPE, out: str | Path | None = None,
                   threads: int | None = None, progress: ProgressCallback = ignore_progress) -> QuantizeResult:
    """Convert/quantize `src` to `type_name`; returns what was written. Raises QuantizeError."""
    started = time.perf_counter()
    src = Path(src)
    qtype = quant_type(type_name)
    out_path = Path(out) if out is not None else default_output_name(src, qtype)
    if out_path.exists() and src.exists() and out_path.resolve() == src.resolve():
        raise QuantizeError(out_path, "output would overwrite the input")
    check_writable_folder(out_path)
    remove_stale_temporaries(out_path)

    if src.is_file():
        _from_gguf(src, qtype, out_path, threads, progress)
    else:
        _from_hf(load_hf_model(src), qtype, out_path, threads, progress)

    header = read_header(out_path)
    return QuantizeResult(str(src), str(out_path), qtype.name, out_path.stat().st_size, header.n_params,
                          bits_per_weight(header) or 0.0, round(time.perf_counter() - started, 2))


def _from_hf(model: HFModel, qtype: QuantType, out: Path, threads: int | None, progress: ProgressCallback) -> None:
    if qtype.written_by_python:
        with atomic_path(out) as tmp:
            write_gguf(model, tmp, qtype.direct, qtype.file_type, progress)
        return
    carrier, carrier_ftype = carrier_type(model)
    with scratch_path(out, ".float.gguf") as float_gguf, atomic_path(out) as tmp:
        write_gguf(model, float_gguf, carrier, carrier_ftype, progress)
        _interruptible_quantize(float_gguf, tmp, qtype.file_type, threads, progress)


def _from_gguf(src: Path, qtype: QuantType, out: Path, threads: int | None, progress: ProgressCallback) -> None:
    check_float_qwen3(src)
    with atomic_path(out) as tmp:
        _interruptible_quantize(src, tmp, qtype.file_type, threads, progress)


def _interruptible_quantize(src: Path, dst: Path, file_type: int, threads: int | None,
                            progress: ProgressCallback) -> None:
    """llama.cpp's quantizer in a worker thread, so that Ctrl-C and SIGTERM still reach this one.

    Called on the main thread, the quantizer blocks Python signal handlers except inside its log
    callback, where ctypes swallows the KeyboardInterrupt: the run went on to the end and exited 0.
    Here the main thread only waits, so an interrupt (or an exception from `progress`, which runs
    on the worker) unwinds through the temporaries' cleanup. The quantizer has no abort hook, so
    the worker (a daemon) ends with the process, writing to files already unlinked, unreported."""
    stopped = threading.Event()
    failure: list[BaseException] = []

    def report(p) -> None:
        if stopped.is_set():
            return
        try:
            progress(p)
        except BaseException as e:  # ctypes would print and drop it: hand it to the waiting thread
            failure.append(e)
            stopped.set()

    def work() -> None:
        try:
            llama_quantize(src, dst, file_type, threads, report)
        except BaseException as e:
            failure.append(e)
        stopped.set()

    worker = threading.Thread(target=work, name="llama-quantize", daemon=True)
    worker.start()
    try:
        while not stopped.wait(0.1):
            pass
    except BaseException:
        stopped.set()
        raise
    if failure:
        raise failure[0]
