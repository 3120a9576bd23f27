"""The draft for speculative decoding (speculative.py): which model, whether it fits, loading it.

A draft model must share the target's tokenizer (Qwen3-0.6B drafts for the 4B: the same 151,936
tokens), since the target verifies the draft's token ids as they are. `draft="lookup"` drafts by
n-gram lookup in the prompt instead (no model). The draft model's weights, KV cache (same context
and cache type as the target's) and compute buffer enter the Engine's memory plan (with_draft).
"""

from __future__ import annotations

import hashlib
from dataclasses import replace
from pathlib import Path

from quantize import QuantizeError
from quantize.gguf_header import read_header

from edge.runtime.context_plan import CTX_STEP, KV_TYPES, MemoryPlan, plan_memory

LOOKUP = "lookup"
AUTO = "auto"
TOKENIZER_KEYS = ("tokenizer.ggml.model", "tokenizer.ggml.pre", "tokenizer.ggml.tokens", "tokenizer.ggml.eos_token_id")


class DraftError(ValueError):
    """A draft that cannot serve this target, told in one line."""


def tokenizer_of(path: Path) -> tuple:
    """What decides token ids: the vocabulary, its model and pre-tokenizer, the end token."""
    try:
        fields = read_header(path).fields
    except QuantizeError as e:
        raise DraftError(str(e)) from None
    return tuple(_digest(v) for v in (fields.get(k) for k in TOKENIZER_KEYS))


def _digest(value):
    """A comparable form of a header value: arrays of strings (left in the file) by a hash."""
    if hasattr(value, "offsets"):  # gguf_header.StringArray
        h = hashlib.sha256()
        for i in range(len(value)):
            h.update(value[i].encode("utf-8", "surrogatepass") + b"\0")
        return h.hexdigest()
    return tuple(value) if isinstance(value, list) else value


def tokenizer_problem(target: Path, draft: Path) -> str | None:
    """Why `draft` cannot draft for `target` (a different tokenizer), or None."""
    t, d = tokenizer_of(target), tokenizer_of(draft)
    if t == d:
        return None
    names = [k for k, a, b in zip(TOKENIZER_KEYS, t, d) if a != b]
    return f"{draft.name} has another tokenizer than {target.name} ({', '.join(names)} differ)"


def pick_auto(target: Path, candidates: list[tuple[Path, int]]) -> Path | None:
    """`--draft auto`: the smallest model (by file size) among `candidates` (path, bytes), smaller
    than the target, with the target's tokenizer; None when there is none."""
    size = target.stat().st_size
    for path, n in sorted(candidates, key=lambda c: c[1]):
        if n >= size or path.resolve() == target.resolve():
            continue
        try:
            if tokenizer_problem(target, path) is None:
                return path
        except DraftError:
            continue
    return None


def with_draft(planned, draft_info, *, n_batch: int, flash_attn) -> "callable":
    """A memory planner (engine.py's `planned(ctx, kv, budget, n_seq, device)`) that adds the draft
    model: its weights, a KV cache of the same context and type, its compute buffer. max_ctx is the
    largest context where both fit together."""
    def draft_plan(ctx: int, kv: str, budget: int) -> MemoryPlan:
        return plan_memory(draft_info.size_bytes, ctx, draft_info.n_layers, draft_info.n_kv_heads,
                           draft_info.head_dim, budget, type_k=kv, type_v=kv, n_batch=n_batch,
                           n_heads=draft_info.n_heads, flash_attn=flash_attn(kv), ctx_limit=CTX_STEP)

    def joint(ctx: int, kv: str, budget: int, n_seq: int = 1, device=None) -> MemoryPlan:
        d = draft_plan(ctx, kv, budget)
        t = planned(ctx, kv, budget, n_seq, device)
        total = t.total_bytes + d.total_bytes

        def fits_at(c: int) -> bool:
            return planned(c, kv, budget, n_seq, device).total_bytes + draft_plan(c, kv, budget).total_bytes <= budget
        lo, hi = 0, max(t.max_ctx, 0) // CTX_STEP  # the pair never fits more than the target alone
        while lo < hi:
            mid = (lo + hi + 1) // 2
            if fits_at(mid * CTX_STEP):
                lo = mid
            else:
                hi = mid - 1
        return replace(t, model_bytes=t.model_bytes + d.model_bytes, kv_bytes=t.kv_bytes + d.kv_bytes,
                       overhead_bytes=t.overhead_bytes + d.overhead_bytes, total_bytes=total,
                       fits=total <= budget and t.device_fits, max_ctx=lo * CTX_STEP)
    return joint


def load_draft_llama(path: Path, *, n_ctx: int, threads: int, n_gpu_layers: int, kv_cache_type: str,
                     flash_attn: bool, extra_buffers: bool, n_batch: int, verbose: bool = False,
                     rope: dict | None = None):
    """The draft's llama.cpp model and context, set up as the target's (threads, cache type,
    attention, offload): it follows the target's conversation token for token."""
    from edge.runtime.cpu_buffers import TunedLlama
    try:
        return TunedLlama(str(path), n_ctx=n_ctx, n_batch=n_batch, n_ubatch=n_batch, n_threads=threads,
                          n_threads_batch=threads, n_gpu_layers=n_gpu_layers, use_mlock=False,
                          flash_attn=flash_attn, type_k=KV_TYPES[kv_cache_type], type_v=KV_TYPES[kv_cache_type],
                          verbose=verbose, model_overrides={"use_extra_bufts": extra_buffers}, **(rope or {}))
    except (ValueError, RuntimeError) as e:
        raise DraftError(f"{path}: llama.cpp could not load the draft model ({e})") from None


def open_speculator(engine, draft: str | Path, draft_k: int | None, *, n_gpu_layers: int, flash_attn: bool,
                    n_batch: int, verbose: bool = False):
    """The Engine's Speculator: a prompt-lookup drafter, or the draft model loaded beside the
    target (its context starts at the target's size and grows with it, up to engine.n_ctx)."""
    import llama_cpp

    from edge.runtime.speculative import ModelDrafter, PromptLookupDrafter, SpecPolicy, Speculator
    if draft_k is not None and not 1 <= draft_k <= 64:
        raise DraftError(f"draft_k must be 1 to 64, not {draft_k}")
    if str(draft) == LOOKUP:
        drafter = PromptLookupDrafter()
    else:
        path = Path(draft)
        llama = load_draft_llama(path, n_ctx=engine.allocated_ctx, threads=engine.n_threads,
                                 n_gpu_layers=n_gpu_layers, kv_cache_type=engine.kv_cache_type,
                                 flash_attn=flash_attn, extra_buffers=getattr(engine, "extra_buffers", False),
                                 n_batch=n_batch, verbose=verbose, rope=engine.rope_plan.llama_kwargs())
        vocab = llama._model.vocab
        # memory-bound decoding costs about the weights read per token: the prior cost ratio
        drafter = ModelDrafter(llama, path.stat().st_size / engine.info.size_bytes, engine.n_ctx,
                               lambda t: llama_cpp.llama_vocab_is_eog(vocab, t))
        drafter.name = path.name
    return Speculator(drafter, SpecPolicy(draft_cost=drafter.prior_cost, fixed_k=draft_k))
