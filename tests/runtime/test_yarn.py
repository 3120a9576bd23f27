"""YaRN as the Engine sets it up changes what llama.cpp computes, and into what Qwen3 with YaRN
computes: llama.cpp's logits at positions past the native 32,768 against the float64 reference
with Qwen's rope_scaling (factor ceil(n_ctx/32768), original_max_position_embeddings 32768).

A tiny random model (tests.model_factory TINY_TIED: head_dim 32, theta 1e6) gives YaRN's two
parts something to show: its attention factor 0.1*ln(factor)+1 scales every score by its square,
and its frequency ramp (pairs 5..10 of 16 for an original context of 32768) changes how the
slow pairs turn over the few hundred tokens of the window. The tokens are evaluated in one
llama_decode batch with explicit positions, so a window far out costs what a short prompt costs.
"""

from __future__ import annotations

import llama_cpp
import numpy as np
import pytest

from edge.runtime.engine import Engine
from tests import reference_qwen3 as ref

N_TOKENS = 512          # the window; relative distances up to 511 exercise the ramp pairs
N_OUT = 8               # positions whose logits are compared
MAX_ABS = 1e-3          # F32 weights and KV cache (measured: see test)

# The tiny model is "10M": the Engine warns that small models were not validated with YaRN.
pytestmark = pytest.mark.filterwarnings("ignore:Qwen validated 128K")


def decode_at(llm: llama_cpp.Llama, tokens: list[int], start: int) -> np.ndarray:
    """llama.cpp's logits for the last N_OUT tokens, token i at position start + i (one batch,
    empty cache: llama.cpp accepts any starting position for a new sequence)."""
    ctx = llm.ctx
    llama_cpp.llama_memory_clear(llama_cpp.llama_get_memory(ctx), True)
    batch = llama_cpp.llama_batch_init(len(tokens), 0, 1)
    try:
        for i, tok in enumerate(tokens):
            batch.token[i], batch.pos[i], batch.n_seq_id[i] = tok, start + i, 1
            batch.seq_id[i][0] = 0
            batch.logits[i] = i >= len(tokens) - N_OUT
        batch.n_tokens = len(tokens)
        assert llama_cpp.llama_decode(ctx, batch) == 0
        n_vocab = llama_cpp.llama_vocab_n_tokens(llama_cpp.llama_model_get_vocab(llm.model))
        rows = [np.ctypeslib.as_array(llama_cpp.llama_get_logits_ith(ctx, i), shape=(n_vocab,))
                for i in range(len(tokens) - N_OUT, len(tokens))]
        return np.array(rows, dtype=np.float64)
    finally:
        llama_cpp.llama_batch_free(batch)


START = 40_000          # past the native 32,768; float32 angles there cost ~2e-4 of logit error
QWEN_ORIGINAL_CTX = 32768


@pytest.fixture(scope="module")
def tokens() -> list[int]:
    return np.random.default_rng(0).integers(0, 150_000, N_TOKENS).tolist()


@pytest.fixture(scope="module")
def gguf(converted):
    return converted("tied", "f32")


@pytest.fixture(scope="module")
def reference(models):
    return ref.ReferenceQwen3(models["tied"])


def engine_logits(gguf, n_ctx: int, tokens: list[int]) -> np.ndarray:
    """What the runtime computes: Engine.load's own RoPE plan, F32 KV cache, no flash attention."""
    with Engine.load(gguf, n_ctx=n_ctx, kv_cache_type="f32", flash_attn=False, n_threads=2) as engine:
        return decode_at(engine.llama, tokens, START)


def test_yarn_changes_what_llama_cpp_computes_far_out(gguf, tokens):
    """Measured: max abs logit difference 0.14 between n_ctx 32768 (no YaRN) and 65536."""
    native = engine_logits(gguf, 32768, tokens)
    yarn = engine_logits(gguf, 65536, tokens)
    assert np.abs(yarn - native).max() > 50 * MAX_ABS


@pytest.mark.parametrize("n_ctx, factor", [(65536, 2), (131072, 4)])
def test_engine_yarn_is_qwen_yarn(n_ctx, factor, gguf, tokens, reference):
    """llama.cpp under the Engine's plan matches Qwen's YaRN (measured 1.7e-4 and 2.1e-4), and
    the same comparison tells it apart from what a wrong plan would give: no YaRN, YaRN over the
    GGUF's context_length 40960 (llama.cpp's fallback without yarn_orig_ctx), or YaRN without its
    attention factor (measured 0.14-0.30, 0.056-0.17 and 0.13-0.29)."""
    logits = engine_logits(gguf, n_ctx, tokens)

    def err(yarn):
        return np.abs(logits - reference.logits(tokens, start=START, yarn=yarn, last=N_OUT)).max()

    assert err(ref.Yarn(factor, QWEN_ORIGINAL_CTX)) < MAX_ABS
    assert err(None) > 20 * MAX_ABS
    assert err(ref.Yarn(factor, 40960)) > 20 * MAX_ABS
    assert err(ref.Yarn(factor, QWEN_ORIGINAL_CTX, mscale=1.0)) > 20 * MAX_ABS
