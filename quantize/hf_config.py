"""Qwen3's config.json, read and checked, and the tensor shapes it implies."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import QuantizeError

ARCHITECTURE = "Qwen3ForCausalLM"


@dataclass(frozen=True)
class Qwen3Config:
    hidden_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    head_dim: int
    intermediate_size: int
    vocab_size: int
    max_position_embeddings: int
    rope_theta: float
    rms_norm_eps: float
    tie_word_embeddings: bool
    rope_scaling: dict[str, Any] | None
    raw: dict[str, Any]

    @property
    def yarn(self) -> dict[str, Any] | None:
        """The rope_scaling block when it is YaRN (the only scaling Qwen3 uses), else None."""
        rs = self.rope_scaling or {}
        kind = rs.get("rope_type", rs.get("type"))
        return rs if kind == "yarn" else None

    def expected_shapes(self) -> dict[str, tuple[int, ...]]:
        """Every tensor a Qwen3ForCausalLM checkpoint holds, with its Hugging Face shape.

        lm_head.weight is listed only for untied models; a tied checkpoint may still carry it.
        """
        h, d, ff = self.hidden_size, self.head_dim, self.intermediate_size
        q, kv = self.num_attention_heads * d, self.num_key_value_heads * d
        shapes: dict[str, tuple[int, ...]] = {
            "model.embed_tokens.weight": (self.vocab_size, h),
            "model.norm.weight": (h,),
        }
        if not self.tie_word_embeddings:
            shapes["lm_head.weight"] = (self.vocab_size, h)
        for i in range(self.num_hidden_layers):
            p = f"model.layers.{i}."
            shapes.update({
                p + "input_layernorm.weight": (h,),
                p + "self_attn.q_proj.weight": (q, h),
                p + "self_attn.k_proj.weight": (kv, h),
                p + "self_attn.v_proj.weight": (kv, h),
                p + "self_attn.o_proj.weight": (h, q),
                p + "self_attn.q_norm.weight": (d,),
                p + "self_attn.k_norm.weight": (d,),
                p + "post_attention_layernorm.weight": (h,),
                p + "mlp.gate_proj.weight": (ff, h),
                p + "mlp.up_proj.weight": (ff, h),
                p + "mlp.down_proj.weight": (h, ff),
            })
        return shapes


def _positive_int(raw: dict[str, Any], key: str, path: Path) -> int:
    value = raw.get(key)
    if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
        raise QuantizeError(path, f"{key} must be a positive integer, got {value!r}")
    return value


def _read_json_object(path: Path) -> dict:
    """A JSON file that must hold an object; anything else is one QuantizeError line."""
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise QuantizeError(path, f"not valid JSON ({e})") from None
    if not isinstance(raw, dict):
        raise QuantizeError(path, "not a JSON object")
    return raw


def read_config(folder: Path) -> Qwen3Config:
    """Read folder/config.json; refuse anything that is not a dense Qwen3 causal LM."""
    path = folder / "config.json"
    if not path.is_file():
        raise QuantizeError(path, "not found: a Hugging Face model folder needs config.json")
    raw = _read_json_object(path)
    archs = raw.get("architectures") or []
    if archs != [ARCHITECTURE]:
        got = ", ".join(map(str, archs)) or raw.get("model_type") or "none given"
        raise QuantizeError(path, f"architecture {got} is not {ARCHITECTURE}; qwen3-edge converts Qwen3 dense models only")
    heads = _positive_int(raw, "num_attention_heads", path)
    hidden = _positive_int(raw, "hidden_size", path)
    head_dim = raw.get("head_dim", hidden // heads)
    kv_heads = raw.get("num_key_value_heads", heads)
    cfg = Qwen3Config(
        hidden_size=hidden,
        num_hidden_layers=_positive_int(raw, "num_hidden_layers", path),
        num_attention_heads=heads,
        num_key_value_heads=kv_heads,
        head_dim=head_dim,
        intermediate_size=_positive_int(raw, "intermediate_size", path),
        vocab_size=_positive_int(raw, "vocab_size", path),
        max_position_embeddings=_positive_int(raw, "max_position_embeddings", path),
        rope_theta=float(raw.get("rope_theta", 1_000_000.0)),
        rms_norm_eps=float(raw.get("rms_norm_eps", 1e-6)),
        tie_word_embeddings=bool(raw.get("tie_word_embeddings", False)),
        rope_scaling=raw.get("rope_scaling"),
        raw=raw,
    )
    for key in ("head_dim", "num_key_value_heads"):
        _positive_int({key: getattr(cfg, key)}, key, path)
    if heads % cfg.num_key_value_heads:
        raise QuantizeError(path, f"num_attention_heads {heads} is not a multiple of num_key_value_heads {cfg.num_key_value_heads}")
    if cfg.rope_scaling is not None and not isinstance(cfg.rope_scaling, dict):
        raise QuantizeError(path, f"rope_scaling must be an object or null, got {cfg.rope_scaling!r}")
    if cfg.yarn is not None:
        for key in ("factor", "original_max_position_embeddings"):
            if not isinstance(cfg.yarn.get(key), (int, float)):
                raise QuantizeError(path, f"rope_scaling of type yarn needs a numeric {key}")
    return cfg


# generation_config.json field(s) -> GGUF key and value type, in the order llama.cpp's converter
# writes them: gguf-py's Metadata.load and set_gguf_meta_model in the llama.cpp that
# llama-cpp-python 0.3.36 vendors (which also takes transformers' repetition_penalty).
SAMPLING_FIELDS: tuple[tuple[tuple[str, ...], str, type], ...] = (
    (("sequence",), "general.sampling.sequence", str),
    (("top_k",), "general.sampling.top_k", int),
    (("top_p",), "general.sampling.top_p", float),
    (("min_p",), "general.sampling.min_p", float),
    (("xtc_probability",), "general.sampling.xtc_probability", float),
    (("xtc_threshold",), "general.sampling.xtc_threshold", float),
    (("temperature",), "general.sampling.temp", float),
    (("penalty_last_n",), "general.sampling.penalty_last_n", int),
    (("penalty_repeat", "repetition_penalty"), "general.sampling.penalty_repeat", float),
    (("mirostat",), "general.sampling.mirostat", int),
    (("mirostat_tau",), "general.sampling.mirostat_tau", float),
    (("mirostat_eta",), "general.sampling.mirostat_eta", float),
)
INT32_MAX = 2**31 - 1


def _sampling_value(path: Path, field: str, value: Any, kind: type) -> Any:
    """A value GGUF can hold as `kind` (string, int32, float32), or a one-line refusal: llama.cpp's
    converter would crash half way through writing on a string temperature or a fractional top_k."""
    ok = (isinstance(value, str) if kind is str else
          isinstance(value, int) and not isinstance(value, bool) and -INT32_MAX - 1 <= value <= INT32_MAX if kind is int
          else isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value))
    if not ok:
        want = {str: "a string", int: "an integer", float: "a finite number"}[kind]
        raise QuantizeError(path, f"{field} must be {want}, got {value!r}")
    return float(value) if kind is float else value


def read_generation_sampling(folder: Path) -> list[tuple[str, type, Any]]:
    """The sampling preset of folder/generation_config.json as (GGUF key, type, value), in
    llama.cpp's order; fields that are absent or null are left out, and so is a missing file."""
    path = folder / "generation_config.json"
    if not path.is_file():
        return []
    raw = _read_json_object(path)
    out = []
    for fields, key, kind in SAMPLING_FIELDS:
        field = next((f for f in fields if raw.get(f) is not None), None)
        if field is not None:
            out.append((key, kind, _sampling_value(path, field, raw[field], kind)))
    return out
