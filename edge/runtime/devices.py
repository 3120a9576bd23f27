"""The devices llama.cpp can run on, read from ggml's own device registry, and where a loaded
model's layers and buffers went, read from what llama.cpp logs while it loads.

The ggml functions are looked up through the bindings' libllama handle: dlsym on that handle
resolves them in the very libggml / libggml-base that libllama loaded, so this sees the registry
llama.cpp itself uses (a second copy of libggml, opened by another path, would hold its own).
Everything but `list_devices`, `registry_names` and `capture_llama_log` is pure.
"""

from __future__ import annotations

import ctypes
import re
import threading
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import llama_cpp

MIB = 1 << 20
# enum ggml_backend_dev_type, in ggml-backend.h's order.
DEVICE_TYPES = ("cpu", "gpu", "igpu", "accel", "meta")


@dataclass(frozen=True)
class Device:
    """One ggml backend device: ggml_backend_dev_name / _description / _type / _memory and the
    name of the backend registry it belongs to ("CPU", "Vulkan", "RPC", "Metal", "CUDA", ...)."""
    name: str
    description: str
    registry: str
    type: str
    memory_free: int
    memory_total: int

    @property
    def backend(self) -> str:
        """The backend as the runtime names it: "cpu", "vulkan", "rpc", "metal", "cuda", ..."""
        return self.registry.lower()

    @property
    def label(self) -> str:
        """"Vulkan0 (llvmpipe (LLVM 15.0.6, 256 bits))"."""
        return f"{self.name} ({self.description})" if self.description and self.description != self.name else self.name


def device_type_name(value: int) -> str:
    """ggml's device type enum as a word; an unknown value (a newer ggml) is "type N"."""
    return DEVICE_TYPES[value] if 0 <= value < len(DEVICE_TYPES) else f"type {value}"


def offload_targets(devices: Iterable[Device]) -> list[Device]:
    """The devices llama.cpp offloads layers to when the model params name none
    (llama_model_load_from_file: RPC devices first, then GPUs, and integrated GPUs only when there
    is no discrete GPU; RPC devices do not count as one)."""
    devices = list(devices)
    rpc = [d for d in devices if d.type == "gpu" and d.registry == "RPC"]
    gpus = [d for d in devices if d.type == "gpu" and d.registry != "RPC"]
    igpus = [d for d in devices if d.type == "igpu"]
    igpus = [d for d in igpus if d.registry == igpus[0].registry] if igpus else []
    return rpc + gpus + ([] if gpus else igpus)


def no_device_message(registries: Iterable[str]) -> str:
    """What to do when layers are asked for a GPU and the bindings have none: one line."""
    registries = list(registries)
    gpu_regs = [r for r in registries if r not in ("CPU", "BLAS", "RPC")]
    if "Vulkan" in gpu_regs:
        return ("the bindings have llama.cpp's Vulkan backend but it lists no device; a CPU-type Vulkan device "
                "(Mesa's lavapipe) is used only with GGML_VK_VISIBLE_DEVICES=0, else install a GPU driver "
                "(vulkaninfo --summary lists what Vulkan sees), or run on the CPU with --gpu-layers 0")
    if gpu_regs:
        return (f"the bindings' {'/'.join(gpu_regs)} backend lists no device; check the GPU driver, "
                f"or run on the CPU with --gpu-layers 0")
    built = ", ".join(registries) or "none"
    return (f"no GPU device: these bindings of llama.cpp have only the {built} backend(s); rebuild them with one, "
            f"e.g. CMAKE_ARGS=\"-DGGML_VULKAN=on\" pip install --force-reinstall --no-cache-dir "
            f"llama-cpp-python==0.3.36 (README, GPU backends), or use --gpu-layers 0")


# ---- ctypes: ggml's registry, through libllama's handle ----------------------------------------

def _ggml() -> ctypes.CDLL:
    """The bindings' libllama; ggml's symbols resolve through its own dependencies."""
    lib = llama_cpp.llama_cpp._lib
    if not getattr(lib, "_edge_ggml_bound", False):
        vp, cp, sz = ctypes.c_void_p, ctypes.c_char_p, ctypes.c_size_t
        for fn, args, res in (
            ("ggml_backend_dev_count", [], sz), ("ggml_backend_dev_get", [sz], vp),
            ("ggml_backend_dev_name", [vp], cp), ("ggml_backend_dev_description", [vp], cp),
            ("ggml_backend_dev_type", [vp], ctypes.c_int),
            ("ggml_backend_dev_memory", [vp, ctypes.POINTER(sz), ctypes.POINTER(sz)], None),
            ("ggml_backend_dev_backend_reg", [vp], vp), ("ggml_backend_reg_name", [vp], cp),
            ("ggml_backend_reg_count", [], sz), ("ggml_backend_reg_get", [sz], vp),
        ):
            f = getattr(lib, fn)
            f.argtypes, f.restype = args, res
        lib._edge_ggml_bound = True
    return lib


def _text(raw: bytes | None) -> str:
    return raw.decode("utf-8", "replace") if raw else ""


def list_devices() -> list[Device]:
    """Every device in ggml's registry, in its order (the CPU last on most builds), with the
    memory it reports now (lavapipe: 2048 MiB; the CPU: the host's)."""
    g = _ggml()
    devices = []
    for i in range(g.ggml_backend_dev_count()):
        dev = g.ggml_backend_dev_get(i)
        free, total = ctypes.c_size_t(0), ctypes.c_size_t(0)
        g.ggml_backend_dev_memory(dev, ctypes.byref(free), ctypes.byref(total))
        devices.append(Device(
            name=_text(g.ggml_backend_dev_name(dev)), description=_text(g.ggml_backend_dev_description(dev)),
            registry=_text(g.ggml_backend_reg_name(g.ggml_backend_dev_backend_reg(dev))),
            type=device_type_name(g.ggml_backend_dev_type(dev)), memory_free=free.value, memory_total=total.value))
    return devices


def registry_names() -> list[str]:
    """The backends compiled into the bindings ("CPU", "Vulkan", "RPC", ...), with or without devices."""
    g = _ggml()
    return [_text(g.ggml_backend_reg_name(g.ggml_backend_reg_get(i))) for i in range(g.ggml_backend_reg_count())]


# llama.cpp's log callback is one global: one thread captures at a time; captures nest (the inner
# one passes each line on to the outer one's callback, which it restores after).
_log_lock = threading.RLock()


@contextmanager
def capture_llama_log() -> Iterator[list[str]]:
    """Collect what llama.cpp and ggml log meanwhile (debug lines included), still passing it on to
    the callback that was set before (the bindings', which prints when verbose), then restore it."""
    with _log_lock:
        prev, prev_data = llama_cpp.llama_log_callback(), ctypes.c_void_p()
        llama_cpp.llama_log_get(ctypes.byref(prev), ctypes.byref(prev_data))
        lines: list[str] = []

        @llama_cpp.llama_log_callback
        def collect(level, text, user_data):
            lines.append(text.decode("utf-8", "replace") if text else "")
            if prev:
                prev(level, text, prev_data)

        llama_cpp.llama_log_set(collect, ctypes.c_void_p(0))
        try:
            yield lines
        finally:
            llama_cpp.llama_log_set(prev, prev_data)


# ---- what llama.cpp reports for a loaded model (pure) -------------------------------------------

_LAYER = re.compile(r"load_tensors: layer +(\d+) assigned to device (\S+?),")
_BUFFER = re.compile(r"^\S+: +(\S+) +(model|KV|compute|output|RS) buffer size = +([\d.]+) MiB", re.MULTILINE)


@dataclass(frozen=True)
class Placement:
    """Where llama.cpp put a model: the device of each layer (the repeating layers, then the
    output layer; the input embeddings always stay on the CPU) and its buffer sizes in MiB by kind
    ("model", "KV", "compute", "output") and buffer name ("Vulkan0", "CPU_Mapped", "Vulkan_Host")."""
    layers: tuple[str, ...] = ()
    buffers: dict[str, dict[str, float]] = field(default_factory=dict)

    @property
    def offloaded(self) -> int:
        """Layers (the output layer counted, as llama.cpp's n_gpu_layers counts it) not on the CPU."""
        return sum(1 for d in self.layers if d != "CPU")

    @property
    def devices(self) -> list[str]:
        """The non-CPU devices holding layers, in layer order."""
        seen: list[str] = []
        for d in self.layers:
            if d != "CPU" and d not in seen:
                seen.append(d)
        return seen


def parse_load_log(text: str) -> Placement:
    """llama.cpp's load log -> Placement: "load_tensors: layer   3 assigned to device Vulkan0, is_swa = 0"
    (a debug line) and "load_tensors:      Vulkan0 model buffer size =    12.50 MiB". A repeated
    layer line (a second load in the same text) keeps the last."""
    layers: dict[int, str] = {}
    for m in _LAYER.finditer(text):
        layers[int(m.group(1))] = m.group(2)
    buffers: dict[str, dict[str, float]] = {}
    for m in _BUFFER.finditer(text):
        buffers.setdefault(m.group(2), {})[m.group(1)] = float(m.group(3))
    return Placement(tuple(layers[i] for i in sorted(layers)), buffers)


def placement_backend(placement: Placement, devices: Iterable[Device]) -> str:
    """"cpu" when no layer left the CPU, else the backends of the devices holding layers, joined
    by "+" in layer order ("vulkan", "rpc+vulkan")."""
    by_name = {d.name: d for d in devices}
    names: list[str] = []
    for dev in placement.devices:
        backend = by_name[dev].backend if dev in by_name else dev.rstrip("0123456789").lower()
        if backend not in names:
            names.append(backend)
    return "+".join(names) or "cpu"


def placement_device(placement: Placement, devices: Iterable[Device]) -> str:
    """The devices holding layers as users read them: "Vulkan0 (llvmpipe (LLVM 15.0.6, 256 bits))",
    several joined by ", "; "CPU (its description)" when nothing was offloaded."""
    by_name = {d.name: d for d in devices}
    names = placement.devices or ["CPU"]
    return ", ".join(by_name[n].label if n in by_name else n for n in names)


def describe_devices(devices: Iterable[Device]) -> list[str]:
    """One line per device: name, description, backend, type, free/total MiB."""
    return [f"{d.name}: {d.description} · {d.registry} · {d.type} · {d.memory_free // MIB} of "
            f"{d.memory_total // MIB} MiB free" for d in devices]


def main() -> None:
    """Print what this build of the bindings sees: its backends and every device."""
    print("backends:", ", ".join(registry_names()))
    for line in describe_devices(list_devices()):
        print(" ", line)


if __name__ == "__main__":
    main()
