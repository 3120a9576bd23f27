"""`bench`: llama-bench's measurements through the Engine, so figures compare with llama-bench.

As llama-bench does: a warm-up decode first; pp: one batch of n_prompt tokens evaluated from an
empty cache; tg: n_gen single-token decodes from an empty cache (no sampling). ttft: n_prompt
tokens evaluated plus the first token sampled with Qwen's thinking sampler. load: Engine.load
wall time. Peak RSS of this process.
"""

from __future__ import annotations

import random
import resource
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from .engine import Engine
from .sampling import THINKING, build_sampler


@dataclass(frozen=True)
class BenchResult:
    model: str
    backend: str            # where llama.cpp put the layers: "cpu", "vulkan", ... (Engine.backend)
    threads: int
    n_prompt: int
    n_gen: int
    load_s: float
    pp_tokens_per_s: float
    tg_tokens_per_s: float
    ttft_s: float
    peak_rss_bytes: int
    device: str = ""        # the device(s) holding the layers, as llama.cpp names them (Engine.device)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def peak_rss_bytes() -> int:
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024


def run_bench(path: str | Path, *, n_prompt: int = 512, n_gen: int = 128, repetitions: int = 1,
              n_threads: int | None = None, n_gpu_layers: int | None = None, seed: int = 0,
              rpc_servers: str | list[str] | None = None) -> BenchResult:
    """Best of `repetitions` for pp and tg, context sized like llama-bench's (n_prompt + n_gen)."""
    started = time.perf_counter()
    engine = Engine.load(path, n_ctx=n_prompt + n_gen, n_threads=n_threads, n_gpu_layers=n_gpu_layers,
                         n_batch=max(n_prompt, 1), rpc_servers=rpc_servers)
    load_s = time.perf_counter() - started
    llama = engine.llama
    rng = random.Random(seed)
    vocab = llama.n_vocab()
    best_pp = best_tg = best_ttft = float("inf")
    sampler = build_sampler(THINKING.with_overrides(seed=seed), vocab)
    try:
        llama.eval([rng.randrange(vocab)])  # warm-up
        for _ in range(repetitions):
            llama.n_tokens = 0
            t0 = time.perf_counter()
            llama.eval([rng.randrange(vocab) for _ in range(n_prompt)])
            t1 = time.perf_counter()
            sampler.sample(llama._ctx, -1)
            t2 = time.perf_counter()
            llama.n_tokens = 0
            t3 = time.perf_counter()
            for _ in range(n_gen):
                llama.eval([rng.randrange(vocab)])
            t4 = time.perf_counter()
            best_pp, best_ttft, best_tg = min(best_pp, t1 - t0), min(best_ttft, t2 - t0), min(best_tg, t4 - t3)
    finally:
        engine.close()
    return BenchResult(str(path), engine.backend, engine.n_threads, n_prompt, n_gen, round(load_s, 3),
                       round(n_prompt / best_pp, 2), round(n_gen / best_tg, 2) if n_gen else 0.0,
                       round(best_ttft, 4), peak_rss_bytes(), engine.device)
