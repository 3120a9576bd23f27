"""A KV cache that grows with the conversation: the Llama's context re-created at a larger size.

A context's KV cache is reserved (and zeroed, so resident) in full when llama.cpp creates it:
an 8,192-token f16 cache on Qwen3-0.6B is 0.94 GB before the first word. Creating the context
small and re-creating it larger when a chat outgrows it costs memory only for what the
conversation holds. The sequence's cached tokens move across with llama.cpp's own sequence
state (llama_state_seq_get_data / set_data: the KV cells, positions and all), so nothing is
evaluated again. The old context is freed before the new one is made, so the peak during a
growth is the new context plus the copied state, never two contexts at once.
"""

from __future__ import annotations

import ctypes

import llama_cpp
import numpy as np
from llama_cpp import _internals as internals

SEQ = 0  # the Llama's own context holds one sequence


class GrowthError(Exception):
    """The context could not be re-created at the new size (told in one line)."""


def _context_params(llama: llama_cpp.Llama, n_ctx: int) -> llama_cpp.llama_context_params:
    """A copy of the Llama's context parameters (threads, batch, KV types, rope, flash attention)
    with another n_ctx: everything that shaped the cached K and V stays the same."""
    params = llama_cpp.llama_context_params()
    ctypes.memmove(ctypes.byref(params), ctypes.byref(llama.context_params), ctypes.sizeof(params))
    params.n_ctx = n_ctx
    return params


def _new_context(llama: llama_cpp.Llama, n_ctx: int) -> internals.LlamaContext:
    params = _context_params(llama, n_ctx)
    ctx = internals.LlamaContext(model=llama._model, params=params, verbose=llama.verbose)
    llama.context_params = params
    return ctx


def _install(llama: llama_cpp.Llama, ctx: internals.LlamaContext, n_tokens: int) -> None:
    """Make `ctx` the Llama's context; its token buffer is sized to the new context."""
    llama._ctx = ctx
    llama._stack.callback(ctx.close)  # closed with the Llama, like the one it replaces
    llama._n_ctx = ctx.n_ctx()
    ids = np.ndarray((llama.context_params.n_ctx,), dtype=np.intc)
    ids[:n_tokens] = llama.input_ids[:n_tokens]
    llama.input_ids = ids
    llama.n_tokens = n_tokens


def resize_context(llama: llama_cpp.Llama, n_ctx: int) -> None:
    """Re-create `llama`'s context with room for `n_ctx` tokens, keeping its first
    `llama.n_tokens` cached tokens (KV cells and the token buffer). On failure the old size is
    restored with its tokens and GrowthError is raised; the Llama stays usable."""
    n_tokens = llama.n_tokens
    old_ctx = llama._ctx
    old_n_ctx = llama.context_params.n_ctx
    old_ctx.kv_cache_seq_rm(SEQ, n_tokens, -1)  # cells past n_tokens are stale (a rewound prompt)
    size = llama_cpp.llama_state_seq_get_size(old_ctx.ctx, SEQ)
    state = (ctypes.c_uint8 * max(size, 1))()
    written = llama_cpp.llama_state_seq_get_data(old_ctx.ctx, state, size, SEQ) if n_tokens else 0
    old_ctx.close()
    try:
        ctx = _new_context(llama, n_ctx)
    except ValueError as e:
        ctx = _new_context(llama, old_n_ctx)
        _install(llama, ctx, n_tokens if _restore(ctx, state, written) else 0)
        raise GrowthError(f"llama.cpp could not make a {n_ctx}-token context ({e}); it stays at {old_n_ctx}") from None
    kept = _restore(ctx, state, written)
    _install(llama, ctx, n_tokens if kept else 0)
    if not kept:
        raise GrowthError("llama.cpp did not take back the cached tokens after re-creating the context")


def _restore(ctx: internals.LlamaContext, state, written: int) -> bool:
    """Put the copied sequence state into `ctx`; False if llama.cpp refused it."""
    return not written or llama_cpp.llama_state_seq_set_data(ctx.ctx, state, written, SEQ) == written
