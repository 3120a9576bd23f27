"""Shared fixtures: tiny random Qwen3 checkpoints, built once per session, and their conversions."""

from __future__ import annotations

import ctypes
import os
from pathlib import Path

import numpy as np
import pytest

from quantize import quantize_model
from tests.model_factory import TINY_TIED, TINY_UNTIED_SHARDED, build_model
from tests.scripted_model import QWEN3_SCRIPT, build_scripted_model, looping_script
from edge.runtime.cpu_buffers import safe_llama

# The persistent prompt cache is on by default and outlives a process: the suite's tests must not
# share KV state through it (nor write into the user's store). Its own tests turn it on explicitly.
os.environ["QWEN3_EDGE_PROMPT_CACHE"] = "0"

# The per-machine calibration (edge/runtime/tune.py) never runs by surprise in tests, nor in the CLIs they
# start (children inherit this): every load uses the fixed defaults. Tests of the calibration
# ask for it with tune=True and their own cache file.
os.environ["QWEN3_EDGE_TUNE"] = "off"

# Tokens that cross the vocabulary: text, punctuation, control tokens, digits.
SAMPLE_TOKENS = [9707, 11, 1879, 0, 151644, 872, 198, 3838, 374, 220, 17, 10, 17, 30, 151645, 151667]


@pytest.fixture(scope="session")
def models(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("hf")
    return {
        "tied": build_model(root / "tiny-tied", TINY_TIED, seed=1),
        "untied": build_model(root / "tiny-untied-sharded", TINY_UNTIED_SHARDED, seed=2),
    }


@pytest.fixture(scope="session")
def scripted_gguf(tmp_path_factory) -> Path:
    """A Qwen3 GGUF that says tests.scripted_model's script: exact thinking and answer text."""
    root = tmp_path_factory.mktemp("scripted")
    folder = build_scripted_model(root / "scripted", QWEN3_SCRIPT)
    return Path(quantize_model(folder, "f16", root / "scripted-f16.gguf").output)


@pytest.fixture(scope="session")
def looping_gguf(tmp_path_factory) -> Path:
    """A scripted GGUF that thinks in an endless loop until a budget cuts it, then answers
    (tests.scripted_model.looping_script). Read-only: tests that change a model copy it first."""
    root = tmp_path_factory.mktemp("looping")
    return Path(quantize_model(build_scripted_model(root / "looping", looping_script()), "f16",
                               root / "looping.gguf").output)


@pytest.fixture(scope="session")
def tool_ggufs(tmp_path_factory) -> dict[str, Path]:
    """Scripted models that call a tool (tests/tool_scripts.py), by name."""
    from tests import tool_scripts
    root = tmp_path_factory.mktemp("tools")
    scripts = {"think_then_call": tool_scripts.think_then_call(), "call_then_answer": tool_scripts.call_then_answer(),
               "open_think": tool_scripts.call_in_open_thinking(), "broken": tool_scripts.broken_call()}
    return {name: Path(quantize_model(build_scripted_model(root / name, script), "f16", root / f"{name}.gguf").output)
            for name, script in scripts.items()}


@pytest.fixture(scope="session")
def converted(models, tmp_path_factory):
    """converted(model_key, type) -> GGUF path, each conversion done once per session."""
    out_dir = tmp_path_factory.mktemp("gguf")
    cache: dict[tuple[str, str], Path] = {}

    def get(model: str, qtype: str) -> Path:
        if (model, qtype) not in cache:
            cache[model, qtype] = Path(quantize_model(models[model], qtype, out_dir / f"{model}-{qtype}.gguf").output)
        return cache[model, qtype]

    return get


def llama_logits(gguf_path: Path, tokens: list[int]) -> np.ndarray:
    """llama.cpp's logits for every position, with an F32 KV cache (F16 alone costs ~1e-3)."""
    import llama_cpp
    llm = safe_llama(str(gguf_path), n_ctx=64, n_batch=64, logits_all=True, type_k=0, type_v=0,
                          n_threads=2, verbose=False)
    try:
        llm.eval(tokens)
        return np.array(llm.scores[: len(tokens)], dtype=np.float64)
    finally:
        llm.close()


def llama_model_desc(gguf_path: Path) -> str:
    """llama.cpp's own one-line description of a loaded model, e.g. "qwen3 ?B Q4_K - Medium"."""
    import llama_cpp
    llm = safe_llama(str(gguf_path), n_ctx=16, vocab_only=False, verbose=False)
    try:
        buf = ctypes.create_string_buffer(256)
        llama_cpp.llama_model_desc(llm.model, buf, ctypes.sizeof(buf))
        return buf.value.decode()
    finally:
        llm.close()
