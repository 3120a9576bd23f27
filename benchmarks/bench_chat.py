"""Chat-level figures on the 0.6B-shaped model: the cost of turn N against turn 2, memory at a 4K
context per KV cache type, the 128K plan with a q8_0 cache, and where a generation's time goes.

    python benchmarks/bench_chat.py [--part turns|memory|long|profile]

Each part runs in its own process so that peak RSS is its own.
"""

from __future__ import annotations

import argparse
import cProfile
import io
import pstats
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.bench_runtime import CACHE, ensure_gguf  # noqa: E402

MESSAGE = "Tell me one more fact about bicycles, in a single sentence please, and keep it short. "


def model() -> Path:
    return ensure_gguf(CACHE / "Qwen3-0.6B-random", "q4_k_m")


def rss_status() -> str:
    fields = {}
    with open("/proc/self/status") as f:
        for line in f:
            key, _, value = line.partition(":")
            if key in ("VmHWM", "RssAnon", "RssFile"):
                fields[key] = int(value.split()[0]) * 1024
    return (f"peak RSS {fields['VmHWM'] / 1e9:.2f} GB (now: anonymous {fields['RssAnon'] / 1e9:.2f} GB, "
            f"file-backed {fields['RssFile'] / 1e9:.2f} GB)")


def turns() -> None:
    from edge.chat import Chat
    from edge.runtime.engine import Engine
    with Engine.load(model(), n_ctx=4096) as engine:
        chat = Chat(engine, mode="no_think", max_tokens=48, seed=0)
        print("turn  prompt  evaluated  prompt-eval ms (ttft)  tok/s")
        for i in range(1, 11):
            r = chat.send(f"{i}. {MESSAGE}")
            print(f"{i:4} {r.prompt_tokens:7} {r.evaluated_tokens:10} {r.ttft_s * 1000:21.1f} {r.tokens_per_s:6.1f}")


def memory(kv: str, use_mmap: bool) -> None:
    from edge.chat import Chat
    from edge.runtime.engine import Engine
    with Engine.load(model(), n_ctx=4096, kv_cache_type=kv, use_mmap=use_mmap) as engine:
        r = Chat(engine, max_tokens=64, seed=0).send(MESSAGE * 10)
        print(f"kv {kv:5} mmap {'on ' if use_mmap else 'off'} 4096 ctx, {r.prompt_tokens}-token prompt, "
              f"{r.generated_tokens} generated at {r.tokens_per_s:.1f} tok/s: {rss_status()}")


def long_context() -> None:
    import warnings
    from edge.chat import Chat
    from edge.runtime.engine import Engine
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        engine = Engine.load(model(), n_ctx=131072, kv_cache_type="q8_0")
    with engine:
        print(f"plan: {engine.memory_plan.describe()}")
        print(f"rope: yarn={engine.rope_plan.yarn} factor={engine.rope_plan.factor} "
              f"freq_scale={engine.rope_plan.rope_freq_scale} orig={engine.rope_plan.yarn_orig_ctx}")
        print("warnings:", [str(w.message) for w in caught])
        r = Chat(engine, mode="no_think", max_tokens=16, seed=0).send(MESSAGE)
        print(f"one turn at 131072 ctx: {r.tokens_per_s:.1f} tok/s; {rss_status()}")


def profile() -> None:
    from edge.chat import Chat
    from edge.runtime.engine import Engine
    with Engine.load(model(), n_ctx=2048) as engine:
        chat = Chat(engine, budget=64, max_tokens=256, seed=0, sampling={"temperature": 0.6})
        chat.send("warm up")
        prof = cProfile.Profile()
        prof.enable()
        r = chat.send(MESSAGE)
        prof.disable()
    s = io.StringIO()
    stats = pstats.Stats(prof, stream=s)
    total = stats.total_tt
    print(f"{r.generated_tokens} tokens in {r.seconds:.2f}s; cumulative share of the turn:")
    for func, (_, _, tt, ct, _) in sorted(stats.stats.items(), key=lambda kv: -kv[1][3]):
        name = f"{Path(func[0]).name}:{func[2]}"
        if any(k in name for k in ("decode", "sample", "feed", "_emit", "_track", "_budget_reached", "_piece",
                                   "detokenize", "stream", "_evaluate_prompt", "_cut_thinking")):
            print(f"  {ct / total:6.1%}  {name}")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--part", choices=["turns", "memory", "long", "profile", "all"], default="all")
    ap.add_argument("--kv", default=None)
    ap.add_argument("--mmap", choices=["on", "off"], default="on")
    args = ap.parse_args()
    if args.part == "all":
        for part in ("turns", "profile", "long"):
            subprocess.run([sys.executable, __file__, "--part", part], check=True)
        for kv in ("f16", "q8_0", "q4_0"):
            for mmap in ("on", "off"):
                subprocess.run([sys.executable, __file__, "--part", "memory", "--kv", kv, "--mmap", mmap], check=True)
    elif args.part == "turns":
        turns()
    elif args.part == "memory":
        memory(args.kv or "f16", args.mmap == "on")
    elif args.part == "long":
        long_context()
    else:
        profile()


if __name__ == "__main__":
    main()
