"""The memory plan against what llama.cpp allocates: the KV cache and compute buffer sizes that
llama.cpp logs when Engine.load opens a model, next to the Engine's own memory_plan.

Two shapes: the tiny converted model (4 heads, hidden 64) and the real Qwen3-0.6B shape (16 heads,
8 KV heads, head_dim 128, hidden 1024; one layer, all-zero weights), at 512, 4096 and 32768
tokens, with an f16 cache (no flash attention: the attention scores dominate at 32K) and a q8_0
cache (flash attention). Measured (MiB, llama.cpp's compute buffer vs the plan's overhead):
tiny 297.00-297.13 vs 360.75, and 321.13 vs 384 at 32K without flash attention; 0.6B shape
300.75-302.75 vs 360.75, and 1106.01 vs 1152 at 32K without flash attention. For the 0.6B shape
the plan's compute term falls up to 18 MiB short (activations of the 1024-wide hidden state),
which its 64 MiB allowance covers. KV sizes agree to llama.cpp's two printed decimals.
"""

from __future__ import annotations

import ctypes
import re
from contextlib import contextmanager

import llama_cpp
import llama_cpp._logger
import pytest

from edge.runtime.engine import Engine
from tests.model_factory import QWEN3_0_6B, write_zero_gguf

MIB = 1 << 20
# What the plan adds beyond the compute buffer for the output buffer, graph metadata and the
# process: it may exceed llama.cpp's compute buffer by no more than this.
ALLOWANCE_MIB = 64


@contextmanager
def llama_log():
    """Everything llama.cpp logs meanwhile, whatever the bindings' verbosity."""
    lines: list[str] = []

    @llama_cpp.llama_log_callback
    def collect(level, text, user_data):
        lines.append(text.decode("utf-8", "replace"))

    llama_cpp.llama_log_set(collect, ctypes.c_void_p(0))
    try:
        yield lines
    finally:
        llama_cpp.llama_log_set(llama_cpp._logger.llama_log_callback, ctypes.c_void_p(0))


def reported_mib(log: str, what: str) -> str:
    """A CPU buffer size as llama.cpp logged it (printf "%8.2f"): "CPU compute buffer size = 297.13 MiB"."""
    sizes = re.findall(rf"\bCPU +{what} buffer size = +([\d.]+) MiB", log)
    assert len(sizes) == 1, f"expected one CPU {what} buffer in llama.cpp's log, found {sizes}"
    return sizes[0]


@pytest.fixture(scope="module")
def ggufs(converted, tmp_path_factory):
    tiny = converted("tied", "f16")
    shaped = write_zero_gguf(tmp_path_factory.mktemp("zero") / "qwen3-0.6b-shape.gguf",
                             QWEN3_0_6B.with_(layers=1), like=tiny)
    return {"tiny": tiny, "0.6b": shaped}


@pytest.mark.parametrize("model", ["tiny", "0.6b"])
@pytest.mark.parametrize("n_ctx", [512, 4096, 32768])
@pytest.mark.parametrize("kv", ["f16", "q8_0"])
def test_plan_matches_llama_cpp_buffers(model, n_ctx, kv, ggufs):
    """The CPU plan against llama.cpp's CPU buffers, on any build (test_vulkan.py checks a device's)."""
    with llama_log() as lines, Engine.load(ggufs[model], n_ctx=n_ctx, kv_cache_type=kv, n_threads=2,
                                           n_gpu_layers=0) as engine:
        plan = engine.memory_plan
    log = "".join(lines)
    assert f"{plan.kv_bytes / MIB:.2f}" == reported_mib(log, "KV")      # exact to llama.cpp's rounding
    compute_mib, output_mib = (float(reported_mib(log, w)) for w in ("compute", "output"))
    overhead = plan.overhead_bytes / MIB
    assert compute_mib + output_mib <= overhead, "the plan undercounts llama.cpp's buffers"
    assert overhead <= compute_mib + ALLOWANCE_MIB, "the plan overcounts llama.cpp's compute buffer"
