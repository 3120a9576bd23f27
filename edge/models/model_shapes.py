"""The official small Qwen3 models as header facts, before any download.

`qwen3-edge plan qwen3-4b --ram 4G` answers "will it fit here?" before a 2.5 GB download: the plan
(load_plan.py) needs only what a GGUF header would say, and for the official models that is known
from their config.json (the shapes in /work/shared/README.md). Tensor sizes are estimated from
llama.cpp's bits per weight for the quant type; a downloaded file's own header replaces them.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from edge.runtime.context_plan import model_rope

N_VOCAB = 151936
# Bits per weight of the big matrices, per llama.cpp quant type (block sizes: q8_0 34 bytes per 32,
# q4_0 18 per 32, K-quants per 256; q4_k_m / q5_k_m mix in q6_k rows, hence the averages).
BITS_PER_WEIGHT = {"f32": 32.0, "f16": 16.0, "bf16": 16.0, "q8_0": 8.5, "q6_k": 6.5625, "q5_k_m": 5.7,
                   "q5_k_s": 5.5, "q5_0": 5.5, "q5_1": 6.0, "q4_k_m": 4.9, "q4_k_s": 4.6, "q4_0": 4.5, "q4_1": 5.0}
FILE_TYPES = {"f32": 0, "f16": 1, "q4_0": 2, "q4_1": 3, "q8_0": 7, "q5_0": 8, "q5_1": 9, "q6_k": 18,
              "q4_k_s": 14, "q4_k_m": 15, "q5_k_s": 16, "q5_k_m": 17, "bf16": 32}


@dataclass(frozen=True)
class Shape:
    hidden: int
    layers: int
    heads: int
    kv_heads: int
    head_dim: int
    intermediate: int
    context_length: int = 40960     # the GGUF's qwen3.context_length
    freq_base: float = 1e6
    size_label: str = ""


OFFICIAL_SHAPES = {
    "qwen3-0.6b": Shape(1024, 28, 16, 8, 128, 3072, size_label="0.6B"),
    "qwen3-1.7b": Shape(2048, 28, 16, 8, 128, 6144, size_label="1.7B"),
    "qwen3-4b": Shape(2560, 36, 32, 8, 128, 9728, size_label="4B"),
    "qwen3-4b-instruct-2507": Shape(2560, 36, 32, 8, 128, 9728, 262144, 5e6, "4B"),
    "qwen3-4b-thinking-2507": Shape(2560, 36, 32, 8, 128, 9728, 262144, 5e6, "4B"),
}


def tensor_bytes(shape: Shape, qtype: str) -> dict[str, int]:
    """Estimated bytes of each tensor of a GGUF of `shape` quantized to `qtype` (norms stay F32)."""
    bpw = BITS_PER_WEIGHT[qtype]
    q, kv = shape.heads * shape.head_dim, shape.kv_heads * shape.head_dim
    out = {"token_embd.weight": int(N_VOCAB * shape.hidden * bpw / 8), "output_norm.weight": 4 * shape.hidden}
    for i in range(shape.layers):
        for name, n in (("attn_q", shape.hidden * q), ("attn_k", shape.hidden * kv), ("attn_v", shape.hidden * kv),
                        ("attn_output", q * shape.hidden), ("ffn_gate", shape.hidden * shape.intermediate),
                        ("ffn_up", shape.hidden * shape.intermediate), ("ffn_down", shape.intermediate * shape.hidden)):
            out[f"blk.{i}.{name}.weight"] = int(n * bpw / 8)
        for name, n in (("attn_norm", shape.hidden), ("ffn_norm", shape.hidden), ("attn_q_norm", shape.head_dim),
                        ("attn_k_norm", shape.head_dim)):
            out[f"blk.{i}.{name}.weight"] = 4 * n
    return out


def estimated_model_info(name: str, qtype: str):
    """A ModelInfo for an official model not downloaded yet (sizes estimated; see the module doc)."""
    from edge.runtime.engine import ModelInfo
    shape = OFFICIAL_SHAPES[name]
    tensors = tensor_bytes(shape, qtype)
    rope = model_rope(shape.context_length, shape.freq_base)
    return ModelInfo(path=Path(f"{name}:{qtype} (not downloaded; sizes estimated)"), size_bytes=sum(tensors.values()),
                     name=name, size_label=shape.size_label, file_type=FILE_TYPES.get(qtype), n_layers=shape.layers,
                     n_embd=shape.hidden,
                     n_heads=shape.heads, n_kv_heads=shape.kv_heads, head_dim=shape.head_dim,
                     n_ctx_train=rope.context_length, yarn=rope.yarn, chat_template=None, rope=rope,
                     sampling_defaults={}, tensor_bytes=tensors)
