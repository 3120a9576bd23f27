"""llama.cpp's extra weight buffers (edge/runtime/cpu_buffers.py): AMX's kernels crash this llama.cpp on any
batch of two or more tokens, so the Engine keeps them off where the CPU backend offers AMX.

The crash test runs in a child process (a SIGSEGV would take pytest with it) on a 256-wide Q4_0
model, whose matrices qualify for AMX (rows a multiple of 32, columns of 32). On a CPU without AMX
the buffers stay on and the batch works either way; on one with AMX, `extra_buffers=True` (the
bindings' default) dies with SIGSEGV, which `test_engine_default_survives_a_batch` would catch.
"""

from __future__ import annotations

import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from edge.runtime.cpu_buffers import cpu_extra_buffer_types, extra_buffers_safe
from edge.runtime.engine import Engine
from tests.model_factory import TINY_UNTIED_SHARDED, write_zero_gguf
from tests.runtime.test_memory_plan_llama import llama_log

ROOT = Path(__file__).resolve().parents[2]


def test_amx_is_not_safe_repack_is():
    assert extra_buffers_safe([]) and extra_buffers_safe(["CPU_REPACK"])
    assert not extra_buffers_safe(["AMX", "CPU_REPACK"]) and not extra_buffers_safe(["AMX"])


@pytest.fixture(scope="module")
def amx_shaped(converted, tmp_path_factory) -> Path:
    return write_zero_gguf(tmp_path_factory.mktemp("amx") / "q4_0-256.gguf", TINY_UNTIED_SHARDED.with_(layers=1),
                           like=converted("tied", "f16"))


def model_buffers(log: str) -> set[str]:
    """The buffer names llama.cpp put weights in ("CPU_Mapped", "CPU_REPACK", "AMX")."""
    return set(re.findall(r"load_tensors: +(\S+) model buffer size", log))


def test_buffer_types_are_llama_cpps(amx_shaped):
    """What cpu_extra_buffer_types lists is what llama.cpp puts weights in when allowed to."""
    offered = cpu_extra_buffer_types()
    with llama_log() as lines, Engine.load(amx_shaped, n_ctx=256, n_threads=2, extra_buffers=True):
        pass
    used = model_buffers("".join(lines))
    assert used - {"CPU_Mapped", "CPU"} <= set(offered), (used, offered)
    if offered:
        assert used & set(offered), f"llama.cpp used none of the offered extra buffers {offered}: {used}"


def test_engine_default_keeps_crashing_buffers_off(amx_shaped):
    offered = cpu_extra_buffer_types()
    with llama_log() as lines, Engine.load(amx_shaped, n_ctx=256, n_threads=2) as engine:
        assert engine.extra_buffers == extra_buffers_safe(offered)
    used = model_buffers("".join(lines))
    assert not used & {"AMX"}, used
    if "AMX" in offered:
        assert used <= {"CPU_Mapped", "CPU"}, f"extra buffers used on an AMX machine: {used}"


@pytest.mark.parametrize("mmap", [True, False])
def test_engine_default_survives_a_batch(amx_shaped, mmap):
    """A 2-token prompt and a 2-sequence batched step, in a child: exit 0, not SIGSEGV."""
    code = textwrap.dedent(f"""
        import sys; sys.path.insert(0, {str(ROOT)!r})
        from edge.runtime.engine import Engine
        from edge.chat import Chat
        e = Engine.load({str(amx_shaped)!r}, n_ctx=256, n_threads=2, use_mmap={mmap})
        e.llama.eval([9707, 11])
        e.close()
        e = Engine.load({str(amx_shaped)!r}, n_ctx=256, n_threads=2, use_mmap={mmap}, parallel=2)
        from edge.runtime.sequence import open_sequence
        import threading
        seqs = [open_sequence(e, [1, 2, 3], threading.Event()) for _ in range(2)]
        ts = [threading.Thread(target=s.prefill, args=([9707, 11, 1879 + i],)) for i, s in enumerate(seqs)]
        [t.start() for t in ts]; [t.join() for t in ts]
        print("batched", e.scheduler.steps)
        e.close()
    """)
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, f"exit {run.returncode}: {run.stderr[-2000:]}"
    assert "batched" in run.stdout
