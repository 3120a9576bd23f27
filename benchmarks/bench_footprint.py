"""The default chat's footprint, before and after the defaults that follow the machine: peak RSS
and generation speed of `qwen3-edge run MODEL PROMPT` with no flags, each run in its own process.

    python benchmarks/bench_footprint.py [--shapes 0.6b 1.7b 4b] [--before TREE] [--reps 3] [--threads N]
    python benchmarks/bench_footprint.py --part growth [--shape 0.6b]

"before" runs the same command in another checkout of the project (TREE: a `git worktree` at the
commit before footprint.py, whose defaults were an 8,192-token f16 KV cache made at load, and
mmap); "after" runs it here. Runs alternate (before, after, before, ...) so that a noisy machine
hits both alike; peak RSS is the child's ru_maxrss (os.wait4), speed the reply's own tokens/s
(first token to last). Time figures belong under the timing lock:

    flock /tmp/qwen3-bench.lock python benchmarks/bench_footprint.py

The growth part measures the pause of each growth (llama.cpp's sequence state copied into a
re-created context, context_growth.py) against evaluating the same tokens again.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CACHE = ROOT / "benchmarks" / ".cache"
sys.path.insert(0, str(ROOT))

PROMPT = "Tell me one more fact about bicycles, in a single sentence please, and keep it short. " * 10
MAX_TOKENS = 128


def model(shape: str) -> Path:
    path = CACHE / f"Qwen3-{shape.upper()}-random-q4_k_m.gguf"
    if not path.exists():
        raise SystemExit(f"{path} is missing: python benchmarks/bench_quantize.py --shape {shape} --types q4_k_m")
    return path


def run_default(tree: Path, gguf: Path, extra: list[str]) -> dict:
    """`qwen3-edge run` from `tree` in a child process: its JSON reply plus peak RSS and wall time."""
    cmd = [sys.executable, "-m", "cli", "run", str(gguf), PROMPT, "--max-tokens", str(MAX_TOKENS), "--seed", "0",
           "--json", *extra]
    env = {**os.environ, "PYTHONPATH": str(tree)}
    with tempfile.TemporaryFile("w+") as out_f, tempfile.TemporaryFile("w+") as err_f:
        start = time.perf_counter()
        proc = subprocess.Popen(cmd, cwd=tree, env=env, stdout=out_f, stderr=err_f, text=True)
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - start
        out_f.seek(0), err_f.seek(0)
        out, err = out_f.read(), err_f.read()
    if os.waitstatus_to_exitcode(status):
        raise SystemExit(f"{' '.join(cmd[:4])} in {tree} failed:\n{err[-2000:]}")
    reply = json.loads(out)
    return {"rss": usage.ru_maxrss * 1024, "tok_s": reply["tokens_per_s"], "wall": wall,
            "ttft": reply["ttft_s"], "generated": reply["generated_tokens"]}


def footprint(args) -> None:
    rows = []
    for shape in args.shapes:
        gguf = model(shape)
        runs: dict[str, list[dict]] = {"before": [], "after": []}
        for _ in range(args.reps):
            for name, tree in (("before", args.before), ("after", ROOT)):
                runs[name].append(run_default(tree, gguf, args.flags))
        for name, rs in runs.items():
            row = (shape, name, max(r["rss"] for r in rs) / 1e9, statistics.median(r["tok_s"] for r in rs),
                   statistics.median(r["ttft"] for r in rs), statistics.median(r["wall"] for r in rs),
                   rs[0]["generated"])
            rows.append(row)
            print(f"{shape:5} {name:6} peak RSS {row[2]:5.2f} GB  {row[3]:6.1f} tok/s  ttft {row[4]:5.2f} s  "
                  f"wall {row[5]:5.1f} s  ({row[6]} tokens; tok/s per run: "
                  f"{', '.join(format(r['tok_s'], '.1f') for r in rs)})", flush=True)
    print("\n| shape | defaults | peak RSS | tok/s | time to first token | wall (load + reply) |")
    print("|---|---|---|---|---|---|")
    for shape, name, rss, tok_s, ttft, wall, _ in rows:
        print(f"| {shape} | {name} | {rss:.2f} GB | {tok_s:.1f} | {ttft:.2f} s | {wall:.1f} s |")


def growth(args) -> None:
    """Grow a context 2048 -> 4096 -> 8192 -> 16384 (--grow-past) with a full cache each time; each pause
    against re-evaluating the cached tokens in a fresh context of the new size."""
    import numpy as np

    from edge.runtime.engine import Engine
    gguf = model(args.shape)
    rng = np.random.default_rng(0)
    with Engine.load(gguf, n_threads=args.threads) as engine:
        print(engine.footprint.describe())
        vocab = engine.llama.n_vocab()
        tokens = rng.integers(1000, vocab - 1000, size=16384).tolist()
        from edge.runtime.sequence import open_sequence
        import threading
        seq = open_sequence(engine, tokens[:1], threading.Event())
        seq.prefill(tokens[:2040])
        for size in args.grow_past:
            seq.eval(tokens[seq.n_tokens:size + 8])   # crosses `size`: one growth, then the rest
        growths = list(engine.growths)
    for old, new, seconds in growths:
        with Engine.load(gguf, n_ctx=new, grow=False, n_threads=args.threads) as fresh:
            start = time.perf_counter()
            fresh.llama.eval(tokens[:old])
            again = time.perf_counter() - start
        print(f"grow {old:6} -> {new:6} with {old} tokens cached: {seconds * 1000:7.1f} ms; "
              f"evaluating them again: {again * 1000:8.1f} ms", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--part", choices=["footprint", "growth"], default="footprint")
    ap.add_argument("--shapes", nargs="+", default=["0.6b", "1.7b", "4b"])
    ap.add_argument("--shape", default="0.6b")
    ap.add_argument("--before", type=Path, default=Path("/tmp/h_before"))
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--grow-past", type=int, nargs="+", default=[2048, 4096, 8192],
                    help="growth part: the sizes the cache crosses")
    ap.add_argument("--threads", type=int, help="--threads for both runs (1 keeps a shared 2-core machine's "
                                                "other jobs from stalling llama.cpp's thread barrier)")
    args = ap.parse_args()
    args.flags = ["--threads", str(args.threads)] if args.threads else []
    if args.part == "growth":
        growth(args)
    else:
        footprint(args)


if __name__ == "__main__":
    main()
