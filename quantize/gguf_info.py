"""What a GGUF holds: architecture, shapes, tensor types, tokenizer and chat template, for
`qwen3-edge info`; and the check that a GGUF is a float Qwen3 model worth re-quantizing."""

from __future__ import annotations

import hashlib
import math
from collections import Counter
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import gguf

from .errors import QuantizeError
from .gguf_check import check_qwen3
from .gguf_header import GGUFHeader, read_header
from .types import FLOAT_FILE_TYPES, file_type_name

HPARAMS = ("block_count", "context_length", "embedding_length", "feed_forward_length",
           "attention.head_count", "attention.head_count_kv", "attention.key_length",
           "attention.value_length", "rope.freq_base", "attention.layer_norm_rms_epsilon",
           "rope.scaling.type", "rope.scaling.factor", "rope.scaling.original_context_length")


# general.sampling.* keys -> the names the runtime's sampling presets use, with their valid range.
SAMPLING_DEFAULTS = {"general.sampling.temp": ("temperature", 0.0, math.inf),
                     "general.sampling.top_p": ("top_p", 0.0, 1.0),
                     "general.sampling.top_k": ("top_k", 0, 1 << 31),
                     "general.sampling.min_p": ("min_p", 0.0, 1.0)}


def sampling_defaults(fields: Mapping[str, Any]) -> dict[str, float | int]:
    """The sampling preset a GGUF carries (general.sampling.*, from its generation_config.json)
    as {"temperature", "top_p", "top_k", "min_p"}, the keys present only. A downloaded GGUF is
    untrusted: a value of the wrong type or out of range raises ValueError (one line)."""
    out: dict[str, float | int] = {}
    for key, (name, low, high) in SAMPLING_DEFAULTS.items():
        value = fields.get(key)
        if value is None:
            continue
        is_int = isinstance(value, int) and not isinstance(value, bool)
        number = is_int or isinstance(value, float) and math.isfinite(value)
        if not number or (name == "top_k" and not is_int) or not low <= value <= high:
            raise ValueError(f"{key} is {value!r}, not a {name} in [{low}, {high}]")
        out[name] = value
    return out


def bits_per_weight(header: GGUFHeader) -> float | None:
    return round(8 * header.data_bytes / header.n_params, 3) if header.n_params else None


def describe_gguf(path: Path) -> dict[str, Any]:
    """A JSON-ready summary of a GGUF."""
    h = read_header(Path(path))
    arch = h.get("general.architecture")
    file_type = h.get("general.file_type")
    tokens = h.get("tokenizer.ggml.tokens")

    def token(key: str) -> dict[str, Any] | None:
        tid = h.get(key)
        if tid is None:
            return None
        text = tokens[tid] if tokens is not None and 0 <= tid < len(tokens) else None
        return {"id": tid, "text": text}

    template = h.get("tokenizer.chat_template")
    return {
        "path": str(path),
        "size_bytes": Path(path).stat().st_size,
        "architecture": arch,
        "name": h.get("general.name"),
        "size_label": h.get("general.size_label"),
        "file_type": None if file_type is None else file_type_name(file_type),
        "parameters": h.n_params,
        "bits_per_weight": bits_per_weight(h),
        "hyperparameters": {k: h.get(f"{arch}.{k}") for k in HPARAMS if f"{arch}.{k}" in h.fields},
        "tensors": {"count": len(h.tensors),
                    "types": dict(sorted(Counter(t.type.name for t in h.tensors).items()))},
        "tokenizer": {
            "model": h.get("tokenizer.ggml.model"),
            "pre": h.get("tokenizer.ggml.pre"),
            "tokens": len(tokens) if tokens is not None else 0,
            "merges": len(h.get("tokenizer.ggml.merges", [])),
            "bos": token("tokenizer.ggml.bos_token_id"),
            "eos": token("tokenizer.ggml.eos_token_id"),
            "pad": token("tokenizer.ggml.padding_token_id"),
            "add_bos": h.get("tokenizer.ggml.add_bos_token"),
        },
        "sampling": {k.removeprefix("general.sampling."): v for k, v in h.fields.items()
                     if k.startswith("general.sampling.")},
        "chat_template": None if template is None else {
            "chars": len(template),
            "sha256": hashlib.sha256(template.encode()).hexdigest()[:16],
            "thinking": "enable_thinking" in template,
        },
    }


def check_float_qwen3(path: Path) -> gguf.LlamaFileType:
    """Refuse a GGUF that is not a well-formed Qwen3 model in F32/F16/BF16 (the only inputs worth
    quantizing); llama.cpp's quantizer gets only files that pass the same check as the runtime's."""
    h = read_header(path)
    check_qwen3(h)
    ft = h.get("general.file_type")
    if ft is None or ft not in {int(t) for t in FLOAT_FILE_TYPES}:
        name = "missing" if ft is None else file_type_name(ft)
        raise QuantizeError(path, f"file type {name} is already quantized; re-quantize only from an f32, f16 or bf16 GGUF")
    return gguf.LlamaFileType(ft)
