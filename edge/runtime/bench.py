"""`bench`: llama-bench's measurements through the Engine, so figures compare with llama-bench.

As llama-bench does (tools/llama-bench): a warm-up first (a prompt batch and one generated token);
each repetition clears llama.cpp's memory (llama_memory_clear, not only the bindings' n_tokens)
so it starts from an empty cache; tokens go in through llama_batch_get_one, whose positions
llama.cpp takes from its memory (a cache left full would shift them, or overflow a context sized
prompt + generated); and the clock stops only after llama_synchronize, since GPU backends decode
asynchronously (without it a Vulkan pp512 read twice the real speed). pp: one batch of n_prompt
tokens; tg: n_gen single-token decodes, each synchronized, no sampling. ttft: n_prompt tokens
evaluated plus the first token sampled with Qwen's thinking sampler. load: Engine.load wall time.
Peak RSS of this process. Each repetition also reads llama.cpp's own perf counters (n_p_eval,
n_eval: updated at each synchronize), so what was evaluated is llama.cpp's account, not ours.
"""

from __future__ import annotations

import random
import resource
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Sequence

import llama_cpp

from edge.runtime.engine import Engine
from edge.runtime.sampling import THINKING, build_sampler


@dataclass(frozen=True)
class Repetition:
    """One repetition, timed, with what llama.cpp's perf counters say it evaluated."""
    pp_s: float
    tg_s: float
    ttft_s: float
    pp_evaluated: int       # llama.cpp's n_p_eval over the pp batch (tokens)
    tg_evaluated: int       # llama.cpp's n_eval over the tg decodes (single-token evaluations)


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
    flash_attn: bool | None = None
    repetitions: list[Repetition] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def peak_rss_bytes() -> int:
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024


class RawContext:
    """llama-bench's primitives on a loaded llama_context: clear, decode, synchronize, counters."""

    def __init__(self, ctx: Any):
        self.ctx = ctx

    def clear(self) -> None:
        llama_cpp.llama_memory_clear(llama_cpp.llama_get_memory(self.ctx), False)

    def decode(self, tokens: Sequence[int]) -> None:
        """Tokens at the positions that follow what llama.cpp's memory holds (llama_batch_get_one)."""
        array = (llama_cpp.llama_token * len(tokens))(*tokens)
        rc = llama_cpp.llama_decode(self.ctx, llama_cpp.llama_batch_get_one(array, len(tokens)))
        if rc != 0:
            raise RuntimeError(f"llama_decode returned {rc}")

    def synchronize(self) -> None:
        llama_cpp.llama_synchronize(self.ctx)

    def reset_counters(self) -> None:
        llama_cpp.llama_perf_context_reset(self.ctx)

    def counters(self) -> tuple[int, int]:
        """(n_p_eval, n_eval) as llama.cpp counted them since the last reset (each at least 1:
        llama_perf_context reports max(1, n))."""
        data = llama_cpp.llama_perf_context(self.ctx)
        return int(data.n_p_eval), int(data.n_eval)


def measure_prompt(raw: RawContext, tokens: Sequence[int], n_batch: int) -> float:
    """Seconds to evaluate `tokens` from an empty cache, batch by batch, synchronized."""
    raw.clear()
    t0 = time.perf_counter()
    for i in range(0, len(tokens), n_batch):
        raw.decode(tokens[i:i + n_batch])
    raw.synchronize()
    return time.perf_counter() - t0


def measure_gen(raw: RawContext, tokens: Sequence[int], depth_tokens: Sequence[int] = (), n_batch: int = 512) -> float:
    """Seconds for one decode per token of `tokens`, each synchronized (llama-bench's test_gen),
    after `depth_tokens` evaluated untimed from an empty cache (llama-bench's -d)."""
    raw.clear()
    for i in range(0, len(depth_tokens), n_batch):
        raw.decode(depth_tokens[i:i + n_batch])
    raw.synchronize()
    t0 = time.perf_counter()
    for token in tokens:
        raw.decode([token])
        raw.synchronize()
    return time.perf_counter() - t0


def run_bench(path: str | Path, *, n_prompt: int = 512, n_gen: int = 128, repetitions: int = 1,
              n_threads: int | None = None, n_gpu_layers: int | None = None, seed: int = 0,
              rpc_servers: str | list[str] | None = None, flash_attn: bool | None = None) -> BenchResult:
    """Best of `repetitions` for pp and tg, context sized like llama-bench's (n_prompt + n_gen)."""
    started = time.perf_counter()
    engine = Engine.load(path, n_ctx=n_prompt + n_gen, n_threads=n_threads, n_gpu_layers=n_gpu_layers,
                         n_batch=max(n_prompt, 1), rpc_servers=rpc_servers, flash_attn=flash_attn, grow=False)
    load_s = time.perf_counter() - started
    if engine.tuned_now:  # a first use calibrated this machine (tune.py) during the load: not load time
        load_s = max(load_s - engine.tuned.seconds, 0.0)
    llama = engine.llama
    raw = RawContext(llama._ctx.ctx)
    rng = random.Random(seed)
    vocab = llama.n_vocab()
    n_batch = max(n_prompt, 1)
    sampler = build_sampler(THINKING.with_overrides(seed=seed), vocab)
    reps: list[Repetition] = []
    flash = llama.context_params.flash_attn_type == llama_cpp.LLAMA_FLASH_ATTN_TYPE_ENABLED
    try:
        if n_prompt:  # warm-up, as llama-bench: a prompt batch, then one generated token
            measure_prompt(raw, [rng.randrange(vocab) for _ in range(n_prompt)], n_batch)
        if n_gen:
            measure_gen(raw, [rng.randrange(vocab)])
        for _ in range(repetitions):
            pp_s = ttft_s = 0.0
            raw.reset_counters()
            if n_prompt:
                t0 = time.perf_counter()
                pp_s = measure_prompt(raw, [rng.randrange(vocab) for _ in range(n_prompt)], n_batch)
                sampler.sample(llama._ctx, -1)
                ttft_s = time.perf_counter() - t0
            pp_evaluated, _ = raw.counters()
            raw.reset_counters()
            tg_s = measure_gen(raw, [rng.randrange(vocab) for _ in range(n_gen)]) if n_gen else 0.0
            _, tg_evaluated = raw.counters()
            reps.append(Repetition(round(pp_s, 6), round(tg_s, 6), round(ttft_s, 6), pp_evaluated, tg_evaluated))
        llama.n_tokens = 0  # the bindings' view matches the cleared cache for whoever uses it next
    finally:
        engine.close()
    best_pp = min((r.pp_s for r in reps), default=0.0)
    best_tg = min((r.tg_s for r in reps), default=0.0)
    return BenchResult(str(path), engine.backend, engine.n_threads, n_prompt, n_gen, round(load_s, 3),
                       round(n_prompt / best_pp, 2) if best_pp else 0.0,
                       round(n_gen / best_tg, 2) if best_tg else 0.0,
                       round(min((r.ttft_s for r in reps), default=0.0), 4), peak_rss_bytes(), engine.device,
                       flash, reps)
