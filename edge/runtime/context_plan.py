"""Context length, RoPE scaling and memory planning for Qwen3 on llama.cpp.

Each model has a native context, the length it was trained for; longer contexts need YaRN,
which Qwen says to turn on only when needed because static YaRN hurts short texts. The native
context comes from the GGUF's metadata (`model_rope`): the original Qwen3 models (April 2025)
say context_length 40,960 but are native to 32,768 (Qwen's model cards: YaRN beyond 32,768);
the 2507 models say 262,144 and are native to all of it. llama.cpp would take YaRN's original
context from context_length, which is wrong for the original models, so the plan sets it.
Memory planning refuses a context that cannot fit before llama.cpp tries to allocate it.
Everything here is pure except `physical_cores` and `available_memory_bytes`, which read /proc.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import llama_cpp

NATIVE_CTX = 32768                        # the original Qwen3 models' native context
ORIGINAL_CONTEXT_LENGTH = 40960           # what their GGUFs say (config max_position_embeddings)
ORIGINAL_FREQ_BASE = 1e6                  # their rope_theta (the 2507 models: 5e6)
MAX_YARN_FACTOR = 4
MAX_CTX = NATIVE_CTX * MAX_YARN_FACTOR   # 131072: the original models' longest context
CTX_STEP = 256                            # llama.cpp pads its KV cache to multiples of 256
SMALL_MODEL_PARAMS = 3e9                  # below this, Qwen did not validate 128K context
MIB = 1 << 20


@dataclass(frozen=True)
class ModelRope:
    """What a GGUF says about positions, checked for agreement (see `model_rope`)."""
    context_length: int
    native_ctx: int
    yarn: dict[str, Any] | None     # {"factor", "original_context_length"} when the GGUF carries YaRN
    original_family: bool          # Qwen3 of April 2025: 128K validated on the 4B only

    @property
    def max_ctx(self) -> int:
        """The longest context: the GGUF's own YaRN reach, else YaRN factor 4 over native."""
        if self.yarn is not None:
            return int(self.yarn["factor"] * self.yarn["original_context_length"])
        return self.native_ctx * MAX_YARN_FACTOR


def _is_number(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def model_rope(context_length: Any, freq_base: Any = None, scaling_type: Any = None, factor: Any = None,
               original_context_length: Any = None) -> ModelRope:
    """The native context from a GGUF's qwen3.* metadata, by this rule:

    1. A GGUF that carries YaRN (rope.scaling.type "yarn") names its native context itself:
       rope.scaling.original_context_length (Qwen's original_max_position_embeddings).
    2. context_length 40,960 with rope freq_base 1e6 is the original Qwen3 family: native 32,768
       (Qwen's cards: 32,768 native, YaRN beyond; the 40,960 leaves room for a long output).
    3. Anything else (the 2507 models: 262,144 with freq_base 5e6) is native to its context_length.

    Metadata that disagrees with itself is refused with a ValueError (one line): a context_length
    that is not a positive integer; a non-positive freq_base; a scaling type other than none or
    yarn (Qwen3 uses YaRN only, and llama.cpp would apply e.g. linear scaling behind the plan's
    back); YaRN without a factor >= 1 or without a positive original context, or with an original
    context beyond context_length; a factor other than 1, or an original context, without YaRN
    (llama.cpp applies a bare factor as linear scaling)."""
    if not isinstance(context_length, int) or isinstance(context_length, bool) or context_length <= 0:
        raise ValueError(f"context_length must be a positive integer, got {context_length!r}")
    if freq_base is not None and (not _is_number(freq_base) or freq_base <= 0):
        raise ValueError(f"rope freq_base must be a positive number, got {freq_base!r}")
    if scaling_type not in (None, "none", "yarn"):
        raise ValueError(f"rope scaling type {scaling_type!r} is not supported: Qwen3 uses YaRN only")
    original = context_length == ORIGINAL_CONTEXT_LENGTH and freq_base == ORIGINAL_FREQ_BASE
    if scaling_type != "yarn":
        if factor is not None and factor != 1:
            raise ValueError(f"rope scaling factor {factor!r} without rope scaling type yarn")
        if original_context_length is not None:
            raise ValueError(f"rope original context {original_context_length!r} without rope scaling type yarn")
        return ModelRope(context_length, NATIVE_CTX if original else context_length, None, original)
    factor, orig = _check_yarn_metadata({"factor": factor, "original_context_length": original_context_length})
    if orig > context_length:
        raise ValueError(f"YaRN original context {orig} is larger than context_length {context_length}")
    original = original or (orig == NATIVE_CTX and freq_base == ORIGINAL_FREQ_BASE)
    return ModelRope(context_length, orig, {"factor": factor, "original_context_length": orig}, original)


def model_rope_from_metadata(fields: Mapping[str, Any], arch: str = "qwen3") -> ModelRope:
    """`model_rope` on a GGUF header's fields. A factor may also sit in llama.cpp's older
    rope.scale_linear key, which llama.cpp still reads."""
    p = f"{arch}.rope."
    factor = fields.get(p + "scaling.factor", fields.get(p + "scale_linear"))
    return model_rope(fields.get(f"{arch}.context_length"), fields.get(p + "freq_base"),
                      fields.get(p + "scaling.type"), factor, fields.get(p + "scaling.original_context_length"))


@dataclass(frozen=True)
class RopePlan:
    n_ctx: int
    yarn: bool
    factor: float
    rope_freq_scale: float
    yarn_orig_ctx: int          # 0 when YaRN is off
    rope_scaling_type: int
    warning: str | None

    def llama_kwargs(self) -> dict[str, Any]:
        """RoPE keyword arguments for `llama_cpp.Llama(...)` (n_ctx is left to the caller).

        Without YaRN the type is NONE, not "unspecified", so nothing in the file turns it on."""
        if not self.yarn:
            return {"rope_scaling_type": llama_cpp.LLAMA_ROPE_SCALING_TYPE_NONE}
        return {"rope_scaling_type": llama_cpp.LLAMA_ROPE_SCALING_TYPE_YARN,
                "rope_freq_scale": self.rope_freq_scale, "yarn_orig_ctx": self.yarn_orig_ctx}


def parse_size_label(label: str | None) -> float | None:
    """general.size_label -> parameter count: "0.6B" 6e8, "600M" 6e8, "8x7B" 5.6e10,
    "30B-A3B" 3e10 (total, not active); None when the label cannot be read."""
    if not label:
        return None
    m = re.fullmatch(r"\s*(?:(\d+)\s*x\s*)?(\d+(?:\.\d+)?)\s*([KMBT])\b.*", label, re.IGNORECASE)
    if m is None:
        return None
    experts = int(m.group(1)) if m.group(1) else 1
    scale = {"K": 1e3, "M": 1e6, "B": 1e9, "T": 1e12}[m.group(3).upper()]
    return experts * float(m.group(2)) * scale


def _small_model_warning(size_label: str | None) -> str | None:
    params = parse_size_label(size_label)
    if params is None or params >= SMALL_MODEL_PARAMS:
        return None
    return (f"Qwen validated 128K context (YaRN) only for Qwen3-4B; the {size_label} model may "
            f"lose quality on long contexts")


def _check_yarn_metadata(gguf_yarn: dict) -> tuple[float, int]:
    factor, orig = gguf_yarn.get("factor"), gguf_yarn.get("original_context_length")
    if not _is_number(factor) or factor < 1:
        raise ValueError(f"GGUF YaRN factor must be a number >= 1, got {factor!r}")
    if not isinstance(orig, int) or isinstance(orig, bool) or orig <= 0:
        raise ValueError(f"GGUF YaRN original_context_length must be a positive integer, got {orig!r}")
    return float(factor), orig


def plan_rope(n_ctx: int, *, native_ctx: int = NATIVE_CTX, gguf_yarn: dict | None = None,
              size_label: str | None = None, original_family: bool = True) -> RopePlan:
    """RoPE settings for a context of `n_ctx` tokens, following Qwen's guidance.

    Up to the model's native context (`ModelRope.native_ctx`; the defaults describe the original
    Qwen3 models, 32,768): no scaling. Above: YaRN over the native context with factor
    ceil(n_ctx / native), at most 4. A GGUF that carries YaRN metadata (`{"factor",
    "original_context_length"}` from qwen3.rope.scaling.*) gets it applied by llama.cpp whatever
    n_ctx is, so the plan honours it instead. The warning that Qwen validated 128K only on the 4B
    concerns the original family; other models past their native context get a plainer one."""
    if not isinstance(n_ctx, int) or n_ctx <= 0:
        raise ValueError(f"context length must be a positive integer, got {n_ctx!r}")
    if not isinstance(native_ctx, int) or native_ctx <= 0:
        raise ValueError(f"native context must be a positive integer, got {native_ctx!r}")
    notes: list[str] = []
    if gguf_yarn is not None:
        factor, orig = _check_yarn_metadata(gguf_yarn)
        limit = int(factor * orig)
        if n_ctx > limit:
            raise ValueError(f"context {n_ctx} is too long: this model's YaRN (factor {factor:g} over "
                             f"{orig}) allows at most {limit} tokens")
        if n_ctx <= orig:
            notes.append(f"this GGUF carries YaRN (factor {factor:g}), which llama.cpp applies even to "
                         f"short texts, where static YaRN can hurt quality")
    else:
        if n_ctx <= native_ctx:
            return RopePlan(n_ctx, False, 1.0, 1.0, 0, llama_cpp.LLAMA_ROPE_SCALING_TYPE_NONE, None)
        factor, orig = float(math.ceil(n_ctx / native_ctx)), native_ctx
        if factor > MAX_YARN_FACTOR:
            raise ValueError(f"context {n_ctx} is too long: this model supports at most "
                             f"{native_ctx * MAX_YARN_FACTOR} tokens (YaRN factor {MAX_YARN_FACTOR} over "
                             f"its native {native_ctx})")
        if not original_family:
            notes.append(f"context {n_ctx} is beyond this model's native {native_ctx} tokens: YaRN "
                         f"(factor {factor:g}) stretches it and may cost quality")
    if original_family and (small := _small_model_warning(size_label)) is not None:
        notes.append(small)
    return RopePlan(n_ctx, True, factor, 1.0 / factor, orig, llama_cpp.LLAMA_ROPE_SCALING_TYPE_YARN,
                    "; ".join(notes) or None)


# KV cache types: name -> ggml type id, and (bytes per block, elements per block).
KV_TYPES: dict[str, int] = {"f32": 0, "f16": 1, "q8_0": 8, "q4_0": 2}
KV_BLOCKS: dict[str, tuple[int, int]] = {"f32": (4, 1), "f16": (2, 1), "q8_0": (34, 32), "q4_0": (18, 32)}
QUANTIZED_KV = frozenset({"q8_0", "q4_0"})


def kv_bytes_per_element(type_name: str) -> float:
    """f32 4, f16 2, q8_0 34/32, q4_0 18/32."""
    block_bytes, block_elems = KV_BLOCKS[_kv_name(type_name)]
    return block_bytes / block_elems


def _kv_name(type_name: str) -> str:
    name = type_name.lower()
    if name not in KV_TYPES:
        raise ValueError(f"unknown KV cache type {type_name!r}; choose one of {', '.join(KV_TYPES)}")
    return name


def _row_bytes(type_name: str, n_elems: int) -> int:
    block_bytes, block_elems = KV_BLOCKS[_kv_name(type_name)]
    return -(-n_elems // block_elems) * block_bytes


def kv_cache_bytes(n_ctx: int, n_layers: int, n_kv_heads: int, head_dim: int,
                   type_k: str = "f16", type_v: str = "f16") -> int:
    """Bytes of llama.cpp's KV cache: one K row and one V row of n_kv_heads*head_dim per token
    and layer (exact: rows are whole quantization blocks)."""
    row = n_kv_heads * head_dim
    return n_ctx * n_layers * (_row_bytes(type_k, row) + _row_bytes(type_v, row))


def check_kv_types(type_k: str, type_v: str, flash_attn: bool) -> None:
    """Refuse what llama.cpp would refuse later, at context creation: unknown types, and a
    quantized V cache without flash attention."""
    _kv_name(type_k)
    if _kv_name(type_v) in QUANTIZED_KV and not flash_attn:
        raise ValueError(f"a quantized V cache ({type_v}) needs flash attention; turn it on or use f16")


@dataclass(frozen=True)
class MemoryPlan:
    model_bytes: int
    kv_bytes: int
    overhead_bytes: int
    total_bytes: int
    available_bytes: int
    fits: bool
    max_ctx: int        # largest multiple of 256 (<= ctx_limit) that fits; 0 if even 256 does not
    n_ctx: int = 0
    n_seq: int = 1      # parallel slots of n_ctx tokens each (max_ctx is then per slot)
    device: "DeviceShare | None" = None   # what the offload device holds, when layers are offloaded

    @property
    def device_fits(self) -> bool:
        return self.device is None or self.device.fits

    def describe(self) -> str:
        """One line for users: what the context costs and, when it does not fit, what would."""
        gib = _gib
        tokens = f"{self.n_ctx} tokens" if self.n_seq == 1 else f"{self.n_seq} slots of {self.n_ctx} tokens"
        head = (f"model {gib(self.model_bytes)} + KV cache {gib(self.kv_bytes)} ({tokens}) + "
                f"overhead {gib(self.overhead_bytes)} = {gib(self.total_bytes)} of {gib(self.available_bytes)} available")
        if self.device is not None:
            head += f"; {self.device.describe()}"
        if self.fits:
            return f"{head}: fits (up to {self.max_ctx} tokens would)"
        if self.max_ctx == 0:
            return f"{head}: does not fit, not even a {CTX_STEP}-token context"
        return f"{head}: does not fit; the largest context that fits is {self.max_ctx} tokens"


def _gib(n: int) -> str:
    return f"{n / (1 << 30):.2f} GiB"


@dataclass(frozen=True)
class DeviceShare:
    """What one offload device (a GPU, lavapipe's Vulkan0) holds: its weights, the KV cache of its
    layers and its compute buffer, against the free memory it reports."""
    name: str
    free_bytes: int
    weights_bytes: int
    kv_bytes: int
    compute_bytes: int

    @property
    def need_bytes(self) -> int:
        return self.weights_bytes + self.kv_bytes + self.compute_bytes

    @property
    def fits(self) -> bool:
        return self.need_bytes <= self.free_bytes

    def describe(self) -> str:
        return (f"on {self.name}: weights {_gib(self.weights_bytes)} + KV {_gib(self.kv_bytes)} + compute "
                f"{_gib(self.compute_bytes)} = {_gib(self.need_bytes)} of {_gib(self.free_bytes)} free")


def offloaded_layers(n_gpu_layers: int, n_layers: int) -> tuple[int, bool]:
    """(repeating layers on the device, whether the output layer is), as llama.cpp assigns them:
    the last n_gpu_layers of [layer 0 .. layer n_layers-1, output]; negative means all."""
    k = n_layers + 1 if n_gpu_layers < 0 else min(n_gpu_layers, n_layers + 1)
    return max(k - 1, 0), k >= 1


_BLOCK = re.compile(r"blk\.(\d+)\.")


def offloaded_weight_bytes(tensors: Mapping[str, int], n_layers: int, n_gpu_layers: int) -> int:
    """Bytes of the weights llama.cpp puts on the device for n_gpu_layers, from the GGUF's tensor
    sizes: the offloaded blocks, and with the output layer output_norm and output.weight (a copy of
    token_embd when the embeddings are tied). token_embd itself always stays on the CPU."""
    repeating, output = offloaded_layers(n_gpu_layers, n_layers)
    first = n_layers - repeating
    total = sum(size for name, size in tensors.items() if (m := _BLOCK.match(name)) and first <= int(m.group(1)) < n_layers)
    if output:
        total += tensors.get("output_norm.weight", 0)
        total += tensors.get("output.weight", tensors.get("token_embd.weight", 0))
    return total


SIDE_CTX, SIDE_BATCH = 256, 32  # the Llama's own context when parallel slots do the work


def overhead_bytes(n_ctx: int, n_vocab: int = 151936, n_batch: int = 512, *,
                   n_heads: int = 0, flash_attn: bool = False) -> int:
    """What llama.cpp needs besides weights and KV cache, measured on its CPU backend.

    Its compute buffer is sized for the worst micro-batch of n_batch tokens and is the larger of
    two stages: the logits, n_vocab*4*n_batch (297 MiB for Qwen3 at 512: the 151,936-token
    vocabulary dominates small models), and, without flash attention, the attention scores plus
    mask, n_ctx*n_batch*4*(n_heads+1) (1.06 GiB for 16 heads at 32K). With flash attention only
    an f16 mask, n_ctx*n_batch*2. Measured sizes matched this to within 1.2 MiB. Add 64 MiB for
    the output buffer, graph metadata and the process itself."""
    logits = n_vocab * 4 * n_batch
    attention = n_ctx * n_batch * 2 if flash_attn else n_ctx * n_batch * 4 * (n_heads + 1)
    return 64 * MIB + max(logits, attention)


# Hidden-state-wide f32 activations per batch token that may be live beside the larger stage on
# an offload device. Measured excess of llama.cpp's compute buffer over max(logits, attention):
# Vulkan on an NVIDIA H200 +2.0 MiB for the 0.6B (hidden 1024) and +5.0 MiB for the 4B (hidden
# 2560) at a 512-token batch, +0.38 MiB for the 192-wide scripted model, i.e. one hidden width;
# the CPU backend up to +18 MiB for the 0.6B at 32K without flash attention (nine widths).
ACTIVATION_WIDTHS = 10
WIDEST_SMALL_QWEN3 = 2560  # Qwen3-4B's hidden size: the bound when a caller does not say


def device_compute_bytes(n_ctx: int, n_vocab: int = 151936, n_batch: int = 512, *, n_heads: int = 0,
                         flash_attn: bool = False, n_embd: int = WIDEST_SMALL_QWEN3) -> int:
    """llama.cpp's compute buffer on an offload device, as an upper bound: the larger stage of
    overhead_bytes (without its 64 MiB for the host process) plus ACTIVATION_WIDTHS hidden-state
    activations per batch token, which a discrete GPU's allocator keeps beside the logits (the
    plan of 296.75 MiB fell 2-5 MiB short of Vulkan's 298.75-301.75 on an NVIDIA GPU)."""
    return overhead_bytes(n_ctx, n_vocab, n_batch, n_heads=n_heads, flash_attn=flash_attn) - 64 * MIB \
        + ACTIVATION_WIDTHS * n_embd * n_batch * 4


def plan_memory(model_bytes: int, n_ctx: int, n_layers: int, n_kv_heads: int, head_dim: int,
                available_bytes: int, type_k: str = "f16", type_v: str = "f16", n_vocab: int = 151936,
                n_batch: int = 512, *, n_heads: int = 0, flash_attn: bool = False,
                ctx_limit: int = MAX_CTX, n_seq: int = 1, device: str | None = None, device_free_bytes: int = 0,
                device_weight_bytes: int = 0, device_layers: int = 0, n_embd: int = WIDEST_SMALL_QWEN3) -> MemoryPlan:
    """Whether weights + KV cache + compute buffers for `n_ctx` fit in `available_bytes`, and
    the largest context up to `ctx_limit` (the model's `ModelRope.max_ctx`) that would. Pass
    n_heads (query heads) for the attention-score buffer, which outgrows the logits buffer
    beyond ~9K tokens for 16 heads without flash attention.

    n_seq > 1 plans parallel slots (scheduler.py): one batched context whose unified KV pool
    holds n_seq * n_ctx tokens (every slot may fill its context at once), plus the Llama's own
    small context (SIDE_CTX tokens, batch SIDE_BATCH) that the Engine then keeps unused.

    With `device` (a name such as "Vulkan0") the layers go to one offload device whose free
    memory is `device_free_bytes`: it must hold `device_weight_bytes` (offloaded_weight_bytes),
    the KV cache of its `device_layers` repeating layers and a compute buffer
    (device_compute_bytes, for a hidden size of `n_embd`). The host check stays as without a device
    (the model file passes through RAM, mapped or read, and on an integrated or software GPU such
    as lavapipe the device's memory is the host's anyway), so offloading never loosens it. The
    device share is an upper bound: llama.cpp keeps a weight on the CPU when the device cannot run
    its op (lavapipe keeps the output layer, whose 151,936-token logits exceed its 128 MiB
    storage-buffer range, and with it the logits' compute buffer)."""
    def total(ctx: int) -> tuple[int, int, int, DeviceShare | None]:
        kv = kv_cache_bytes(ctx * n_seq, n_layers, n_kv_heads, head_dim, type_k, type_v)
        extra = overhead_bytes(ctx * n_seq, n_vocab, n_batch, n_heads=n_heads, flash_attn=flash_attn)
        if n_seq > 1:
            kv += kv_cache_bytes(SIDE_CTX, n_layers, n_kv_heads, head_dim, type_k, type_v)
            extra += overhead_bytes(SIDE_CTX, n_vocab, SIDE_BATCH, n_heads=n_heads, flash_attn=flash_attn)
        share = None
        if device is not None:
            on_dev = min(device_layers, n_layers)
            dev_kv = kv * on_dev // n_layers if n_layers else 0
            compute = device_compute_bytes(ctx * n_seq, n_vocab, n_batch, n_heads=n_heads, flash_attn=flash_attn,
                                           n_embd=n_embd)
            if n_seq > 1:
                compute += device_compute_bytes(SIDE_CTX, n_vocab, SIDE_BATCH, n_heads=n_heads, flash_attn=flash_attn,
                                                n_embd=n_embd)
            share = DeviceShare(device, device_free_bytes, device_weight_bytes, dev_kv, compute)
        return kv, extra, model_bytes + kv + extra, share

    def fits(plan: tuple[int, int, int, DeviceShare | None]) -> bool:
        return plan[2] <= available_bytes and (plan[3] is None or plan[3].fits)

    now = total(n_ctx)
    kv, extra, need, share = now
    # Total grows with the context, so binary-search the largest fitting multiple of CTX_STEP.
    lo, hi = 0, ctx_limit // CTX_STEP
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if fits(total(mid * CTX_STEP)):
            lo = mid
        else:
            hi = mid - 1
    return MemoryPlan(model_bytes, kv, extra, need, available_bytes, fits(now),
                      lo * CTX_STEP, n_ctx, n_seq, share)


def plan_slots(most: int, plan) -> int:
    """The most parallel slots, 1 to `most`, whose memory plan fits: `plan(n_seq)` returns the
    MemoryPlan for that many slots (0 when not even one fits)."""
    return next((n for n in range(most, 0, -1) if plan(n).fits), 0)


def count_physical_cores(cpuinfo: str, allowed: set[int] | None = None) -> int | None:
    """Unique (physical id, core id) pairs among the `allowed` processors of /proc/cpuinfo text;
    None when the file does not say (some VMs and ARM kernels). Hyper-threads share a core's
    arithmetic units, so llama.cpp runs fastest with one thread per physical core."""
    cores: set[tuple[str, str]] = set()
    for block in cpuinfo.split("\n\n"):
        fields = dict((k.strip(), v.strip()) for k, _, v in (ln.partition(":") for ln in block.splitlines()))
        if "processor" not in fields or "core id" not in fields:
            continue
        if allowed is not None and fields["processor"].isdigit() and int(fields["processor"]) not in allowed:
            continue
        cores.add((fields.get("physical id", "0"), fields["core id"]))
    return len(cores) or None


def physical_cores() -> int:
    """Physical cores this process may run on; falls back to the logical count."""
    try:
        allowed: set[int] | None = os.sched_getaffinity(0)
    except (AttributeError, OSError):
        allowed = None
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            counted = count_physical_cores(f.read(), allowed)
    except OSError:
        counted = None
    if counted:
        return counted
    return len(allowed) if allowed else (os.cpu_count() or 1)


def parse_meminfo_available(meminfo: str) -> int | None:
    """MemAvailable from /proc/meminfo text, in bytes; None when absent (kernels before 3.14)."""
    m = re.search(r"^MemAvailable:\s+(\d+)\s*kB", meminfo, re.MULTILINE)
    return int(m.group(1)) * 1024 if m else None


def available_memory_bytes() -> int:
    """Memory a new allocation can get without swapping: MemAvailable, else free pages."""
    try:
        with open("/proc/meminfo", encoding="utf-8") as f:
            available = parse_meminfo_available(f.read())
        if available is not None:
            return available
    except OSError:
        pass
    return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
