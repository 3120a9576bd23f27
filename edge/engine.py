"""The Engine: one loaded Qwen3 GGUF on llama.cpp, with its backend, context and memory plan.

Everything that can be decided without llama.cpp (YaRN factors, memory, KV types) is decided by
the pure functions in context_plan before the model is opened, so a context that cannot fit is
refused with the largest one that would, instead of an out-of-memory kill.
"""

from __future__ import annotations

import time
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
from .context_growth import GrowthError, resize_context
from .cpu_buffers import TunedLlama, default_extra_buffers
from .context_plan import (KV_TYPES, MemoryPlan, ModelRope, RopePlan, available_memory_bytes, check_kv_types,
                           SIDE_BATCH, SIDE_CTX, model_rope_from_metadata, offloaded_layers, offloaded_weight_bytes,
                           physical_cores, plan_memory, plan_rope, plan_slots)
from .footprint import Footprint, choose_footprint, next_ctx
from .devices import (Device, Placement, capture_llama_log, list_devices, no_device_message, offload_targets,
                      parse_load_log, placement_backend, placement_device, registry_names)
from .model_kind import ModelKind, detect_kind
from .tune_rules import apply_tuned
from . import rpc

DEFAULT_CTX = 8192  # parallel slots' context when none is asked (one stream: footprint.py chooses)


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
    n_embd: int
    n_heads: int
    n_kv_heads: int
    head_dim: int
    n_ctx_train: int
    yarn: dict[str, Any] | None
    chat_template: str | None
    rope: ModelRope
    sampling_defaults: dict[str, float | int]   # the GGUF's own preset: temperature, top_p, top_k, min_p
    tensor_bytes: dict[str, int]                 # bytes of each tensor, by name (the device and RPC plans)

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
        n_layers=dims.layers, n_embd=dims.hidden, n_heads=dims.heads, n_kv_heads=dims.kv_heads, head_dim=dims.head_dim,
        n_ctx_train=rope.context_length, yarn=rope.yarn,
        chat_template=h.get("tokenizer.chat_template"), rope=rope, sampling_defaults=sampling,
        tensor_bytes={t.name: t.n_bytes for t in h.tensors},
    )


def local_offload_targets() -> list[Device]:
    """The devices of this machine that llama.cpp would offload layers to, from ggml's registry.
    RPC devices are left out: they exist only once servers are registered (rpc.py), and a
    registry keeps those of earlier loads. Not llama_supports_gpu_offload(), which is true for
    any build with the RPC backend, GPU or none."""
    return [d for d in offload_targets(list_devices()) if d.registry != "RPC"]


def detect_backend(n_gpu_layers: int, targets: list[Device] | None = None) -> str:
    """"cpu", or the registry's name of the device the layers would go to ("vulkan", "metal",
    "cuda", ...), before loading; after loading, Engine.backend says where they went."""
    targets = local_offload_targets() if targets is None else targets
    return targets[0].backend if n_gpu_layers != 0 and targets else "cpu"


def device_refusal(memory: MemoryPlan, n_ctx: int, asked_layers: int, fitting_layers: int) -> str:
    """One line for a model that its offload device cannot hold: what it needs there, and what
    would fit (a shorter context, fewer offloaded layers, the CPU)."""
    ways = []
    if memory.max_ctx:
        ways.append(f"a context of at most {memory.max_ctx} tokens (--ctx {memory.max_ctx})")
    if fitting_layers:
        ways.append(f"{fitting_layers} of its {asked_layers} layers on the device (--gpu-layers {fitting_layers})")
    ways.append("the CPU (--gpu-layers 0)")
    return (f"the model with a {n_ctx}-token context does not fit {memory.device.describe()}; "
            f"what fits: {', or '.join(ways)}")


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
        self.footprint: Footprint | None = None  # the ctx, KV type and mmap asked or chosen (footprint.py)
        self.max_ctx: int | None = None  # a growing context's ceiling (None: it does not grow)
        self.growths: list[tuple[int, int, float]] = []  # (from, to, seconds) of each growth
        self.rpc: rpc.RpcCluster | None = None      # the workers, when loaded with rpc_servers
        self.split_plan = None                      # split_plan.SplitPlan over them
        # Where llama.cpp put the layers (devices.Placement, from its load log), and the device(s)
        # holding them as users read them: "Vulkan0 (llvmpipe (LLVM 15.0.6, 256 bits))", "CPU (...)".
        self.placement: Placement | None = None
        self.device: str = ""
        self.tuned = None        # tune_rules.Tuned: this machine's calibrated threads and flash attention
        self.tuned_now = False   # whether the calibration ran during this load

    @classmethod
    def load(cls, path: str | Path, *, n_ctx: int | None = None, n_threads: int | None = None,
             n_gpu_layers: int | None = None, kv_cache_type: str | None = None, flash_attn: bool | None = None,
             available_bytes: int | None = None, n_batch: int = 512, use_mmap: bool | None = None,
             verbose: bool = False, parallel: int | None = 1, max_parallel: int = 4,
             extra_buffers: bool | None = None, rpc_servers: str | list[str] | None = None,
             rpc_timeout: float = rpc.IO_TIMEOUT, grow: bool | None = None, tune: bool | None = None) -> "Engine":
        """Open a Qwen3 GGUF.

        n_ctx, kv_cache_type and use_mmap left None are chosen from the memory plan and the memory
        available (footprint.py; `engine.footprint.describe()` says what): quantized weights read
        in where llama.cpp repacks them, an f16 KV cache unless memory is short, and the largest
        context that fits a share of memory, up to the native context and 32,768. With grow
        (default: when n_ctx is None and one local stream runs) llama.cpp's context starts at
        2,048 tokens and is re-created larger, keeping what is cached, when the chat outgrows it
        (context_growth.py); `engine.n_ctx` is then the ceiling, `engine.allocated_ctx` the size now.
        Parallel slots keep the old defaults (8,192 tokens, f16) and a fixed pool.

        n_ctx above the model's native context (32,768 for the original Qwen3 models, 262,144 for
        the 2507 ones) turns YaRN on (factor ceil(n_ctx/native), at most 4). n_gpu_layers
        None offloads every layer when ggml's registry lists a GPU device, else runs on the CPU;
        a number without a device is refused in one line. After loading, `backend`, `device` and
        `placement` say where llama.cpp put the layers (from its load log, devices.py).
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

        rpc_servers "host:port,..." (or a list) splits the layers across `qwen3-edge worker`s
        (llama.cpp's RPC backend, rpc.py): each is probed with bounded connects and reads first,
        the memory plan splits weights and KV cache the way llama.cpp will (split_plan.py), and a
        worker that stops answering for rpc_timeout seconds, or dies, ends the reply with
        rpc.WorkerLost (a ChatError in a Chat) instead of a hang or an abort.

        tune: threads and flash attention not asked come from this machine's calibration
        (tune.py: measured once per machine, model shape, backend and bindings version, cached;
        `engine.tuned` says what, `engine.tuned_now` whether it was measured during this load).
        None follows QWEN3_EDGE_TUNE (on unless "0"/"off"), False keeps the fixed defaults.
        """
        path = Path(path)
        if extra_buffers is None:  # llama.cpp's repacked weight layouts, unless one of them crashes
            extra_buffers = default_extra_buffers()
        info = read_model_info(path)
        workers = None
        if rpc_servers is not None:
            if parallel != 1:
                raise EngineError("parallel slots over RPC workers are not supported yet: use parallel=1")
            try:
                workers = rpc.probe_workers(rpc_servers)
            except rpc.RpcError as e:
                raise EngineError(str(e)) from None
        targets = local_offload_targets()
        gpu_layers = (-1 if targets or workers else 0) if n_gpu_layers is None else n_gpu_layers
        if gpu_layers != 0 and not targets and not workers:
            raise EngineError(f"--gpu-layers {gpu_layers}: {no_device_message(registry_names())}")
        backend = "rpc" if workers and gpu_layers != 0 else detect_backend(gpu_layers, targets)
        avail = available_bytes if available_bytes is not None else available_memory_bytes()
        asked_flash_attn = flash_attn
        tuned, tuned_now = None, False
        if workers is None and (n_threads is None or flash_attn is None):
            from .tune import TuneError, tuned_defaults
            try:
                tuned, tuned_now = tuned_defaults(path, info, backend, n_gpu_layers=gpu_layers,
                                                  extra_buffers=bool(extra_buffers),
                                                  device_names=[d.description for d in targets], tune=tune)
            except (TuneError, RuntimeError, ValueError):
                tuned = None  # llama.cpp's own load below says what is wrong
        threads, threads_batch, _ = apply_tuned(tuned, n_threads, flash_attn, physical_cores())

        def on_device(layers: int) -> dict[str, Any]:
            """plan_memory's device arguments for `layers` offloaded to the local device(s), whose
            free memory counts as llama.cpp reports it ({} on the CPU, or for a device that reports
            no memory, where llama.cpp itself falls back to the host's)."""
            free = sum(d.memory_free for d in targets)
            if layers == 0 or workers is not None or not targets or (free == 0 and not any(d.memory_total for d in targets)):
                return {}
            return dict(device=" + ".join(d.name for d in targets), device_free_bytes=free,
                        device_weight_bytes=offloaded_weight_bytes(info.tensor_bytes, info.n_layers, layers),
                        device_layers=offloaded_layers(layers, info.n_layers)[0])
        device_kwargs = on_device(gpu_layers)

        def attention(kv: str) -> bool:
            # On the CPU flash attention slows generation at chat depths (benchmarks/RESULTS.md);
            # GPU backends gain from it, and a quantized V cache needs it. This machine's
            # calibration (tune.py) decides where it measured (an f16 cache).
            if asked_flash_attn is not None:
                return asked_flash_attn
            if tuned is not None and kv == "f16":
                return tuned.flash_attn
            return kv != "f16" or backend != "cpu"

        def planned(ctx: int, kv: str, budget: int = avail, n_seq: int = 1,
                    device: dict[str, Any] | None = None) -> MemoryPlan:
            """The memory plan of `n_seq` contexts of `ctx` tokens with a `kv` cache in `budget` bytes,
            with the asked offload (or `device`, on_device's arguments for another layer count)."""
            return plan_memory(info.size_bytes, ctx, info.n_layers, info.n_kv_heads, info.head_dim, budget,
                               type_k=kv, type_v=kv, n_batch=n_batch, n_heads=info.n_heads, flash_attn=attention(kv),
                               ctx_limit=info.rope.max_ctx, n_seq=n_seq, n_embd=info.n_embd,
                               **(device_kwargs if device is None else device))
        single = parallel == 1 and workers is None
        try:
            if kv_cache_type is not None:
                check_kv_types(kv_cache_type, kv_cache_type, True)  # an unknown name, before planning
            footprint = choose_footprint(
                asked_ctx=n_ctx if n_ctx is not None or single else DEFAULT_CTX,
                asked_kv=kv_cache_type if kv_cache_type is not None or single else "f16",
                asked_mmap=use_mmap, grow=single and (n_ctx is None if grow is None else grow), plan=planned,
                available_bytes=avail, native_ctx=info.native_ctx, file_type=info.file_type,
                repacks=bool(extra_buffers) and backend == "cpu")
        except ValueError as e:
            raise EngineError(str(e)) from None
        n_ctx, kv_cache_type, use_mmap = footprint.n_ctx, footprint.kv_cache_type, footprint.use_mmap
        flash_attn = attention(kv_cache_type)
        try:
            check_kv_types(kv_cache_type, kv_cache_type, flash_attn)
            rope = plan_rope(n_ctx, native_ctx=info.native_ctx, gguf_yarn=info.yarn, size_label=info.size_label,
                             original_family=info.rope.original_family)
        except ValueError as e:
            raise EngineError(str(e)) from None
        if rope.warning:
            warnings.warn(rope.warning, stacklevel=2)

        def plan(n_seq: int) -> MemoryPlan:
            return planned(n_ctx, kv_cache_type, n_seq=n_seq)
        slots = (plan_slots(max_parallel, plan) or 1) if parallel is None else parallel
        if slots < 1:
            raise EngineError(f"parallel must be at least 1, not {slots}")
        memory = plan(slots)
        if workers is not None:  # the host keeps only what llama.cpp leaves on the CPU
            split = rpc.plan_over_workers(
                workers, list(info.tensor_bytes.items()), info.n_layers, avail, n_ctx,
                n_kv_heads=info.n_kv_heads, head_dim=info.head_dim, n_heads=info.n_heads, n_gpu_layers=gpu_layers,
                type_k=kv_cache_type, type_v=kv_cache_type, n_batch=n_batch, flash_attn=flash_attn,
                ctx_limit=info.rope.max_ctx)
            if not split.fits:
                raise EngineError(f"{path}: {split.refusal()}")
            memory = split.memory_plan()
        if not memory.fits and not memory.device_fits:
            def fits_with(layers: int) -> bool:
                return planned(n_ctx, kv_cache_type, n_seq=slots, device=on_device(layers)).fits
            most = info.n_layers + 1 if gpu_layers < 0 else min(gpu_layers, info.n_layers + 1)
            raise EngineError(f"{path}: {device_refusal(memory, n_ctx, most, next((k for k in range(most - 1, 0, -1) if fits_with(k)), 0))}")
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
        load = None
        try:
            own_ctx, own_batch = (footprint.start_ctx, n_batch) if slots == 1 else (SIDE_CTX, SIDE_BATCH)
            load = rpc.connect_workers(workers, split, io_timeout=rpc_timeout) if workers is not None else None
            choice = load.choice if load is not None else rpc.local_choice()
            with capture_llama_log() as load_log:
                llama = rpc.llama_class(TunedLlama, load and load.cluster)(
                    str(path), n_ctx=own_ctx, n_batch=own_batch, n_ubatch=own_batch, n_threads=threads,
                    n_threads_batch=threads_batch,
                    n_gpu_layers=gpu_layers, use_mmap=use_mmap, use_mlock=False, flash_attn=flash_attn,
                    type_k=KV_TYPES[kv_cache_type], type_v=KV_TYPES[kv_cache_type],
                    verbose=verbose, model_overrides={"use_extra_bufts": extra_buffers, **(choice.overrides if choice else {})},
                    **rope.llama_kwargs())
        except (rpc.RpcError, ValueError, RuntimeError) as e:
            if load is not None:
                load.cluster.retire()
            if isinstance(e, rpc.RpcError):
                raise EngineError(f"{path}: {e}") from None
            raise EngineError(f"{path}: llama.cpp could not load the model ({e})") from None
        engine = cls(llama, info, template, backend, rope, memory, threads, kv_cache_type)
        engine.placement = parse_load_log("".join(load_log))
        if engine.placement.layers:  # what llama.cpp did, over what was asked
            devices = list_devices()
            engine.backend = placement_backend(engine.placement, devices)
            engine.device = placement_device(engine.placement, devices)
        engine.footprint = footprint
        if footprint.grows and slots == 1:
            engine.max_ctx = footprint.n_ctx
        if load is not None:
            engine.rpc, engine.split_plan = load.cluster, load.split
            for relay in load.cluster.relays:  # llama.cpp knows the workers by their relays' addresses
                engine.device = engine.device.replace(relay.address, relay.worker)
        engine.extra_buffers = extra_buffers
        engine.tuned, engine.tuned_now = tuned, tuned_now
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
        if self.max_ctx is not None:
            return self.max_ctx  # a growing context: what the chat may fill (allocated_ctx: now)
        return self.allocated_ctx

    @property
    def allocated_ctx(self) -> int:
        """The context llama.cpp holds now (a growing one's current size)."""
        return min(self.llama.n_ctx(), len(self.llama.input_ids))

    def reserve_ctx(self, n_tokens: int) -> None:
        """Grow a growing context so that it holds n_tokens (doubling, up to n_ctx), keeping what
        is cached. If llama.cpp cannot make the larger context, the current one stays, n_ctx
        drops to it (so the next turn is trimmed to fit), and GrowthError says so (a ChatError
        in a Chat: that reply ends, the history stays)."""
        have = self.allocated_ctx
        if self.max_ctx is None or n_tokens <= have or have >= self.max_ctx:
            return
        size = next_ctx(have, n_tokens, self.max_ctx)
        started = time.perf_counter()
        try:
            resize_context(self.llama, size)
        except GrowthError:
            self.max_ctx = self.allocated_ctx
            raise
        self.growths.append((have, size, time.perf_counter() - started))

    def tokenize(self, text: str) -> list[int]:
        """Tokens of a rendered prompt: special tokens parsed, no BOS (Qwen adds none)."""
        return self.llama.tokenize(text.encode("utf-8"), add_bos=False, special=True)

    def close(self) -> None:
        if self.scheduler is not None:
            self.scheduler.close()
        self.llama.close()
        if self.rpc is not None:
            self.rpc.retire()

    def __enter__(self) -> "Engine":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
