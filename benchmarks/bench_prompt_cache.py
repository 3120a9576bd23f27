"""Warm at restart: time to first token of the first reply of a fresh process with a 2,000-token
system prompt, with the persistent prompt cache (edge/runtime/prompt_cache.py) against without it.

    python benchmarks/bench_prompt_cache.py [--shape 0.6b] [--reps 3] [--kv f16 q8_0] [--tokens 2000]

Every measurement is its own process (a restart): for each KV type, a warm-up process writes the
cache file, then cache-off and cache-on processes alternate (off, on, off, ...) so a noisy machine
hits both alike. Each child loads the model as an app would (Engine.load defaults, the KV type
given), sends one message after the system prompt (non-thinking, greedy, 16 tokens) and reports
the reply's ttft_s (prefill, the file read and checked included), the answer, and the logits at the
prompt's last position recomputed over the KV cache it built (read from the file or evaluated).
Printed: median TTFT off / on and their ratio, whether the answers are identical, the largest
logit difference, and the cache file's size per 1,000 tokens. The model is the random-weight
Q4_K_M that bench_quantize.py builds (benchmarks/.cache). Time figures belong under the lock:

    flock /tmp/qwen3-bench.lock python benchmarks/bench_prompt_cache.py
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CACHE = ROOT / "benchmarks" / ".cache"
sys.path.insert(0, str(ROOT))

QUESTION = "Which rule applies to a refund after thirty days?"


def system_prompt(tokens: int) -> str:
    """About `tokens` tokens of numbered instructions (the child reports the exact count)."""
    rules = [f"Rule {i}: when a customer asks about topic {i}, answer politely, cite rule {i}, and keep it short."
             for i in range(1, tokens // 20 + 2)]
    return "You are the support assistant of a small shop.\n" + "\n".join(rules)


def child(args) -> None:
    import numpy as np
    import llama_cpp
    from edge import Chat, Engine
    from edge.runtime.prompt_cache import PromptCache

    cache = PromptCache(args.cache_dir) if args.cache_dir else False
    with Engine.load(args.model, kv_cache_type=args.kv, prompt_cache=cache) as engine:
        chat = Chat(engine, system=system_prompt(args.tokens), mode="no_think", max_tokens=16,
                    sampling={"top_k": 1})
        reply = chat.send(QUESTION)
        prompt = engine.tokenize(chat.render(chat.messages([]) + [{"role": "user", "content": QUESTION}], False))
        llama = engine.llama
        llama.n_tokens = len(prompt) - 1          # the KV cache this process built for the prompt
        llama.eval(prompt[-1:])
        logits = np.ctypeslib.as_array(llama_cpp.llama_get_logits_ith(llama._ctx.ctx, -1), shape=(llama.n_vocab(),))
        np.save(args.logits, logits.astype(np.float32))
        pc = engine.prompt_cache
        print(json.dumps({"ttft": reply.ttft_s, "answer": reply.answer, "prompt_tokens": reply.prompt_tokens,
                          "evaluated": reply.evaluated_tokens, "hits": pc.hits if pc else 0,
                          "saves": pc.saves if pc else 0, "warnings": pc.warnings if pc else [],
                          "prefix": pc.prefix_length(prompt) if pc else 0}))


def run_child(model: Path, kv: str, tokens: int, cache_dir: Path | None, logits: Path) -> dict:
    cmd = [sys.executable, __file__, "--child", "--model", str(model), "--kv", kv, "--tokens", str(tokens),
           "--logits", str(logits)] + (["--cache-dir", str(cache_dir)] if cache_dir else [])
    proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
    if proc.returncode:
        raise SystemExit(f"child failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--model", type=Path)
    ap.add_argument("--cache-dir", type=Path)
    ap.add_argument("--logits", type=Path)
    ap.add_argument("--shape", default="0.6b")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--kv", nargs="+", default=["f16", "q8_0"])
    ap.add_argument("--tokens", type=int, default=2000)
    ap.add_argument("--size-only", action="store_true", help="only write a cache file per KV type and report its size")
    args = ap.parse_args()
    if args.child:
        args.kv = args.kv[0]
        return child(args)
    import numpy as np

    model = args.model or CACHE / f"Qwen3-{args.shape.upper()}-random-q4_k_m.gguf"
    if not model.exists():
        raise SystemExit(f"{model} is missing: python benchmarks/bench_quantize.py --shape {args.shape} --types q4_k_m")
    print(f"model {model.name}, {os.cpu_count()} cores, system prompt of about {args.tokens} tokens, "
          f"{args.reps} fresh processes each way")
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        for kv in args.kv:
            folder = tmp / f"cache-{kv}"
            warm = run_child(model, kv, args.tokens, folder, tmp / "warm.npy")  # evaluates the block, then the rest
            [f] = folder.glob("*.kvcache")
            if args.size_only:
                prefix = warm["prefix"]
                print(f"{kv:5} file {f.stat().st_size / 1e6:.1f} MB for a {warm['prompt_tokens']}-token prompt's "
                      f"system block: {f.stat().st_size / prefix * 1000 / 1e6:.1f} MB per 1,000 tokens")
                continue
            off, on = [], []
            for i in range(args.reps):
                off.append(run_child(model, kv, args.tokens, None, tmp / f"off{i}.npy"))
                on.append(run_child(model, kv, args.tokens, folder, tmp / f"on{i}.npy"))
            assert all(r["hits"] == 1 for r in on) and warm["saves"] == 1, (warm, on)
            prefix = warm["prefix"]   # the system block, read from the file by the cache-on runs
            t_off, t_on = statistics.median(r["ttft"] for r in off), statistics.median(r["ttft"] for r in on)
            same = len({r["answer"] for r in off + on}) == 1
            lo = [np.load(tmp / f"off{i}.npy") for i in range(args.reps)]
            ln = [np.load(tmp / f"on{i}.npy") for i in range(args.reps)]
            diff = max(float(np.abs(a - b).max()) for a in lo for b in ln)
            split = max(float(np.abs(np.load(tmp / "warm.npy") - a).max()) for a in lo)  # evaluated both ways
            same_split = max(float(np.abs(np.load(tmp / "warm.npy") - b).max()) for b in ln)
            print(f"{kv:5} prompt {warm['prompt_tokens']} tokens (system block {prefix}, evaluated with the cache: "
                  f"{on[0]['evaluated']}); TTFT off {t_off:.3f} s, on {t_on:.3f} s: {t_off / t_on:.1f}x "
                  f"(first start, writing the file: {warm['ttft']:.3f} s; runs off "
                  f"{', '.join(format(r['ttft'], '.2f') for r in off)}, on {', '.join(format(r['ttft'], '.3f') for r in on)})")
            print(f"{kv:5} answers identical: {same} ({off[0]['answer']!r}); largest logit difference on/off "
                  f"{diff:.2e}, the same as evaluating the prompt in two batches at the system block instead of one "
                  f"({split:.2e}: llama.cpp's own noise); on vs the writer, which evaluated that split: {same_split:.2e} "
                  f"(logit scale {float(np.abs(lo[0]).max()):.2f}); file "
                  f"{f.stat().st_size / 1e6:.1f} MB, {f.stat().st_size / prefix * 1000 / 1e6:.1f} MB per 1,000 tokens")


if __name__ == "__main__":
    main()
