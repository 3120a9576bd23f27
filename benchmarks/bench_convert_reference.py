"""Conversion against llama.cpp's own pipeline, same input, same run.

    python benchmarks/bench_convert_reference.py [--shape 0.6b]

Reference: convert_hf_to_gguf.py from the llama.cpp that llama-cpp-python vendors, run in its
own virtual environment (torch 2.13.0 CPU, transformers) at benchmarks/.cache/ref-venv, then its
llama-quantize for Q4_K_M; Q8_0 the way llama.cpp makes it (convert_hf_to_gguf --outtype q8_0).
Ours: `qwen3-edge quantize`. Each run is its own process; wall time and peak RSS come from
wait4. Then: F16 tensors of both converters compared byte for byte, and both F16 GGUFs' logits.
See benchmarks/README.md for building the reference tools.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from edge.runtime.cpu_buffers import safe_llama

ROOT = Path(__file__).resolve().parent.parent
CACHE = ROOT / "benchmarks" / ".cache"
SRC = CACHE / "llama.cpp-src"
REF_PY = CACHE / "ref-venv" / "bin" / "python"
QUANTIZE_BIN = SRC / "build" / "bin" / "llama-quantize"


def measured(cmd: list[str]) -> tuple[float, int]:
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - start
    err = proc.stderr.read().decode(errors="replace")
    if os.waitstatus_to_exitcode(status):
        raise SystemExit(f"{' '.join(cmd)} failed:\n{err[-3000:]}")
    return wall, usage.ru_maxrss * 1024


def reference_convert(folder: Path, outtype: str, out: Path) -> tuple[float, int]:
    return measured([str(REF_PY), str(SRC / "convert_hf_to_gguf.py"), str(folder), "--outtype", outtype,
                     "--outfile", str(out)])


def ours(folder: Path, qtype: str, out: Path) -> tuple[float, int]:
    return measured([sys.executable, "-m", "cli", "quantize", str(folder), "-t", qtype, "-o", str(out), "--json"])


def compare_tensors(a: Path, b: Path) -> tuple[int, int, list[str]]:
    """(identical, differing, only-in-one) tensors of two GGUFs, by name."""
    from gguf import GGUFReader
    ta = {t.name: t for t in GGUFReader(a).tensors}
    tb = {t.name: t for t in GGUFReader(b).tensors}
    same = diff = 0
    for name in ta.keys() & tb.keys():
        x, y = ta[name], tb[name]
        if x.tensor_type == y.tensor_type and np.array_equal(np.asarray(x.data).view(np.uint8), np.asarray(y.data).view(np.uint8)):
            same += 1
        else:
            diff += 1
    return same, diff, sorted(ta.keys() ^ tb.keys())


def logits(path: Path, tokens: list[int]) -> np.ndarray:
    import llama_cpp
    llm = safe_llama(str(path), n_ctx=64, logits_all=True, type_k=0, type_v=0, verbose=False)
    llm.eval(tokens)
    out = np.array(llm.scores[: len(tokens)])
    llm.close()
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--shape", default="0.6b")
    args = ap.parse_args()
    folder = CACHE / f"Qwen3-{args.shape.upper()}-random"
    work = CACHE / "convert-compare"
    work.mkdir(exist_ok=True)
    print(f"source {folder.name}; {os.cpu_count()} cores")
    print(f"{'pipeline':34} {'seconds':>8} {'peak RSS':>10} {'size':>10}")

    def row(label: str, wall: float, rss: int, path: Path) -> None:
        print(f"{label:34} {wall:8.1f} {rss / 1e9:7.2f} GB {path.stat().st_size / 1e9:7.3f} GB")

    # Q8_0
    ref_q8 = work / "ref-q8_0.gguf"
    w, r = reference_convert(folder, "q8_0", ref_q8)
    row("llama.cpp convert --outtype q8_0", w, r, ref_q8)
    our_q8 = work / "ours-q8_0.gguf"
    w2, r2 = ours(folder, "q8_0", our_q8)
    row("qwen3-edge quantize -t q8_0", w2, r2, our_q8)
    print(f"  ratio ours/ref: time {w2 / w:.2f}, peak RSS {r2 / r:.2f}")
    # Q4_K_M
    ref_bf16, ref_q4 = work / "ref-bf16.gguf", work / "ref-q4_k_m.gguf"
    w_c, r_c = reference_convert(folder, "bf16", ref_bf16)
    w_q, r_q = measured([str(QUANTIZE_BIN), str(ref_bf16), str(ref_q4), "Q4_K_M", str(os.cpu_count())])
    row("llama.cpp convert bf16 + quantize", w_c + w_q, max(r_c, r_q), ref_q4)
    print(f"  (convert {w_c:.1f}s {r_c / 1e9:.2f} GB, quantize {w_q:.1f}s {r_q / 1e9:.2f} GB)")
    our_q4 = work / "ours-q4_k_m.gguf"
    w2, r2 = ours(folder, "q4_k_m", our_q4)
    row("qwen3-edge quantize -t q4_k_m", w2, r2, our_q4)
    print(f"  ratio ours/ref: time {w2 / (w_c + w_q):.2f}, peak RSS {r2 / max(r_c, r_q):.2f}, "
          f"size {our_q4.stat().st_size / ref_q4.stat().st_size:.4f}")
    # F16 identity and logits
    ref_f16, our_f16 = work / "ref-f16.gguf", work / "ours-f16.gguf"
    reference_convert(folder, "f16", ref_f16)
    ours(folder, "f16", our_f16)
    same, diff, only = compare_tensors(ref_f16, our_f16)
    print(f"F16 tensors: {same} identical, {diff} differing, only in one file: {only or 'none'}")
    tokens = [9707, 11, 1879, 0, 151644, 872, 198, 3838, 374, 220, 17, 10, 17, 30]
    la, lb = logits(ref_f16, tokens), logits(our_f16, tokens)
    print(f"F16 logits, max abs difference between the two files: {np.abs(la - lb).max():.3g}")
    for name, a, b in (("Q8_0", ref_q8, our_q8), ("Q4_K_M", ref_q4, our_q4)):
        same, diff, only = compare_tensors(a, b)
        print(f"{name} tensors: {same} identical, {diff} differing, only in one file: {only or 'none'}")


if __name__ == "__main__":
    main()
