"""A model brings its own sampling preset: the quantizer carries generation_config.json into the
GGUF's general.sampling.* keys, with the keys, types and order of llama.cpp's converter (gguf-py's
Metadata in the llama.cpp that llama-cpp-python 0.3.36 vendors), and the Engine reads them back."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from gguf import GGUFValueType

from edge.runtime.engine import EngineError, read_model_info
from quantize import QuantizeError, quantize_model
from quantize.gguf_header import read_header
from tests.model_factory import QWEN3_2507, TINY_TIED, _gguf_kvs, build_model, gguf_kv_bytes, rewrite_gguf_metadata


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    return build_model(tmp_path_factory.mktemp("sampling") / "hf", TINY_TIED, seed=3)


def convert(folder: Path, tmp_path: Path, generation_config: dict | None, qtype: str = "f16") -> Path:
    work = Path(shutil.copytree(folder, tmp_path / "hf"))
    if generation_config is None:
        (work / "generation_config.json").unlink()
    else:
        (work / "generation_config.json").write_text(json.dumps(generation_config))
    return Path(quantize_model(work, qtype, tmp_path / f"out-{qtype}.gguf").output)


def sampling_fields(path: Path) -> list[tuple[str, GGUFValueType, object]]:
    """general.sampling.* as stored: key, GGUF value type, value, in file order."""
    values = read_header(path).fields
    return [(k, GGUFValueType(t), values[k]) for k, t, _ in _gguf_kvs(path) if k.startswith("general.sampling.")]


F32, I32 = GGUFValueType.FLOAT32, GGUFValueType.INT32


@pytest.mark.parametrize("variant", sorted(QWEN3_2507))
def test_2507_presets_are_carried_with_llama_cpps_types(folder, tmp_path, variant, caplog):
    preset = QWEN3_2507[variant]["sampling"]
    out = convert(folder, tmp_path, {"do_sample": True, "eos_token_id": [151645, 151643], **preset})
    assert "Duplicated key" not in caplog.text      # gguf-py's Metadata does not write them a second time
    got = sampling_fields(out)
    # llama.cpp's order (top_k, top_p, min_p, temp), int32 and float32
    assert [(k, t) for k, t, _ in got] == [("general.sampling.top_k", I32), ("general.sampling.top_p", F32),
                                           ("general.sampling.min_p", F32), ("general.sampling.temp", F32)]
    values = {k: v for k, _, v in got}
    assert values["general.sampling.top_k"] == preset["top_k"]
    assert values["general.sampling.top_p"] == preset["top_p"] and values["general.sampling.temp"] == preset["temperature"]
    assert values["general.sampling.min_p"] == 0.0
    # written before general.name, as llama.cpp's converter does
    keys = list(read_header(out).fields)
    assert keys.index("general.sampling.temp") < keys.index("general.name")
    assert read_model_info(out).sampling_defaults == preset


def test_transformers_repetition_penalty_and_other_fields(folder, tmp_path):
    """The vendored converter maps repetition_penalty to penalty_repeat and carries mirostat;
    fields with no GGUF key (do_sample, max_new_tokens) and nulls are left out."""
    out = convert(folder, tmp_path, {"temperature": 1, "repetition_penalty": 1.05, "mirostat": 2,
                                     "top_p": None, "do_sample": True, "max_new_tokens": 100})
    assert [(k, t) for k, t, _ in sampling_fields(out)] == [
        ("general.sampling.temp", F32), ("general.sampling.penalty_repeat", F32), ("general.sampling.mirostat", I32)]
    assert read_header(out).get("general.sampling.penalty_repeat") == pytest.approx(1.05)
    assert read_model_info(out).sampling_defaults == {"temperature": 1.0}


def test_no_generation_config_no_keys(folder, tmp_path):
    out = convert(folder, tmp_path, None)
    assert sampling_fields(out) == [] and read_model_info(out).sampling_defaults == {}


def test_llama_cpps_quantizer_keeps_them(folder, tmp_path):
    preset = QWEN3_2507["thinking-2507"]["sampling"]
    out = convert(folder, tmp_path, preset, qtype="q4_0")
    assert read_header(out).get("general.file_type") == 2
    assert read_model_info(out).sampling_defaults == preset


@pytest.mark.parametrize("config, words", [
    ({"temperature": "hot"}, "temperature must be a finite number"),
    ({"top_k": 20.5}, "top_k must be an integer"),
    ({"top_k": True}, "top_k must be an integer"),
    ({"top_k": 2**31}, "top_k must be an integer"),
    ({"top_p": float("nan")}, "top_p must be a finite number"),
    ({"sequence": 5}, "sequence must be a string"),
])
def test_bad_generation_config_is_refused_in_one_line(folder, tmp_path, config, words):
    with pytest.raises(QuantizeError, match=words) as err:
        convert(folder, tmp_path, config)
    assert "generation_config.json" in str(err.value) and "\n" not in str(err.value)
    assert not list(tmp_path.glob("*out-*"))


def test_unreadable_generation_config_is_refused(folder, tmp_path):
    work = Path(shutil.copytree(folder, tmp_path / "hf"))
    for text in ("{not json", "[0.6]"):
        (work / "generation_config.json").write_text(text)
        with pytest.raises(QuantizeError, match="generation_config.json"):
            quantize_model(work, "f16", tmp_path / "out.gguf")


@pytest.mark.parametrize("entry", [
    gguf_kv_bytes("general.sampling.temp", 6, float("nan")),
    gguf_kv_bytes("general.sampling.temp", 6, -0.5),
    gguf_kv_bytes("general.sampling.top_p", 6, 1.5),
    gguf_kv_bytes("general.sampling.min_p", 6, -0.1),
    gguf_kv_bytes("general.sampling.top_k", 5, -1),
    gguf_kv_bytes("general.sampling.top_k", 6, 20.0),
    gguf_kv_bytes("general.sampling.temp", 8, "0.6"),
])
def test_hostile_sampling_metadata_is_refused(converted, tmp_path, entry):
    good = converted("tied", "f16")      # the session's conversion: Qwen's preset, valid keys
    assert read_model_info(good).sampling_defaults
    path = rewrite_gguf_metadata(good, tmp_path / "bad.gguf", [entry])
    with pytest.raises(EngineError, match=entry[0]) as err:
        read_model_info(path)
    assert "\n" not in str(err.value) and str(path) in str(err.value)
