"""Qwen3 models with seeded random weights in the exact Hugging Face layout.

BF16 safetensors (8-byte little-endian header length, JSON header, raw data), HF tensor names,
config.json and the real Qwen3 tokenizer files. Random weights cost exactly what real ones cost
to convert and run; the NumPy reference forward pass tells whether a conversion is right.
Tensors are generated and written one at a time, so even the full 0.6B shape needs little memory.
"""

from __future__ import annotations

import json
import math
import shutil
import struct
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

FIXTURES = Path(__file__).parent / "fixtures" / "qwen3-tokenizer"
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.json", "merges.txt", "generation_config.json")


@dataclass(frozen=True)
class Shape:
    hidden: int
    layers: int
    heads: int
    kv_heads: int
    head_dim: int
    intermediate: int
    tied: bool = True
    shards: int = 1
    # For tied models: also save lm_head.weight, "equal" to the embedding or "different".
    tied_lm_head: str | None = None
    vocab: int = 151936
    rope_theta: float = 1_000_000.0
    rope_scaling: dict | None = None
    extra_config: dict = field(default_factory=dict)
    tensor_prefix: str = "model."   # "" as Qwen3-Embedding saves them (Qwen3Model's names)
    # Untied models: a unigram prior of this strength, logit(id) ~ -prior * ln(id + 10) (see unigram_prior).
    prior: float = 0.0

    def with_(self, **kw) -> "Shape":
        return replace(self, **kw)


# head_dim 32 differs from hidden/heads (16), as in the real models (1024/16 = 64, head_dim 128).
TINY_TIED = Shape(hidden=64, layers=2, heads=4, kv_heads=2, head_dim=32, intermediate=128)
# Rows of 256 so that K-quants really apply; untied, in two shards with an index.
TINY_UNTIED_SHARDED = Shape(hidden=256, layers=2, heads=4, kv_heads=2, head_dim=64, intermediate=512,
                            tied=False, shards=2)
# The same with a trained model's frequency skew (unigram_prior): random text whose JSON strings end.
TINY_PRIOR = TINY_UNTIED_SHARDED.with_(shards=1, prior=1.5)
QWEN3_0_6B = Shape(hidden=1024, layers=28, heads=16, kv_heads=8, head_dim=128, intermediate=3072)
QWEN3_1_7B = Shape(hidden=2048, layers=28, heads=16, kv_heads=8, head_dim=128, intermediate=6144)
QWEN3_4B = Shape(hidden=2560, layers=36, heads=32, kv_heads=8, head_dim=128, intermediate=9728)
SHAPES = {"0.6b": QWEN3_0_6B, "1.7b": QWEN3_1_7B, "4b": QWEN3_4B}


def to_bf16(x: np.ndarray) -> np.ndarray:
    """float32 -> bfloat16 bits (uint16), rounding to nearest even, as torch does."""
    u = np.ascontiguousarray(x, dtype=np.float32).view(np.uint32)
    return ((u + 0x7FFF + ((u >> 16) & 1)) >> 16).astype(np.uint16)


def tensor_specs(s: Shape) -> Iterator[tuple[str, tuple[int, ...], str]]:
    """(HF name, shape, kind) for every tensor; kind is "embed", "norm" or "linear"."""
    yield s.tensor_prefix + "embed_tokens.weight", (s.vocab, s.hidden), "embed"
    for i in range(s.layers):
        p = f"{s.tensor_prefix}layers.{i}."
        q, kv = s.heads * s.head_dim, s.kv_heads * s.head_dim
        yield p + "input_layernorm.weight", (s.hidden,), "norm"
        yield p + "self_attn.q_proj.weight", (q, s.hidden), "linear"
        yield p + "self_attn.k_proj.weight", (kv, s.hidden), "linear"
        yield p + "self_attn.v_proj.weight", (kv, s.hidden), "linear"
        yield p + "self_attn.o_proj.weight", (s.hidden, q), "linear"
        yield p + "self_attn.q_norm.weight", (s.head_dim,), "norm"
        yield p + "self_attn.k_norm.weight", (s.head_dim,), "norm"
        yield p + "post_attention_layernorm.weight", (s.hidden,), "norm"
        yield p + "mlp.gate_proj.weight", (s.intermediate, s.hidden), "linear"
        yield p + "mlp.up_proj.weight", (s.intermediate, s.hidden), "linear"
        yield p + "mlp.down_proj.weight", (s.hidden, s.intermediate), "linear"
    yield s.tensor_prefix + "norm.weight", (s.hidden,), "norm"
    if not s.tied or s.tied_lm_head:
        yield "lm_head.weight", (s.vocab, s.hidden), "embed"


EMBED_SCALE = 2.5   # an embedding row's norm (entries of std EMBED_SCALE / sqrt(hidden))


def random_tensor(rng: np.random.Generator, shape: tuple[int, ...], kind: str) -> np.ndarray:
    """Scales that give logits of a few units, so quantization error is visible, not drowned."""
    if kind == "norm":
        return (1.0 + 0.1 * rng.standard_normal(shape, dtype=np.float32)).astype(np.float32)
    fan_in = shape[-1]
    std = EMBED_SCALE / math.sqrt(fan_in) if kind == "embed" else 0.35 / math.sqrt(fan_in)
    return rng.standard_normal(shape, dtype=np.float32) * np.float32(std)


PRIOR_DIM = 0          # the hidden dimension that carries the prior
PRIOR_EMBED = 2 * EMBED_SCALE   # its value in every embedding: twice a random row's norm, so it dominates


def unigram_prior(data: np.ndarray, name: str, s: Shape) -> np.ndarray:
    """Give random weights a trained model's frequency skew: BPE ids run in merge order, so the
    byte tokens (ASCII punctuation, digits, the quote) and early merges come first, and a real model
    ends a JSON string or number within a few tokens; near-uniform logits over 151,936 tokens almost
    never pick the closing quote. Every embedding gets PRIOR_EMBED in PRIOR_DIM; the final RMSNorm
    turns it into a nearly constant large value, and lm_head's column there adds -prior*ln(id+10)
    to each token's otherwise random logit."""
    if name.endswith("embed_tokens.weight"):
        data[:, PRIOR_DIM] = PRIOR_EMBED
    elif name == "lm_head.weight":
        normed = math.sqrt(s.hidden) * PRIOR_EMBED / math.hypot(PRIOR_EMBED, EMBED_SCALE)
        data[:, PRIOR_DIM] = -s.prior * np.log(np.arange(s.vocab, dtype=np.float32) + 10) / normed
    return data


def config_dict(s: Shape) -> dict:
    base = json.loads((FIXTURES / "config.json").read_text())
    base.update({
        "hidden_size": s.hidden, "num_hidden_layers": s.layers, "max_window_layers": s.layers,
        "num_attention_heads": s.heads, "num_key_value_heads": s.kv_heads, "head_dim": s.head_dim,
        "intermediate_size": s.intermediate, "tie_word_embeddings": s.tied, "vocab_size": s.vocab,
        "rope_theta": s.rope_theta, "rope_scaling": s.rope_scaling,
    })
    base.update(s.extra_config)
    return base


def write_safetensors(path: Path, tensors: list[tuple[str, tuple[int, ...], np.ndarray | None]],
                      make=None) -> None:
    """Write BF16 tensors; `make(name)` produces a tensor's data lazily when data is None."""
    header, offset = {}, 0
    for name, shape, _ in tensors:
        nbytes = math.prod(shape) * 2
        header[name] = {"dtype": "BF16", "shape": list(shape), "data_offsets": [offset, offset + nbytes]}
        offset += nbytes
    header["__metadata__"] = {"format": "pt"}
    blob = json.dumps(header, separators=(",", ":")).encode()
    blob += b" " * (-len(blob) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(blob)))
        f.write(blob)
        for name, shape, data in tensors:
            arr = data if data is not None else make(name)
            f.write(to_bf16(arr).tobytes())


def build_model(folder: Path, shape: Shape, seed: int = 0, tokenizer: bool = True) -> Path:
    """Create a random Qwen3 checkpoint in `folder` (created) and return the folder."""
    assert not (shape.prior and shape.tied), "the prior needs its own lm_head"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps(config_dict(shape), indent=2))
    if tokenizer:
        for name in TOKENIZER_FILES:
            shutil.copy(FIXTURES / name, folder / name)
    specs = list(tensor_specs(shape))
    rng = np.random.default_rng(seed)
    kinds = {n: (shp, k) for n, shp, k in specs}

    made: dict[str, np.ndarray] = {}

    def make(name: str) -> np.ndarray:
        if name == "lm_head.weight" and shape.tied_lm_head == "equal":
            return made["model.embed_tokens.weight"]
        shp, kind = kinds[name]
        data = random_tensor(rng, shp, kind)
        if shape.prior:
            data = unigram_prior(data, name, shape)
        if name == "model.embed_tokens.weight" and shape.tied_lm_head == "equal":
            made[name] = data
        return data

    groups = np.array_split(np.arange(len(specs)), shape.shards)
    weight_map = {}
    for i, idx in enumerate(groups):
        fname = "model.safetensors" if shape.shards == 1 else f"model-{i + 1:05d}-of-{shape.shards:05d}.safetensors"
        part = [(specs[j][0], specs[j][1], None) for j in idx]
        write_safetensors(folder / fname, part, make)
        weight_map.update({name: fname for name, _, _ in part})
    if shape.shards > 1:
        total = sum(math.prod(s) * 2 for _, s, _ in specs)
        (folder / "model.safetensors.index.json").write_text(json.dumps(
            {"metadata": {"total_size": total}, "weight_map": weight_map}, indent=2))
    return folder


GGUF_DIMS = {  # Shape field -> qwen3.* GGUF keys
    "layers": ("block_count",), "hidden": ("embedding_length",), "intermediate": ("feed_forward_length",),
    "heads": ("attention.head_count",), "kv_heads": ("attention.head_count_kv",),
    "head_dim": ("attention.key_length", "attention.value_length"),
}
_GGUF_SCALAR = {0: 1, 1: 1, 2: 2, 3: 2, 4: 4, 5: 4, 6: 4, 7: 1, 10: 8, 11: 8, 12: 8}   # type -> bytes
_GGUF_STRING, _GGUF_ARRAY, _GGUF_UINT32, _GGML_F32, _GGML_Q4_0 = 8, 9, 4, 0, 2


def _gguf_value_end(buf: bytes, off: int, vtype: int) -> int:
    if vtype == _GGUF_STRING:
        return off + 8 + struct.unpack_from("<Q", buf, off)[0]
    if vtype == _GGUF_ARRAY:
        sub, n = struct.unpack_from("<IQ", buf, off)
        off += 12
        if sub in _GGUF_SCALAR:
            return off + n * _GGUF_SCALAR[sub]
        for _ in range(n):
            off = _gguf_value_end(buf, off, sub)
        return off
    return off + _GGUF_SCALAR[vtype]


def _gguf_kvs(path: Path) -> list[tuple[str, int, bytes]]:
    """(key, type, raw value bytes) of a GGUF v3 file's metadata."""
    buf = path.read_bytes()
    assert buf[:4] == b"GGUF" and struct.unpack_from("<I", buf, 4)[0] == 3
    (n_kv,) = struct.unpack_from("<Q", buf, 16)
    off, kvs = 24, []
    for _ in range(n_kv):
        (n,) = struct.unpack_from("<Q", buf, off)
        key = buf[off + 8:off + 8 + n].decode()
        (vtype,) = struct.unpack_from("<I", buf, off + 8 + n)
        start = off + 12 + n
        off = _gguf_value_end(buf, start, vtype)
        kvs.append((key, vtype, buf[start:off]))
    return kvs


def _zero_gguf_tensors(s: Shape) -> list[tuple[str, tuple[int, ...], int]]:
    """(llama.cpp name, (ne0, ne1, ...), ggml type) of a tied Qwen3: F32 norms, Q4_0 matrices."""
    def vec(name: str, n: int):
        return name, (n,), _GGML_F32

    def mat(name: str, cols: int, rows: int):
        return name, (cols, rows), _GGML_Q4_0

    q, kv = s.heads * s.head_dim, s.kv_heads * s.head_dim
    out = [mat("token_embd.weight", s.hidden, s.vocab), vec("output_norm.weight", s.hidden)]
    for i in range(s.layers):
        p = f"blk.{i}."
        out += [vec(p + "attn_norm.weight", s.hidden), vec(p + "ffn_norm.weight", s.hidden),
                vec(p + "attn_q_norm.weight", s.head_dim), vec(p + "attn_k_norm.weight", s.head_dim),
                mat(p + "attn_q.weight", s.hidden, q), mat(p + "attn_k.weight", s.hidden, kv),
                mat(p + "attn_v.weight", s.hidden, kv), mat(p + "attn_output.weight", q, s.hidden),
                mat(p + "ffn_gate.weight", s.hidden, s.intermediate), mat(p + "ffn_up.weight", s.hidden, s.intermediate),
                mat(p + "ffn_down.weight", s.intermediate, s.hidden)]
    return out


def write_zero_gguf(path: Path, shape: Shape, like: Path) -> Path:
    """A tied Qwen3 GGUF of `shape` with all-zero Q4_0 matrices (a sparse file) and the metadata,
    tokenizer and all, of the Qwen3 GGUF `like`: in well under a second even at the 0.6B shape,
    for measuring what llama.cpp allocates, which depends on the shape, not on the weights."""
    dims = {f"qwen3.{k}": getattr(shape, f) for f, ks in GGUF_DIMS.items() for k in ks}
    dims["general.file_type"] = 2      # LLAMA_FTYPE_MOSTLY_Q4_0
    tensors = _zero_gguf_tensors(shape)
    kvs = [(k, t, struct.pack("<I", dims[k]) if k in dims else v) for k, t, v in _gguf_kvs(like)]
    assert all(t == _GGUF_UINT32 for k, t, _ in kvs if k in dims), "dimension keys must be uint32"
    head = bytearray(b"GGUF" + struct.pack("<IQQ", 3, len(tensors), len(kvs)))
    for key, vtype, raw in kvs:
        head += struct.pack("<Q", len(key)) + key.encode() + struct.pack("<I", vtype) + raw
    offsets, offset = [], 0
    for name, ne, ggml_type in tensors:
        nbytes = math.prod(ne) * 4 if ggml_type == _GGML_F32 else math.prod(ne) // 32 * 18
        head += struct.pack(f"<Q{len(name)}sI{len(ne)}QIQ", len(name), name.encode(), len(ne), *ne, ggml_type, offset)
        offsets.append(offset)
        offset += nbytes + (-nbytes % 32)
    head += b"\0" * (-len(head) % 32)
    with open(path, "wb") as f:
        f.write(head)
        for (name, ne, ggml_type), off in zip(tensors, offsets):
            if ggml_type == _GGML_F32:          # norm weights 1; zero matrices stay holes
                f.seek(len(head) + off)
                f.write(np.ones(ne, np.float32).tobytes())
        f.truncate(len(head) + offset)
    return path


# ---- the July 2025 ("2507") models: Qwen3-4B-Instruct-2507 and Qwen3-4B-Thinking-2507 ----------------
# Their config.json: the 4B's shapes with max_position_embeddings 262144, rope_theta 5e6 and no
# rope_scaling (a native context of 262,144 tokens). Their generation_config.json carries Qwen's
# preset for each. Templates: tests/fixtures/templates (see its README).
TEMPLATES = Path(__file__).parent / "fixtures" / "templates"
QWEN3_2507_CONTEXT = 262144
QWEN3_2507_ROPE_THETA = 5_000_000.0
QWEN3_2507 = {
    "instruct-2507": {"template": "qwen3-instruct-2507.jinja",
                      "sampling": {"temperature": 0.7, "top_p": 0.8, "top_k": 20, "min_p": 0.0}},
    "thinking-2507": {"template": "qwen3-thinking-2507.jinja",
                      "sampling": {"temperature": 0.6, "top_p": 0.95, "top_k": 20, "min_p": 0.0}},
}


def set_chat_template(folder: Path, source: str) -> None:
    """Replace the chat template in folder/tokenizer_config.json."""
    path = folder / "tokenizer_config.json"
    cfg = json.loads(path.read_text())
    cfg["chat_template"] = source
    path.write_text(json.dumps(cfg, indent=2, ensure_ascii=False))


def write_generation_config(folder: Path, values: dict | None) -> None:
    """Write generation_config.json with `values` (Qwen's other fields kept), or remove it (None)."""
    path = folder / "generation_config.json"
    if values is None:
        path.unlink(missing_ok=True)
        return
    base = json.loads((FIXTURES / "generation_config.json").read_text())
    for key in ("temperature", "top_p", "top_k", "min_p"):
        base.pop(key, None)
    path.write_text(json.dumps({**base, **values}, indent=2))


def make_2507(folder: Path, variant: str) -> Path:
    """Turn a built Qwen3 folder (build_model, build_scripted_model) into a 2507 variant
    ("instruct-2507" or "thinking-2507"): config values, template and sampling preset."""
    spec = QWEN3_2507[variant]
    config = json.loads((folder / "config.json").read_text())
    config.update(rope_theta=QWEN3_2507_ROPE_THETA, rope_scaling=None, max_position_embeddings=QWEN3_2507_CONTEXT)
    (folder / "config.json").write_text(json.dumps(config, indent=2))
    set_chat_template(folder, (TEMPLATES / spec["template"]).read_text())
    write_generation_config(folder, spec["sampling"])
    return folder


_GGUF_PACK = {4: "<I", 5: "<i", 6: "<f", 7: "<?"}   # uint32, int32, float32, bool


def gguf_kv_bytes(key: str, vtype: int, value) -> tuple[str, int, bytes]:
    """One metadata entry for rewrite_gguf_metadata: vtype 4 uint32, 5 int32, 6 float32, 7 bool, 8 string."""
    if vtype == _GGUF_STRING:
        raw = value.encode()
        return key, vtype, struct.pack("<Q", len(raw)) + raw
    return key, vtype, struct.pack(_GGUF_PACK[vtype], value)


def rewrite_gguf_metadata(src: Path, dst: Path, set_: list[tuple[str, int, bytes]] = (),
                          drop: tuple[str, ...] = ()) -> Path:
    """Copy a GGUF v3 with metadata entries replaced or added (`set_`, from gguf_kv_bytes) and
    removed (`drop`); tensor infos and data are copied as they are, re-aligned behind the header."""
    buf = src.read_bytes()
    (n_tensors,) = struct.unpack_from("<Q", buf, 8)
    kvs = _gguf_kvs(src)
    off = 24
    for key, vtype, raw in kvs:          # skip the metadata to find the tensor infos
        off += 8 + len(key.encode()) + 4 + len(raw)
    infos_start = off
    for _ in range(n_tensors):
        (n,) = struct.unpack_from("<Q", buf, off)
        off += 8 + n
        (n_dims,) = struct.unpack_from("<I", buf, off)
        off += 4 + 8 * n_dims + 4 + 8
    align = 32
    data_start = off + (-off % align)
    new = {k: (k, t, r) for k, t, r in set_}
    out = [new.pop(k, (k, t, r)) for k, t, r in kvs if k not in drop] + list(new.values())
    head = bytearray(b"GGUF" + struct.pack("<IQQ", 3, n_tensors, len(out)))
    for key, vtype, raw in out:
        head += struct.pack("<Q", len(key.encode())) + key.encode() + struct.pack("<I", vtype) + raw
    head += buf[infos_start:off]
    head += b"\0" * (-len(head) % align)
    dst.write_bytes(bytes(head) + buf[data_start:])
    return dst
