"""The converted GGUF computes what Qwen3 computes: llama.cpp's logits against an independent
float64 NumPy forward pass of the Hugging Face weights.

Bounds, measured on these models (logit std ~2.5, 151,936-way softmax):
- F32: max abs error 1e-3 (measured ~3e-6: float32 arithmetic only).
- F16: max abs 2e-2 (measured ~4e-3). BF16 weights fit F16 exactly; the error is llama.cpp
  rounding activations to F16 (2^-11 relative) for its F16 dot products, summed over layers.
- BF16: max abs 0.15 (measured ~0.036): same, with BF16's 2^-8 relative activation rounding.
- Q8_0: mean KL 2e-3 nats (measured 1.8e-5 tied, 5.1e-4 untied).
- Q4_K_M: mean KL 0.1 nats (measured 8.6e-5 tied, where 64-wide rows fall back to Q5_0/Q8_0,
  and 0.040 untied, where 256-wide rows are real Q4_K). Random weights have no structure to
  make quantization benign, so these sit above what real checkpoints show.
A wrong RoPE layout (GPT-J interleaving instead of NeoX halves) is checked to land far outside
the F32 bound, so the comparison can tell a right conversion from a wrong one.
"""

from __future__ import annotations

import numpy as np
import pytest

from tests import reference_qwen3 as ref
from tests.conftest import SAMPLE_TOKENS, llama_logits

MAX_ABS = {"f32": 1e-3, "f16": 2e-2, "bf16": 0.15}
MAX_KL = {"q8_0": 2e-3, "q4_k_m": 0.1}


@pytest.fixture(scope="module")
def reference(models):
    return {k: ref.ReferenceQwen3(p).logits(SAMPLE_TOKENS) for k, p in models.items()}


@pytest.mark.parametrize("model", ["tied", "untied"])
@pytest.mark.parametrize("qtype", sorted(MAX_ABS))
def test_float_types_match_reference(model, qtype, converted, reference):
    logits = llama_logits(converted(model, qtype), SAMPLE_TOKENS)
    err = np.abs(logits - reference[model]).max()
    assert err < MAX_ABS[qtype], f"{model} {qtype}: max abs logit error {err:.3g}"


@pytest.mark.parametrize("model", ["tied", "untied"])
@pytest.mark.parametrize("qtype", sorted(MAX_KL))
def test_quantized_types_within_kl(model, qtype, converted, reference):
    logits = llama_logits(converted(model, qtype), SAMPLE_TOKENS)
    kl = ref.kl_divergence(reference[model], logits)
    assert kl < MAX_KL[qtype], f"{model} {qtype}: KL {kl:.3g}"
    # quantization perturbs, it does not scramble: the argmax agrees at most positions
    agree = np.mean(logits.argmax(-1) == reference[model].argmax(-1))
    assert agree >= 0.75, f"{model} {qtype}: top-1 agreement {agree:.2f}"


def test_wrong_rope_layout_is_detected(models, converted, reference, monkeypatch):
    """Negative control: the same comparison fails for a mis-laid-out rotary embedding."""

    def rope_gptj(x, positions, theta):
        d = x.shape[-1]
        angles = positions[:, None] * theta ** (-np.arange(0, d, 2) / d)[None, :]
        cos, sin = np.cos(angles)[:, None, :], np.sin(angles)[:, None, :]
        out = np.empty_like(x)
        out[..., 0::2] = x[..., 0::2] * cos - x[..., 1::2] * sin
        out[..., 1::2] = x[..., 1::2] * cos + x[..., 0::2] * sin
        return out

    monkeypatch.setattr(ref, "rope_neox", rope_gptj)
    wrong = ref.ReferenceQwen3(models["untied"]).logits(SAMPLE_TOKENS)
    logits = llama_logits(converted("untied", "f32"), SAMPLE_TOKENS)
    assert np.abs(logits - wrong).max() > 100 * MAX_ABS["f32"]
    assert np.abs(logits - reference["untied"]).max() < MAX_ABS["f32"]
