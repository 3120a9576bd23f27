"""The Engine: one loaded Qwen3 GGUF on llama.cpp, with its backend, context and memory plan.

Everything that can be decided without llama.cpp (YaRN factors, memory, KV types) is decided by
the pure functions in context_plan before the model is opened, so a context that cannot fit is
refused with the largest one that would, instead of an out-of-memory kill.
"""

from __future__ import annotations

import dataclasses
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

from edge.protocol.chat_template import QWEN3_CHAT_TEMPLATE, ChatTemplate, TemplateError, compile_template
from edge.runtime.context_growth import GrowthError, resize_context
from edge.runtime.cpu_buffers import TunedLlama, default_extra_buffers
from edge.runtime.context_plan import (KV_TYPES, MemoryPlan, ModelRope, RopePlan, available_memory_bytes, SIDE_BATCH, SIDE_CTX,
                           model_rope_from_metadata, physical_cores)
from edge.runtime.footprint import Footprint, next_ctx
from edge.runtime.openmp import release_thread_pool
from edge.runtime.ram_states import RamStates
from edge.runtime.devices import (Device, Placement, capture_llama_log, list_devices, offload_targets, parse_load_log,
                      placement_backend, placement_device, registry_names)
from edge.runtime.load_plan import DEFAULT_CTX, LoadPlan, LoadRefused, LoadRequest, MachineFacts, device_refusal, offload, plan_load  # noqa: F401 (re-exported)
from edge.protocol.model_kind import ModelKind, detect_kind
from edge.runtime.stream_lock import Closed, EngineLife, FairLock
from edge.runtime.prompt_cache import PromptCache, open_prompt_cache
from edge.cluster import rpc

POOLING_KEY = "qwen3.pooling_type"          # LAST: an embedding model, RANK: a reranker (edge/runtime/embedding.py)
PURPOSES = {3: "embedding", 4: "reranker"}


class EngineError(Exception):
    """A model that cannot be opened as asked, told in one line."""


class EngineClosedError(EngineError):
    """The engine was closed: load the model again to go on."""

    def __init__(self):
        super().__init__("the engine is closed: load the model again")


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
    purpose: str = "chat"                        # or "embedding", "reranker" (embedding.purpose_of)

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
        purpose=PURPOSES.get(h.get(POOLING_KEY), "chat"),
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


def probe_machine(available_bytes: int | None = None, workers=None) -> MachineFacts:
    """What this machine offers the plan: memory, physical cores, ggml's offload devices, whether
    llama.cpp's repacked buffers are safe, and the probed workers' devices."""
    return MachineFacts(
        available_bytes=available_memory_bytes() if available_bytes is None else available_bytes,
        physical_cores=physical_cores(), targets=tuple(local_offload_targets()), registries=tuple(registry_names()),
        extra_buffers=default_extra_buffers(), workers=None if workers is None else tuple(workers),
        split_devices=tuple(rpc.split_devices(workers)) if workers else ())


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
        self.prompt_cache: PromptCache | None = None  # the system prompt's KV state on disk (prompt_cache.py)
        self.ram_states: RamStates | None = None  # replaced conversations' KV states in memory (ram_states.py; one stream)
        self.speculator = None  # speculative decoding's drafter and policy (speculative.py), with draft=
        self.footprint: Footprint | None = None  # the ctx, KV type and mmap asked or chosen (footprint.py)
        self.plan: LoadPlan | None = None        # every loading decision and why (load_plan.py)
        self.max_ctx: int | None = None  # a growing context's ceiling (None: it does not grow)
        self.growths: list[tuple[int, int, float]] = []  # (from, to, seconds) of each growth
        self.rpc: rpc.RpcCluster | None = None      # the workers, when loaded with rpc_servers
        self.split_plan = None                      # split_plan.SplitPlan over them
        # Where llama.cpp put the layers (devices.Placement, from its load log), and the device(s)
        # holding them as users read them: "Vulkan0 (llvmpipe (LLVM 15.0.6, 256 bits))", "CPU (...)".
        self.placement: Placement | None = None
        self.device: str = ""
        # Threads share one llama.cpp context only through these (stream_lock.py): a generation on
        # the Llama's own context holds stream_lock; `life` counts the calls using the model.
        self.stream_lock = FairLock()
        self.life = EngineLife()
        self.tuned = None        # tune_rules.Tuned: this machine's calibrated threads and flash attention
        self.tuned_now = False   # whether the calibration ran during this load

    @classmethod
    def load(cls, path: str | Path, *, n_ctx: int | None = None, n_threads: int | None = None,
             n_gpu_layers: int | None = None, kv_cache_type: str | None = None, flash_attn: bool | None = None,
             available_bytes: int | None = None, n_batch: int = 512, use_mmap: bool | None = None,
             verbose: bool = False, parallel: int | None = 1, max_parallel: int = 4,
             extra_buffers: bool | None = None, rpc_servers: str | list[str] | None = None,
             rpc_timeout: float = rpc.IO_TIMEOUT, grow: bool | None = None,
             prompt_cache: "bool | str | Path | PromptCache | None" = None,
             draft: str | Path | None = None, draft_k: int | None = None,
             tune: bool | None = None) -> "Engine":
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

        prompt_cache keeps the KV state of a long system prompt on disk, so a later process with the
        same one does not evaluate it again (prompt_cache.py): None (on, in the store's
        cache/prompts, unless QWEN3_EDGE_PROMPT_CACHE=0), True, False, a folder, or a PromptCache
        (folder, size cap, shortest prefix). Local streams and parallel slots; not over RPC workers.

        draft: speculative decoding (speculative.py) with a smaller Qwen3 GGUF of the same
        tokenizer (its weights and cache enter the memory plan), or "lookup" (n-grams of the
        prompt, no model); one stream only. draft_k fixes the drafted tokens per round (default:
        adaptive, and off while it does not pay).

        tune: threads and flash attention not asked come from this machine's calibration
        (tune.py: measured once per machine, model shape, backend and bindings version, cached;
        `engine.tuned` says what, `engine.tuned_now` whether it was measured during this load).
        None follows QWEN3_EDGE_TUNE (on unless "0"/"off"), False keeps the fixed defaults.
        """
        path = Path(path)
        try:
            cache = open_prompt_cache(prompt_cache)
        except ValueError as e:
            raise EngineError(str(e)) from None
        draft_info = None
        if draft is not None:
            from edge.runtime.draft_model import LOOKUP, DraftError, tokenizer_problem
            if parallel != 1 or rpc_servers is not None:
                raise EngineError("speculative decoding (draft) runs one stream on local devices: "
                                  "use parallel=1 and no RPC workers")
            if str(draft) != LOOKUP:
                draft_info = read_model_info(Path(draft))
                try:
                    problem = tokenizer_problem(path, Path(draft))
                except DraftError as e:
                    raise EngineError(str(e)) from None
                if problem:
                    raise EngineError(f"draft: {problem}")
        info = read_model_info(path)
        if info.purpose != "chat":  # Qwen3-Embedding or Qwen3-Reranker: an Embedder (embedding.py)
            from edge.runtime.embedding import Embedder
            return Embedder.open(path, info.purpose, n_ctx=n_ctx, n_threads=n_threads, n_gpu_layers=n_gpu_layers,
                                 verbose=verbose, extra_buffers=extra_buffers, n_ctx_train=info.native_ctx)
        asked = LoadRequest(n_ctx=n_ctx, n_threads=n_threads, n_gpu_layers=n_gpu_layers, kv_cache_type=kv_cache_type,
                            flash_attn=flash_attn, n_batch=n_batch, use_mmap=use_mmap, parallel=parallel,
                            max_parallel=max_parallel, extra_buffers=extra_buffers, grow=grow)
        workers = None
        if rpc_servers is not None and parallel == 1:  # parallel over RPC: the plan refuses it, unprobed
            try:
                workers = rpc.probe_workers(rpc_servers)
            except rpc.RpcError as e:
                raise EngineError(str(e)) from None
        machine = probe_machine(available_bytes, workers if rpc_servers is None or parallel == 1 else ())
        tuned, tuned_now = None, False
        if workers is None and (n_threads is None or flash_attn is None):  # the calibration: a machine fact
            try:
                gpu_layers, backend = offload(asked, machine)
            except LoadRefused:
                pass  # the plan below refuses it
            else:
                from edge.runtime.tune import TuneError, tuned_defaults
                try:
                    tuned, tuned_now = tuned_defaults(
                        path, info, backend, n_gpu_layers=gpu_layers,
                        extra_buffers=machine.extra_buffers if extra_buffers is None else bool(extra_buffers),
                        device_names=[d.description for d in machine.targets], tune=tune)
                except (TuneError, RuntimeError, ValueError):
                    tuned = None  # llama.cpp's own load below says what is wrong
            machine = dataclasses.replace(machine, tuned=tuned)
        try:
            plan = plan_load(info, asked, machine, draft=draft_info)
        except LoadRefused as e:
            for warning in e.warnings:
                warnings.warn(warning, stacklevel=2)
            raise EngineError(f"{path}: {e.message}" if e.about_file else e.message) from None
        if plan.rope.warning:
            warnings.warn(plan.rope.warning, stacklevel=2)
        return cls._open(path, info, plan, workers, verbose=verbose, rpc_timeout=rpc_timeout, cache=cache,
                         draft=draft, draft_k=draft_k, tuned_now=tuned_now)

    @classmethod
    def _open(cls, path: Path, info: ModelInfo, plan: LoadPlan, workers, *, verbose: bool,
              rpc_timeout: float, cache: PromptCache | None = None, draft: str | Path | None = None,
              draft_k: int | None = None, tuned_now: bool = False) -> "Engine":
        """Open llama.cpp as the plan says: the model, its context (or the scheduler's), the workers."""
        n_ctx, kv_cache_type, slots, threads = plan.n_ctx, plan.kv_cache_type, plan.slots, plan.threads
        n_batch, extra_buffers, memory, rope = plan.n_batch, plan.extra_buffers, plan.memory, plan.rope
        try:
            template = compile_template(info.chat_template or QWEN3_CHAT_TEMPLATE)
        except TemplateError as e:
            raise EngineError(f"{path}: unusable chat template ({e})") from None
        load = None
        try:
            own_ctx, own_batch = (plan.start_ctx, n_batch) if slots == 1 else (SIDE_CTX, SIDE_BATCH)
            load = rpc.connect_workers(workers, plan.split, io_timeout=rpc_timeout) if workers is not None else None
            choice = load.choice if load is not None else rpc.local_choice()
            with capture_llama_log() as load_log:
                llama = rpc.llama_class(TunedLlama, load and load.cluster)(
                    str(path), n_ctx=own_ctx, n_batch=own_batch, n_ubatch=own_batch, n_threads=threads,
                    n_threads_batch=plan.threads_batch,
                    n_gpu_layers=plan.gpu_layers, use_mmap=plan.use_mmap, use_mlock=False, flash_attn=plan.flash_attn,
                    type_k=KV_TYPES[kv_cache_type], type_v=KV_TYPES[kv_cache_type],
                    verbose=verbose, model_overrides={"use_extra_bufts": extra_buffers, **(choice.overrides if choice else {})},
                    **rope.llama_kwargs())
        except (rpc.RpcError, ValueError, RuntimeError) as e:
            if load is not None:
                load.cluster.retire()
            if isinstance(e, rpc.RpcError):
                raise EngineError(f"{path}: {e}") from None
            raise EngineError(f"{path}: llama.cpp could not load the model ({e})") from None
        engine = cls(llama, info, template, plan.backend, rope, memory, threads, kv_cache_type)
        engine.plan = plan
        engine.placement = parse_load_log("".join(load_log))
        if engine.placement.layers:  # what llama.cpp did, over what was asked
            devices = list_devices()
            engine.backend = placement_backend(engine.placement, devices)
            engine.device = placement_device(engine.placement, devices)
        engine.footprint = plan.footprint
        if plan.grows:
            engine.max_ctx = plan.n_ctx
        if load is not None:
            engine.rpc, engine.split_plan = load.cluster, load.split
            for relay in load.cluster.relays:  # llama.cpp knows the workers by their relays' addresses
                engine.device = engine.device.replace(relay.address, relay.worker)
        engine.extra_buffers = extra_buffers
        if cache is not None and load is None:
            engine.prompt_cache = cache.attach(engine)
        engine.tuned, engine.tuned_now = plan.tuned, tuned_now
        if slots == 1 and plan.saved_states_bytes:
            engine.ram_states = RamStates(plan.saved_states_bytes)
        if slots > 1:
            from edge.runtime.scheduler import Scheduler, SchedulerError
            try:
                engine.scheduler = Scheduler(llama, slots, n_ctx, n_batch=n_batch,
                                             ram_cache_bytes=plan.saved_states_bytes)
            except SchedulerError as e:
                llama.close()
                raise EngineError(f"{path}: {e}") from None
            engine.scheduler.prompt_cache = engine.prompt_cache
        if draft is not None:
            from edge.runtime.draft_model import DraftError, open_speculator
            try:
                engine.speculator = open_speculator(engine, draft, draft_k, n_gpu_layers=plan.gpu_layers,
                                                    flash_attn=plan.flash_attn, n_batch=n_batch, verbose=verbose)
            except DraftError as e:
                engine.close()
                raise EngineError(str(e)) from None
        release_thread_pool()  # this thread may have decoded (calibration, prompt cache); generations run anywhere
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

    purpose = "chat"   # an embedding model or reranker loads as an embedding.Embedder instead

    def embed(self, texts, **kwargs):
        """Refused: a chat model makes no embeddings (Engine.load gives an Embedder for those)."""
        from edge.runtime.embedding import wrong_model
        raise EngineError(wrong_model("chat", "embed"))

    def rerank(self, query, documents, **kwargs):
        """Refused: a chat model is not a reranker."""
        from edge.runtime.embedding import wrong_model
        raise EngineError(wrong_model("chat", "rerank"))

    def tokenize(self, text: str) -> list[int]:
        """Tokens of a rendered prompt: special tokens parsed, no BOS (Qwen adds none)."""
        with self.using():
            return self.llama.tokenize(text.encode("utf-8"), add_bos=False, special=True)

    def create_chat_completion(self, messages: list[dict], **fields):
        """OpenAI's request and response shape on this engine (llama-cpp-python's method name):
        completion.complete, the one mapping the server uses too."""
        from edge.serve.completion import complete
        return complete(self, messages, **fields)

    @property
    def closed(self) -> bool:
        return self.life.closed

    def using(self) -> "_Using":
        """`with engine.using():` around a call that touches the model; EngineClosedError after close()."""
        return _Using(self.life)

    def close(self, wait: float = 30.0) -> None:
        """Free llama.cpp's model and contexts. A reply in progress on another thread is stopped
        (it ends as cancelled, or with a ChatError on parallel slots) and waited for; Chats waiting
        for a stream get a ChatError. If a call is still running after `wait` seconds the memory is
        left allocated rather than freed under it."""
        if self.life.closed:
            return
        self.life.closed = True          # no new turn starts
        self.stream_lock.close(wait)      # the running single-stream reply stops within a token
        if self.scheduler is not None:
            self.scheduler.close()        # queued and running slot work ends with an error
        if not self.life.close(wait):
            warnings.warn("a reply still runs on this engine after close(); its memory was not freed", stacklevel=2)
            return
        if self.speculator is not None:
            self.speculator.close()
            self.speculator = None
        if self.ram_states is not None:
            self.ram_states.clear()
        self.llama.close()
        if self.rpc is not None:
            self.rpc.retire()

    def __enter__(self) -> "Engine":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class _Using:
    """engine.using()'s context: one call in progress, counted by the engine's life."""

    def __init__(self, life: EngineLife):
        self.life = life

    def __enter__(self) -> None:
        try:
            self.life.enter()
        except Closed:
            raise EngineClosedError() from None

    def __exit__(self, *exc: object) -> None:
        self.life.leave()
