"""Is a GGUF a well-formed Qwen3 model? Checked from the header alone, before llama.cpp opens it.

A downloaded GGUF is untrusted: the header reader already refuses lengths past the end of the
file, unknown value and tensor types, misaligned or overlapping tensor data; this adds the
architecture, the hyperparameters llama.cpp needs, and every tensor Qwen3 needs with the shape
its hyperparameters imply."""

from __future__ import annotations

from dataclasses import dataclass

from .errors import QuantizeError
from .gguf_header import GGUFHeader

MAX_DIM = 1 << 20  # no Qwen3 hyperparameter comes near this; crafted files do


def _positive(h: GGUFHeader, key: str, default: int | None = None) -> int:
    value = h.get(key, default)
    if not isinstance(value, int) or isinstance(value, bool) or not 0 < value <= MAX_DIM:
        raise QuantizeError(h.path, f"corrupt GGUF metadata: {key} is {value!r}")
    return value


@dataclass(frozen=True)
class Qwen3Dims:
    """The hyperparameters that fix every tensor's shape, as checked."""
    layers: int
    hidden: int
    ff: int
    heads: int
    kv_heads: int
    head_dim: int


def qwen3_dims(h: GGUFHeader) -> Qwen3Dims:
    hidden, heads = _positive(h, "qwen3.embedding_length"), _positive(h, "qwen3.attention.head_count")
    return Qwen3Dims(layers=_positive(h, "qwen3.block_count"), hidden=hidden,
                     ff=_positive(h, "qwen3.feed_forward_length"), heads=heads,
                     kv_heads=_positive(h, "qwen3.attention.head_count_kv", heads),
                     head_dim=_positive(h, "qwen3.attention.key_length", hidden // heads or None))


def expected_tensors(h: GGUFHeader, d: Qwen3Dims) -> dict[str, tuple[int, ...]]:
    """llama.cpp tensor name -> shape (rows, columns) that the metadata implies."""
    layers, hidden, ff, heads, kv_heads, head_dim = d.layers, d.hidden, d.ff, d.heads, d.kv_heads, d.head_dim
    tokens = h.get("tokenizer.ggml.tokens")
    if tokens is None or not len(tokens):
        raise QuantizeError(h.path, "corrupt GGUF metadata: no tokenizer.ggml.tokens")
    vocab = len(tokens)
    if tokens.has_duplicates():
        raise QuantizeError(h.path, "corrupt GGUF vocabulary: a token appears twice")
    types = h.get("tokenizer.ggml.token_type")
    if types is not None and len(types) != vocab:
        raise QuantizeError(h.path, f"corrupt GGUF vocabulary: {len(types)} token types for {vocab} tokens")
    shapes = {"token_embd.weight": (vocab, hidden), "output_norm.weight": (hidden,)}
    for i in range(layers):
        p = f"blk.{i}."
        shapes.update({
            p + "attn_norm.weight": (hidden,), p + "attn_q.weight": (heads * head_dim, hidden),
            p + "attn_k.weight": (kv_heads * head_dim, hidden), p + "attn_v.weight": (kv_heads * head_dim, hidden),
            p + "attn_output.weight": (hidden, heads * head_dim), p + "attn_q_norm.weight": (head_dim,),
            p + "attn_k_norm.weight": (head_dim,), p + "ffn_norm.weight": (hidden,),
            p + "ffn_gate.weight": (ff, hidden), p + "ffn_up.weight": (ff, hidden), p + "ffn_down.weight": (hidden, ff),
        })
    return shapes


def check_qwen3(h: GGUFHeader) -> Qwen3Dims:
    """Raise QuantizeError unless `h` describes a complete, consistent Qwen3 model; return its dims."""
    arch = h.get("general.architecture")
    if arch != "qwen3":
        raise QuantizeError(h.path, f"architecture {arch!r} is not qwen3; qwen3-edge runs Qwen3 models only")
    dims = qwen3_dims(h)
    expected = expected_tensors(h, dims)
    found = {t.name: t.shape for t in h.tensors}
    for name, shape in expected.items():
        if name not in found:
            raise QuantizeError(h.path, f"incomplete Qwen3 GGUF: tensor {name} is missing")
        if found[name] != shape:
            raise QuantizeError(h.path, f"tensor {name} has shape {list(found[name])}, the metadata implies {list(shape)}")
    if h.get("qwen3.pooling_type") == 4:   # a reranker (retrieval_head.py): its yes/no head
        labels = h.get("qwen3.classifier.output_labels")
        expected["cls.output.weight"] = (len(labels) if labels is not None else 2, dims.hidden)
        if "cls.output.weight" not in found:
            raise QuantizeError(h.path, "incomplete Qwen3 reranker GGUF: tensor cls.output.weight is missing")
        if found["cls.output.weight"] != expected["cls.output.weight"]:
            raise QuantizeError(h.path, f"tensor cls.output.weight has shape {list(found['cls.output.weight'])}, "
                                        f"the metadata implies {list(expected['cls.output.weight'])}")
    extra = set(found) - set(expected) - {"output.weight"}
    if extra:
        raise QuantizeError(h.path, f"unexpected tensor {sorted(extra)[0]} for qwen3")
    if "output.weight" in found and found["output.weight"] != expected["token_embd.weight"]:
        raise QuantizeError(h.path, f"tensor output.weight has shape {list(found['output.weight'])}, "
                                    f"expected {list(expected['token_embd.weight'])}")
    return dims
