"""The defaults that follow the machine (edge/runtime/footprint.py): each rule, on Qwen3-0.6B's numbers."""

from __future__ import annotations

import pytest

from edge.runtime.context_plan import plan_memory
from edge.runtime.footprint import (DEFAULT_MAX_CTX, MIN_AUTO_CTX, START_CTX, Footprint, choose_footprint, default_mmap,
                            next_ctx)

GIB = 1 << 30
MODEL = 396_704_576          # the 0.6B Q4_K_M file
Q4_K_M, Q8_0, F16, BF16, F32 = 15, 7, 1, 32, 0


def plan(ctx: int, kv: str, budget: int):
    """The Engine's plan for one stream of the 0.6B on the CPU (flash attention with quantized KV)."""
    return plan_memory(MODEL, ctx, 28, 8, 128, budget, type_k=kv, type_v=kv, n_heads=16,
                       flash_attn=kv != "f16", ctx_limit=131072)


def choose(available_gib: float = 22.8, *, ctx=None, kv=None, mmap=None, grow=True, native=32768,
           file_type=Q4_K_M, repacks=True) -> Footprint:
    return choose_footprint(asked_ctx=ctx, asked_kv=kv, asked_mmap=mmap, grow=grow, plan=plan,
                            available_bytes=int(available_gib * GIB), native_ctx=native, file_type=file_type,
                            repacks=repacks)


def test_constants_are_the_documented_ones():
    assert (DEFAULT_MAX_CTX, MIN_AUTO_CTX, START_CTX) == (32768, 4096, 2048)


# ---- weights: mmap or read in ------------------------------------------------------------------
@pytest.mark.parametrize("file_type", [Q4_K_M, Q8_0, 2, 14, 18])
def test_quantized_weights_that_llama_cpp_repacks_are_read_in(file_type):
    assert default_mmap(file_type, repacks=True) is False
    assert choose(file_type=file_type).use_mmap is False


@pytest.mark.parametrize("file_type", [F32, F16, BF16, None])
def test_float_or_unknown_weights_stay_mapped(file_type):
    assert default_mmap(file_type, repacks=True) is True


def test_without_repacking_quantized_weights_stay_mapped():
    """GPU backends, or the CPU with its extra buffers off (AMX machines): one copy either way."""
    assert default_mmap(Q4_K_M, repacks=False) is True
    assert choose(repacks=False).use_mmap is True


@pytest.mark.parametrize("asked", [True, False])
def test_explicit_mmap_wins(asked):
    for repacks in (True, False):
        for ft in (Q4_K_M, F16):
            fp = choose(mmap=asked, repacks=repacks, file_type=ft)
            assert fp.use_mmap is asked and "mmap" not in fp.chosen


# ---- the automatic context and KV type ---------------------------------------------------------
def test_plenty_of_memory_gives_f16_and_the_default_ceiling():
    fp = choose(22.8)
    assert (fp.n_ctx, fp.kv_cache_type, fp.chosen) == (32768, "f16", ("ctx", "kv", "mmap"))


def test_the_ceiling_never_passes_the_native_context():
    assert choose(22.8, native=8192).n_ctx == 8192
    assert choose(22.8, native=262144).n_ctx == DEFAULT_MAX_CTX  # a 2507 model: 32768, not 256K


def test_the_ceiling_is_the_largest_context_in_three_quarters_of_memory():
    fp = choose(4.0)
    assert (fp.n_ctx, fp.kv_cache_type) == (18432, "f16")
    budget = int(4.0 * GIB * 3 / 4)
    assert plan(18432, "f16", budget).fits and not plan(18432 + 256, "f16", budget).fits
    assert plan(18432 + 256, "f16", int(4.0 * GIB)).fits  # all of memory would have held more


def test_f16_is_kept_at_exactly_the_useful_context():
    # 1.5 GiB: f16 reaches 3584 (< 4096) in the share; just enough memory for 4096 keeps f16
    need = plan(MIN_AUTO_CTX, "f16", 0).total_bytes
    fp = choose_footprint(asked_ctx=None, asked_kv=None, asked_mmap=None, grow=True, plan=plan,
                          available_bytes=-(-need * 4 // 3), native_ctx=32768, file_type=Q4_K_M, repacks=True)
    assert (fp.n_ctx, fp.kv_cache_type) == (MIN_AUTO_CTX, "f16")


def test_short_memory_takes_q8_0_before_q4_0():
    fp = choose(1.5)                       # f16 fits 3584 tokens in the share, q8_0 6912
    assert (fp.n_ctx, fp.kv_cache_type) == (6912, "q8_0")


def test_shorter_memory_takes_q4_0():
    # 1.0 GiB: in the share f16 and q8_0 fit 256, q4_0 768: none is useful there; in all of the
    # memory q8_0 is the first to fit 4096 (f16 2560), and it gets just that
    fp = choose(1.0)
    assert (fp.n_ctx, fp.kv_cache_type) == (4096, "q8_0")
    fp = choose(0.75)
    assert fp.kv_cache_type == "q4_0" and 0 < fp.n_ctx < MIN_AUTO_CTX
    assert plan(fp.n_ctx, "q4_0", int(0.75 * GIB)).fits and not plan(fp.n_ctx + 256, "q4_0", int(0.75 * GIB)).fits


def test_nothing_fits_leaves_the_refusal_to_the_engine():
    fp = choose(0.2)
    assert (fp.n_ctx, fp.kv_cache_type) == (MIN_AUTO_CTX, "f16")
    assert not plan(fp.n_ctx, fp.kv_cache_type, int(0.2 * GIB)).fits


def test_a_native_context_below_the_useful_size_is_useful_enough():
    """A model native to 2048 tokens: 2048 is its useful context, so q8_0 that holds it in the
    share is taken before falling back to f16 in all of memory."""
    avail = int(1.25e9)
    assert not plan(2048, "f16", int(avail * 0.75)).fits and plan(2048, "f16", avail).fits
    assert plan(2048, "q8_0", int(avail * 0.75)).fits
    fp = choose_footprint(asked_ctx=None, asked_kv=None, asked_mmap=None, grow=True, plan=plan,
                          available_bytes=avail, native_ctx=2048, file_type=Q4_K_M, repacks=True)
    assert (fp.n_ctx, fp.kv_cache_type, fp.grows) == (2048, "q8_0", False)


def test_explicit_kv_type_wins_and_sizes_the_context():
    fp = choose(4.0, kv="q8_0")
    assert fp.kv_cache_type == "q8_0" and fp.n_ctx == 32768 and fp.chosen == ("ctx", "mmap")
    fp = choose(1.5, kv="f16")                 # f16 does not reach 4096 in the share: still f16,
    assert fp.kv_cache_type == "f16" and fp.n_ctx == MIN_AUTO_CTX  # a useful context from all of memory


def test_explicit_context_wins():
    fp = choose(22.8, ctx=100_000)
    assert fp.n_ctx == 100_000 and fp.chosen == ("kv", "mmap")
    fp = choose(0.2, ctx=65536)                # far too big: kept, for the Engine to refuse
    assert fp.n_ctx == 65536


def test_explicit_context_gets_f16_when_it_fits_all_of_memory():
    assert choose(4.0, ctx=25600).kv_cache_type == "f16"     # beyond the share, within memory
    assert choose(4.0, ctx=25600 + 256).kv_cache_type == "q8_0"
    assert choose(4.0, ctx=57600 + 256).kv_cache_type == "q4_0"
    assert choose(4.0, ctx=200_000).kv_cache_type == "f16"   # nothing fits: the Engine refuses


def test_everything_explicit_is_taken_as_is():
    fp = choose(0.2, ctx=8192, kv="q4_0", mmap=True, grow=False)
    assert (fp.n_ctx, fp.start_ctx, fp.kv_cache_type, fp.use_mmap, fp.chosen) == (8192, 8192, "q4_0", True, ())


# ---- growth ------------------------------------------------------------------------------------
def test_a_growing_context_starts_small():
    fp = choose(22.8)
    assert fp.start_ctx == START_CTX and fp.grows
    small = choose(22.8, ctx=1000)
    assert small.start_ctx == 1000 and not small.grows      # smaller than the start: no growth


def test_without_growth_the_whole_context_is_made_at_once():
    fp = choose(22.8, grow=False)
    assert fp.start_ctx == fp.n_ctx == 32768 and not fp.grows


@pytest.mark.parametrize("current, needed, ceiling, expected", [
    (2048, 2049, 32768, 4096), (2048, 2048, 32768, 2048), (2048, 5000, 32768, 8192),
    (2048, 9000, 12000, 12000), (8192, 9000, 8192, 8192), (300, 301, 32768, 768), (100, 50, 32768, 256),
    (2048, 33000, 32768, 32768), (3, 700, 32768, 1024)])
def test_next_ctx_doubles_up_to_the_ceiling(current, needed, ceiling, expected):
    assert next_ctx(current, needed, ceiling) == expected


# ---- the start-up line -------------------------------------------------------------------------
def test_describe_says_what_was_chosen_and_which_flags_set_it():
    line = choose(22.8).describe()
    assert line == ("context 2048 tokens, growing to 32768 as the chat needs, f16 KV cache, weights read into "
                    "memory (no mmap) (chosen for 22.8 GiB available; --ctx, --kv-cache, --mmap/--no-mmap to set)")
    line = choose(22.8, ctx=8192, kv="q8_0", mmap=True, grow=False).describe()
    assert line == "context 8192 tokens, q8_0 KV cache, weights memory-mapped"
    assert choose(22.8, kv="f16").describe().endswith("--ctx, --mmap/--no-mmap to set)")
