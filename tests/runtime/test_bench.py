"""`bench` measures what llama-bench measures: every repetition from an empty cache, the clock
stopped after llama.cpp has finished, and llama.cpp's own perf counters (updated only at
llama_synchronize) confirm how many tokens each repetition evaluated."""

from __future__ import annotations

import llama_cpp
import pytest

from edge.runtime.bench import RawContext, measure_gen, measure_prompt, run_bench
from edge.runtime.engine import Engine


def test_each_repetition_evaluates_exactly_its_tokens_by_llama_cpps_count(scripted_gguf):
    """Three repetitions in a context sized prompt + generated (llama-bench's): a repetition that
    did not start from an empty cache would overflow it, and tg decodes not synchronized one by
    one would be counted by llama.cpp as one prompt batch instead of n_gen evaluations."""
    r = run_bench(scripted_gguf, n_prompt=24, n_gen=6, repetitions=3)
    assert len(r.repetitions) == 3
    assert [(rep.pp_evaluated, rep.tg_evaluated) for rep in r.repetitions] == [(24, 6)] * 3
    assert all(rep.pp_s > 0 and rep.tg_s > 0 and rep.ttft_s >= rep.pp_s for rep in r.repetitions)
    assert r.pp_tokens_per_s == round(24 / min(rep.pp_s for rep in r.repetitions), 2)
    assert r.tg_tokens_per_s == round(6 / min(rep.tg_s for rep in r.repetitions), 2)


@pytest.fixture(scope="module")
def raw(scripted_gguf):
    with Engine.load(scripted_gguf, n_ctx=64, n_batch=32) as engine:
        yield RawContext(engine.llama._ctx.ctx), engine


def test_measure_prompt_starts_from_an_empty_cache_and_stops_after_llama_cpp(raw):
    """llama.cpp counts queued tokens only at llama_synchronize: a count of 40 right after the
    measurement says the clock stopped after llama.cpp finished (GPU backends run asynchronously)."""
    ctx, engine = raw
    memory = llama_cpp.llama_get_memory(ctx.ctx)
    measure_prompt(ctx, list(range(100, 140)), 32)
    ctx.reset_counters()
    measure_prompt(ctx, list(range(200, 240)), 32)   # 40 + 40 would not fit 64 without the clear
    assert ctx.counters()[0] == 40   # (llama.cpp reports each counter as at least 1)
    assert llama_cpp.llama_memory_seq_pos_max(memory, 0) == 39


def test_measure_gen_at_depth_counts_single_token_evaluations(raw):
    ctx, engine = raw
    memory = llama_cpp.llama_get_memory(ctx.ctx)
    ctx.reset_counters()
    measure_gen(ctx, [5, 6, 7], depth_tokens=list(range(300, 320)), n_batch=32)
    assert ctx.counters() == (20, 3)
    assert llama_cpp.llama_memory_seq_pos_max(memory, 0) == 22
