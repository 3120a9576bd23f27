"""The Engine: one loaded Qwen3 GGUF on llama.cpp, with its backend, context and memory plan.

Everything that can be decided without llama.cpp (YaRN factors, memory, KV types) is decided by
the pure functions in context_plan before the model is opened, so a context that cannot fit is
refused with the largest one that would, instead of an out-of-memory kill.
"""

from __future__ import annotations

import sys
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import llama_cpp

from quantize import QuantizeError
from quantize.gguf_check import check_qwen3
from quantize.gguf_header import read_header
from quantize.gguf_info import sampling_defaults

from .chat_template import QWEN3_CHAT_TEMPLATE, ChatTemplate, TemplateError, compile_template
from .cpu_buffers import TunedLlama, cpu_extra_buffer_types, extra_buffers_safe
from .context_plan import (KV_TYPES, MemoryPlan, ModelRope, RopePlan, available_memory_bytes, check_kv_types,
                           SIDE_BATCH, SIDE_CTX, model_rope_from_metadata, physical_cores, plan_memory, plan_rope,
                           plan_slots)
from .model_kind import ModelKind, detect_kind

DEFAULT_CTX = 8192


class EngineError(Exception):
    """A model that cannot be opened as asked, told in one line."""


@dataclass(frozen=True)
class ModelInfo:
    """What the GGUF header says, read before llama.cpp opens the file."""
    path: Path
    size_bytes: int
    name: str | None
    size_label: str | None
    file_type: int | None
    n_layers: int
    n_heads: int
    n_kv_heads: int
    head_dim: int
    n_ctx_train: int
    yarn: dict[str, Any] | None
    chat_template: str | None
    rope: ModelRope
    sampling_defaults: dict[str, float | int]   # the GGUF's own preset: temperature, top_p, top_k, min_p

    @property
    def native_ctx(self) -> int:
        """The context the model was trained for; YaRN only beyond it (context_plan.model_rope)."""
        return self.rope.native_ctx


def read_model_info(path: Path) -> ModelInfo:
    """The header, checked as untrusted input before llama.cpp sees the file."""
    try:
        h = read_header(path)
        dims = check_qwen3(h)
    except QuantizeError as e:
        raise EngineError(str(e)) from None
    try:
        rope = model_rope_from_metadata(h.fields)
        sampling = sampling_defaults(h.fields)
    except ValueError as e:
        raise EngineError(f"{path}: corrupt GGUF metadata: {e}") from None
    return ModelInfo(
        path=path, size_bytes=path.stat().st_size, name=h.get("general.name"),
        size_label=h.get("general.size_label"), file_type=h.get("general.file_type"),
        n_layers=dims.layers, n_heads=dims.heads, n_kv_heads=dims.kv_heads, head_dim=dims.head_dim,
        n_ctx_train=rope.context_length, yarn=rope.yarn,
        chat_template=h.get("tokenizer.chat_template"), rope=rope, sampling_defaults=sampling,
    )


def detect_backend(n_gpu_layers: int) -> str:
    """"cpu", or the GPU backend the bindings were built with when layers are offloaded."""
    if n_gpu_layers == 0 or not llama_cpp.llama_supports_gpu_offload():
        return "cpu"
    info = llama_cpp.llama_print_system_info().decode(errors="replace").lower()
    for name in ("metal", "vulkan", "cuda", "hip", "sycl", "opencl"):
        if name in info:
            return name
    return "metal" if sys.platform == "darwin" else "gpu"


class Engine:
    """One loaded model. `engine.llama` is the raw llama_cpp.Llama for apps that need it.

    `kind` (hybrid, thinking-only, non-thinking-only) is read from what the chat template renders
    (model_kind.detect_kind), once, at load; `native_ctx` is the context the model was trained for."""

    def __init__(self, llama: llama_cpp.Llama, info: ModelInfo, template: ChatTemplate, backend: str,
                 rope_plan: RopePlan, memory_plan: MemoryPlan, n_threads: int, kv_cache_type: str):
        self.llama, self.info, self.template, self.backend = llama, info, template, backend
        self.rope_plan, self.memory_plan = rope_plan, memory_plan
        self.n_threads, self.kv_cache_type = n_threads, kv_cache_type
        self.kind: ModelKind = detect_kind(template)
        self.native_ctx: int = info.native_ctx
        # The preset the GGUF carries (general.sampling.*: temperature, top_p, top_k, min_p), if any.
        self.sampling_defaults: dict[str, float | int] = dict(info.sampling_defaults)
        self.scheduler = None  # parallel slots (scheduler.py), when loaded with parallel > 1

    @classmethod
    def load(cls, path: str | Path, *, n_ctx: int = DEFAULT_CTX, n_threads: int | None = None,
             n_gpu_layers: int | None = None, kv_cache_type: str = "f16", flash_attn: bool | None = None,
             available_bytes: int | None = None, n_batch: int = 512, use_mmap: bool = True,
             verbose: bool = False, parallel: int | None = 1, max_parallel: int = 4,
             extra_buffers: bool | None = None) -> "Engine":
        """Open a Qwen3 GGUF (memory-mapped).

        n_ctx above the model's native context (32,768 for the original Qwen3 models, 262,144 for
        the 2507 ones) turns YaRN on (factor ceil(n_ctx/native), at most 4). n_gpu_layers
        None offloads every layer when the bindings support a GPU, else runs on the CPU.
        kv_cache_type f16, q8_0 or q4_0; a quantized cache turns flash attention on (llama.cpp
        needs it for a quantized V cache); it is also on when layers are offloaded to a GPU, and off
        otherwise (on CPUs it slows generation at chat depths). n_threads defaults to the physical
        core count. Weights are memory-mapped by default (mlock off), which loads fastest;
        use_mmap=False reads them into memory instead, which avoids holding both the file's pages
        and llama.cpp's repacked copy of Q4 weights: the smaller footprint on small boards.

        parallel N > 1 runs up to N generations at once, each of up to n_ctx tokens, decoded in
        shared batches (scheduler.py; a Chat per task, each on its own thread); None picks as many
        slots as the memory plan fits, at most max_parallel. The KV cache of N slots enters the
        memory plan; the Llama's own context then shrinks to SIDE_CTX tokens (unused).

        extra_buffers: llama.cpp's repacked weight layouts (CPU_REPACK, AMX); None uses them unless
        the CPU backend offers AMX, whose kernels crash this llama.cpp (cpu_buffers.py).
        """
        path = Path(path)
        if extra_buffers is None:  # llama.cpp's repacked weight layouts, unless one of them crashes
            extra_buffers = extra_buffers_safe(cpu_extra_buffer_types())
        info = read_model_info(path)
        threads = n_threads or physical_cores()
        gpu_layers = (-1 if llama_cpp.llama_supports_gpu_offload() else 0) if n_gpu_layers is None else n_gpu_layers
        backend = detect_backend(gpu_layers)
        if flash_attn is None:
            # On the CPU flash attention slows generation at chat depths (benchmarks/RESULTS.md);
            # GPU backends gain from it, and a quantized V cache needs it.
            flash_attn = kv_cache_type != "f16" or backend != "cpu"
        try:
            check_kv_types(kv_cache_type, kv_cache_type, flash_attn)
            rope = plan_rope(n_ctx, native_ctx=info.native_ctx, gguf_yarn=info.yarn, size_label=info.size_label,
                             original_family=info.rope.original_family)
        except ValueError as e:
            raise EngineError(str(e)) from None
        if rope.warning:
            warnings.warn(rope.warning, stacklevel=2)
        avail = available_bytes if available_bytes is not None else available_memory_bytes()

        def plan(n_seq: int):
            return plan_memory(info.size_bytes, n_ctx, info.n_layers, info.n_kv_heads, info.head_dim, avail,
                               type_k=kv_cache_type, type_v=kv_cache_type, n_batch=n_batch, n_heads=info.n_heads,
                               flash_attn=flash_attn, ctx_limit=info.rope.max_ctx, n_seq=n_seq)
        slots = (plan_slots(max_parallel, plan) or 1) if parallel is None else parallel
        if slots < 1:
            raise EngineError(f"parallel must be at least 1, not {slots}")
        memory = plan(slots)
        if not memory.fits:
            if slots > 1:
                raise EngineError(f"{path}: {slots} parallel slots of {n_ctx} tokens do not fit in memory "
                                  f"({memory.describe()}); at this context {plan_slots(slots, plan)} slot(s) fit, "
                                  f"and {slots} slots fit up to {memory.max_ctx} tokens each")
            raise EngineError(f"{path}: context {n_ctx} does not fit in memory ({memory.describe()}); "
                              f"the largest that fits is {memory.max_ctx}")
        try:
            template = compile_template(info.chat_template or QWEN3_CHAT_TEMPLATE)
        except TemplateError as e:
            raise EngineError(f"{path}: unusable chat template ({e})") from None
        try:
            own_ctx, own_batch = (n_ctx, n_batch) if slots == 1 else (SIDE_CTX, SIDE_BATCH)
            llama = TunedLlama(
                str(path), n_ctx=own_ctx, n_batch=own_batch, n_ubatch=own_batch, n_threads=threads,
                n_threads_batch=threads,
                n_gpu_layers=gpu_layers, use_mmap=use_mmap, use_mlock=False, flash_attn=flash_attn,
                type_k=KV_TYPES[kv_cache_type], type_v=KV_TYPES[kv_cache_type],
                verbose=verbose, model_overrides={"use_extra_bufts": extra_buffers}, **rope.llama_kwargs())
        except (ValueError, RuntimeError) as e:
            raise EngineError(f"{path}: llama.cpp could not load the model ({e})") from None
        engine = cls(llama, info, template, backend, rope, memory, threads, kv_cache_type)
        engine.extra_buffers = extra_buffers
        if slots > 1:
            from .scheduler import Scheduler, SchedulerError
            try:
                engine.scheduler = Scheduler(llama, slots, n_ctx, n_batch=n_batch)
            except SchedulerError as e:
                llama.close()
                raise EngineError(f"{path}: {e}") from None
        return engine

    @property
    def parallel(self) -> int:
        """Generations that can run at once."""
        return self.scheduler.n_slots if self.scheduler else 1

    @property
    def n_ctx(self) -> int:
        """Usable context: llama.cpp may pad its cache past what was asked, but the bindings'
        token buffer holds exactly the requested length. With parallel slots: each slot's context."""
        if self.scheduler is not None:
            return self.scheduler.n_ctx
        return min(self.llama.n_ctx(), len(self.llama.input_ids))

    def tokenize(self, text: str) -> list[int]:
        """Tokens of a rendered prompt: special tokens parsed, no BOS (Qwen adds none)."""
        return self.llama.tokenize(text.encode("utf-8"), add_bos=False, special=True)

    def close(self) -> None:
        if self.scheduler is not None:
            self.scheduler.close()
        self.llama.close()

    def __enter__(self) -> "Engine":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
