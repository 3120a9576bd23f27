"""Qwen3 Hugging Face checkpoints to GGUF: F32/F16/BF16/Q8_0 written directly, K-quants and the
4/5-bit types through llama.cpp's own quantizer."""

from .errors import QuantizeError
from .gguf_info import describe_gguf
from .pipeline import QuantizeResult, default_output_name, quantize_model
from .progress import Progress
from .types import DEFAULT_TYPE, QUANT_TYPES, QuantType, quant_type

__all__ = ["QuantizeError", "QuantizeResult", "Progress", "QuantType", "QUANT_TYPES", "DEFAULT_TYPE",
           "describe_gguf", "default_output_name", "quantize_model", "quant_type"]
