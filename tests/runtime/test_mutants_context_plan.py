"""Claims about edge/runtime/context_plan.py that benchmarks/mutation.py found untested (see docs/MUTATION.md)."""

from __future__ import annotations

import io
import os
import warnings

import pytest

from edge.runtime import context_plan
from edge.runtime.context_plan import (
    MAX_CTX, available_memory_bytes, count_physical_cores, kv_cache_bytes, model_rope, model_rope_from_metadata,
    parse_size_label, physical_cores, plan_memory, plan_rope,
)

GIB = 1 << 30
QWEN3_0_6B = dict(n_layers=28, n_kv_heads=8, head_dim=128)
YARN_4X = {"factor": 4.0, "original_context_length": 32768}


@pytest.mark.parametrize("label, params", [("500K", 5e5), ("135M", 1.35e8), ("1.7B", 1.7e9), ("1.5T", 1.5e12),
                                           ("8x7B", 5.6e10)])
def test_size_label_suffixes_scale_exactly(label, params):
    """K, M, B and T are powers of a thousand (no rounding slack: 1e9 + 1 is not a billion)."""
    assert parse_size_label(label) == params


def test_a_plain_context_has_no_rope_scaling_at_all():
    """Without YaRN the plan's fields say so: frequency scale 1 and original context 0 (as documented),
    so that nothing printed from the plan (bench_chat prints both) suggests scaling."""
    plan = plan_rope(4096)
    assert (plan.factor, plan.rope_freq_scale, plan.yarn_orig_ctx) == (1.0, 1.0, 0)


def test_smallest_valid_values_are_accepted():
    """"Positive" means from 1 (and a positive freq_base may be below 1): the documented limits, exactly."""
    assert plan_rope(1).n_ctx == 1
    assert plan_rope(2, native_ctx=1).factor == 2.0
    assert model_rope(1).native_ctx == 1
    assert model_rope(4096, freq_base=0.5).native_ctx == 4096


def test_zero_freq_base_is_refused():
    with pytest.raises(ValueError, match="freq_base must be a positive number"):
        model_rope(40960, freq_base=0)


def test_original_family_from_header_fields():
    """The April 2025 models say 40,960 with freq_base 1e6 in their GGUF and are native to 32,768;
    a GGUF with YaRN over 32,768 is of that family only with their freq_base too."""
    fields = {"qwen3.context_length": 40960, "qwen3.rope.freq_base": 1e6}
    rope = model_rope_from_metadata(fields)
    assert rope.native_ctx == 32768 and rope.original_family
    yarn = dict(scaling_type="yarn", factor=4.0, original_context_length=32768)
    assert model_rope(131072, freq_base=1e6, **yarn).original_family
    assert not model_rope(131072, freq_base=5e6, **yarn).original_family


@pytest.mark.parametrize("meta, fragment", [
    ({"factor": 0.5, "original_context_length": 32768}, "factor"),
    ({"factor": "4", "original_context_length": 32768}, "factor"),
    ({"factor": None, "original_context_length": 32768}, "factor"),
    ({"factor": 4.0, "original_context_length": 0}, "original_context_length"),
    ({"factor": 4.0, "original_context_length": -1}, "original_context_length"),
    ({"factor": 4.0, "original_context_length": 32768.0}, "original_context_length"),
])
def test_bad_gguf_yarn_metadata_is_refused_for_what_it_is_even_for_a_short_context(meta, fragment):
    """A GGUF's YaRN fields are checked before they are used: the error names the bad field (not
    "too long", and not a TypeError), whatever the context asked for."""
    with pytest.raises(ValueError, match=fragment):
        plan_rope(4096, gguf_yarn=meta)


def test_gguf_yarn_limits_are_inclusive():
    """Factor 1 (no stretch) and any positive original length are valid metadata."""
    assert plan_rope(4096, gguf_yarn={"factor": 1.0, "original_context_length": 32768}).factor == 1.0
    assert plan_rope(2, gguf_yarn={"factor": 2, "original_context_length": 1}).yarn_orig_ctx == 1


def test_gguf_yarn_warns_up_to_and_including_its_original_length():
    """A context that fits the original length gets YaRN it does not need: warned at exactly 32768 too."""
    assert "short texts" in plan_rope(32768, gguf_yarn=YARN_4X).warning
    assert plan_rope(32769, gguf_yarn=YARN_4X).warning is None


def test_both_warnings_in_one_line():
    """A small model with YaRN metadata at a short context gets both notes, joined as clauses."""
    yarn_note = plan_rope(4096, gguf_yarn=YARN_4X).warning
    small_note = plan_rope(65536, size_label="0.6B").warning
    both = plan_rope(4096, gguf_yarn=YARN_4X, size_label="0.6B").warning
    assert both == f"{yarn_note}; {small_note}" and "\n" not in both


def test_kv_cache_bytes_and_largest_context_are_whole_numbers():
    """Byte counts and token counts are integers: the plan prints them ("131072 tokens", not "131072.0")."""
    assert isinstance(kv_cache_bytes(32768, **QWEN3_0_6B, type_k="q8_0", type_v="q4_0"), int)
    plan = plan_memory(GIB, 8192, **QWEN3_0_6B, available_bytes=64 * GIB)
    assert isinstance(plan.max_ctx, int) and plan.max_ctx == MAX_CTX
    assert f"up to {MAX_CTX} tokens" in plan.describe()


def test_describe_states_the_sizes_in_gib():
    """The line users read gives each figure in GiB with two decimals."""
    plan = plan_memory(GIB, 8192, **QWEN3_0_6B, available_bytes=16 * GIB)
    text = plan.describe()
    assert text.startswith(f"model 1.00 GiB + KV cache {plan.kv_bytes / GIB:.2f} GiB (8192 tokens)")
    assert plan.kv_bytes == 28 * 8192 * 2 * 8 * 128 * 2 and "KV cache 0.88 GiB" in text
    assert "of 16.00 GiB available" in text


def test_a_context_that_needs_exactly_what_is_available_fits():
    """Fitting is total <= available: both the verdict and the search for the largest context."""
    need = plan_memory(GIB, 8192, **QWEN3_0_6B, available_bytes=0).total_bytes
    plan = plan_memory(GIB, 8192, **QWEN3_0_6B, available_bytes=need)
    assert plan.fits and plan.max_ctx == 8192
    assert not plan_memory(GIB, 8192, **QWEN3_0_6B, available_bytes=need - 1).fits


def cpuinfo(cpus: list[tuple[int, int, int]]) -> str:
    """/proc/cpuinfo text for (processor, physical id, core id) triples."""
    return "\n\n".join(f"processor\t: {p}\nphysical id\t: {s}\ncore id\t\t: {c}" for p, s, c in cpus) + "\n\n"


HT_4_CORES = cpuinfo([(p, 0, p % 4) for p in range(8)])   # 8 hyper-threads on 4 cores


def test_cores_counted_past_a_summary_block_and_on_later_cpus():
    """A block without processor fields (s390x starts with a summary) does not end the count, and
    a process pinned to later CPUs (a cpuset 4-7) counts those, not the first ones."""
    assert count_physical_cores("vendor_id\t: IBM/S390\n# processors\t: 8\n\n" + HT_4_CORES) == 4
    assert count_physical_cores(HT_4_CORES, allowed={5, 6}) == 2


def test_two_sockets_with_the_same_core_ids_are_different_cores():
    assert count_physical_cores(cpuinfo([(0, 0, 0), (1, 0, 1), (2, 1, 0), (3, 1, 1)])) == 4


@pytest.fixture
def proc(monkeypatch) -> dict[str, str]:
    """A fake /proc for context_plan: path -> text; any other path does not exist."""
    files: dict[str, str] = {}

    def fake_open(path, *args, **kwargs):
        if path not in files:
            raise FileNotFoundError(path)
        return io.StringIO(files[path])

    monkeypatch.setattr(context_plan, "open", fake_open, raising=False)
    return files


def test_physical_cores_are_those_of_the_cpus_this_process_may_use(proc, monkeypatch):
    proc["/proc/cpuinfo"] = HT_4_CORES
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1, 4, 5} if pid == 0 else set(range(8)))
    assert physical_cores() == 2          # CPUs 0, 1, 4, 5 are two cores' hyper-threads


def test_physical_cores_fall_back_to_the_logical_count(proc, monkeypatch):
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1, 4, 5})
    assert physical_cores() == 4                                   # no /proc/cpuinfo
    proc["/proc/cpuinfo"] = "processor\t: 0\nBogoMIPS\t: 50\n\nprocessor\t: 1\n"
    assert physical_cores() == 4                                   # no core ids in it
    monkeypatch.delattr(os, "sched_getaffinity")                   # macOS: no affinity call
    monkeypatch.setattr(os, "cpu_count", lambda: 6)
    assert physical_cores() == 6
    monkeypatch.setattr(os, "cpu_count", lambda: None)
    assert physical_cores() == 1


def test_available_memory_is_memavailable_else_free_pages(proc, monkeypatch):
    monkeypatch.setattr(os, "sysconf", {"SC_AVPHYS_PAGES": 1000, "SC_PAGE_SIZE": 4096}.__getitem__)
    proc["/proc/meminfo"] = "MemTotal:  8000000 kB\nMemFree:  100 kB\nMemAvailable:  2048 kB\n"
    assert available_memory_bytes() == 2048 * 1024
    proc["/proc/meminfo"] = "MemTotal:  8000000 kB\nMemFree:  100 kB\n"     # kernels before 3.14
    assert available_memory_bytes() == 1000 * 4096
    del proc["/proc/meminfo"]
    assert available_memory_bytes() == 1000 * 4096


def test_flash_attention_mask_term_against_llama_cpp_past_300k_tokens(tmp_path):
    """With flash attention the plan's attention term (an f16 mask, n_ctx*n_batch*2) only outgrows
    the logits (n_vocab*4*n_batch) beyond 303,872 tokens, which a 2507 model (native 262,144,
    YaRN up to 1M) can ask for; the 32K checks in test_memory_plan_llama never reach it. Here,
    at 393,216 tokens (mask 384 MiB, logits 297 MiB), llama.cpp's own buffers must sit inside
    the plan, which may exceed its compute buffer by the 64 MiB allowance only (measured: compute
    385.14 MiB + output 0.58 MiB, plan 448 MiB; at 524,288 tokens 513.14 + 0.58 against 576)."""
    from edge.runtime.engine import Engine
    from quantize import quantize_model
    from tests.model_factory import TINY_TIED, build_model, make_2507
    from tests.runtime.test_memory_plan_llama import ALLOWANCE_MIB, MIB, llama_log, reported_mib

    folder = make_2507(build_model(tmp_path / "m", TINY_TIED, seed=3), "instruct-2507")
    path = quantize_model(folder, "f16", tmp_path / "m.gguf").output
    n_ctx = 393216
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)       # beyond the native context: expected here
        with llama_log() as lines, Engine.load(path, n_ctx=n_ctx, kv_cache_type="q8_0", n_threads=2) as engine:
            plan = engine.memory_plan
    log = "".join(lines)
    assert n_ctx * 512 * 2 > 151936 * 4 * 512          # the mask term is the one that counts here
    compute_mib, output_mib = (float(reported_mib(log, w)) for w in ("compute", "output"))
    overhead = plan.overhead_bytes / MIB
    assert compute_mib + output_mib <= overhead, "the plan undercounts llama.cpp's buffers"
    assert overhead <= compute_mib + ALLOWANCE_MIB, "the plan overcounts llama.cpp's compute buffer"
