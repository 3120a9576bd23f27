"""edge.runtime.devices and the memory plan's device arithmetic, on any build of the bindings (CPU-only
included): the registry read through libllama's handle, llama.cpp's load log parsed into a
placement, llama.cpp's choice of offload devices, and a device's share of the memory plan.
The Vulkan checks against a real (software) Vulkan device are in test_vulkan.py."""

from __future__ import annotations

import ctypes
import os
import re
from dataclasses import replace

import pytest

from edge.runtime.context_plan import (MIB, device_compute_bytes, kv_cache_bytes, offloaded_layers, offloaded_weight_bytes,
                               overhead_bytes, plan_memory)
from edge.runtime.devices import (Device, Placement, capture_llama_log, device_type_name, list_devices, no_device_message,
                          offload_targets, parse_load_log, placement_backend, placement_device, registry_names)
from edge.runtime.engine import Engine, device_refusal, local_offload_targets

GIB = 1 << 30

# Lines as llama.cpp 0.3.36's vendored tree logs them, taken from a load on lavapipe
# (GGML_VK_VISIBLE_DEVICES=0), trimmed.
LAVAPIPE_LOG = """\
llama_model_load_from_file_impl: using device Vulkan0 (llvmpipe (LLVM 15.0.6, 256 bits)) (unknown id) - 2048 MiB free
load_tensors: layer   0 assigned to device Vulkan0, is_swa = 0
load_tensors: layer   1 assigned to device Vulkan0, is_swa = 0
load_tensors: layer   2 assigned to device Vulkan0, is_swa = 0
load_tensors: offloading output layer to GPU
load_tensors: offloading 2 repeating layers to GPU
load_tensors: offloaded 3/3 layers to GPU
load_tensors:      Vulkan0 model buffer size =     9.52 MiB
load_tensors:   CPU_Mapped model buffer size =     9.28 MiB
llama_context: Vulkan_Host  output buffer size =     0.58 MiB
llama_kv_cache:    Vulkan0 KV buffer size =     2.00 MiB
sched_reserve:    Vulkan0 compute buffer size =   297.00 MiB
sched_reserve: Vulkan_Host compute buffer size =     1.02 MiB
"""


def dev(name, registry, type_, free=0, total=0, description="") -> Device:
    return Device(name, description or name, registry, type_, free, total)


# ---- parsing what llama.cpp logs --------------------------------------------------------------

def test_parse_load_log_reads_layers_and_buffers():
    p = parse_load_log(LAVAPIPE_LOG)
    assert p.layers == ("Vulkan0", "Vulkan0", "Vulkan0")
    assert p.offloaded == 3 and p.devices == ["Vulkan0"]
    assert p.buffers["model"] == {"Vulkan0": 9.52, "CPU_Mapped": 9.28}
    assert p.buffers["KV"] == {"Vulkan0": 2.0}
    assert p.buffers["compute"] == {"Vulkan0": 297.0, "Vulkan_Host": 1.02}
    assert p.buffers["output"] == {"Vulkan_Host": 0.58}


def test_parse_load_log_partial_offload_and_cpu():
    text = "".join(f"load_tensors: layer {i:3d} assigned to device {'CPU' if i < 2 else 'Vulkan0'}, is_swa = 0\n"
                   for i in range(4))
    p = parse_load_log(text)
    assert p.layers == ("CPU", "CPU", "Vulkan0", "Vulkan0") and p.offloaded == 2
    cpu = parse_load_log(text.replace("Vulkan0", "CPU"))
    assert cpu.offloaded == 0 and cpu.devices == []
    assert parse_load_log("nothing here\n") == Placement()


def test_parse_load_log_keeps_layer_order_and_the_last_load():
    text = ("load_tensors: layer   1 assigned to device RPC0, is_swa = 0\n"
            "load_tensors: layer   0 assigned to device RPC1, is_swa = 0\n"
            "load_tensors: layer   0 assigned to device Vulkan0, is_swa = 0\n")
    p = parse_load_log(text)
    assert p.layers == ("Vulkan0", "RPC0") and p.devices == ["Vulkan0", "RPC0"]


def test_placement_names_backend_and_device():
    devices = [dev("Vulkan0", "Vulkan", "gpu", description="llvmpipe"), dev("RPC0", "RPC", "gpu", description="127.0.0.1:50052"),
               dev("CPU", "CPU", "cpu", description="Xeon")]
    assert placement_backend(Placement(("Vulkan0", "Vulkan0")), devices) == "vulkan"
    assert placement_backend(Placement(("RPC0", "Vulkan0")), devices) == "rpc+vulkan"
    assert placement_backend(Placement(("CPU", "CPU")), devices) == "cpu"
    assert placement_device(Placement(("Vulkan0",)), devices) == "Vulkan0 (llvmpipe)"
    assert placement_device(Placement(("CPU",)), devices) == "CPU (Xeon)"
    assert placement_device(Placement(("RPC0", "Vulkan0")), devices) == "RPC0 (127.0.0.1:50052), Vulkan0 (llvmpipe)"
    # a device that left the registry: its name alone, its backend from the name
    assert placement_backend(Placement(("Metal0",)), []) == "metal"


def test_device_types_follow_ggml_enum():
    assert [device_type_name(i) for i in range(5)] == ["cpu", "gpu", "igpu", "accel", "meta"]
    assert device_type_name(9) == "type 9"


def test_offload_targets_follow_llama_cpp_order():
    cpu, blas = dev("CPU", "CPU", "cpu"), dev("BLAS", "BLAS", "accel")
    vk0, vk1 = dev("Vulkan0", "Vulkan", "gpu"), dev("Vulkan1", "Vulkan", "gpu")
    rpc0 = dev("RPC0", "RPC", "gpu")
    igpu = dev("Vulkan2", "Vulkan", "igpu")
    assert offload_targets([cpu, blas]) == []
    assert offload_targets([vk0, cpu, rpc0, vk1]) == [rpc0, vk0, vk1]         # RPC first
    assert offload_targets([igpu, cpu]) == [igpu]                              # an iGPU when no GPU
    assert offload_targets([igpu, vk0, cpu]) == [vk0]                          # dropped beside a GPU
    assert offload_targets([igpu, rpc0]) == [rpc0, igpu]                       # RPC is not a GPU here
    assert offload_targets([igpu, dev("SYCL0", "SYCL", "igpu")]) == [igpu]     # one backend's iGPUs


def test_no_device_message_says_what_to_do():
    assert "-DGGML_VULKAN=on" in no_device_message(["CPU"]) and "--gpu-layers 0" in no_device_message(["CPU"])
    assert "-DGGML_VULKAN=on" in no_device_message(["CPU", "RPC"])        # RPC alone is no GPU
    assert "GGML_VK_VISIBLE_DEVICES=0" in no_device_message(["CPU", "Vulkan"])
    assert "CUDA" in no_device_message(["CPU", "CUDA"])
    assert "\n" not in no_device_message(["CPU"])


# ---- the registry of the loaded bindings ------------------------------------------------------

def test_registry_is_the_one_llama_cpp_loads_from():
    """The CPU device we list is the device llama.cpp names in its load log, and its memory is
    the machine's (ggml's CPU device reports physical memory as total)."""
    devices = list_devices()
    assert "CPU" in registry_names()
    cpu = [d for d in devices if d.type == "cpu"]
    assert len(cpu) == 1 and cpu[0].name == "CPU" and cpu[0].registry == "CPU" and cpu[0].backend == "cpu"
    assert cpu[0].memory_total == os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    assert all(d.registry in registry_names() for d in devices)


def _log_callback() -> int | None:
    import llama_cpp
    cb, ud = llama_cpp.llama_log_callback(), ctypes.c_void_p()
    llama_cpp.llama_log_get(ctypes.byref(cb), ctypes.byref(ud))
    return ctypes.cast(cb, ctypes.c_void_p).value


def test_capture_collects_debug_lines_and_restores_the_callback(tiny_gguf):
    import llama_cpp
    before = _log_callback()
    with capture_llama_log() as lines:
        assert _log_callback() != before
        llama_cpp.Llama(str(tiny_gguf), n_ctx=64, n_gpu_layers=0, verbose=False).close()
    assert _log_callback() == before
    assert re.search(r"layer +0 assigned to device CPU", "".join(lines))   # a debug-level line


@pytest.fixture(scope="module")
def tiny_gguf(tmp_path_factory):
    from tests.tiny_gguf import write_tiny_qwen3
    return write_tiny_qwen3(tmp_path_factory.mktemp("devices") / "tiny.gguf")


needs_no_gpu = pytest.mark.skipif(bool(local_offload_targets()), reason="the bindings have a GPU device")


@needs_no_gpu
def test_engine_on_cpu_reads_its_placement_from_llama_cpp(tiny_gguf):
    with Engine.load(tiny_gguf, n_ctx=256) as engine:
        assert engine.backend == "cpu" and engine.device.startswith("CPU")
        assert engine.placement.layers == ("CPU",) * (engine.info.n_layers + 1)
        assert engine.memory_plan.device is None


@needs_no_gpu
@pytest.mark.parametrize("layers", [-1, 1, 99])
def test_gpu_layers_without_a_gpu_device_is_one_line(tiny_gguf, layers):
    from edge.runtime.engine import EngineError
    with pytest.raises(EngineError) as e:
        Engine.load(tiny_gguf, n_ctx=256, n_gpu_layers=layers)
    assert "\n" not in str(e.value) and f"--gpu-layers {layers}" in str(e.value)
    assert "--gpu-layers 0" in str(e.value)


# ---- the device's share of the memory plan (pure) ---------------------------------------------

def test_offloaded_layers_counts_the_output_layer_first():
    assert offloaded_layers(-1, 28) == (28, True)
    assert offloaded_layers(0, 28) == (0, False)
    assert offloaded_layers(1, 28) == (0, True)          # llama.cpp offloads the output layer first
    assert offloaded_layers(5, 28) == (4, True)
    assert offloaded_layers(29, 28) == (28, True) == offloaded_layers(500, 28)


TENSORS = {"token_embd.weight": 1000, "output_norm.weight": 4,
           **{f"blk.{i}.{w}": 10 * (i + 1) for i in range(3) for w in ("attn_q.weight", "ffn_up.weight")}}


def test_offloaded_weight_bytes_tied_and_untied():
    # tied: the output layer holds a copy of token_embd; the last k-1 blocks go with it
    assert offloaded_weight_bytes(TENSORS, 3, -1) == 1000 + 4 + 2 * (10 + 20 + 30)
    assert offloaded_weight_bytes(TENSORS, 3, 0) == 0
    assert offloaded_weight_bytes(TENSORS, 3, 1) == 1004
    assert offloaded_weight_bytes(TENSORS, 3, 2) == 1004 + 2 * 30      # blk.2, the last block
    untied = {**TENSORS, "output.weight": 700}
    assert offloaded_weight_bytes(untied, 3, -1) == 700 + 4 + 2 * (10 + 20 + 30)


def plan(**kw):
    base = dict(model_bytes=400 * MIB, n_ctx=4096, n_layers=28, n_kv_heads=8, head_dim=128,
                available_bytes=16 * GIB, n_heads=16, flash_attn=True, ctx_limit=131072)
    return plan_memory(**{**base, **kw})


def test_plan_counts_device_weights_kv_and_compute():
    p = plan(device="Vulkan0", device_free_bytes=2048 * MIB, device_weight_bytes=380 * MIB, device_layers=28)
    kv = kv_cache_bytes(4096, 28, 8, 128)
    assert p.device.weights_bytes == 380 * MIB and p.device.kv_bytes == kv == p.kv_bytes
    assert p.device.compute_bytes == device_compute_bytes(4096, n_heads=16, flash_attn=True)
    assert p.device.free_bytes == 2048 * MIB and p.fits and p.device.fits
    # the host side is what it is without a device
    cpu = plan()
    assert (p.total_bytes, p.kv_bytes, p.overhead_bytes) == (cpu.total_bytes, cpu.kv_bytes, cpu.overhead_bytes)
    assert "on Vulkan0: weights 0.37 GiB" in p.describe()


# llama.cpp's compute buffer on Vulkan0 (NVIDIA H200), MiB, from ../shared/measurements: the 0.6B
# and 4B shapes at a 640-token and a 32K context (flash attention on), the scripted model (hidden
# 192); and on the CPU, the 0.6B shape at 32K without flash attention (tests/runtime/test_memory_plan_llama.py).
@pytest.mark.parametrize("n_ctx, n_embd, flash_attn, measured_mib", [
    (640, 1024, True, 298.75), (32768, 1024, True, 298.75), (640, 2560, True, 301.75), (32768, 2560, True, 301.75),
    (2048, 192, True, 297.12), (32768, 1024, False, 1106.01),
])
def test_device_compute_estimate_is_an_upper_bound_of_what_llama_cpp_allocated(n_ctx, n_embd, flash_attn,
                                                                                measured_mib):
    estimate = device_compute_bytes(n_ctx, n_heads=16, flash_attn=flash_attn, n_embd=n_embd)
    assert measured_mib * MIB <= estimate <= (measured_mib + 64) * MIB   # safe, and not loose


def test_plan_device_compute_follows_the_hidden_size():
    narrow = plan(device="Vulkan0", device_free_bytes=2048 * MIB, device_weight_bytes=0, device_layers=28, n_embd=1024)
    wide = plan(device="Vulkan0", device_free_bytes=2048 * MIB, device_weight_bytes=0, device_layers=28, n_embd=2560)
    assert wide.device.compute_bytes - narrow.device.compute_bytes == 10 * (2560 - 1024) * 512 * 4


def test_plan_kv_share_follows_offloaded_layers():
    p = plan(device="Vulkan0", device_free_bytes=2048 * MIB, device_weight_bytes=0, device_layers=7)
    assert p.device.kv_bytes == kv_cache_bytes(4096, 7, 8, 128)


def test_device_memory_limits_the_context():
    """lavapipe's 2048 MiB: the host could hold 131072 tokens, the device far fewer."""
    p = plan(n_ctx=131072, device="Vulkan0", device_free_bytes=2048 * MIB, device_weight_bytes=380 * MIB,
             device_layers=28)
    assert plan(n_ctx=131072).fits and not p.fits and not p.device_fits
    assert 0 < p.max_ctx < 131072
    at_max = plan(n_ctx=p.max_ctx, device="Vulkan0", device_free_bytes=2048 * MIB, device_weight_bytes=380 * MIB,
                  device_layers=28)
    over = plan(n_ctx=p.max_ctx + 256, device="Vulkan0", device_free_bytes=2048 * MIB,
                device_weight_bytes=380 * MIB, device_layers=28)
    assert at_max.fits and at_max.device.need_bytes <= 2048 * MIB < over.device.need_bytes


def test_weights_too_big_for_the_device_fit_no_context():
    p = plan(device="Vulkan0", device_free_bytes=2048 * MIB, device_weight_bytes=2100 * MIB, device_layers=28)
    assert not p.fits and p.max_ctx == 0
    line = device_refusal(p, 4096, 29, 12)
    assert "\n" not in line and "on Vulkan0" in line and "--gpu-layers 12" in line and "--gpu-layers 0" in line
    assert "--ctx" not in line
    shorter = device_refusal(replace(p, max_ctx=1024), 4096, 29, 0)
    assert "--ctx 1024" in shorter and "--gpu-layers 0" in shorter and "of its" not in shorter


def test_captures_nest_and_both_see_the_lines(tiny_gguf):
    """Engine.load captures the load log itself; a caller capturing around it must neither
    deadlock nor lose the lines."""
    import threading

    import llama_cpp
    before = _log_callback()
    seen: dict[str, list[str]] = {}

    def nested() -> None:
        with capture_llama_log() as outer:
            with capture_llama_log() as inner:
                llama_cpp.Llama(str(tiny_gguf), n_ctx=64, n_gpu_layers=0, verbose=False).close()
            seen.update(inner=list(inner), after_inner=[str(_log_callback() != before)])
        seen["outer"] = list(outer)

    t = threading.Thread(target=nested, daemon=True)
    t.start()
    t.join(60)
    assert not t.is_alive(), "nested captures deadlocked"
    assert _log_callback() == before and seen["after_inner"] == ["True"]
    assert any("assigned to device CPU" in ln for ln in seen["inner"])
    assert any("assigned to device CPU" in ln for ln in seen["outer"])
