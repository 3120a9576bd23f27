"""What the GGUF holds: qwen3 hyperparameters, llama.cpp tensor names, tied embeddings written
once, YaRN keys only when config.json asks for YaRN, and every type loading in llama.cpp."""

from __future__ import annotations

import gguf
import pytest

from quantize import QUANT_TYPES, quantize_model
from quantize.gguf_header import read_header
from tests.conftest import llama_model_desc
from tests.model_factory import TINY_TIED, build_model

LAYER_TENSORS = {"attn_norm", "attn_q", "attn_k", "attn_v", "attn_output", "attn_q_norm", "attn_k_norm",
                 "ffn_norm", "ffn_gate", "ffn_up", "ffn_down"}


def names(path):
    return {t.name for t in read_header(path).tensors}


def test_hyperparameters(converted):
    h = read_header(converted("tied", "f16"))
    assert h.get("general.architecture") == "qwen3"
    expected = {"block_count": 2, "context_length": 40960, "embedding_length": 64, "feed_forward_length": 128,
                "attention.head_count": 4, "attention.head_count_kv": 2, "attention.key_length": 32,
                "attention.value_length": 32, "rope.freq_base": 1e6, "attention.layer_norm_rms_epsilon": 1e-6}
    assert {k: h.get(f"qwen3.{k}") for k in expected} == expected
    assert h.get("general.file_type") == gguf.LlamaFileType.MOSTLY_F16
    assert h.get("general.name") == "Tiny Tied"
    assert h.get("general.size_label") == gguf.size_label(h.n_params, 0, 0, 0) == "10M"
    assert not any(k.startswith("qwen3.rope.scaling") for k in h.fields)


def test_tied_embedding_written_once(converted):
    got = names(converted("tied", "f16"))
    expected = {"token_embd.weight", "output_norm.weight"} | {
        f"blk.{i}.{n}.weight" for i in range(2) for n in LAYER_TENSORS}
    assert got == expected  # no output.weight: llama.cpp ties it to token_embd


def test_untied_lm_head_kept(converted):
    assert "output.weight" in names(converted("untied", "f16"))


@pytest.mark.parametrize("saved, kept", [("equal", False), ("different", True)])
def test_saved_lm_head_of_tied_model(tmp_path, saved, kept):
    folder = build_model(tmp_path / "m", TINY_TIED.with_(tied_lm_head=saved), seed=3)
    out = quantize_model(folder, "f32", tmp_path / "m.gguf").output
    assert ("output.weight" in names(out)) is kept


def test_yarn_keys_only_with_yarn_rope_scaling(tmp_path):
    yarn = {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 32768}
    folder = build_model(tmp_path / "y", TINY_TIED.with_(rope_scaling=yarn), seed=4)
    h = read_header(quantize_model(folder, "f16", tmp_path / "y.gguf").output)
    assert h.get("qwen3.rope.scaling.type") == "yarn"
    assert h.get("qwen3.rope.scaling.factor") == 4.0
    assert h.get("qwen3.rope.scaling.original_context_length") == 32768


def test_tensor_types_follow_llama_cpp_rules(converted):
    h = read_header(converted("untied", "q8_0"))
    types = {t.name: t.type for t in h.tensors}
    assert types["output_norm.weight"] == types["blk.0.attn_q_norm.weight"] == gguf.GGMLQuantizationType.F32
    assert types["token_embd.weight"] == types["blk.1.ffn_down.weight"] == gguf.GGMLQuantizationType.Q8_0


# The types converted from the folder elsewhere in the suite (reference logits, tokenizer, CLI).
# q4_k_m takes the folder route of every llama.cpp type (a float carrier GGUF, then the quantizer
# with the type's file_type); the other llama.cpp types differ only in that file_type, so they
# are quantized from the session's BF16 GGUF: the same quantizer call, without writing the
# 151,936-row vocabulary and its carrier again (~1.5 s a type).
FROM_FOLDER = {"f32", "f16", "bf16", "q8_0", "q4_k_m"}


@pytest.fixture(scope="module")
def requantized(converted, tmp_path_factory):
    """requantized(type) -> QuantizeResult of the untied BF16 GGUF quantized to it, once."""
    out, cache = tmp_path_factory.mktemp("requantized"), {}

    def get(qtype: str):
        if qtype not in cache:
            cache[qtype] = quantize_model(converted("untied", "bf16"), qtype, out / f"{qtype}.gguf")
        return cache[qtype]
    return get


def test_folder_route_covers_every_python_writer_and_the_llama_cpp_route():
    """FROM_FOLDER holds every type Python writes itself, and one type of llama.cpp's quantizer."""
    assert {q for q, t in QUANT_TYPES.items() if t.written_by_python} < FROM_FOLDER
    assert len(FROM_FOLDER - {q for q, t in QUANT_TYPES.items() if t.written_by_python}) == 1


@pytest.mark.parametrize("qtype", sorted(QUANT_TYPES))
def test_every_type_loads_in_llama_cpp(qtype, converted, requantized):
    path = converted("untied", qtype) if qtype in FROM_FOLDER else requantized(qtype).output
    h = read_header(path)
    assert h.get("general.file_type") == QUANT_TYPES[qtype].file_type
    desc = llama_model_desc(path)
    assert desc.endswith(QUANT_TYPES[qtype].label), desc


def test_requantize_from_float_gguf(requantized):
    result = requantized("q4_0")
    assert result.source.endswith("untied-bf16.gguf")
    assert read_header(result.output).get("general.file_type") == gguf.LlamaFileType.MOSTLY_Q4_0
    assert llama_model_desc(result.output).endswith("Q4_0")
    assert 4.5 < result.bits_per_weight < 6.5
