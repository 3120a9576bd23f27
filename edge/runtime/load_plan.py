"""Loading as a plan: every decision Engine.load makes, as one pure function with its reasons.

plan_load(model, asked, machine) takes what the GGUF header says (ModelInfo), what the caller asked
(LoadRequest: None means "choose for me") and what the machine offers (MachineFacts: memory, cores,
offload devices, probed RPC workers), and returns a LoadPlan (context, KV type, mmap, flash
attention, RoPE/YaRN, GPU layers and backend, slots, threads, the memory plan and the device or
worker shares, each with why) or raises LoadRefused with one line saying what would fit instead.

Engine.load then only reads the header, probes the machine, makes the plan and opens llama.cpp with
it; `qwen3-edge plan MODEL` prints the same plan without loading anything. No llama.cpp, no /proc,
no network here: the plan is tested over a table of machines (tests/runtime/test_load_plan.py).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

from edge.runtime.context_plan import (MemoryPlan, RopePlan, check_kv_types, offloaded_layers, offloaded_weight_bytes,
                           plan_memory, plan_rope, plan_slots)
from edge.runtime.devices import Device, no_device_message
from edge.runtime.footprint import Footprint, choose_footprint
from edge.runtime.tune_rules import apply_tuned

DEFAULT_CTX = 8192  # parallel slots' context when none is asked (one stream: footprint.py chooses)
SAVED_STATES_CAP = 256 * 1024 ** 2  # host memory for replaced conversations' KV states (llama-server: 8 GiB)


class LoadRefused(Exception):
    """The model cannot load as asked on this machine; `message` says what would. `about_file`:
    the message is about this model file (Engine.load prefixes its path)."""

    def __init__(self, message: str, about_file: bool = True, warnings: tuple[str, ...] = ()):
        super().__init__(message)
        self.message, self.about_file, self.warnings = message, about_file, warnings


@dataclass(frozen=True)
class LoadRequest:
    """What the caller asked; None leaves the choice to the plan."""
    n_ctx: int | None = None
    n_threads: int | None = None
    n_gpu_layers: int | None = None
    kv_cache_type: str | None = None
    flash_attn: bool | None = None
    n_batch: int = 512
    use_mmap: bool | None = None
    parallel: int | None = 1
    max_parallel: int = 4
    extra_buffers: bool | None = None
    grow: bool | None = None


@dataclass(frozen=True)
class MachineFacts:
    """What the machine offers, probed by the caller (Engine.load: /proc, ggml's registry, the
    workers) or written down (tests, `plan --ram`)."""
    available_bytes: int
    physical_cores: int
    targets: tuple[Device, ...] = ()          # local offload devices, llama.cpp's order
    registries: tuple[str, ...] = ("CPU",)    # ggml registries the bindings have (for refusals)
    extra_buffers: bool = True                # llama.cpp's repacked weights are safe here (no AMX)
    workers: tuple[Any, ...] | None = None    # probed RPC workers (rpc.WorkerInfo), when asked
    split_devices: tuple[tuple[str, int], ...] = ()   # (name, free bytes) of worker and local devices
    tuned: Any = None                         # tune_rules.Tuned: this machine's calibration, if measured


@dataclass(frozen=True)
class LoadPlan:
    n_ctx: int
    start_ctx: int               # what llama.cpp allocates at load (a growing context starts small)
    kv_cache_type: str
    use_mmap: bool
    flash_attn: bool
    rope: RopePlan
    gpu_layers: int              # -1: all
    backend: str                 # "cpu", "vulkan", "metal", "cuda", "rpc", ... (before loading)
    slots: int
    threads: int
    threads_batch: int           # prompt evaluation's threads (the calibration may choose others)
    n_batch: int
    extra_buffers: bool
    footprint: Footprint
    memory: MemoryPlan
    split: Any = None            # split_plan.SplitPlan over RPC workers
    reasons: tuple[str, ...] = field(default=())
    tuned: Any = None            # the calibration the threads and flash attention came from
    saved_states_bytes: int = 0  # host memory for replaced conversations' KV states (ram_states.py)

    @property
    def grows(self) -> bool:
        return self.slots == 1 and self.footprint.grows

    def describe(self) -> str:
        where = "the CPU" if self.backend == "cpu" else f"{self.backend} ({'all' if self.gpu_layers < 0 else self.gpu_layers} layers)"
        batch = f" ({self.threads_batch} for prompts)" if self.threads_batch != self.threads else ""
        lines = [f"loads on {where}, {self.threads} threads{batch}, {self.slots} slot(s)",
                 self.footprint.describe(),
                 f"flash attention {'on' if self.flash_attn else 'off'}; {_rope_line(self.rope)}",
                 f"memory: {self.memory.describe()}"]
        if self.split is not None:
            lines.append(f"split: {self.split.describe()}")
        return "\n".join(lines + [f"- {r}" for r in self.reasons])

    def to_json(self) -> dict:
        m = self.memory
        return {"n_ctx": self.n_ctx, "start_ctx": self.start_ctx, "kv_cache_type": self.kv_cache_type,
                "use_mmap": self.use_mmap, "flash_attn": self.flash_attn, "gpu_layers": self.gpu_layers,
                "backend": self.backend, "slots": self.slots, "threads": self.threads,
                "threads_batch": self.threads_batch, "n_batch": self.n_batch,
                "extra_buffers": self.extra_buffers, "saved_states_bytes": self.saved_states_bytes,
                "rope": _rope_json(self.rope),
                "memory": {"model_bytes": m.model_bytes, "kv_bytes": m.kv_bytes, "overhead_bytes": m.overhead_bytes,
                           "total_bytes": m.total_bytes, "available_bytes": m.available_bytes, "fits": m.fits,
                           "max_ctx": m.max_ctx,
                           "device": None if m.device is None else {"name": m.device.name, "need_bytes": m.device.need_bytes,
                                                                     "free_bytes": m.device.free_bytes, "fits": m.device.fits}},
                "chosen": list(self.footprint.chosen), "reasons": list(self.reasons)}


def _rope_json(rope: RopePlan) -> dict:
    return {"yarn": rope.yarn, "factor": rope.factor, "rope_freq_scale": rope.rope_freq_scale,
            "yarn_orig_ctx": rope.yarn_orig_ctx, "warning": rope.warning}


def _rope_line(rope: RopePlan) -> str:
    if not rope.yarn:
        return "no rope scaling (within the native context)"
    return f"YaRN factor {rope.factor:g} over the native {rope.yarn_orig_ctx} tokens"


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


def saved_states_bytes(asked: LoadRequest, slots: int, flash_attn: bool, memory: MemoryPlan) -> int:
    """Host memory for the KV states of conversations a new prompt replaced (ram_states.py), as
    llama-server keeps them by default (--cache-ram): only where several conversations are served
    (parallel asked other than 1: serve; a chat or `run` continues one conversation, whose replaced
    tail, the last reply's thinking, never comes back; RPC workers run one stream), and for slots only with flash
    attention (without it V is stored transposed and a slot's cells, interleaved with the others',
    are copied a row per cell range: slower than evaluating the prompt again). At most
    SAVED_STATES_CAP and half of the memory the plan leaves free, so it never changes what fits."""
    if asked.parallel == 1 or (slots > 1 and not flash_attn):
        return 0
    return max(0, min(SAVED_STATES_CAP, (memory.available_bytes - memory.total_bytes) // 2))


def offload(asked: LoadRequest, machine: MachineFacts) -> tuple[int, str]:
    """(GPU layers, backend): every layer to the first offload device (or the RPC workers) unless
    asked otherwise; a layer count with no device to take it is refused."""
    targets, workers = machine.targets, machine.workers
    if workers is not None and asked.parallel != 1:
        raise LoadRefused("parallel slots over RPC workers are not supported yet: use parallel=1", about_file=False)
    gpu_layers = (-1 if targets or workers else 0) if asked.n_gpu_layers is None else asked.n_gpu_layers
    if gpu_layers != 0 and not targets and not workers:
        raise LoadRefused(f"--gpu-layers {gpu_layers}: {no_device_message(machine.registries)}", about_file=False)
    backend = "rpc" if workers and gpu_layers != 0 else (targets[0].backend if gpu_layers != 0 and targets else "cpu")
    return gpu_layers, backend


def plan_load(model, asked: LoadRequest, machine: MachineFacts, draft=None) -> LoadPlan:
    """Every loading decision for `model` (a ModelInfo: the header's facts) as asked on this machine;
    `draft`, a speculative-decoding draft model's ModelInfo, whose weights and cache count too."""
    reasons: list[str] = []
    extra_buffers = machine.extra_buffers if asked.extra_buffers is None else asked.extra_buffers
    if asked.extra_buffers is None and not machine.extra_buffers:
        reasons.append("llama.cpp's repacked weight buffers off: its AMX kernels crash this build (cpu_buffers.py)")
    threads, threads_batch, _ = apply_tuned(machine.tuned, asked.n_threads, asked.flash_attn, machine.physical_cores)
    if machine.tuned is not None and asked.n_threads is None:
        reasons.append(f"threads from this machine's calibration: {machine.tuned.describe()}")
    workers, targets = machine.workers, list(machine.targets)
    gpu_layers, backend = offload(asked, machine)
    avail = machine.available_bytes

    def on_device(layers: int) -> dict[str, Any]:
        """plan_memory's device arguments for `layers` offloaded to the local device(s), whose free
        memory counts as llama.cpp reports it ({} on the CPU, or for a device that reports no
        memory, where llama.cpp itself falls back to the host's)."""
        free = sum(d.memory_free for d in targets)
        if layers == 0 or workers is not None or not targets or (free == 0 and not any(d.memory_total for d in targets)):
            return {}
        return dict(device=" + ".join(d.name for d in targets), device_free_bytes=free,
                    device_weight_bytes=offloaded_weight_bytes(model.tensor_bytes, model.n_layers, layers),
                    device_layers=offloaded_layers(layers, model.n_layers)[0])
    device_kwargs = on_device(gpu_layers)

    def attention(kv: str) -> bool:
        # On the CPU flash attention slows generation at chat depths (benchmarks/RESULTS.md);
        # GPU backends gain from it, and a quantized V cache needs it. This machine's
        # calibration (tune.py) decides where it measured (an f16 cache).
        if asked.flash_attn is not None:
            return asked.flash_attn
        if machine.tuned is not None and kv == "f16":
            return machine.tuned.flash_attn
        return kv != "f16" or backend != "cpu"

    def planned(ctx: int, kv: str, budget: int = avail, n_seq: int = 1, device: dict[str, Any] | None = None) -> MemoryPlan:
        """The memory plan of `n_seq` contexts of `ctx` tokens with a `kv` cache in `budget` bytes,
        with the asked offload (or `device`, on_device's arguments for another layer count)."""
        return plan_memory(model.size_bytes, ctx, model.n_layers, model.n_kv_heads, model.head_dim, budget,
                           type_k=kv, type_v=kv, n_batch=asked.n_batch, n_heads=model.n_heads, flash_attn=attention(kv),
                           ctx_limit=model.rope.max_ctx, n_seq=n_seq, n_embd=model.n_embd,
                           **(device_kwargs if device is None else device))
    if draft is not None:  # the draft model's weights, cache and buffers count too (draft_model.py)
        from edge.runtime.draft_model import with_draft
        joint = with_draft(planned, draft, n_batch=asked.n_batch, flash_attn=attention)

        def planned(ctx: int, kv: str, budget: int = avail, n_seq: int = 1, device: dict[str, Any] | None = None) -> MemoryPlan:
            return joint(ctx, kv, budget, n_seq, device)
        reasons.append(f"the draft model {draft.path.name} and its cache enter the memory plan")
    single = asked.parallel == 1 and workers is None
    try:
        if asked.kv_cache_type is not None:
            check_kv_types(asked.kv_cache_type, asked.kv_cache_type, True)  # an unknown name, before planning
        footprint = choose_footprint(
            asked_ctx=asked.n_ctx if asked.n_ctx is not None or single else DEFAULT_CTX,
            asked_kv=asked.kv_cache_type if asked.kv_cache_type is not None or single else "f16",
            asked_mmap=asked.use_mmap, grow=single and (asked.n_ctx is None if asked.grow is None else asked.grow),
            plan=planned, available_bytes=avail, native_ctx=model.native_ctx, file_type=model.file_type,
            repacks=bool(extra_buffers) and backend == "cpu")
    except ValueError as e:
        raise LoadRefused(str(e), about_file=False) from None
    n_ctx, kv, use_mmap = footprint.n_ctx, footprint.kv_cache_type, footprint.use_mmap
    flash_attn = attention(kv)
    if asked.flash_attn is None and machine.tuned is not None and kv == "f16":
        reasons.append(f"flash attention {'on' if flash_attn else 'off'}: measured faster on this machine (tune.py)")
    elif asked.flash_attn is None:
        reasons.append("flash attention " + ("on: a quantized KV cache needs it" if kv != "f16" else
                                             "on: a GPU backend gains from it" if backend != "cpu" else
                                             "off: on CPUs it slows generation at chat depths"))
    try:
        check_kv_types(kv, kv, flash_attn)
        rope = plan_rope(n_ctx, native_ctx=model.native_ctx, gguf_yarn=model.yarn, size_label=model.size_label,
                         original_family=model.rope.original_family)
    except ValueError as e:
        raise LoadRefused(str(e), about_file=False) from None

    try:
        return _sized(model, asked, machine, n_ctx, kv, use_mmap, flash_attn, rope, gpu_layers, backend,
                      (threads, threads_batch), extra_buffers, footprint, planned, on_device, reasons)
    except LoadRefused as e:  # the RoPE warning still reaches the user (a long context asked)
        raise LoadRefused(e.message, e.about_file, tuple(filter(None, [rope.warning]))) from None


def _sized(model, asked: LoadRequest, machine: MachineFacts, n_ctx: int, kv: str, use_mmap: bool, flash_attn: bool,
           rope: RopePlan, gpu_layers: int, backend: str, threads: tuple[int, int], extra_buffers: bool, footprint: Footprint,
           planned, on_device, reasons: list[str]) -> LoadPlan:
    """plan_load's second half: slots, the memory plan (or the split over workers) and its refusals."""
    workers = machine.workers

    def plan(n_seq: int) -> MemoryPlan:
        return planned(n_ctx, kv, n_seq=n_seq)
    slots = (plan_slots(asked.max_parallel, plan) or 1) if asked.parallel is None else asked.parallel
    if slots < 1:
        raise LoadRefused(f"parallel must be at least 1, not {slots}", about_file=False)
    if asked.parallel is None:
        reasons.append(f"{slots} slot(s): as many as the memory plan fits, at most {asked.max_parallel}")
    memory, split = plan(slots), None
    if workers is not None:  # the host keeps only what llama.cpp leaves on the CPU
        from edge.cluster.split_plan import model_bytes, plan_split
        split = plan_split(model_bytes(list(model.tensor_bytes.items()), model.n_layers), list(machine.split_devices),
                           machine.available_bytes, n_ctx, n_kv_heads=model.n_kv_heads, head_dim=model.head_dim, n_heads=model.n_heads,
                           n_gpu_layers=gpu_layers, type_k=kv, type_v=kv, n_batch=asked.n_batch,
                           flash_attn=flash_attn, ctx_limit=model.rope.max_ctx)
        if not split.fits:
            raise LoadRefused(split.refusal())
        memory = split.memory_plan()
    if not memory.fits and not memory.device_fits:
        def fits_with(layers: int) -> bool:
            return planned(n_ctx, kv, n_seq=slots, device=on_device(layers)).fits
        most = model.n_layers + 1 if gpu_layers < 0 else min(gpu_layers, model.n_layers + 1)
        raise LoadRefused(device_refusal(memory, n_ctx, most, next((k for k in range(most - 1, 0, -1) if fits_with(k)), 0)))
    if not memory.fits:
        if slots > 1:
            raise LoadRefused(f"{slots} parallel slots of {n_ctx} tokens do not fit in memory ({memory.describe()}); "
                              f"at this context {plan_slots(slots, plan)} slot(s) fit, and {slots} slots fit up to "
                              f"{memory.max_ctx} tokens each")
        raise LoadRefused(f"context {n_ctx} does not fit in memory ({memory.describe()}); "
                          f"the largest that fits is {memory.max_ctx}")
    start_ctx = footprint.start_ctx if slots == 1 else n_ctx
    saved = saved_states_bytes(asked, slots, flash_attn, memory)
    if saved:
        memory = replace(memory, overhead_bytes=memory.overhead_bytes + saved, total_bytes=memory.total_bytes + saved)
        reasons.append(f"up to {saved >> 20} MiB of host memory keeps replaced conversations' KV states "
                       "for prompts that come back to them (llama-server's --cache-ram)")
    return LoadPlan(n_ctx=n_ctx, start_ctx=start_ctx, kv_cache_type=kv, use_mmap=use_mmap, flash_attn=flash_attn,
                    rope=rope, gpu_layers=gpu_layers, backend=backend, slots=slots, threads=threads[0],
                    threads_batch=threads[1], n_batch=asked.n_batch, extra_buffers=bool(extra_buffers),
                    footprint=footprint, memory=memory, split=split, reasons=tuple(reasons), tuned=machine.tuned,
                    saved_states_bytes=saved)
