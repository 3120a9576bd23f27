"""Defaults that follow the machine: the context, KV cache type and weight loading a chat gets
when the user set none of them, chosen from the memory plan and the memory available.

Why these rules (benchmarks/RESULTS.md, "Default footprint"):
- Weights: llama.cpp's CPU backend repacks quantized weights into its own buffers at load (its
  extra buffer types, CPU_REPACK); with mmap the file's pages stay mapped beside that copy, so a
  Q4_K_M 0.6B held 0.41 GB twice over. Reading quantized weights in keeps one copy. Float
  weights are not repacked, a GPU backend copies weights to the device, and with the extra
  buffers off (cpu_buffers.py: AMX CPUs) nothing is repacked: those keep mmap (fastest load).
- KV cache: f16 unless memory is short. A quantized cache needs flash attention, which on CPUs
  slows generation at chat depths, so q8_0 and then q4_0 are taken only when f16 cannot hold a
  useful context (MIN_AUTO_CTX) in the share of memory a default may plan for.
- Context: the largest the plan fits in that share, up to the model's native context and
  DEFAULT_MAX_CTX. It costs little up front, because the context grows with the conversation
  (context_growth.py): it starts at START_CTX and doubles when a chat outgrows it.
Explicit values always win; a context that was asked for but cannot fit is left to the Engine,
which refuses it with the largest that would. Pure: no llama.cpp, no /proc.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from edge.runtime.context_plan import CTX_STEP, MemoryPlan

DEFAULT_MAX_CTX = 32768       # an automatic context never passes this (nor the model's native one)
MIN_AUTO_CTX = 4096           # below this with f16, a quantized KV cache is worth its slower attention
START_CTX = 2048              # where a growing context starts (a one-message run rarely needs more)
MEMORY_SHARE = 0.75           # an automatic context plans for at most this share of available memory
KV_PREFERENCE: tuple[str, ...] = ("f16", "q8_0", "q4_0")   # fastest on CPUs first
FLOAT_FILE_TYPES = frozenset({0, 1, 32})   # general.file_type ALL_F32, MOSTLY_F16, MOSTLY_BF16

# plan(n_ctx, kv_type, available_bytes) -> the MemoryPlan of that context (context_plan.plan_memory)
PlanFn = Callable[[int, str, int], MemoryPlan]


@dataclass(frozen=True)
class Footprint:
    n_ctx: int                 # the context a chat may fill
    start_ctx: int             # what llama.cpp allocates at load (n_ctx when it does not grow)
    kv_cache_type: str
    use_mmap: bool
    chosen: tuple[str, ...]    # which of "ctx", "kv", "mmap" were chosen here rather than asked
    available_bytes: int

    @property
    def grows(self) -> bool:
        return self.start_ctx < self.n_ctx

    def describe(self) -> str:
        """One line for the start of a chat: what was set, and which flags override it."""
        ctx = (f"context {self.start_ctx} tokens, growing to {self.n_ctx} as the chat needs" if self.grows
               else f"context {self.n_ctx} tokens")
        weights = "weights memory-mapped" if self.use_mmap else "weights read into memory (no mmap)"
        line = f"{ctx}, {self.kv_cache_type} KV cache, {weights}"
        if not self.chosen:
            return line
        flags = {"ctx": "--ctx", "kv": "--kv-cache", "mmap": "--mmap/--no-mmap"}
        return (f"{line} (chosen for {self.available_bytes / (1 << 30):.1f} GiB available; "
                f"{', '.join(flags[c] for c in self.chosen)} to set)")


def default_mmap(file_type: int | None, repacks: bool) -> bool:
    """mmap unless llama.cpp will repack the weights: `repacks` says its CPU backend holds the
    weights with its extra (repacked) buffer types on; any quantized file type is then repacked."""
    return not repacks or file_type is None or file_type in FLOAT_FILE_TYPES


def _auto_ctx(plan: PlanFn, kinds: Sequence[str], cap: int, available: int) -> tuple[int, str]:
    """The first KV type whose plan fits a useful context in the default's share of memory, with
    the largest context it fits there; failing that, the first that fits a useful context in all
    of the memory, at that size; failing that, the largest context any of them fits."""
    useful = min(MIN_AUTO_CTX, cap)
    for budget, most in ((int(available * MEMORY_SHARE), cap), (available, useful)):
        for kv in kinds:
            ctx = min(most, plan(cap, kv, budget).max_ctx)
            if ctx >= useful:
                return ctx, kv
    ctx, kv = max(((min(cap, plan(cap, kv, available).max_ctx), kv) for kv in kinds), key=lambda t: t[0])
    return (ctx, kv) if ctx > 0 else (useful, kinds[0])  # nothing fits: the Engine refuses it


def choose_footprint(*, asked_ctx: int | None, asked_kv: str | None, asked_mmap: bool | None, grow: bool,
                     plan: PlanFn, available_bytes: int, native_ctx: int, file_type: int | None,
                     repacks: bool) -> Footprint:
    """The context, KV type and mmap for a model, from what was asked (None: not asked) and the
    memory plan. `grow` starts the context at START_CTX (it grows with the chat up to n_ctx)."""
    use_mmap = default_mmap(file_type, repacks) if asked_mmap is None else asked_mmap
    kinds = (asked_kv,) if asked_kv is not None else KV_PREFERENCE
    if asked_ctx is not None:
        n_ctx = asked_ctx
        kv = next((k for k in kinds if plan(asked_ctx, k, available_bytes).fits), kinds[0])
    else:
        n_ctx, kv = _auto_ctx(plan, kinds, min(native_ctx, DEFAULT_MAX_CTX), available_bytes)
    chosen = tuple(name for name, asked in (("ctx", asked_ctx), ("kv", asked_kv), ("mmap", asked_mmap))
                   if asked is None)
    start = min(n_ctx, START_CTX) if grow else n_ctx
    return Footprint(n_ctx, start, kv, use_mmap, tuple(chosen), available_bytes)


def next_ctx(current: int, needed: int, ceiling: int) -> int:
    """The size a growing context takes to hold `needed` tokens: `current` doubled until it
    does, never past `ceiling`; a multiple of CTX_STEP (llama.cpp pads to it anyway) unless it
    is the ceiling itself."""
    size = max(current, CTX_STEP)
    while size < needed:
        size *= 2
    size = -(-size // CTX_STEP) * CTX_STEP
    return min(size, ceiling)
