"""Loading as a pure plan (edge/runtime/load_plan.py) over a table of machines and every model shape:
no llama.cpp, no /proc, no network. Engine.load runs the same function (test_engine_basics and the
rest of the suite load through it); here the decisions themselves are checked."""

from __future__ import annotations

import json

import pytest

from edge.runtime.devices import Device
from edge.runtime.load_plan import LoadRefused, LoadRequest, MachineFacts, plan_load
from edge.models.model_shapes import OFFICIAL_SHAPES, estimated_model_info

GIB = 1 << 30

MACHINES = {
    "pi4-4gb": MachineFacts(available_bytes=int(3.3 * GIB), physical_cores=4),
    "pi5-8gb": MachineFacts(available_bytes=int(7.0 * GIB), physical_cores=4),
    "laptop-8gb": MachineFacts(available_bytes=int(5.0 * GIB), physical_cores=4),
    "laptop-16gb-igpu": MachineFacts(
        available_bytes=12 * GIB, physical_cores=8, registries=("CPU", "Vulkan"),
        targets=(Device("Vulkan0", "Intel(R) Iris(R) Xe Graphics", "Vulkan", "igpu", 6 * GIB, 8 * GIB),)),
    "two-rpc-workers": MachineFacts(
        available_bytes=2 * GIB, physical_cores=4, workers=("w1", "w2"),
        split_devices=(("RPC worker 10.0.0.2:50052", 3 * GIB), ("RPC worker 10.0.0.3:50052", 3 * GIB))),
}
QUANTS = ("q4_k_m", "q8_0", "f16")


def outcome(model: str, qtype: str, machine: str, **asked):
    try:
        return plan_load(estimated_model_info(model, qtype), LoadRequest(**asked), MACHINES[machine])
    except LoadRefused as e:
        return e


@pytest.mark.parametrize("machine", list(MACHINES))
@pytest.mark.parametrize("model", list(OFFICIAL_SHAPES))
@pytest.mark.parametrize("qtype", QUANTS)
def test_every_shape_on_every_machine_is_a_plan_that_fits_or_a_refusal_saying_what_would(model, qtype, machine):
    plan = outcome(model, qtype, machine)
    facts = MACHINES[machine]
    if isinstance(plan, LoadRefused):
        assert "does not fit" in plan.message or "not even" in plan.message, plan.message
        return
    pool = facts.available_bytes + sum(free for _, free in facts.split_devices)  # RPC: the host and its workers
    assert plan.memory.fits and plan.memory.total_bytes <= plan.memory.available_bytes == pool
    assert plan.n_ctx <= estimated_model_info(model, qtype).native_ctx
    assert plan.start_ctx <= plan.n_ctx and plan.slots == 1 and plan.threads == facts.physical_cores
    json.dumps(plan.to_json())  # apps read it (`plan --json`)
    if machine == "two-rpc-workers":
        assert plan.backend == "rpc" and plan.split is not None
    elif machine == "laptop-16gb-igpu":
        assert plan.backend == "vulkan" and plan.gpu_layers == -1 and plan.flash_attn
        assert plan.memory.device is not None and plan.memory.device.fits
    else:
        assert plan.backend == "cpu" and plan.gpu_layers == 0


def test_small_boards_get_what_fits_and_a_big_ask_is_refused_with_the_largest():
    pi4 = outcome("qwen3-4b", "q4_k_m", "pi4-4gb")
    assert not isinstance(pi4, LoadRefused) and pi4.kv_cache_type in ("f16", "q8_0", "q4_0")
    refused = outcome("qwen3-4b", "q4_k_m", "pi4-4gb", n_ctx=32768, kv_cache_type="f16")
    assert isinstance(refused, LoadRefused)
    largest = int(refused.message.rsplit("the largest that fits is ", 1)[1])
    assert 0 < largest < 32768
    assert not isinstance(outcome("qwen3-4b", "q4_k_m", "pi4-4gb", n_ctx=largest, kv_cache_type="f16"), LoadRefused)
    assert isinstance(outcome("qwen3-4b", "q4_k_m", "pi4-4gb", n_ctx=largest + 256, kv_cache_type="f16"), LoadRefused)
    # f16 weights of the 4B (8 GB) fit no board of this table
    assert isinstance(outcome("qwen3-4b", "f16", "pi5-8gb"), LoadRefused)


def test_defaults_follow_the_machine_and_explicit_options_win():
    cpu = outcome("qwen3-0.6b", "q4_k_m", "pi5-8gb")
    assert not cpu.flash_attn and any("flash attention off" in r for r in cpu.reasons)
    assert cpu.footprint.chosen == ("ctx", "kv", "mmap") and cpu.grows
    asked = outcome("qwen3-0.6b", "q4_k_m", "pi5-8gb", n_ctx=4096, kv_cache_type="q8_0", use_mmap=True,
                    n_threads=2, flash_attn=None)
    assert (asked.n_ctx, asked.kv_cache_type, asked.use_mmap, asked.threads) == (4096, "q8_0", True, 2)
    assert asked.flash_attn and asked.footprint.chosen == ()   # a quantized V cache needs flash attention
    no_fa = outcome("qwen3-0.6b", "q4_k_m", "laptop-16gb-igpu", flash_attn=False)
    assert not no_fa.flash_attn
    on_cpu = outcome("qwen3-0.6b", "q4_k_m", "laptop-16gb-igpu", n_gpu_layers=0)
    assert on_cpu.backend == "cpu" and on_cpu.memory.device is None


def test_yarn_only_beyond_the_native_context():
    native = outcome("qwen3-4b", "q4_k_m", "laptop-16gb-igpu", n_ctx=32768)
    assert not native.rope.yarn
    long = outcome("qwen3-4b", "q4_k_m", "pi5-8gb", n_ctx=65536, kv_cache_type="q4_0")
    assert long.rope.yarn and long.rope.factor == 2 and long.rope.yarn_orig_ctx == 32768
    assert not outcome("qwen3-4b-instruct-2507", "q4_k_m", "pi5-8gb", n_ctx=65536, kv_cache_type="q4_0").rope.yarn


def test_slots_as_many_as_fit_and_refusals_that_name_the_way_out():
    auto = outcome("qwen3-0.6b", "q4_k_m", "laptop-16gb-igpu", parallel=None)
    assert 1 <= auto.slots <= 4 and auto.memory.fits and auto.n_ctx == 8192
    four = outcome("qwen3-4b", "q8_0", "laptop-8gb", parallel=4, n_ctx=32768)
    assert isinstance(four, LoadRefused) and "4 parallel slots of 32768 tokens do not fit" in four.message
    rpc_slots = outcome("qwen3-0.6b", "q4_k_m", "two-rpc-workers", parallel=2)
    assert isinstance(rpc_slots, LoadRefused) and "parallel slots over RPC workers" in rpc_slots.message
    no_gpu = outcome("qwen3-0.6b", "q4_k_m", "pi4-4gb", n_gpu_layers=10)
    assert isinstance(no_gpu, LoadRefused) and no_gpu.message.startswith("--gpu-layers 10:")
    small_gpu = MachineFacts(available_bytes=16 * GIB, physical_cores=8, registries=("CPU", "Vulkan"),
                             targets=(Device("Vulkan0", "small", "Vulkan", "gpu", 1 * GIB, 1 * GIB),))
    with pytest.raises(LoadRefused, match=r"--gpu-layers \d+\)") as e:
        plan_load(estimated_model_info("qwen3-4b", "q4_k_m"), LoadRequest(n_ctx=4096), small_gpu)
    assert "the CPU (--gpu-layers 0)" in e.value.message


def test_replaced_conversations_keep_states_in_memory_only_where_served_and_within_the_plan():
    """llama-server keeps replaced slots' KV states in host memory (--cache-ram); serve (parallel
    chosen by the plan) does too, in at most SAVED_STATES_CAP and half of what the plan leaves free,
    counted in the plan. A chat (parallel=1) continues one conversation and keeps none; slots without
    flash attention keep none (a transposed V copies slowly)."""
    from edge.runtime.load_plan import SAVED_STATES_CAP
    chat = outcome("qwen3-0.6b", "q4_k_m", "pi5-8gb")
    assert chat.saved_states_bytes == 0
    one = outcome("qwen3-0.6b", "q4_k_m", "pi5-8gb", parallel=None, max_parallel=1)
    assert one.slots == 1 and one.saved_states_bytes == SAVED_STATES_CAP
    free = MachineFacts(available_bytes=int(0.9 * GIB), physical_cores=4)
    tight = plan_load(estimated_model_info("qwen3-0.6b", "q4_k_m"), LoadRequest(parallel=None, max_parallel=1, n_ctx=1024), free)
    m = tight.memory
    assert 0 < tight.saved_states_bytes < SAVED_STATES_CAP and m.fits and m.total_bytes <= m.available_bytes
    assert m.available_bytes - m.total_bytes in range(tight.saved_states_bytes, tight.saved_states_bytes + 2)
    bare = plan_load(estimated_model_info("qwen3-0.6b", "q4_k_m"), LoadRequest(parallel=1, n_ctx=tight.n_ctx,
                     kv_cache_type=tight.kv_cache_type, use_mmap=tight.use_mmap, grow=False), free)
    assert tight.memory.total_bytes == bare.memory.total_bytes + tight.saved_states_bytes
    slots_fa = outcome("qwen3-0.6b", "q4_k_m", "pi5-8gb", parallel=2, flash_attn=True)
    slots_no_fa = outcome("qwen3-0.6b", "q4_k_m", "pi5-8gb", parallel=2, flash_attn=False)
    assert slots_fa.saved_states_bytes == SAVED_STATES_CAP and slots_no_fa.saved_states_bytes == 0
    assert any("--cache-ram" in r for r in one.reasons) and not any("--cache-ram" in r for r in chat.reasons)


def test_the_amx_rule_turns_repacked_buffers_off_unless_asked():
    amx = MachineFacts(available_bytes=8 * GIB, physical_cores=16, extra_buffers=False)
    plan = plan_load(estimated_model_info("qwen3-0.6b", "q4_k_m"), LoadRequest(), amx)
    assert not plan.extra_buffers and plan.use_mmap and any("AMX" in r for r in plan.reasons)
    forced = plan_load(estimated_model_info("qwen3-0.6b", "q4_k_m"), LoadRequest(extra_buffers=True), amx)
    assert forced.extra_buffers and not forced.use_mmap   # repacked Q4 weights are read in (footprint.py)


# ---- `qwen3-edge plan` ---------------------------------------------------------------------------
def run_plan(*args: str):
    from typer.testing import CliRunner
    from cli.main import app
    return CliRunner().invoke(app, ["plan", *args])


def test_plan_command_answers_before_a_download(tmp_path, monkeypatch):
    monkeypatch.setenv("QWEN3_EDGE_HOME", str(tmp_path))   # an empty store: nothing downloaded
    fits = run_plan("qwen3-4b", "--ram", "4G", "--json")
    assert fits.exit_code == 0, fits.output
    body = json.loads(fits.output)
    assert body["fits"] and "not downloaded" in body["model"] and body["plan"]["memory"]["available_bytes"] == 4 * GIB
    refused = run_plan("qwen3-4b", "--ram", "4G", "--ctx", "32768", "--kv-cache", "f16")
    assert refused.exit_code == 1
    assert "does not fit" in refused.output and "the largest that fits is" in refused.output
    assert run_plan("qwen3-0.6b", "--ram", "lots").exit_code != 0
    unknown = run_plan("not-a-model", "--json")
    assert unknown.exit_code == 1 and "not a GGUF file, a stored model or an official model name" in unknown.output


def test_plan_command_reads_a_gguf_header(scripted_gguf):
    shown = run_plan(str(scripted_gguf), "--ctx", "1024", "--json")
    assert shown.exit_code == 0, shown.output
    plan = json.loads(shown.output)["plan"]
    assert plan["n_ctx"] == 1024 and plan["memory"]["model_bytes"] == scripted_gguf.stat().st_size


def test_plan_command_shows_the_cached_calibration(tmp_path, monkeypatch):
    """A load would use this machine's calibration: `plan` shows it (read, never measured)."""
    from edge.runtime.engine import probe_machine
    from edge.runtime.tune import key_for, write_cache
    from edge.runtime.tune_rules import Tuned
    monkeypatch.setenv("QWEN3_EDGE_HOME", str(tmp_path))
    monkeypatch.setenv("QWEN3_EDGE_TUNE", "on")
    machine = probe_machine()
    backend = machine.targets[0].backend if machine.targets else "cpu"
    key = key_for(estimated_model_info("qwen3-0.6b", "q4_k_m"), backend, [d.description for d in machine.targets])
    write_cache(key, Tuned(flash_attn=True, n_threads=1, n_threads_batch=1), {})
    shown = run_plan("qwen3-0.6b:q4_k_m", "--json")
    assert shown.exit_code == 0, shown.output
    plan = json.loads(shown.output)["plan"]
    assert (plan["threads"], plan["flash_attn"]) == (1, True)
    assert any("calibration" in r for r in plan["reasons"])
    monkeypatch.setenv("QWEN3_EDGE_TUNE", "off")   # off: the fixed defaults, the cache unread
    assert json.loads(run_plan("qwen3-0.6b:q4_k_m", "--json").output)["plan"]["threads"] == machine.physical_cores
