"""Qwen3's sampling presets and the llama.cpp sampler chain built from them.

Qwen's published settings: thinking temperature 0.6, top_p 0.95, top_k 20, min_p 0 (never
greedy); non-thinking 0.7, 0.8, 20, 0; presence_penalty up to 1.5 against endless repetition in
quantized models. llama-cpp-python's own defaults (temp 0.2, top_k 40, min_p 0.05) are never
used: every field is set here, explicitly, on llama.cpp's C sampler chain.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, replace

from llama_cpp import _internals as internals

PENALTY_LAST_N = 64


@dataclass(frozen=True)
class SamplingParams:
    temperature: float
    top_p: float
    top_k: int
    min_p: float = 0.0
    presence_penalty: float = 0.0
    seed: int | None = None

    def with_overrides(self, **overrides: float | int | None) -> "SamplingParams":
        """Apply the overrides that are not None (CLI flags, API arguments)."""
        return replace(self, **{k: v for k, v in overrides.items() if v is not None})


THINKING = SamplingParams(temperature=0.6, top_p=0.95, top_k=20, min_p=0.0)
NON_THINKING = SamplingParams(temperature=0.7, top_p=0.8, top_k=20, min_p=0.0)


def preset(thinking: bool) -> SamplingParams:
    return THINKING if thinking else NON_THINKING


def build_sampler(params: SamplingParams, n_vocab: int) -> internals.LlamaSampler:
    """llama.cpp's chain in its own order: penalties, top_k, top_p, min_p, temperature, dist.
    Temperature 0 (only by explicit override) samples greedily."""
    sampler = internals.LlamaSampler()
    if params.presence_penalty:
        sampler.add_penalties(n_vocab=n_vocab, penalty_last_n=PENALTY_LAST_N, penalty_repeat=1.0,
                              penalty_freq=0.0, penalty_present=params.presence_penalty)
    if params.temperature <= 0:
        sampler.add_greedy()
        return sampler
    sampler.add_top_k(params.top_k)
    sampler.add_top_p(params.top_p, 1)
    if params.min_p > 0:  # Qwen's min_p is 0: no filter, so no pass over the candidates
        sampler.add_min_p(params.min_p, 1)
    sampler.add_temp(params.temperature)
    sampler.add_dist(params.seed if params.seed is not None else random.getrandbits(32))
    return sampler
