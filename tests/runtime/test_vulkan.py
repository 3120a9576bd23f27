"""The runtime on llama.cpp's Vulkan backend, checked against what llama.cpp reports.

Needs bindings built with -DGGML_VULKAN=on and a Vulkan device: scripts/check_vulkan.sh builds
them into .venv-backends and runs this file with GGML_VK_VISIBLE_DEVICES=0, which makes
llama.cpp use a CPU-type device such as Mesa's lavapipe (it skips those otherwise). Skipped where
the bindings list no Vulkan device, so CPU-only CI passes over it.

Logits tolerance, measured on lavapipe (llvmpipe, LLVM 15.0.6, 256-bit): the tiny random-weight
F32 model (F32 KV cache, 16 positions) gives logits up to 21.8 in magnitude (std 2.45) whose
largest difference from the same file's CPU run is 2.87e-3 (mean 2.7e-4, per position 1.0e-3 to
2.9e-3; identical from run to run): ggml-vulkan multiplies with f16 activations where the device
has fp16, about 1e-4 of the logit scale. The bound is 1e-2, 3.5 times that; logits of another
prompt differ by 23, so a wrong graph cannot pass.
"""

from __future__ import annotations

import re

import numpy as np
import pytest

import llama_cpp

from edge.chat import Chat
from edge.runtime.devices import capture_llama_log, list_devices
from edge.runtime.engine import Engine, EngineError
from tests.conftest import SAMPLE_TOKENS
from tests.model_factory import QWEN3_0_6B, QWEN3_4B, write_zero_gguf
from tests.scripted_model import SCRIPT_ANSWER_TEXT, SCRIPT_THINKING_TEXT

MIB = 1 << 20
VULKAN = [d for d in list_devices() if d.registry == "Vulkan"]

pytestmark = [pytest.mark.vulkan,
              pytest.mark.skipif(not VULKAN, reason="the bindings list no Vulkan device "
                                                    "(build with scripts/check_vulkan.sh; lavapipe needs GGML_VK_VISIBLE_DEVICES=0)")]

MEASURED_MAX_ABS = 2.87e-3  # lavapipe vs CPU, measured (see the module docstring)
LOGIT_TOLERANCE = 1e-2


def assigned(log: str) -> dict[int, str]:
    """llama.cpp's own account of where each layer went ("layer N assigned to device X")."""
    return {int(n): d for n, d in re.findall(r"layer +(\d+) assigned to device (\S+?),", log)}


def buffer_mib(log: str, name: str, kind: str) -> float:
    sizes = re.findall(rf"\b{re.escape(name)} +{kind} buffer size = +([\d.]+) MiB", log)
    assert len(sizes) == 1, f"expected one {name} {kind} buffer in llama.cpp's log, found {sizes}"
    return float(sizes[0])


@pytest.fixture(scope="module")
def loaded(scripted_gguf):
    with capture_llama_log() as lines:
        engine = Engine.load(scripted_gguf, n_ctx=1024, kv_cache_type="f16")
    with engine:
        yield engine, "".join(lines)


def test_backend_and_device_come_from_the_registry(loaded):
    engine, log = loaded
    assert engine.backend == "vulkan"
    name = VULKAN[0].name
    assert engine.device.startswith(f"{name} (") and VULKAN[0].description in engine.device
    assert re.search(rf"using device {name} \(", log), "llama.cpp did not say it uses the device"


def test_every_layer_is_on_the_vulkan_device_by_llama_cpps_account(loaded):
    engine, log = loaded
    layers = assigned(log)
    n = engine.info.n_layers
    assert sorted(layers) == list(range(n + 1))            # every repeating layer and the output layer
    assert set(layers.values()) == {VULKAN[0].name}
    assert buffer_mib(log, VULKAN[0].name, "model") > 0 and buffer_mib(log, VULKAN[0].name, "KV") > 0
    assert engine.placement.offloaded == n + 1


def test_scripted_chat_says_its_script_on_vulkan(loaded):
    engine, _ = loaded
    reply = Chat(engine, mode="think", seed=3).send("Count to eight.")
    assert (reply.thinking, reply.answer, reply.stop_reason) == (SCRIPT_THINKING_TEXT, SCRIPT_ANSWER_TEXT, "eos")
    reply = Chat(engine, mode="no_think", seed=4).send("Hi")
    assert (reply.thinking, reply.answer) == ("", SCRIPT_ANSWER_TEXT)


def test_memory_plan_counts_what_llama_cpp_puts_on_the_device(loaded):
    """The plan's device share against llama.cpp's log: the free memory it saw and the KV buffer
    it allocated on the device (to its two printed decimals); the device's weights are the plan's
    exactly, or the plan's less the output layer when llama.cpp keeps that on the CPU because the
    device cannot run it (lavapipe does: the logits of a 151,936-token vocabulary for a 512-token
    batch exceed its 128 MiB maxStorageBufferRange, so ggml-vulkan's supports_op says no); the
    compute buffer never exceeds the plan's."""
    engine, log = loaded
    share = engine.memory_plan.device
    name = VULKAN[0].name
    assert share is not None and share.name == name
    seen_free = int(re.search(rf"using device {name} .* - (\d+) MiB free", log).group(1))
    assert share.free_bytes // MIB == seen_free
    assert f"{share.kv_bytes / MIB:.2f}" == f"{buffer_mib(log, name, 'KV'):.2f}"
    on_device = f"{buffer_mib(log, name, 'model'):.2f}"
    output = engine_output_bytes(engine)
    assert on_device in (f"{share.weights_bytes / MIB:.2f}", f"{(share.weights_bytes - output) / MIB:.2f}")
    assert buffer_mib(log, name, "compute") * MIB <= share.compute_bytes
    assert f"on {name}:" in engine.memory_plan.describe()


def engine_output_bytes(engine) -> int:
    """output.weight + output_norm.weight from the GGUF header (the output layer's weights)."""
    from quantize.gguf_header import read_header
    sizes = {t.name: t.n_bytes for t in read_header(engine.info.path).tensors}
    return sizes.get("output.weight", sizes.get("token_embd.weight", 0)) + sizes.get("output_norm.weight", 0)


def _logits(path, n_gpu_layers: int) -> tuple[np.ndarray, str]:
    with capture_llama_log() as lines:
        llm = llama_cpp.Llama(str(path), n_ctx=64, n_batch=64, logits_all=True, type_k=0, type_v=0, n_threads=2,
                              n_gpu_layers=n_gpu_layers, op_offload=n_gpu_layers != 0, verbose=False)
    try:
        llm.eval(SAMPLE_TOKENS)
        return np.array(llm.scores[: len(SAMPLE_TOKENS)], dtype=np.float64), "".join(lines)
    finally:
        llm.close()


def test_logits_match_the_cpu_run_of_the_same_file(converted):
    path = converted("tied", "f32")
    gpu, gpu_log = _logits(path, -1)
    cpu, cpu_log = _logits(path, 0)
    assert set(assigned(gpu_log).values()) == {VULKAN[0].name}
    assert set(assigned(cpu_log).values()) == {"CPU"}
    diff = np.abs(gpu - cpu).max()
    print(f"max |vulkan - cpu| logit difference: {diff:.3g} (logit scale {np.abs(cpu).max():.3g})")
    assert np.abs(cpu).max() > 0.1, "a degenerate model proves nothing"
    assert diff <= LOGIT_TOLERANCE


def test_a_model_the_device_cannot_hold_is_refused_in_one_line(converted, tmp_path):
    """The 4B shape in Q4_0 (a sparse file, 2.2 GB of weights) on lavapipe's 2048 MiB: refused
    before llama.cpp allocates anything, with what would fit."""
    big = write_zero_gguf(tmp_path / "qwen3-4b-shape.gguf", QWEN3_4B, like=converted("tied", "f16"))
    free = VULKAN[0].memory_free
    if big.stat().st_size < free:
        pytest.skip(f"{VULKAN[0].name} has {free // MIB} MiB free: room for the 4B shape")
    with pytest.raises(EngineError) as e:
        Engine.load(big, n_ctx=4096, kv_cache_type="f16")
    line = str(e.value)
    assert "\n" not in line and f"on {VULKAN[0].name}" in line
    k = int(re.search(r"--gpu-layers (\d+)\)", line).group(1))
    assert 0 < k < QWEN3_4B.layers + 1 and "--gpu-layers 0" in line
    # what the line offers does load, and llama.cpp then puts exactly that many layers on the device
    with capture_llama_log() as lines, Engine.load(big, n_ctx=4096, kv_cache_type="f16", n_gpu_layers=k) as engine:
        assert engine.backend == "vulkan"
    layers = assigned("".join(lines))
    assert sum(1 for d in layers.values() if d == VULKAN[0].name) == k
    with pytest.raises(EngineError, match=f"on {VULKAN[0].name}"):   # k is the most that fits
        Engine.load(big, n_ctx=4096, kv_cache_type="f16", n_gpu_layers=k + 1)


def test_the_device_limits_the_context(converted, tmp_path):
    """A context whose KV cache outgrows the device but not the host is refused with the largest
    that fits there, and that one loads."""
    if VULKAN[0].memory_free > 4 * 1024 * MIB:
        pytest.skip(f"{VULKAN[0].name} has {VULKAN[0].memory_free // MIB} MiB free: room for a 4 GiB KV cache")
    shaped = write_zero_gguf(tmp_path / "qwen3-0.6b-shape.gguf", QWEN3_0_6B.with_(layers=8), like=converted("tied", "f16"))
    with pytest.raises(EngineError) as e:
        Engine.load(shaped, n_ctx=131072, kv_cache_type="f16")
    line = str(e.value)
    most = int(re.search(r"--ctx (\d+)\)", line).group(1))
    assert "\n" not in line and 0 < most < 131072
    with capture_llama_log() as lines, Engine.load(shaped, n_ctx=most, kv_cache_type="f16") as engine:
        assert engine.backend == "vulkan" and engine.memory_plan.device.fits
        share = engine.memory_plan.device
    log = "".join(lines)
    assert f"{share.kv_bytes / MIB:.2f}" == f"{buffer_mib(log, VULKAN[0].name, 'KV'):.2f}"
    # at this depth the device's compute buffer (flash attention's mask) is tens of MiB: still within the plan
    assert buffer_mib(log, VULKAN[0].name, "compute") * MIB <= share.compute_bytes


def test_cli_shows_backend_and_device(scripted_gguf, tmp_path, monkeypatch):
    """chat's start-up line, reply footer and /stats, bench and info name the backend and the
    device llama.cpp used."""
    import json

    from typer.testing import CliRunner

    from cli.main import app
    monkeypatch.setenv("QWEN3_EDGE_HOME", str(tmp_path / "home"))
    runner = CliRunner(env={"COLUMNS": "300"})
    name = VULKAN[0].name
    r = runner.invoke(app, ["chat", str(scripted_gguf), "--seed", "1", "--ctx", "512"], input="Hello\n/stats\n/exit\n")
    assert r.exit_code == 0, r.output
    lines = r.stdout.splitlines()
    assert any(ln.startswith("qwen3-edge") and f"vulkan on {name} (" in ln for ln in lines)   # start-up line
    assert any("thinking 13/∞" in ln and ln.rstrip().endswith("· vulkan") for ln in lines)  # footer
    assert any("model " in ln and f"vulkan on {name} (" in ln and "threads" in ln for ln in lines)  # /stats
    r = runner.invoke(app, ["bench", str(scripted_gguf), "-p", "16", "-n", "4", "--json"])
    assert r.exit_code == 0, r.output
    d = json.loads(r.stdout)
    assert d["backend"] == "vulkan" and d["device"].startswith(f"{name} (")
    r = runner.invoke(app, ["info", str(scripted_gguf), "--json"])
    d = json.loads(r.stdout)
    assert d["backend"] == "vulkan" and d["device"].startswith(f"{name} (")
    assert {dev["name"] for dev in d["devices"]} >= {name, "CPU"}
