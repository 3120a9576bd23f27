"""The per-machine calibration (edge/runtime/tune.py, edge/runtime/tune_rules.py): which candidates, which one
wins, the cache key, explicit options over tuned ones; and once end to end through llama.cpp."""

from __future__ import annotations

import json

import llama_cpp
import pytest
from typer.testing import CliRunner

from edge.runtime import tune
from edge.runtime.engine import Engine
from edge.runtime.tune_rules import (Measured, Setting, Tuned, apply_tuned, candidates, choose, machine_id,
                             thread_candidates, tune_key, tuning_enabled)


def m(fa: bool, threads: int, tg0: float, tgd: float, pp: float) -> Measured:
    return Measured(Setting(fa, threads), tg0, tgd, pp)


def test_thread_candidates_cover_all_cores_one_fewer_half_quarter_and_one():
    assert thread_candidates(2) == [2, 1]
    assert thread_candidates(16) == [16, 15, 8, 4, 1]
    assert thread_candidates(1) == [1]
    assert thread_candidates(16, "vulkan") == [16]          # the GPU decodes; threads barely matter
    assert candidates(2) == [Setting(False, 2), Setting(False, 1), Setting(True, 2), Setting(True, 1)]


def test_flash_attention_is_chosen_by_decoding_over_the_chat_not_at_depth_0_alone():
    # on 5% better at depth 0, much worse at the chat depth (the pattern of a 2-core VM)
    got = choose([m(False, 2, 27.0, 19.8, 180), m(True, 2, 28.5, 15.0, 200)])
    assert got.flash_attn is False
    # the 16-core Xeon's pattern: on wins at both depths
    assert choose([m(False, 16, 99, 90, 580), m(True, 16, 130, 125, 740)]).flash_attn is True


def test_threads_for_decoding_and_for_prompts_are_chosen_separately():
    got = choose([m(False, 2, 1.3, 1.2, 150), m(False, 1, 7.2, 7.0, 90)])   # a loaded 2-core machine
    assert (got.n_threads, got.n_threads_batch) == (1, 2)
    assert (got.tg0, got.pp) == (7.2, 150)


def test_prompt_threads_follow_decoding_unless_clearly_faster():
    """The H200 host's calibration (flash attention on): prompt batches of 64 tokens measured 300,
    311, 331, 327 and 278 tok/s at 16, 15, 8, 4 and 1 threads; 4 threads then halved pp512."""
    h200 = [m(True, 16, 128.8, 83.3, 299.6), m(True, 15, 124.9, 79.7, 311.4), m(True, 8, 87.7, 58.9, 331.3),
            m(True, 4, 52.9, 31.7, 327.1), m(True, 1, 15.1, 10.0, 278.0)]
    assert (choose(h200).n_threads, choose(h200).n_threads_batch) == (16, 16)


def test_within_two_percent_fewer_threads_and_llama_cpps_default_flash_attention_win():
    """Within the tie, llama.cpp's own default (flash attention auto: on for the CPU, as llama-server
    runs) rather than a guess of ours; it also lets serve's slots keep cheap state copies."""
    got = choose([m(False, 4, 50.0, 50.0, 100), m(False, 2, 50.5, 50.5, 100.5), m(True, 2, 49.6, 49.6, 99.5),
                  m(True, 1, 49.5, 49.5, 99.5)])
    assert (got.flash_attn, got.n_threads, got.n_threads_batch) == (True, 1, 1)
    # this machine's calibration (2026-12-05 evening): 1.9% apart on the chat score, flash attention on
    seen = choose([m(False, 2, 29.57, 26.87, 220.9), m(True, 2, 33.94, 24.31, 271.6)])
    assert seen.flash_attn is True
    assert choose([m(False, 2, 29.57, 26.87, 220.9), m(True, 2, 30.0, 24.31, 271.6)]).flash_attn is False
    clear = choose([m(False, 4, 60.0, 60.0, 100), m(False, 2, 50.0, 50.0, 90)])
    assert (clear.n_threads, clear.n_threads_batch) == (4, 4)


def test_choose_refuses_an_empty_measurement():
    with pytest.raises(ValueError):
        choose([m(False, 2, 0, 0, 0)])


def test_the_cache_key_changes_with_machine_shape_backend_and_bindings():
    machine = machine_id("Xeon", 16, 8, ["Vulkan0"])
    shape = {"layers": 28, "embd": 1024, "file_type": 15}
    key = tune_key(machine, shape, "cpu", "0.3.36")
    assert key == tune_key(machine, dict(reversed(shape.items())), "cpu", "0.3.36")
    others = [tune_key(machine_id("Xeon", 16, 16, ["Vulkan0"]), shape, "cpu", "0.3.36"),
              tune_key(machine_id("Xeon", 16, 8, []), shape, "cpu", "0.3.36"),
              tune_key(machine, {**shape, "file_type": 7}, "cpu", "0.3.36"),
              tune_key(machine, shape, "vulkan", "0.3.36"), tune_key(machine, shape, "cpu", "0.3.37")]
    assert key not in others and len(set(others)) == len(others)


def test_explicit_options_win_over_the_tuned_choice():
    tuned = Tuned(flash_attn=True, n_threads=1, n_threads_batch=2)
    assert apply_tuned(tuned, None, None, 8) == (1, 2, True)
    assert apply_tuned(tuned, 4, False, 8) == (4, 4, False)
    assert apply_tuned(None, None, None, 8) == (8, 8, None)


def test_the_env_var_turns_calibration_off():
    assert tuning_enabled({}) and tuning_enabled({"QWEN3_EDGE_TUNE": "1"})
    assert not any(tuning_enabled({"QWEN3_EDGE_TUNE": v}) for v in ("0", "off", "OFF", "no", "false"))


@pytest.fixture
def quick(monkeypatch, tmp_path):
    """A short calibration into a cache of its own (the suite turns calibration off otherwise)."""
    monkeypatch.setenv("QWEN3_EDGE_HOME", str(tmp_path))
    monkeypatch.setattr(tune, "TIME_BUDGET_S", 1.0)
    monkeypatch.setattr(tune, "CAP_S", 0.1)
    return tmp_path / "tune.json"


def test_first_load_calibrates_caches_and_applies_and_the_next_reads_the_cache(scripted_gguf, quick):
    with Engine.load(scripted_gguf, n_ctx=256, tune=True) as e:
        tuned = e.tuned
        assert tuned is not None and e.tuned_now
        assert e.n_threads == tuned.n_threads
        params = e.llama.context_params
        assert params.n_threads == tuned.n_threads and params.n_threads_batch == tuned.n_threads_batch
        assert (params.flash_attn_type == llama_cpp.LLAMA_FLASH_ATTN_TYPE_ENABLED) == tuned.flash_attn
    entry = next(iter(json.loads(quick.read_text()).values()))
    assert entry["cores"] == tune.physical_cores() and isinstance(entry["load"], float)  # what staleness reads
    measured = {(x["flash_attn"], x["threads"]) for x in entry["measured"]}
    assert measured == {(s.flash_attn, s.threads) for s in candidates(tune.physical_cores())}
    with Engine.load(scripted_gguf, n_ctx=256, tune=True) as again:
        assert again.tuned == tuned and not again.tuned_now
    flip = not tuned.flash_attn
    with Engine.load(scripted_gguf, n_ctx=256, n_threads=3, flash_attn=flip, tune=True) as asked:
        params = asked.llama.context_params
        assert (params.n_threads, params.n_threads_batch) == (3, 3)
        assert (params.flash_attn_type == llama_cpp.LLAMA_FLASH_ATTN_TYPE_ENABLED) == flip
    with Engine.load(scripted_gguf, n_ctx=256) as off:     # QWEN3_EDGE_TUNE=off (conftest): not even the cache
        assert off.tuned is None and off.n_threads == tune.physical_cores()


def test_tune_command_measures_and_prints_the_choice(scripted_gguf, quick):
    from cli.main import app
    r = CliRunner().invoke(app, ["tune", str(scripted_gguf), "--json"])
    assert r.exit_code == 0, r.output
    d = json.loads(r.stdout)
    assert d["backend"] and isinstance(d["flash_attn"], bool) and d["n_threads"] >= 1
    assert len(d["measured"]) == len(candidates(tune.physical_cores(), d["backend"]))
    assert quick.exists()


def test_start_up_line_says_the_choice_and_whether_it_was_measured_now():
    from types import SimpleNamespace

    from cli.tune_cmd import tuning_line
    tuned = Tuned(flash_attn=False, n_threads=1, n_threads_batch=2, seconds=9.4)
    now = tuning_line(SimpleNamespace(tuned=tuned, tuned_now=True))
    assert "flash attention off, 1 thread (2 for prompts)" in now and "measured now in 9.4s" in now
    import edge
    assert now.endswith(f"llama.cpp's workers wait: {edge.WORKERS_WAIT}")  # the short spin (openmp.py), or the user's
    assert "cached" in tuning_line(SimpleNamespace(tuned=tuned, tuned_now=False))
    assert tuning_line(SimpleNamespace(tuned=None, tuned_now=False)) is None


def test_start_up_line_says_what_an_explicit_option_overrode():
    """`serve --threads 2` on a machine calibrated to 1 thread must not print "1 thread" alone."""
    from types import SimpleNamespace

    from cli.tune_cmd import tuning_line
    tuned = Tuned(flash_attn=True, n_threads=1, n_threads_batch=1)
    as_tuned = SimpleNamespace(threads=1, threads_batch=1, flash_attn=True)
    assert tuning_line(SimpleNamespace(tuned=tuned, tuned_now=False, plan=as_tuned)).startswith(
        "tuned for this machine: flash attention on, 1 thread (cached")
    asked = SimpleNamespace(threads=2, threads_batch=2, flash_attn=False)
    line = tuning_line(SimpleNamespace(tuned=tuned, tuned_now=False, plan=asked))
    assert "in use instead: flash attention off, 2 threads (" in line


def test_without_depth_measurements_the_choice_is_made_at_depth_0():
    """A machine too busy to fill the cache in time: tg_depth 0 means not measured, not 0 tok/s."""
    got = choose([m(False, 2, 20.0, 0.0, 100), m(True, 2, 25.0, 0.0, 90), m(True, 1, 5.0, 0.0, 0)])
    assert (got.flash_attn, got.n_threads) == (True, 2)
    # a setting cut early for being far slower at depth 0 does not force the depth-0 rule
    got = choose([m(False, 2, 20.0, 19.0, 100), m(True, 2, 21.0, 12.0, 90), m(True, 1, 2.0, 0.0, 0)])
    assert got.flash_attn is False


def test_a_fewer_threads_choice_made_under_a_load_that_has_gone_is_measured_again():
    from edge.runtime.tune_rules import outgrown_by_idle
    busy = {"n_threads": 1, "cores": 2, "load": 3.0}
    assert outgrown_by_idle(busy, load_now=0.3)
    assert outgrown_by_idle(busy, load_now=2.0)            # one core's worth gone, exactly
    assert not outgrown_by_idle(busy, load_now=2.5)        # the load is still there
    assert not outgrown_by_idle({**busy, "n_threads": 2}, load_now=0.0)   # all cores already: nothing to gain
    assert not outgrown_by_idle({"n_threads": 1, "cores": 2}, load_now=0.0)  # written before loads were kept
    assert not outgrown_by_idle({**busy, "load": True}, load_now=0.0)


def test_tuned_defaults_calibrates_again_when_the_cached_load_has_gone(monkeypatch, tmp_path):
    """The cache is read, the rule asked with the load now, and a stale entry measured again."""
    from types import SimpleNamespace
    monkeypatch.setenv("QWEN3_EDGE_HOME", str(tmp_path))
    info = SimpleNamespace(n_layers=2, n_embd=64, n_heads=4, n_kv_heads=2, head_dim=16, file_type=1)
    key = tune.key_for(info, "cpu", [])
    busy = Tuned(flash_attn=True, n_threads=1, n_threads_batch=1)
    tune.write_cache(key, busy, {"load": 3.0, "cores": 2}, tune.cache_path())
    fresh = Tuned(flash_attn=True, n_threads=2, n_threads_batch=2)
    calls = []
    monkeypatch.setattr(tune, "calibrate", lambda *a, **k: (calls.append(1), (fresh, []))[1])
    monkeypatch.setattr(tune, "current_load", lambda: 2.5)
    assert tune.tuned_defaults("m.gguf", info, "cpu", n_gpu_layers=0, extra_buffers=True, device_names=[],
                               tune=True) == (busy, False) and not calls
    monkeypatch.setattr(tune, "current_load", lambda: 0.2)
    assert tune.tuned_defaults("m.gguf", info, "cpu", n_gpu_layers=0, extra_buffers=True, device_names=[],
                               tune=True) == (fresh, True) and calls == [1]
