"""A build of the bindings without the backend that was asked for: one line saying what to do,
exit status 1; and a build with GPU backends but no usable device behaves exactly like the CPU path.

The Vulkan cases run in a child process without GGML_VK_VISIBLE_DEVICES, where llama.cpp skips
a CPU-type Vulkan device such as lavapipe (the variable is read once, when ggml's registry
starts). With CPU-only bindings the child sees the same as this process; on a machine with a
real GPU the no-device cases are skipped.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from cli.main import app
from edge.runtime.engine import local_offload_targets

ROOT = Path(__file__).resolve().parents[2]

CHILD = r"""
import json, sys
import llama_cpp
from edge.runtime.devices import capture_llama_log, registry_names
from edge.runtime.engine import Engine, EngineError, local_offload_targets
out = {"registries": registry_names(), "targets": [d.name for d in local_offload_targets()],
       "supports_gpu_offload": bool(llama_cpp.llama_supports_gpu_offload())}
if not out["targets"]:
    with capture_llama_log() as lines, Engine.load(sys.argv[1], n_ctx=256) as engine:
        out.update(backend=engine.backend, device=engine.device, layers=list(engine.placement.layers))
    out["log"] = "".join(lines)
    try:
        Engine.load(sys.argv[1], n_ctx=256, n_gpu_layers=-1)
    except EngineError as e:
        out["error"] = str(e)
print(json.dumps(out))
"""


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    from tests.tiny_gguf import write_tiny_qwen3
    return write_tiny_qwen3(tmp_path_factory.mktemp("backend") / "tiny.gguf")


@pytest.fixture(scope="module")
def without_visible_devices(tiny):
    env = {k: v for k, v in os.environ.items() if k != "GGML_VK_VISIBLE_DEVICES"}
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    r = subprocess.run([sys.executable, "-c", CHILD, str(tiny)], capture_output=True, text=True, env=env, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    out = json.loads(r.stdout.strip().splitlines()[-1])
    if out["targets"]:
        pytest.skip(f"this machine has a GPU device llama.cpp uses without GGML_VK_VISIBLE_DEVICES: {out['targets']}")
    return out


def test_a_gpu_capable_build_without_a_device_is_the_cpu_path(without_visible_devices):
    """llama_supports_gpu_offload() is true for any build with RPC or Vulkan, device or none; the
    Engine follows the devices: every layer on the CPU and flash attention off, by llama.cpp's log."""
    out = without_visible_devices
    if {"RPC", "Vulkan"} & set(out["registries"]):
        assert out["supports_gpu_offload"], "the trap this test guards against is gone: simplify"
    assert out["backend"] == "cpu" and out["device"].startswith("CPU")
    assert set(out["layers"]) == {"CPU"}
    assert "flash_attn            = disabled" in out["log"]
    assert "offloaded" not in out["log"] or "offloaded 0/" in out["log"]


def test_asking_for_gpu_layers_without_a_device_is_one_line(without_visible_devices):
    line = without_visible_devices["error"]
    assert "\n" not in line and "--gpu-layers -1" in line and "--gpu-layers 0" in line
    if "Vulkan" in without_visible_devices["registries"]:
        assert "GGML_VK_VISIBLE_DEVICES=0" in line         # the build has it: how to make it see lavapipe
    else:
        assert "-DGGML_VULKAN=on" in line                   # how to build the bindings with a GPU backend


@pytest.mark.skipif(bool(local_offload_targets()), reason="the bindings have a GPU device")
def test_cli_gpu_layers_without_a_device_exits_1_with_one_line(tiny, tmp_path, monkeypatch):
    monkeypatch.setenv("QWEN3_EDGE_HOME", str(tmp_path / "home"))
    r = CliRunner(env={"COLUMNS": "300"}).invoke(app, ["run", str(tiny), "Hi", "--gpu-layers", "8", "--ctx", "256"])
    assert r.exit_code == 1
    lines = [ln for ln in r.output.splitlines() if ln.strip()]
    assert len(lines) == 1 and "--gpu-layers 8" in lines[0] and "--gpu-layers 0" in lines[0], r.output
