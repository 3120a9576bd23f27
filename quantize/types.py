"""The output types `quantize` offers, in one table.

F32/F16/BF16 and Q8_0 are written directly from Python (gguf-py's writer and quants); the rest go
through llama.cpp's own quantizer, so that K-quants are exactly llama.cpp's.
"""

from __future__ import annotations

from dataclasses import dataclass

from gguf import GGMLQuantizationType, LlamaFileType

from .errors import QuantizeError


@dataclass(frozen=True)
class QuantType:
    name: str                      # what the user types: "q4_k_m"
    file_type: LlamaFileType       # general.file_type and llama_model_quantize's ftype
    direct: GGMLQuantizationType | None  # tensor type when Python writes it, None for llama.cpp
    label: str                     # llama.cpp's own name in llama_model_desc: "Q4_K - Medium"

    @property
    def written_by_python(self) -> bool:
        return self.direct is not None


_T = GGMLQuantizationType
_F = LlamaFileType

QUANT_TYPES: dict[str, QuantType] = {t.name: t for t in (
    QuantType("f32", _F.ALL_F32, _T.F32, "all F32"),
    QuantType("f16", _F.MOSTLY_F16, _T.F16, "F16"),
    QuantType("bf16", _F.MOSTLY_BF16, _T.BF16, "BF16"),
    QuantType("q8_0", _F.MOSTLY_Q8_0, _T.Q8_0, "Q8_0"),
    QuantType("q6_k", _F.MOSTLY_Q6_K, None, "Q6_K"),
    QuantType("q5_k_m", _F.MOSTLY_Q5_K_M, None, "Q5_K - Medium"),
    QuantType("q5_k_s", _F.MOSTLY_Q5_K_S, None, "Q5_K - Small"),
    QuantType("q5_0", _F.MOSTLY_Q5_0, None, "Q5_0"),
    QuantType("q5_1", _F.MOSTLY_Q5_1, None, "Q5_1"),
    QuantType("q4_k_m", _F.MOSTLY_Q4_K_M, None, "Q4_K - Medium"),
    QuantType("q4_k_s", _F.MOSTLY_Q4_K_S, None, "Q4_K - Small"),
    QuantType("q4_0", _F.MOSTLY_Q4_0, None, "Q4_0"),
    QuantType("q4_1", _F.MOSTLY_Q4_1, None, "Q4_1"),
)}

DEFAULT_TYPE = "q4_k_m"
FLOAT_FILE_TYPES = {_F.ALL_F32, _F.MOSTLY_F16, _F.MOSTLY_BF16}


def quant_type(name: str) -> QuantType:
    """Look a type up by the name the user typed (case-insensitive)."""
    key = name.strip().lower().replace("-", "_")
    if key not in QUANT_TYPES:
        raise QuantizeError(None, f"unknown --type {name!r}; choose one of {', '.join(QUANT_TYPES)}")
    return QUANT_TYPES[key]


def file_type_name(file_type: int) -> str:
    """Our name for a general.file_type value ("q4_k_m"), or llama.cpp's enum name for others."""
    for t in QUANT_TYPES.values():
        if int(t.file_type) == int(file_type):
            return t.name
    try:
        return LlamaFileType(file_type).name.removeprefix("MOSTLY_").lower()
    except ValueError:
        return f"unknown ({file_type})"
