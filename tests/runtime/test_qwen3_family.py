"""The whole small Qwen3 family through Engine.load: the original hybrid models and the 2507 models
(tests/model_factory.make_2507: max_position_embeddings 262144, rope_theta 5e6, their templates).
Kind from the template, native context from the metadata, and the RoPE settings llama.cpp
receives (its context_params) and logs (freq_base, freq_scale) at 8K, 40K, 128K and 256K."""

from __future__ import annotations

import re
import shutil
import warnings
from pathlib import Path

import llama_cpp
import pytest

from edge.runtime.engine import Engine, EngineError, read_model_info
from edge.protocol.model_kind import ModelKind
from quantize import quantize_model
from tests.model_factory import TINY_TIED, build_model, gguf_kv_bytes, make_2507, rewrite_gguf_metadata
from tests.runtime.test_memory_plan_llama import llama_log

NONE, YARN = llama_cpp.LLAMA_ROPE_SCALING_TYPE_NONE, llama_cpp.LLAMA_ROPE_SCALING_TYPE_YARN
VARIANTS = ("original", "instruct-2507", "thinking-2507")


@pytest.fixture(scope="module")
def family(tmp_path_factory) -> dict[str, Path]:
    """One tiny GGUF per variant, same weights (kv_heads 2, head_dim 32: 256K tokens of f16 KV
    cache cost 128 MiB)."""
    root = tmp_path_factory.mktemp("family")
    original = build_model(root / "original", TINY_TIED, seed=7)
    out = {}
    for variant in VARIANTS:
        folder = original
        if variant != "original":
            folder = make_2507(Path(shutil.copytree(original, root / variant)), variant)
        out[variant] = Path(quantize_model(folder, "f16", root / f"{variant}.gguf").output)
    return out


@pytest.mark.parametrize("variant, kind, native", [("original", ModelKind.HYBRID, 32768),
                                                   ("instruct-2507", ModelKind.NON_THINKING, 262144),
                                                   ("thinking-2507", ModelKind.THINKING, 262144)])
def test_kind_and_native_context(family, variant, kind, native):
    with Engine.load(family[variant], n_ctx=512) as e:
        assert e.kind is kind and e.native_ctx == native


def load_logged(path: Path, n_ctx: int) -> tuple[Engine, str, list[str]]:
    """Engine.load with llama.cpp's log and Python's warnings captured (small batches: the
    attention-score buffer at 256K stays small)."""
    with llama_log() as lines, warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        engine = Engine.load(path, n_ctx=n_ctx, n_batch=64, n_threads=2)
    return engine, "".join(lines), [str(w.message) for w in caught]


def logged(log: str, name: str) -> float:
    """A value llama.cpp logs when it creates the context ("llama_context: freq_scale    = 0.5")."""
    return float(re.search(rf"llama_context: {name}\s+= (\S+)", log).group(1))


# (variant, n_ctx) -> (scaling type, rope_freq_scale, yarn_orig_ctx); None: refused
EXPECTED = {
    ("original", 8192): (NONE, None, None), ("original", 40960): (YARN, 0.5, 32768),
    ("original", 131072): (YARN, 0.25, 32768), ("original", 262144): None,
    **{(v, n): (NONE, None, None) for v in VARIANTS[1:] for n in (8192, 40960, 131072, 262144)},
    ("instruct-2507", 524288): (YARN, 0.5, 262144),
}


@pytest.mark.parametrize("variant, n_ctx", sorted(EXPECTED))
def test_rope_settings_llama_cpp_receives(family, variant, n_ctx):
    expected = EXPECTED[variant, n_ctx]
    if expected is None:
        with pytest.raises(EngineError, match=r"at most 131072 tokens") as err:
            Engine.load(family[variant], n_ctx=n_ctx, n_batch=64)
        assert "\n" not in str(err.value)
        return
    engine, log, warned = load_logged(family[variant], n_ctx)
    with engine:
        params = engine.llama.context_params
        scaling, scale, orig = expected
        assert engine.n_ctx == n_ctx and params.n_ctx == n_ctx and params.rope_scaling_type == scaling
        assert logged(log, "freq_base") == (1e6 if variant == "original" else 5e6)
        if scaling == YARN:
            assert params.rope_freq_scale == scale and params.yarn_orig_ctx == orig
            assert logged(log, "freq_scale") == scale
            if variant == "original":                                  # the tiny model is "10M"
                assert any("only for Qwen3-4B" in w for w in warned)
            else:                                                      # that caveat is the original family's
                assert any("beyond this model's native 262144" in w for w in warned)
                assert not any("4B" in w for w in warned)
        else:
            assert logged(log, "freq_scale") == 1.0 and not warned


def test_2507_model_beyond_native_gets_yarn_over_262144_without_the_4b_warning(family):
    from edge.runtime.context_plan import plan_rope
    info = read_model_info(family["instruct-2507"])
    plan = plan_rope(524288, native_ctx=info.native_ctx, size_label=info.size_label,
                     original_family=info.rope.original_family)
    assert plan.yarn and plan.factor == 2 and plan.yarn_orig_ctx == 262144
    assert "4B" not in plan.warning and "262144" in plan.warning
    assert info.rope.max_ctx == 4 * 262144


def test_memory_plan_reaches_past_131072_for_a_2507_model(family):
    """The largest context that fits is searched up to the model's own limit, not the original 131072."""
    path = family["instruct-2507"]
    with pytest.warns(UserWarning, match="beyond this model's native 262144"), \
            pytest.raises(EngineError, match=r"the largest that fits is (\d+)") as err:
        Engine.load(path, n_ctx=1048576, n_batch=64, flash_attn=True, available_bytes=400 << 20, kv_cache_type="f16")
    largest = int(re.search(r"the largest that fits is (\d+)$", str(err.value)).group(1))
    assert 131072 < largest < 1048576


# ---- metadata that disagrees with itself: refused with one line ------------------------------------
BAD = {
    "yarn factor without original context": ([gguf_kv_bytes("qwen3.rope.scaling.type", 8, "yarn"),
                                              gguf_kv_bytes("qwen3.rope.scaling.factor", 6, 4.0)], ()),
    "yarn original context without factor": ([gguf_kv_bytes("qwen3.rope.scaling.type", 8, "yarn"),
                                              gguf_kv_bytes("qwen3.rope.scaling.original_context_length", 4, 32768)], ()),
    "original context beyond context_length": ([gguf_kv_bytes("qwen3.rope.scaling.type", 8, "yarn"),
                                                gguf_kv_bytes("qwen3.rope.scaling.factor", 6, 4.0),
                                                gguf_kv_bytes("qwen3.rope.scaling.original_context_length", 4, 65536)], ()),
    "factor below 1": ([gguf_kv_bytes("qwen3.rope.scaling.type", 8, "yarn"),
                        gguf_kv_bytes("qwen3.rope.scaling.factor", 6, 0.5),
                        gguf_kv_bytes("qwen3.rope.scaling.original_context_length", 4, 32768)], ()),
    "factor without a scaling type": ([gguf_kv_bytes("qwen3.rope.scaling.factor", 6, 4.0)], ()),
    "linear scaling": ([gguf_kv_bytes("qwen3.rope.scaling.type", 8, "linear"),
                        gguf_kv_bytes("qwen3.rope.scaling.factor", 6, 2.0)], ()),
    "no context_length": ([], ("qwen3.context_length",)),
    "negative freq_base": ([gguf_kv_bytes("qwen3.rope.freq_base", 6, -1.0)], ()),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_inconsistent_rope_metadata_is_refused_in_one_line(family, tmp_path, case):
    set_, drop = BAD[case]
    path = rewrite_gguf_metadata(family["original"], tmp_path / "bad.gguf", set_, drop)
    with pytest.raises(EngineError, match="corrupt GGUF metadata") as err:
        Engine.load(path, n_ctx=512)
    assert "\n" not in str(err.value) and str(path) in str(err.value)


def test_consistent_yarn_metadata_loads(family, tmp_path):
    """Qwen's own YaRN recipe (factor 4 over 32768) in a GGUF: accepted, and applied as written."""
    yarn = [gguf_kv_bytes("qwen3.rope.scaling.type", 8, "yarn"), gguf_kv_bytes("qwen3.rope.scaling.factor", 6, 4.0),
            gguf_kv_bytes("qwen3.rope.scaling.original_context_length", 4, 32768)]
    path = rewrite_gguf_metadata(family["original"], tmp_path / "yarn.gguf", yarn)
    engine, log, _ = load_logged(path, 65536)
    with engine:
        params = engine.llama.context_params
        assert engine.native_ctx == 32768 and params.rope_scaling_type == YARN
        assert params.rope_freq_scale == 0.25 and params.yarn_orig_ctx == 32768 and logged(log, "freq_scale") == 0.25
