"""An independent NumPy (float64) forward pass of Qwen3, straight from the Hugging Face files.

It shares no code with the converter: its own safetensors parsing, its own math. Embedding,
RMSNorm, per-head q/k RMSNorm, NeoX RoPE (rotate-half) with theta from config.json, optionally
YaRN as Qwen's config defines it, grouped-query attention with a causal mask, SwiGLU MLP, final
norm, lm_head or the tied embedding.
"""

from __future__ import annotations

import json
import math
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np


def load_safetensors(folder: Path) -> dict[str, np.ndarray]:
    weights: dict[str, np.ndarray] = {}
    for path in sorted(folder.glob("*.safetensors")):
        raw = path.read_bytes()
        (n,) = struct.unpack("<Q", raw[:8])
        header = json.loads(raw[8:8 + n])
        base = 8 + n
        for name, meta in header.items():
            if name == "__metadata__":
                continue
            a, b = meta["data_offsets"]
            assert meta["dtype"] == "BF16", meta["dtype"]
            bits = np.frombuffer(raw[base + a:base + b], dtype=np.uint16).astype(np.uint32) << 16
            weights[name] = bits.view(np.float32).astype(np.float64).reshape(meta["shape"])
    if "embed_tokens.weight" in weights:   # Qwen3-Embedding saves Qwen3Model's names, without `model.`
        weights = {n if n.startswith(("model.", "lm_head.")) else "model." + n: v for n, v in weights.items()}
    return weights


def rms_norm(x: np.ndarray, w: np.ndarray, eps: float) -> np.ndarray:
    return x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + eps) * w


@dataclass(frozen=True)
class Yarn:
    """Qwen's `"rope_scaling": {"rope_type": "yarn", "factor": f, "original_max_position_embeddings": n}`,
    with the YaRN paper's beta_fast 32 and beta_slow 1 (the defaults of transformers and llama.cpp).
    `mscale` overrides the attention scaling 0.1*ln(factor)+1 (for negative controls)."""
    factor: float
    original_ctx: int
    beta_fast: float = 32.0
    beta_slow: float = 1.0
    mscale: float | None = None

    def inv_freq(self, d: int, theta: float) -> np.ndarray:
        """Per-pair frequencies: pairs that turn many times within original_ctx keep theirs
        (extrapolation), slow pairs are divided by factor (interpolation), a linear ramp between."""
        def corr_dim(n_rot: float) -> float:      # the pair that turns n_rot times in original_ctx
            return d * math.log(self.original_ctx / (n_rot * 2 * math.pi)) / (2 * math.log(theta))
        low = max(math.floor(corr_dim(self.beta_fast)), 0)
        high = min(math.ceil(corr_dim(self.beta_slow)), d - 1)
        extrap = theta ** (-np.arange(0, d, 2, dtype=np.float64) / d)
        ramp = np.clip((np.arange(d // 2) - low) / max(high - low, 0.001), 0, 1)   # 0 fast .. 1 slow
        return extrap / self.factor * ramp + extrap * (1 - ramp)

    def attention_factor(self) -> float:
        """Multiplies cos and sin, so q.k grows by its square."""
        return self.mscale if self.mscale is not None else 0.1 * math.log(self.factor) + 1


def rope_neox(x: np.ndarray, positions: np.ndarray, theta: float, yarn: Yarn | None = None) -> np.ndarray:
    """x: (T, heads, d). NeoX style: the two halves of each head form the rotated pairs."""
    d = x.shape[-1]
    inv_freq = theta ** (-np.arange(0, d, 2, dtype=np.float64) / d) if yarn is None else yarn.inv_freq(d, theta)
    scale = 1.0 if yarn is None else yarn.attention_factor()
    angles = positions[:, None].astype(np.float64) * inv_freq[None, :]        # (T, d/2)
    cos, sin = scale * np.cos(angles)[:, None, :], scale * np.sin(angles)[:, None, :]
    x1, x2 = x[..., : d // 2], x[..., d // 2:]
    return np.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)


def softmax(x: np.ndarray, axis: int = -1) -> np.ndarray:
    x = x - x.max(axis=axis, keepdims=True)
    e = np.exp(x)
    return e / e.sum(axis=axis, keepdims=True)


class ReferenceQwen3:
    def __init__(self, folder: Path):
        self.cfg = json.loads((folder / "config.json").read_text())
        self.w = load_safetensors(folder)

    def logits(self, tokens: list[int], *, start: int = 0, yarn: Yarn | None = None,
               last: int | None = None) -> np.ndarray:
        """Logits of every position, or of the `last` few; token i sits at position start + i."""
        c, w = self.cfg, self.w
        x = self.hidden(tokens, start=start, yarn=yarn, last=last)
        head = w.get("lm_head.weight", w["model.embed_tokens.weight"]) if not c.get("tie_word_embeddings") \
            else w["model.embed_tokens.weight"]
        return x @ head.T

    def embedding(self, tokens: list[int]) -> np.ndarray:
        """Qwen3-Embedding's vector before normalisation: the final-norm hidden state of the last
        token (the model card's last_token_pool; the caller appends <|endoftext|>)."""
        return self.hidden(tokens, last=1)[0]

    def yes_probability(self, tokens: list[int], yes_id: int, no_id: int) -> float:
        """Qwen3-Reranker's score: softmax over the "no" and "yes" logits of the last position,
        the probability of "yes" (the model card's compute_logits)."""
        logits = self.logits(tokens, last=1)[0]
        return float(softmax(np.array([logits[no_id], logits[yes_id]]))[1])

    def hidden(self, tokens: list[int], *, start: int = 0, yarn: Yarn | None = None,
               last: int | None = None) -> np.ndarray:
        """The final-norm hidden states of every position, or of the `last` few."""
        c, w = self.cfg, self.w
        eps, theta = c["rms_norm_eps"], c["rope_theta"]
        nh, nkv, d = c["num_attention_heads"], c["num_key_value_heads"], c["head_dim"]
        T = len(tokens)
        pos = start + np.arange(T)
        rope = {} if yarn is None else {"yarn": yarn}
        x = w["model.embed_tokens.weight"][tokens]
        mask = np.triu(np.full((T, T), -np.inf), k=1)
        for i in range(c["num_hidden_layers"]):
            p = f"model.layers.{i}."
            h = rms_norm(x, w[p + "input_layernorm.weight"], eps)
            q = (h @ w[p + "self_attn.q_proj.weight"].T).reshape(T, nh, d)
            k = (h @ w[p + "self_attn.k_proj.weight"].T).reshape(T, nkv, d)
            v = (h @ w[p + "self_attn.v_proj.weight"].T).reshape(T, nkv, d)
            q = rope_neox(rms_norm(q, w[p + "self_attn.q_norm.weight"], eps), pos, theta, **rope)
            k = rope_neox(rms_norm(k, w[p + "self_attn.k_norm.weight"], eps), pos, theta, **rope)
            group = nh // nkv
            out = np.empty((T, nh, d))
            for hh in range(nh):
                kv = hh // group
                scores = q[:, hh, :] @ k[:, kv, :].T / np.sqrt(d) + mask
                out[:, hh, :] = softmax(scores) @ v[:, kv, :]
            x = x + out.reshape(T, nh * d) @ w[p + "self_attn.o_proj.weight"].T
            h = rms_norm(x, w[p + "post_attention_layernorm.weight"], eps)
            gate = h @ w[p + "mlp.gate_proj.weight"].T
            up = h @ w[p + "mlp.up_proj.weight"].T
            x = x + (gate / (1 + np.exp(-gate)) * up) @ w[p + "mlp.down_proj.weight"].T
        return rms_norm(x[-(last or T):], w["model.norm.weight"], eps)


def log_softmax(x: np.ndarray) -> np.ndarray:
    x = x - x.max(axis=-1, keepdims=True)
    return x - np.log(np.exp(x).sum(axis=-1, keepdims=True))


def kl_divergence(ref_logits: np.ndarray, test_logits: np.ndarray) -> float:
    """Mean over positions of KL(ref || test), in nats."""
    lp, lq = log_softmax(ref_logits.astype(np.float64)), log_softmax(test_logits.astype(np.float64))
    return float(np.mean(np.sum(np.exp(lp) * (lp - lq), axis=-1)))
