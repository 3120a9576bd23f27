"""Where llama.cpp puts each layer when a model spans several devices (RPC workers, GPUs), and
whether every device can hold its share. Pure functions: no llama.cpp, no network.

llama.cpp's rule (llama_model_base::load_tensors in src/llama-model.cpp): without a tensor_split
each device weighs its free memory; the weights are summed and normalized in float32 into
cumulative split points, and layer il of the n_layer + 1 offloadable ones (the last is the output
layer) goes to the first device whose split point exceeds (il - i_gpu_start) / act_gpu_layers.
The layers before i_gpu_start = max(n_layer + 1 - n_gpu_layers, 0) stay on the CPU, and so does
the input layer (the token embeddings) always. A device that reports 0 free and 0 total weighs
the host's free memory instead. Each layer's KV cache lives with the layer.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from edge.runtime.context_plan import CTX_STEP, MAX_CTX, MIB, DeviceShare, MemoryPlan, _gib, kv_cache_bytes, overhead_bytes

HOST = "host"


def layer_devices(free: Sequence[int], n_layer: int, n_gpu_layers: int, *, host_free: int = 0,
                  tensor_split: Sequence[float] | None = None) -> list[int | None]:
    """Device index for each of the n_layer + 1 layers (index n_layer is the output layer), or
    None where the layer stays on the host's CPU; `free` is each device's free memory in order.
    n_gpu_layers < 0 offloads everything, as llama.cpp reads it."""
    n_dev = len(free)
    ngl = n_layer + 1 if n_gpu_layers < 0 else n_gpu_layers
    if n_dev == 0:
        return [None] * (n_layer + 1)
    if tensor_split is None or all(x == 0 for x in tensor_split[:n_dev]):
        weights = [np.float32(f if f else host_free) for f in free]
    else:
        weights = [np.float32(x) for x in tensor_split[:n_dev]]
    splits, total = [], np.float32(0)
    for w in weights:
        total = np.float32(total + w)
        splits.append(total)
    splits = [np.float32(s / total) for s in splits]
    start = max(n_layer + 1 - ngl, 0)
    act = min(ngl, n_layer + 1)
    out: list[int | None] = []
    for il in range(n_layer + 1):
        if il < start or il - start >= act:
            out.append(None)
            continue
        x = np.float32(np.float32(il - start) / np.float32(act))
        out.append(next((i for i, s in enumerate(splits) if x < s), n_dev - 1))
    return out


@dataclass(frozen=True)
class ModelBytes:
    """A GGUF's weights by where llama.cpp places them."""
    input_bytes: int          # token_embd: always on the host
    layer_bytes: tuple[int, ...]
    output_bytes: int         # output_norm + output (a copy of token_embd when tied)


_BLOCK = re.compile(r"blk\.(\d+)\.")


def model_bytes(tensors: Sequence[tuple[str, int]], n_layer: int) -> ModelBytes:
    """Split a GGUF's (tensor name, bytes) list into input, per-layer and output bytes. A model
    without output.weight (tied embeddings) gets a copy of token_embd on the output device."""
    layers = [0] * n_layer
    embd = output = 0
    has_output = False
    for name, size in tensors:
        if (m := _BLOCK.match(name)) and int(m.group(1)) < n_layer:
            layers[int(m.group(1))] += size
        elif name.startswith("token_embd."):
            embd += size
        elif name.startswith("output."):
            output += size
            has_output = True
        elif name.startswith("output_norm."):
            output += size
    return ModelBytes(embd, tuple(layers), output + (0 if has_output else embd))


@dataclass(frozen=True)
class Share(DeviceShare):
    """One device's part of the model: a DeviceShare (bytes against free memory) with its layers
    (indices into 0..n_layer)."""
    layers: tuple[int, ...] = ()

    def describe(self) -> str:
        if self.layers:
            lo, hi = self.layers[0], self.layers[-1]
            span = f"layer {lo}" if lo == hi else f"layers {lo}-{hi}"
        else:
            span = "no layers"
        return (f"{self.name}: {span}, {_gib(self.need_bytes)} (weights {_gib(self.weights_bytes)}, "
                f"KV {_gib(self.kv_bytes)}) of {_gib(self.free_bytes)} free")


@dataclass(frozen=True)
class SplitPlan:
    n_ctx: int
    shares: tuple[Share, ...]      # the host first, then each device in llama.cpp's order
    max_ctx: int                   # largest multiple of 256 (<= ctx_limit) at which every share fits

    @property
    def fits(self) -> bool:
        return all(s.fits for s in self.shares)

    def describe(self) -> str:
        return "; ".join(s.describe() for s in self.shares)

    def refusal(self) -> str | None:
        """One line naming the first device that cannot hold its share, None when all fit."""
        bad = next((s for s in self.shares if not s.fits), None)
        if bad is None:
            return None
        tail = (f"the largest context that fits is {self.max_ctx} tokens" if self.max_ctx
                else "not even a 256-token context fits")
        return (f"{bad.describe()}: it does not fit at {self.n_ctx} tokens; {tail} (add a worker, "
                f"or use a smaller quant)")

    def memory_plan(self) -> MemoryPlan:
        """The summary as the Engine's MemoryPlan (all devices together); describe() for the parts."""
        w = sum(s.weights_bytes for s in self.shares)
        kv = sum(s.kv_bytes for s in self.shares)
        extra = sum(s.compute_bytes for s in self.shares)
        return MemoryPlan(w, kv, extra, w + kv + extra, sum(s.free_bytes for s in self.shares), self.fits,
                          self.max_ctx, self.n_ctx)


def plan_split(weights: ModelBytes, devices: Sequence[tuple[str, int]], host_free: int, n_ctx: int, *,
               n_kv_heads: int, head_dim: int, n_heads: int, n_gpu_layers: int = -1,
               type_k: str = "f16", type_v: str = "f16", n_vocab: int = 151936, n_batch: int = 512,
               flash_attn: bool = False, ctx_limit: int = MAX_CTX) -> SplitPlan:
    """Each device's share at `n_ctx` tokens (devices: (name, free bytes) in llama.cpp's order),
    and the largest context at which all fit. Compute buffers are estimated as on the CPU
    (context_plan.overhead_bytes): the device with the output layer holds the logits, every
    device holding layers the attention scores; the host also pays 64 MiB for the process."""
    n_layer = len(weights.layer_bytes)
    place = layer_devices([f for _, f in devices], n_layer, n_gpu_layers, host_free=host_free)

    def shares(ctx: int) -> tuple[Share, ...]:
        out = []
        for idx, (name, free) in [(None, (HOST, host_free))] + list(enumerate(devices)):
            mine = tuple(il for il, d in enumerate(place) if d == idx)
            blocks = [il for il in mine if il < n_layer]
            w = sum(weights.layer_bytes[il] for il in blocks) + (weights.output_bytes if n_layer in mine else 0)
            kv = kv_cache_bytes(ctx, len(blocks), n_kv_heads, head_dim, type_k, type_v)
            if n_layer in mine or blocks:  # overhead_bytes counts 64 MiB for the process: the host's alone
                vocab = n_vocab if n_layer in mine else 0
                compute = overhead_bytes(ctx, vocab, n_batch, n_heads=n_heads, flash_attn=flash_attn) - 64 * MIB
            else:
                compute = 0
            if idx is None:
                w += weights.input_bytes
                compute += 64 * MIB
            out.append(Share(name=name, layers=mine, weights_bytes=w, kv_bytes=kv, compute_bytes=compute,
                             free_bytes=free or host_free))
        return tuple(out)

    lo, hi = 0, ctx_limit // CTX_STEP
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if all(s.fits for s in shares(mid * CTX_STEP)):
            lo = mid
        else:
            hi = mid - 1
    return SplitPlan(n_ctx, shares(n_ctx), lo * CTX_STEP)

