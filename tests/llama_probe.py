"""Ask llama.cpp what it really did, instead of trusting the figures the runtime reports.

- decoded tokens: llama.cpp's own performance counters (n_p_eval + n_eval), which count every
  token that went through llama_decode, whatever Python code sent it;
- KV cache length: llama_memory_seq_pos_max of sequence 0;
- load settings: llama_n_threads, the context/model params the bindings passed to llama.cpp, and
  whether the GGUF is memory-mapped (/proc/self/maps).

All of them read the context of `engine.llama`: a runtime that decodes on another context would
show zero here and fail loudly, which is the point.
"""

from __future__ import annotations

import ctypes
from dataclasses import dataclass
from pathlib import Path

import llama_cpp
import numpy as np


def _ctx(llama: llama_cpp.Llama):
    return llama._ctx.ctx


def decoded_total(llama: llama_cpp.Llama) -> int:
    """Tokens llama.cpp has decoded on this context since its counters were last reset.
    llama.cpp reports each counter as at least 1, so only differences between two readings taken
    after the context has run a prompt batch and a single-token step are exact: use DecodeCount."""
    llama_cpp.llama_synchronize(_ctx(llama))  # counters are updated when a decode is synchronized
    data = llama_cpp.llama_perf_context(_ctx(llama))
    return data.n_p_eval + data.n_eval


class DecodeCount:
    """`with DecodeCount(llama) as c: ...` then `c.tokens`: tokens decoded inside the block."""

    def __init__(self, llama: llama_cpp.Llama):
        self.llama, self.tokens = llama, None

    def __enter__(self) -> "DecodeCount":
        data = llama_cpp.llama_perf_context(_ctx(self.llama))
        assert data.n_p_eval > 1 and data.n_eval > 1, "warm the context up first (counters floor at 1)"
        self.start = decoded_total(self.llama)
        return self

    def __exit__(self, *exc: object) -> None:
        self.tokens = decoded_total(self.llama) - self.start


def kv_tokens(llama: llama_cpp.Llama) -> int:
    """How many positions of sequence 0 llama.cpp's KV cache holds."""
    return llama_cpp.llama_memory_seq_pos_max(llama_cpp.llama_get_memory(_ctx(llama)), 0) + 1


def cached_ids(llama: llama_cpp.Llama) -> list[int]:
    """The token ids behind the KV cache, checked against llama.cpp's own cache length (the ids
    are the bindings' record; llama.cpp keeps no token ids, only their keys and values)."""
    n = kv_tokens(llama)
    assert llama.n_tokens == n, f"the bindings record {llama.n_tokens} tokens, llama.cpp's cache holds {n}"
    return llama.input_ids[:n].tolist()


def common_prefix(a: list[int], b: list[int]) -> int:
    n = 0
    while n < min(len(a), len(b)) and a[n] == b[n]:
        n += 1
    return n


@dataclass(frozen=True)
class LoadSettings:
    """What llama.cpp was given when a model was opened."""
    n_ctx: int
    n_threads: int
    n_threads_batch: int
    type_k: int
    type_v: int
    flash_attn_type: int
    load_mode: int  # llama_cpp.LLAMA_LOAD_MODE_*
    file_mapped: bool


def load_settings(llama: llama_cpp.Llama, gguf: Path) -> LoadSettings:
    cp = llama.context_params
    return LoadSettings(
        n_ctx=llama_cpp.llama_n_ctx(_ctx(llama)), n_threads=llama_cpp.llama_n_threads(_ctx(llama)),
        n_threads_batch=llama_cpp.llama_n_threads_batch(_ctx(llama)), type_k=cp.type_k, type_v=cp.type_v,
        flash_attn_type=cp.flash_attn_type, load_mode=llama.model_params.load_mode,
        file_mapped=str(Path(gguf).resolve()) in Path("/proc/self/maps").read_text())


def apply_sampler(sampler, logits: np.ndarray, accepted: list[int] = ()) -> tuple[dict[int, float], dict[int, float], int]:
    """Run a llama.cpp sampler chain over candidates 0..n-1 with the given logits, after accepting
    `accepted` into it; returns {id: logit} and {id: p} of the survivors and the selected id."""
    chain = getattr(sampler, "sampler", sampler)
    for token in accepted:
        llama_cpp.llama_sampler_accept(chain, token)
    data = (llama_cpp.llama_token_data * len(logits))(
        *[llama_cpp.llama_token_data(id=i, logit=float(v), p=0.0) for i, v in enumerate(logits)])
    arr = llama_cpp.llama_token_data_array(data=data, size=len(logits), selected=-1, sorted=False)
    llama_cpp.llama_sampler_apply(chain, ctypes.byref(arr))
    kept = [data[i] for i in range(arr.size)]
    return {d.id: d.logit for d in kept}, {d.id: d.p for d in kept}, kept[arr.selected].id


def record_sampling(monkeypatch) -> list[tuple]:
    """Record (temperature, top_p, top_k, min_p, presence_penalty, seed) of every sampler chain the
    runtime builds, still building the real one. Coupling: it wraps edge.runtime.sampling.build_sampler
    (and the name edge.chat imported, if it did); a runtime that built its chain elsewhere would
    record nothing and fail the test."""
    import edge.chat
    import edge.runtime.sampling
    real, built = edge.runtime.sampling.build_sampler, []

    def recording(params, *args, **kwargs):
        built.append((params.temperature, params.top_p, params.top_k, params.min_p, params.presence_penalty,
                      params.seed))
        return real(params, *args, **kwargs)

    monkeypatch.setattr(edge.runtime.sampling, "build_sampler", recording)
    if hasattr(edge.chat, "build_sampler"):
        monkeypatch.setattr(edge.chat, "build_sampler", recording)
    return built
