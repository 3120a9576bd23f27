"""The calibration's choice against an exhaustive sweep of the same candidates and llama-bench.

    python benchmarks/bench_tune.py [--gguf PATH] [--llama-bench PATH] [--busy N] [--tokens 32]

1. `edge.runtime.tune.tune_model` calibrates (its wall time is printed: the goal is under 15 s on the 0.6B).
2. The sweep measures every candidate longer, as llama-bench does (one model copy, a context per
   flash-attention setting, cleared caches, synchronized decodes): decoding `--tokens` tokens at
   depth 0 and at 512, a 256-token prompt; two interleaved rounds, best kept. The score is the
   calibration's (geometric mean of the two decode speeds). Printed: tuned / best (goal >= 0.95
   idle, >= 0.8 of the best thread setting loaded).
3. llama-bench (same libraries' source) over the same flash-attention and thread candidates, tg at
   depth 0 and 512: the tuned setting's sweep score / llama-bench's best score (goal >= 0.97 idle).
`--busy N` starts N spinning processes first (a desktop's other programs), for the loaded case.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import llama_cpp  # noqa: E402
import llama_cpp._logger  # noqa: E402

from edge.runtime.bench import RawContext, measure_gen, measure_prompt  # noqa: E402
from edge.runtime.context_plan import physical_cores  # noqa: E402
from edge.runtime.cpu_buffers import default_extra_buffers  # noqa: E402
from edge.runtime.engine import detect_backend, local_offload_targets  # noqa: E402
from edge.runtime.tune import tune_model  # noqa: E402
from edge.runtime.tune_rules import Measured, candidates, decode_score  # noqa: E402

DEFAULT_GGUF = Path("/work/wt/_llama/models/Qwen3-0.6B-random-q4_k_m.gguf")
DEFAULT_BENCH = Path("/work/wt/_llama/bin/llama-bench")
DEPTH = 512


def sweep(path: Path, settings, tokens: int, gpu_layers: int, rounds: int = 2) -> list[Measured]:
    llama_cpp._logger.set_verbose(False)
    mp = llama_cpp.llama_model_default_params()
    mp.n_gpu_layers, mp.use_extra_bufts = gpu_layers, bool(default_extra_buffers())
    model = llama_cpp.llama_model_load_from_file(str(path).encode(), mp)
    vocab = llama_cpp.llama_vocab_n_tokens(llama_cpp.llama_model_get_vocab(model))
    rng = random.Random(0)
    best: dict = {}
    for fa in (False, True):
        group = [s for s in settings if s.flash_attn == fa]
        cp = llama_cpp.llama_context_default_params()
        cp.n_ctx, cp.n_batch, cp.n_ubatch = DEPTH + 512, 512, 512
        cp.flash_attn_type = llama_cpp.LLAMA_FLASH_ATTN_TYPE_ENABLED if fa else llama_cpp.LLAMA_FLASH_ATTN_TYPE_DISABLED
        ctx = llama_cpp.llama_init_from_model(model, cp)
        raw = RawContext(ctx)
        for _ in range(rounds):
            for s in group:
                llama_cpp.llama_set_n_threads(ctx, s.threads, s.threads)
                pp = 256 / measure_prompt(raw, [rng.randrange(vocab) for _ in range(256)], 512)
                tg0 = tokens / measure_gen(raw, [rng.randrange(vocab) for _ in range(tokens)])
                tgd = tokens / measure_gen(raw, [rng.randrange(vocab) for _ in range(tokens)],
                                           [rng.randrange(vocab) for _ in range(DEPTH)])
                old = best.get(s, (0, 0, 0))
                best[s] = (max(old[0], tg0), max(old[1], tgd), max(old[2], pp))
                print(f"  sweep fa={int(fa)} t={s.threads}: tg0 {tg0:.1f} tg@{DEPTH} {tgd:.1f} pp256 {pp:.1f}", flush=True)
        llama_cpp.llama_free(ctx)
    llama_cpp.llama_model_free(model)
    return [Measured(s, *best[s]) for s in settings]


def llama_bench(exe: Path, path: Path, settings, tokens: int, gpu_layers: int) -> dict:
    """{(fa, threads): (tg0, tg_depth)} from llama-bench's JSON output."""
    threads = sorted({s.threads for s in settings})
    cmd = [str(exe), "-m", str(path), "-fa", "0,1", "-t", ",".join(map(str, threads)), "-p", "0", "-n", str(tokens),
           "-d", f"0,{DEPTH}", "-r", "2", "-ngl", str(99 if gpu_layers else 0), "-o", "json",
           "--repack", "1" if default_extra_buffers() else "0"]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    got: dict = {}
    for r in json.loads(out):
        key = (bool(r["flash_attn"]), int(r["n_threads"]))
        got.setdefault(key, [0.0, 0.0])[0 if r["n_depth"] == 0 else 1] = float(r["avg_ts"])
    return got


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--gguf", type=Path, default=DEFAULT_GGUF)
    ap.add_argument("--llama-bench", type=Path, default=DEFAULT_BENCH)
    ap.add_argument("--busy", type=int, default=0, help="spinning processes to start first (a loaded machine)")
    ap.add_argument("--tokens", type=int, default=32)
    ap.add_argument("--cpu", action="store_true", help="keep every layer on the CPU where a GPU is listed")
    args = ap.parse_args()
    spinners = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(args.busy)]
    try:
        targets = [] if args.cpu else local_offload_targets()
        gpu_layers = -1 if targets else 0
        backend = detect_backend(gpu_layers, targets)
        print(f"{args.gguf.name} · {backend} · {os.cpu_count()} CPUs, {physical_cores()} physical · "
              f"{args.busy} busy processes · load {os.getloadavg()[0]:.1f}", flush=True)
        t = time.perf_counter()
        tuned, measured, _ = tune_model(args.gguf, n_gpu_layers=gpu_layers)
        print(f"calibration: {time.perf_counter() - t:.1f}s wall ({tuned.seconds:.1f}s measuring): {tuned.describe()}")
        for m in measured:
            print(f"  calib fa={int(m.setting.flash_attn)} t={m.setting.threads}: tg0 {m.tg0:.1f} "
                  f"tg@{DEPTH} {m.tg_depth:.1f} pp {m.pp:.1f}")
        settings = candidates(physical_cores(), backend)
        swept = sweep(args.gguf, settings, args.tokens, gpu_layers)
        best = max(swept, key=decode_score)
        mine = next(m for m in swept if (m.setting.flash_attn, m.setting.threads) == (tuned.flash_attn, tuned.n_threads))
        print(f"sweep best: fa={int(best.setting.flash_attn)} t={best.setting.threads} score {decode_score(best):.1f}; "
              f"tuned score {decode_score(mine):.1f}: tuned/best {decode_score(mine) / decode_score(best):.3f}")
        same_fa = [m for m in swept if m.setting.flash_attn == tuned.flash_attn]
        best_t = max(same_fa, key=decode_score)
        print(f"best thread setting at fa={int(tuned.flash_attn)}: t={best_t.setting.threads}; "
              f"tuned/best threads {decode_score(mine) / decode_score(best_t):.3f}")
        if args.llama_bench.exists():
            lb = llama_bench(args.llama_bench, args.gguf, settings, args.tokens, gpu_layers)
            key, (a, b) = max(lb.items(), key=lambda kv: (kv[1][0] * kv[1][1]) ** 0.5)
            print(f"llama-bench best: fa={int(key[0])} t={key[1]} tg0 {a:.1f} tg@{DEPTH} {b:.1f} score "
                  f"{(a * b) ** 0.5:.1f}; tuned (sweep) / llama-bench best {decode_score(mine) / (a * b) ** 0.5:.3f}")
            for k, (x, y) in sorted(lb.items()):
                print(f"  llama-bench fa={int(k[0])} t={k[1]}: tg0 {x:.1f} tg@{DEPTH} {y:.1f}")
        else:
            print(f"(no llama-bench at {args.llama_bench}: scripts/build_llama_reference.sh builds it)")
        print(f"load after: {os.getloadavg()[0]:.1f}")
    finally:
        for p in spinners:
            p.kill()


if __name__ == "__main__":
    main()
