"""Context planning: Qwen's YaRN rules, KV cache arithmetic and memory refusal."""

from __future__ import annotations

import os

import llama_cpp
import pytest

from edge.runtime.context_plan import (
    KV_TYPES, MAX_CTX, NATIVE_CTX, available_memory_bytes, check_kv_types, count_physical_cores,
    kv_bytes_per_element, kv_cache_bytes, model_rope, model_rope_from_metadata, parse_meminfo_available,
    parse_size_label, physical_cores, plan_memory, plan_rope,
)

GIB = 1 << 30
QWEN3_0_6B = dict(n_layers=28, n_kv_heads=8, head_dim=128)


def test_native_context_has_no_rope_scaling():
    plan = plan_rope(8192)
    assert not plan.yarn and plan.factor == 1.0 and plan.warning is None
    assert plan.llama_kwargs() == {"rope_scaling_type": llama_cpp.LLAMA_ROPE_SCALING_TYPE_NONE}
    assert llama_cpp.LLAMA_ROPE_SCALING_TYPE_NONE == 0
    assert not plan_rope(NATIVE_CTX).yarn


@pytest.mark.parametrize("n_ctx, factor", [(32769, 2), (40960, 2), (65536, 2), (65537, 3), (98304, 3),
                                           (98305, 4), (131072, 4)])
def test_yarn_factor_is_the_ceiling_of_the_need(n_ctx, factor):
    plan = plan_rope(n_ctx)
    assert plan.yarn and plan.factor == factor and plan.n_ctx == n_ctx
    assert plan.rope_freq_scale == pytest.approx(1 / factor)
    assert plan.llama_kwargs() == {"rope_scaling_type": llama_cpp.LLAMA_ROPE_SCALING_TYPE_YARN,
                                   "rope_freq_scale": pytest.approx(1 / factor), "yarn_orig_ctx": 32768}
    assert llama_cpp.LLAMA_ROPE_SCALING_TYPE_YARN == 2


def test_40960_gets_half_frequency_and_32k_original():
    kw = plan_rope(40960).llama_kwargs()
    assert kw["rope_freq_scale"] == 0.5 and kw["yarn_orig_ctx"] == 32768


@pytest.mark.parametrize("n_ctx", [131073, 262144])
def test_too_long_is_refused_naming_the_maximum(n_ctx):
    with pytest.raises(ValueError, match="131072") as err:
        plan_rope(n_ctx)
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("n_ctx", [0, -1])
def test_nonpositive_context_is_refused(n_ctx):
    with pytest.raises(ValueError):
        plan_rope(n_ctx)


def test_gguf_yarn_metadata_is_honoured_whatever_the_context():
    meta = {"factor": 4.0, "original_context_length": 32768}
    short = plan_rope(4096, gguf_yarn=meta)
    assert short.yarn and short.factor == 4.0 and short.yarn_orig_ctx == 32768
    assert short.llama_kwargs()["rope_freq_scale"] == 0.25
    assert "short texts" in short.warning
    long = plan_rope(131072, gguf_yarn=meta, size_label="4B")
    assert long.factor == 4.0 and long.warning is None


def test_gguf_yarn_sets_its_own_limit():
    meta = {"factor": 2.0, "original_context_length": 32768}
    assert plan_rope(65536, gguf_yarn=meta).factor == 2.0      # not recomputed from n_ctx
    with pytest.raises(ValueError, match="65536"):
        plan_rope(65537, gguf_yarn=meta)
    odd = plan_rope(40000, gguf_yarn={"factor": 2, "original_context_length": 20000})
    assert odd.yarn_orig_ctx == 20000 and odd.rope_freq_scale == 0.5


def test_bad_gguf_yarn_metadata_is_refused():
    with pytest.raises(ValueError):
        plan_rope(65536, gguf_yarn={"factor": 0.5, "original_context_length": 32768})
    with pytest.raises(ValueError):
        plan_rope(65536, gguf_yarn={"factor": 2.0})


@pytest.mark.parametrize("label", ["0.6B", "1.7B", "0.6b", "600M", "752M"])
def test_small_models_warn_above_native_context(label):
    plan = plan_rope(65536, size_label=label)
    assert plan.warning is not None and "4B" in plan.warning and label in plan.warning
    assert plan_rope(NATIVE_CTX, size_label=label).warning is None


@pytest.mark.parametrize("label", ["4B", "4.0B", "8B", "30B-A3B", None, "", "large", "unknown"])
def test_no_warning_for_4b_and_up_or_unknown_labels(label):
    assert plan_rope(131072, size_label=label).warning is None


@pytest.mark.parametrize("label, params", [("0.6B", 6e8), ("600M", 6e8), ("4B", 4e9), ("4.0B", 4e9),
                                           ("1.7b", 1.7e9), ("8x7B", 5.6e10), ("30B-A3B", 3e10),
                                           ("large", None), (None, None)])
def test_size_labels(label, params):
    assert parse_size_label(label) == (pytest.approx(params) if params else None)


def test_kv_cache_bytes_for_qwen3_0_6b():
    expected = 32768 * 28 * 8 * 128 * (2 + 2)
    assert expected == 3_758_096_384
    assert kv_cache_bytes(32768, **QWEN3_0_6B) == 3_758_096_384
    assert kv_cache_bytes(32768, **QWEN3_0_6B, type_k="f32", type_v="f32") == 2 * expected


def test_quantized_kv_is_smaller():
    f16 = kv_cache_bytes(32768, **QWEN3_0_6B)
    q8 = kv_cache_bytes(32768, **QWEN3_0_6B, type_k="q8_0", type_v="q8_0")
    q4 = kv_cache_bytes(32768, **QWEN3_0_6B, type_k="q4_0", type_v="q4_0")
    assert q4 < q8 < f16
    assert q8 == 32768 * 28 * 8 * 128 * 2 * 34 // 32
    mixed = kv_cache_bytes(32768, **QWEN3_0_6B, type_k="q8_0", type_v="f16")
    assert mixed == (q8 + f16) // 2


def test_kv_type_table():
    assert KV_TYPES == {"f32": 0, "f16": 1, "q8_0": 8, "q4_0": 2}
    assert KV_TYPES["f16"] == llama_cpp.GGML_TYPE_F16 and KV_TYPES["q8_0"] == llama_cpp.GGML_TYPE_Q8_0
    assert KV_TYPES["q4_0"] == llama_cpp.GGML_TYPE_Q4_0 and KV_TYPES["f32"] == llama_cpp.GGML_TYPE_F32
    assert [kv_bytes_per_element(t) for t in ("f32", "f16", "q8_0", "q4_0")] == [4, 2, 34 / 32, 18 / 32]


def test_check_kv_types():
    check_kv_types("f16", "f16", flash_attn=False)
    check_kv_types("q8_0", "f16", flash_attn=False)      # a quantized K alone is fine
    check_kv_types("q8_0", "q4_0", flash_attn=True)
    for v in ("q8_0", "q4_0"):
        with pytest.raises(ValueError, match="flash attention"):
            check_kv_types("f16", v, flash_attn=False)
    with pytest.raises(ValueError, match="q5_9"):
        check_kv_types("q5_9", "f16", flash_attn=True)
    with pytest.raises(ValueError):
        check_kv_types("f16", "bf17", flash_attn=True)


def test_plan_memory_that_fits():
    plan = plan_memory(GIB, 8192, **QWEN3_0_6B, available_bytes=16 * GIB)
    assert plan.fits and plan.max_ctx == MAX_CTX
    assert plan.kv_bytes == kv_cache_bytes(8192, **QWEN3_0_6B)
    assert plan.total_bytes == plan.model_bytes + plan.kv_bytes + plan.overhead_bytes
    assert 64 << 20 <= plan.overhead_bytes <= 512 << 20       # tens to a few hundred MB
    assert "fits" in plan.describe() and "\n" not in plan.describe()


@pytest.mark.parametrize("kw", [{}, {"n_heads": 16}, {"n_heads": 16, "flash_attn": True},
                                {"type_k": "q8_0", "type_v": "q8_0", "flash_attn": True}])
def test_plan_memory_refuses_and_finds_the_largest_context(kw):
    model, available = 600 << 20, 3 * GIB
    plan = plan_memory(model, 65536, **QWEN3_0_6B, available_bytes=available, **kw)
    assert not plan.fits and plan.total_bytes > available
    assert 0 < plan.max_ctx < 65536 and plan.max_ctx % 256 == 0
    assert plan_memory(model, plan.max_ctx, **QWEN3_0_6B, available_bytes=available, **kw).fits
    assert not plan_memory(model, plan.max_ctx + 256, **QWEN3_0_6B, available_bytes=available, **kw).fits
    text = plan.describe()
    assert "does not fit" in text and str(plan.max_ctx) in text and "\n" not in text


def test_plan_memory_when_nothing_fits():
    plan = plan_memory(4 * GIB, 4096, **QWEN3_0_6B, available_bytes=2 * GIB)
    assert not plan.fits and plan.max_ctx == 0 and "not even" in plan.describe()


def test_plan_memory_searches_up_to_the_models_limit():
    """A 2507 model's largest fitting context may pass the original models' 131072."""
    args = dict(model_bytes=GIB, n_ctx=1 << 20, **QWEN3_0_6B, available_bytes=64 * GIB, n_heads=16, flash_attn=True)
    capped, free = plan_memory(**args), plan_memory(**args, ctx_limit=4 * 262144)
    assert capped.max_ctx == MAX_CTX and MAX_CTX < free.max_ctx < 1 << 20
    assert plan_memory(**{**args, "n_ctx": free.max_ctx}, ctx_limit=4 * 262144).fits
    assert not plan_memory(**{**args, "n_ctx": free.max_ctx + 256}, ctx_limit=4 * 262144).fits


# overhead_bytes against llama.cpp's own compute buffer sizes: tests/runtime/test_memory_plan_llama.py.


CPUINFO_HT = "\n\n".join(
    f"processor\t: {p}\nphysical id\t: 0\ncore id\t\t: {p % 4}\nsiblings\t: 8" for p in range(8)) + "\n"


def test_physical_cores_from_cpuinfo():
    assert count_physical_cores(CPUINFO_HT) == 4                  # 8 hyper-threads on 4 cores
    assert count_physical_cores(CPUINFO_HT, allowed={0, 4}) == 1  # two threads of one core
    assert count_physical_cores(CPUINFO_HT, allowed={0, 1}) == 2
    assert count_physical_cores("processor\t: 0\nBogoMIPS\t: 50\n\nprocessor\t: 1\n") is None
    assert 1 <= physical_cores() <= (os.cpu_count() or 1)


def test_available_memory():
    assert parse_meminfo_available("MemTotal:  100 kB\nMemAvailable:    2048 kB\n") == 2048 * 1024
    assert parse_meminfo_available("MemTotal:  100 kB\n") is None
    assert available_memory_bytes() > 0


# ---- the native context from the metadata --------------------------------------------------------

@pytest.mark.parametrize("meta, native, original, limit", [
    (dict(context_length=40960, freq_base=1e6), 32768, True, 131072),            # Qwen3 0.6B/1.7B/4B
    (dict(context_length=262144, freq_base=5e6), 262144, False, 1048576),        # the 2507 models
    (dict(context_length=40960, freq_base=5e6), 40960, False, 163840),
    (dict(context_length=32768, freq_base=1e6), 32768, False, 131072),
    (dict(context_length=40960), 40960, False, 163840),                          # no freq_base: llama.cpp's 10000
    (dict(context_length=40960, freq_base=1e6, scaling_type="none", factor=1.0), 32768, True, 131072),
    (dict(context_length=40960, freq_base=1e6, scaling_type="yarn", factor=4.0, original_context_length=32768),
     32768, True, 131072),                                                       # Qwen's YaRN recipe
    (dict(context_length=131072, freq_base=1e6, scaling_type="yarn", factor=4, original_context_length=32768),
     32768, True, 131072),
    (dict(context_length=262144, freq_base=5e6, scaling_type="yarn", factor=2.0, original_context_length=262144),
     262144, False, 524288),
])
def test_native_context_rule(meta, native, original, limit):
    rope = model_rope(**meta)
    assert rope.native_ctx == native and rope.original_family is original and rope.max_ctx == limit
    assert rope.context_length == meta["context_length"]
    assert (rope.yarn is not None) == (meta.get("scaling_type") == "yarn")


@pytest.mark.parametrize("meta, words", [
    (dict(context_length=None), "context_length"),
    (dict(context_length=0), "context_length"),
    (dict(context_length=True), "context_length"),
    (dict(context_length=40960.0), "context_length"),
    (dict(context_length=40960, freq_base=-1.0), "freq_base"),
    (dict(context_length=40960, freq_base=float("nan")), "freq_base"),
    (dict(context_length=40960, freq_base="1e6"), "freq_base"),
    (dict(context_length=40960, scaling_type="linear", factor=2.0), "linear"),
    (dict(context_length=40960, scaling_type="longrope"), "longrope"),
    (dict(context_length=40960, factor=4.0), "without rope scaling type yarn"),
    (dict(context_length=40960, scaling_type="none", factor=0.5), "without rope scaling type yarn"),
    (dict(context_length=40960, original_context_length=32768), "without rope scaling type yarn"),
    (dict(context_length=40960, scaling_type="yarn", factor=4.0), "original_context_length"),
    (dict(context_length=40960, scaling_type="yarn", original_context_length=32768), "factor"),
    (dict(context_length=40960, scaling_type="yarn", factor=0.5, original_context_length=32768), "factor"),
    (dict(context_length=40960, scaling_type="yarn", factor=float("inf"), original_context_length=32768), "factor"),
    (dict(context_length=40960, scaling_type="yarn", factor=4.0, original_context_length=0), "original_context_length"),
    (dict(context_length=40960, scaling_type="yarn", factor=4.0, original_context_length=65536), "larger than"),
])
def test_metadata_that_disagrees_with_itself_is_refused(meta, words):
    with pytest.raises(ValueError, match=words) as err:
        model_rope(**meta)
    assert "\n" not in str(err.value)


def test_model_rope_from_header_fields():
    fields = {"qwen3.context_length": 262144, "qwen3.rope.freq_base": 5e6}
    assert model_rope_from_metadata(fields).native_ctx == 262144
    assert model_rope_from_metadata({**fields, "qwen3.rope.scaling.type": "yarn", "qwen3.rope.scaling.factor": 2.0,
                                     "qwen3.rope.scaling.original_context_length": 131072}).native_ctx == 131072
    with pytest.raises(ValueError, match="without"):   # llama.cpp's older key for the factor counts too
        model_rope_from_metadata({**fields, "qwen3.rope.scale_linear": 2.0})


@pytest.mark.parametrize("n_ctx", [8192, 40960, 131072, 262144])
def test_no_yarn_up_to_a_2507_models_native_context(n_ctx):
    plan = plan_rope(n_ctx, native_ctx=262144, original_family=False, size_label="4.0B")
    assert not plan.yarn and plan.warning is None
    assert plan.llama_kwargs() == {"rope_scaling_type": llama_cpp.LLAMA_ROPE_SCALING_TYPE_NONE}


@pytest.mark.parametrize("n_ctx, factor", [(262145, 2), (524288, 2), (524289, 3), (1048576, 4)])
def test_yarn_beyond_a_2507_models_native_context(n_ctx, factor):
    plan = plan_rope(n_ctx, native_ctx=262144, original_family=False, size_label="0.6B")
    assert plan.yarn and plan.factor == factor and plan.yarn_orig_ctx == 262144
    assert plan.rope_freq_scale == pytest.approx(1 / factor)
    assert "262144" in plan.warning and "4B" not in plan.warning      # the 4B caveat is the original family's


def test_past_four_times_native_is_refused():
    with pytest.raises(ValueError, match="1048576"):
        plan_rope(1048577, native_ctx=262144, original_family=False)
    with pytest.raises(ValueError, match="native"):
        plan_rope(8192, native_ctx=0)
