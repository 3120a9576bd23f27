"""How llama.cpp's OpenMP workers wait, idle and beside a competing CPU load (issue 25 §2).

    python benchmarks/bench_polling.py [--gguf PATH] [--rounds 3] [--tokens 48] [--llama-bench PATH]

Each measurement is a fresh process (libgomp reads its wait setting once, when it loads) that
imports edge, loads the GGUF with weight repacking as the Engine chooses and flash attention on,
and decodes --tokens single tokens from depth 0 as llama-bench does (edge/runtime/bench.py's
measure_gen: an empty cache, each decode synchronized); the best of 3 passes, tok/s. Settings: the
runtime's default (edge/runtime/openmp.py: a short spin), libgomp's default (GOMP_SPINCOUNT=300000,
what a process that loads llama.cpp without qwen3-edge gets) and OMP_WAIT_POLICY=PASSIVE, each at
every thread count from 1 to the CPU count. "loaded": one busy process per CPU runs meanwhile.
Rounds alternate the settings; medians are printed, and the ratio of the runtime's default to the
best setting of the sweep. With --llama-bench, its tg at the same thread counts (idle) as well.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import statistics
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CPUS = os.cpu_count() or 1
DEFAULT_GGUF = ROOT / "benchmarks" / ".cache" / "Qwen3-0.6B-random-q4_k_m.gguf"
SETTINGS = {"qwen3-edge default": {}, "libgomp default": {"GOMP_SPINCOUNT": "300000"},
            "passive": {"OMP_WAIT_POLICY": "PASSIVE"}}

DECODE = r"""
import random, sys
import edge
from edge.runtime.bench import RawContext, measure_gen
from edge.runtime.cpu_buffers import TunedLlama, default_extra_buffers
path, threads, tokens = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
llm = TunedLlama(model_overrides={"use_extra_bufts": default_extra_buffers()}, model_path=path, n_ctx=256,
                 n_threads=threads, n_threads_batch=threads, flash_attn=True, verbose=False)
rng = random.Random(0)
ids = [rng.randrange(1000, 20000) for _ in range(tokens)]
best = max(tokens / measure_gen(RawContext(llm._ctx.ctx), ids) for _ in range(3))  # llama-bench's test_gen
print(best, edge.WORKERS_WAIT, sep="\t")
"""


def busy() -> None:
    while True:
        pass


def decode(gguf: Path, threads: int, tokens: int, env: dict) -> float:
    clean = {k: v for k, v in os.environ.items() if k not in ("GOMP_SPINCOUNT", "OMP_WAIT_POLICY")}
    out = subprocess.run([sys.executable, "-c", DECODE, str(gguf), str(threads), str(tokens)], env={**clean, **env},
                         capture_output=True, text=True, cwd=ROOT, timeout=600)
    if out.returncode:
        raise SystemExit(out.stderr[-2000:])
    return float(out.stdout.split("\t")[0])


def llama_bench(binary: Path, gguf: Path, threads: int, tokens: int) -> float:
    from edge.runtime.cpu_buffers import default_extra_buffers
    out = subprocess.run([str(binary), "-m", str(gguf), "-p", "0", "-n", str(tokens), "-t", str(threads), "-fa", "on",
                          "--repack", "1" if default_extra_buffers() else "0", "-r", "3", "-o", "csv"],
                         capture_output=True, text=True, timeout=600)
    rows = [line for line in out.stdout.splitlines() if line and not line.startswith("build_commit")]
    return float(rows[-1].split(",")[-2].strip('"'))


def sweep(gguf: Path, rounds: int, tokens: int) -> dict[tuple[str, int], float]:
    runs: dict[tuple[str, int], list[float]] = {}
    for _ in range(rounds):
        for name, env in SETTINGS.items():
            for threads in range(1, CPUS + 1):
                runs.setdefault((name, threads), []).append(decode(gguf, threads, tokens, env))
    return {key: statistics.median(v) for key, v in runs.items()}


def report(label: str, result: dict[tuple[str, int], float]) -> None:
    print(f"{label}: tok/s, median of rounds")
    for name in SETTINGS:
        print(f"  {name:20s} " + "  ".join(f"{t} thr {result[(name, t)]:6.2f}" for t in range(1, CPUS + 1)))
    best_key = max(result, key=result.get)
    ours = result[("qwen3-edge default", CPUS)]
    print(f"  best of the sweep: {best_key[0]}, {best_key[1]} threads, {result[best_key]:.2f}; the runtime's default "
          f"({CPUS} threads) {ours:.2f} = {ours / result[best_key]:.2f}x; libgomp's default at its best thread count "
          f"{max(result[('libgomp default', t)] for t in range(1, CPUS + 1)):.2f}")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--gguf", type=Path, default=DEFAULT_GGUF)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--tokens", type=int, default=48)
    ap.add_argument("--llama-bench", type=Path, default=None)
    args = ap.parse_args()
    print(f"{args.gguf.name}, {CPUS} CPUs, load {os.getloadavg()[0]:.1f}, {args.tokens} tokens, flash attention on")
    idle = sweep(args.gguf, args.rounds, args.tokens)
    report("idle", idle)
    if args.llama_bench:
        ref = {t: llama_bench(args.llama_bench, args.gguf, t, args.tokens) for t in range(1, CPUS + 1)}
        best = max(ref.values())
        print(f"  llama-bench tg{args.tokens} (its own default wait): " + "  ".join(f"{t} thr {v:.2f}" for t, v in ref.items())
              + f"; the runtime's default / llama-bench's best {idle[('qwen3-edge default', CPUS)] / best:.2f}x")
    hogs = [multiprocessing.Process(target=busy, daemon=True) for _ in range(CPUS)]
    for h in hogs:
        h.start()
    try:
        loaded = sweep(args.gguf, args.rounds, args.tokens)
    finally:
        for h in hogs:
            h.terminate()
    report(f"loaded ({len(hogs)} busy processes)", loaded)


if __name__ == "__main__":
    main()
