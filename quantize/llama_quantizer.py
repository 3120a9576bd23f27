"""K-quants and the legacy 4/5-bit types through llama.cpp's own quantizer (llama_model_quantize
in the llama-cpp-python bindings), with its per-tensor log turned into progress events."""

from __future__ import annotations

import ctypes
import os
import re
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import llama_cpp
import llama_cpp._logger as llama_logger

from .errors import QuantizeError
from .progress import Progress, ProgressCallback, ignore_progress

_TENSOR_LINE = re.compile(r"\[\s*(\d+)/\s*(\d+)\]\s+(\S+)")
GGML_LOG_LEVEL_ERROR = 3
# Rows llama.cpp keeps in memory at once; its default (8 GiB) would defeat a small board.
MAX_BUF_BYTES = 256 << 20


@contextmanager
def _quantizer_log(progress: ProgressCallback, errors: list[str]) -> Iterator[None]:
    """Route llama.cpp's log to progress events for the call's duration, then give the log back
    to llama-cpp-python's own handler."""

    @llama_cpp.llama_log_callback
    def on_log(level: int, text: bytes, _user: ctypes.c_void_p) -> None:
        line = text.decode("utf-8", "replace")
        if level == GGML_LOG_LEVEL_ERROR:
            errors.append(line.strip())
        elif m := _TENSOR_LINE.search(line):
            progress(Progress("quantize", int(m[1]), int(m[2]), 0, 0, m[3]))

    llama_cpp.llama_log_set(on_log, ctypes.c_void_p(0))
    try:
        yield
    finally:
        llama_cpp.llama_log_set(llama_logger.llama_log_callback, ctypes.c_void_p(0))


def llama_quantize(src: Path, dst: Path, file_type: int, threads: int | None = None,
                   progress: ProgressCallback = ignore_progress) -> None:
    """Quantize the float GGUF src into dst with llama.cpp; raise QuantizeError on failure."""
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = int(file_type)
    params.nthread = threads or os.cpu_count() or 1
    params.max_buf_size = MAX_BUF_BYTES
    errors: list[str] = []
    with _quantizer_log(progress, errors):
        rc = llama_cpp.llama_model_quantize(os.fsencode(src), os.fsencode(dst), ctypes.byref(params))
    if rc != 0:
        detail = errors[-1] if errors else f"return code {rc}"
        raise QuantizeError(src, f"llama.cpp's quantizer failed: {detail}")
