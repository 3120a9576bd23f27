"""Speculative decoding (edge/runtime/speculative.py, edge/runtime/draft_model.py): the decisions as pure
functions, then end to end through llama.cpp with scripted targets and drafts whose agreement is
known, and random weights where greedy output must not change."""

from __future__ import annotations

import collections
import random
from pathlib import Path

import llama_cpp
import numpy as np
import pytest

from edge import Chat, Engine
from edge.runtime.draft_model import tokenizer_problem, pick_auto, with_draft
from edge.runtime.engine import EngineError, read_model_info
from edge.runtime.context_plan import plan_memory
from edge.runtime.speculative import (BACKOFF_START, PROBE_K, SpecPolicy, accept_or_resample, choose_k,
                              expected_tokens, n_eval_tokens, round_cost)
from quantize import quantize_model
from tests.model_factory import gguf_kv_bytes, rewrite_gguf_metadata
from tests.scripted_model import (QWEN3_SCRIPT, SCRIPT_ANSWER_TEXT, SCRIPT_THINKING_TEXT, build_scripted_model)
from tests.tool_scripts import WEATHER_TOOL


# ---- pure decisions ---------------------------------------------------------------------------
def test_expected_tokens_is_the_accepted_prefix_plus_the_targets_own_token():
    assert expected_tokens(0.0, 4) == 1.0            # nothing accepted: the target's token only
    assert expected_tokens(1.0, 4) == 5.0            # everything: k drafts + 1
    # alpha 0.8, k 2: 1 + 0.8 + 0.64
    assert expected_tokens(0.8, 2) == pytest.approx(2.44)


def test_choose_k_grows_with_acceptance_and_stops_when_it_does_not_pay():
    assert choose_k(0.0, draft_cost=0.15, verify_cost=0.1) == 0        # never agrees: off
    assert choose_k(0.9, draft_cost=1.0, verify_cost=0.1) == 0         # a draft as slow as the target
    low, high = choose_k(0.5, 0.15, 0.1), choose_k(0.9, 0.15, 0.1)
    assert 1 <= low < high
    assert choose_k(0.99, 0.0, 0.0, k_max=6) == 6                      # free drafts, near-certain: all
    k = choose_k(0.8, 0.15, 0.1)
    assert expected_tokens(0.8, k) / round_cost(k, 0.15, 0.1) >= max(
        expected_tokens(0.8, j) / round_cost(j, 0.15, 0.1) for j in range(1, 9))


def test_policy_switches_off_with_growing_backoff_then_probes():
    policy = SpecPolicy(draft_cost=0.15, verify_cost=0.1)
    assert policy.next_k() > 0                       # the prior (alpha 0.5) says try
    for _ in range(3):
        policy.record_round(drafted=2, accepted=0, rejected=True)
    assert policy.next_k() == 0                      # acceptance collapsed: off...
    assert policy.off_for == BACKOFF_START - 1 and policy.backoff == 2 * BACKOFF_START
    for _ in range(BACKOFF_START - 1):
        assert policy.next_k() == 0
    assert policy.next_k() == PROBE_K                # ...then one probe round
    policy.record_round(drafted=PROBE_K, accepted=0, rejected=True)
    assert policy.next_k() == 0 and policy.off_for == 2 * BACKOFF_START - 1   # failed probe: twice as long
    fixed = SpecPolicy(draft_cost=0.15, fixed_k=3)
    fixed.record_round(drafted=3, accepted=0, rejected=True)
    assert fixed.next_k() == 3


def test_policy_measures_costs_against_a_plain_decode():
    policy = SpecPolicy(draft_cost=0.5, verify_cost=0.5)
    policy.record_costs(n_batch=5, verify_s=0.2, draft_s=0.1, drafted=4)   # no plain time yet: priors stay
    assert (policy.draft_cost, policy.verify_cost) == (0.5, 0.5)
    policy.record_plain(0.1)
    for _ in range(40):
        policy.record_costs(n_batch=5, verify_s=0.14, draft_s=0.04, drafted=4)
    assert policy.verify_cost == pytest.approx(0.1, abs=0.01)   # (0.14/0.1 - 1) / 4
    assert policy.draft_cost == pytest.approx(0.1, abs=0.01)    # 0.01 s per draft token / 0.1


def test_the_acceptance_rule_keeps_the_targets_distribution():
    """A deterministic draft accepted with probability p(d), else a draw from p without d: each
    token comes out with its target probability (what matching the target's own draw does)."""
    p = np.array([0.05, 0.4, 0.25, 0.3])
    rng = random.Random(7)
    for draft in (1, 3):
        n = 20000
        counts = collections.Counter(accept_or_resample(p, draft, rng.random(), rng.random()) for _ in range(n))
        freq = np.array([counts[i] / n for i in range(len(p))])
        assert np.abs(freq - p).max() < 0.015, (draft, freq)   # 4 standard deviations


# ---- models -----------------------------------------------------------------------------------
def load(path, **kwargs) -> Engine:
    """Engine.load with one llama.cpp thread (the draft takes the target's): these models' tokens
    are microseconds of work, which a second thread only slows with its spin-wait at every graph
    node (10x on a busy 2-core machine). Decode counts and texts do not depend on it."""
    return Engine.load(path, n_threads=1, **kwargs)


def _gguf(root: Path, name: str, script: dict[int, int], hidden: int = 64) -> Path:
    return Path(quantize_model(build_scripted_model(root / name, script, hidden=hidden), "f16",
                               root / f"{name}.gguf").output)


@pytest.fixture(scope="module")
def drafts(tmp_path_factory, scripted_gguf) -> dict[str, Path]:
    """Drafts for the scripted target: one that says the same script (another model: hidden 96),
    one that never agrees (every transition goes elsewhere), one wrong on every third transition,
    one with another tokenizer."""
    root = tmp_path_factory.mktemp("drafts")
    never = {src: dst + 1 for src, dst in QWEN3_SCRIPT.items()}
    third = {src: (dst + 1 if i % 3 == 2 else dst) for i, (src, dst) in enumerate(QWEN3_SCRIPT.items())}
    other = rewrite_gguf_metadata(scripted_gguf, root / "other-tokenizer.gguf",
                                  set_=[gguf_kv_bytes("tokenizer.ggml.pre", 8, "llama3")])
    return {"agree": _gguf(root, "agree", QWEN3_SCRIPT, hidden=96), "never": _gguf(root, "never", never),
            "third": _gguf(root, "third", third),
            "other": other}


class DecodeCounter:
    """llama_decode calls on one context (the target's), counted at the C boundary."""

    def __init__(self, monkeypatch, engine: Engine):
        self.calls, self.engine = 0, engine
        real = llama_cpp.llama_cpp.llama_decode

        def counting(ctx, batch):
            if ctx == engine.llama._ctx.ctx:
                self.calls += 1
            return real(ctx, batch)
        monkeypatch.setattr(llama_cpp.llama_cpp, "llama_decode", counting)


def _run(engine: Engine, monkeypatch, **chat):
    """A turn on `engine` with its target decode calls and llama.cpp's own counters: tokens decoded
    in batches beyond the prompt, and single-token decodes (llama.cpp reports a 0 as 1)."""
    counter = DecodeCounter(monkeypatch, engine)
    llama_cpp.llama_perf_context_reset(engine.llama._ctx.ctx)
    reply = Chat(engine, **chat).send("Count for me.")
    batch_tokens, single = n_eval_tokens(engine.llama)
    return reply, counter.calls, max(batch_tokens - reply.evaluated_tokens, 0), single


def test_an_agreeing_draft_keeps_the_script_and_cuts_target_decodes(scripted_gguf, drafts, monkeypatch):
    with load(scripted_gguf, n_ctx=512) as plain:
        base, base_calls, base_batched, base_single = _run(plain, monkeypatch, seed=3)
    with load(scripted_gguf, n_ctx=512, draft=drafts["agree"], draft_k=4) as engine:
        reply, calls, batched, single = _run(engine, monkeypatch, seed=3)   # Qwen's thinking sampler, not greedy
        stats = engine.speculator.stats
    assert (reply.thinking, reply.answer) == (SCRIPT_THINKING_TEXT, SCRIPT_ANSWER_TEXT)
    assert (reply.thinking, reply.answer, reply.generated_tokens) == (base.thinking, base.answer, base.generated_tokens)
    # without a draft: one single-token decode per generated token (the prompt's batch aside)
    assert base_calls == 1 + base.generated_tokens
    assert (base_batched, base_single) == (0, base.generated_tokens)
    # with it: each decode verifies a round; every accepted draft is a decode saved
    assert stats.accepted >= 0.75 * reply.generated_tokens
    assert calls == 1 + reply.generated_tokens - stats.accepted
    assert calls <= 1 + -(-reply.generated_tokens // 5)          # k=4: five tokens per decode
    # llama.cpp's counters: no single-token decode; the batches held each round's first token and
    # its drafts, accepted or not
    assert single <= 1
    assert batched == reply.generated_tokens - stats.accepted + stats.drafted


def test_a_draft_that_never_agrees_changes_nothing_but_the_work(scripted_gguf, drafts, monkeypatch):
    with load(scripted_gguf, n_ctx=512, draft=drafts["never"], draft_k=3) as engine:
        reply, calls, _, _ = _run(engine, monkeypatch, seed=5)
        stats = engine.speculator.stats
        cached = llama_cpp.llama_memory_seq_pos_max(llama_cpp.llama_get_memory(engine.llama._ctx.ctx), 0) + 1
        n_tokens = engine.llama.n_tokens
    assert (reply.thinking, reply.answer) == (SCRIPT_THINKING_TEXT, SCRIPT_ANSWER_TEXT)
    assert stats.rounds > 0 and stats.accepted == 0
    assert calls == 1 + reply.generated_tokens
    assert cached == n_tokens          # the rejected drafts left the target's cache


def test_a_draft_wrong_on_every_third_token_is_kept_in_step(scripted_gguf, drafts, monkeypatch):
    """After each rejection the draft's cache drops its wrong tokens and takes the target's: it
    goes on agreeing on two transitions out of three."""
    with load(scripted_gguf, n_ctx=512, draft=drafts["third"], draft_k=3) as engine:
        reply, calls, _, _ = _run(engine, monkeypatch, seed=6)
        stats = engine.speculator.stats
        assert (reply.thinking, reply.answer) == (SCRIPT_THINKING_TEXT, SCRIPT_ANSWER_TEXT)
        assert 0.5 <= stats.acceptance < 1.0
        assert calls == 1 + reply.generated_tokens - stats.accepted
        # a second turn: its prompt drops the first turn's thinking, so the draft's cache must go
        # back to where the prompts part and take the target's tokens from there
        chat = Chat(engine, seed=6)
        chat.send("One.")
        chat.send("Two.")
        target, draft = engine.llama, engine.speculator.drafter.llama
        same = min(draft.n_tokens, target.n_tokens) - 4   # the last round's drafts aside
        assert same > 40
        assert draft.input_ids[:same].tolist() == target.input_ids[:same].tolist()


def test_adaptive_policy_switches_a_useless_draft_off(scripted_gguf, drafts):
    with load(scripted_gguf, n_ctx=512, draft=drafts["never"]) as engine:
        reply = Chat(engine, seed=1).send("Count for me.")
        stats = engine.speculator.stats
    assert reply.answer == SCRIPT_ANSWER_TEXT
    assert stats.plain_decodes >= reply.generated_tokens - 4   # a round or two, then plain decoding


def test_budget_cut_and_tool_call_grammar_see_every_token(tool_ggufs, drafts, scripted_gguf, monkeypatch):
    """The budget phrase is appended mid-round (the drafts roll back) and the call grammar, armed
    at <tool_call>, is fed every accepted token in order: the same reply as without a draft."""
    def turn(draft):  # Qwen's budget phrase ends "</think>\n\n", the token after which call_then_answer calls
        with load(tool_ggufs["call_then_answer"], n_ctx=512, draft=draft, draft_k=4) as engine:
            out = Chat(engine, tools=[WEATHER_TOOL], seed=2, budget=3, mode="no_think").send("Weather in Paris? /think")
            return out, engine.speculator and engine.speculator.stats
    base, _ = turn(None)
    spec, stats = turn(tool_ggufs["call_then_answer"])
    assert base.budget_hit and base.tool_calls
    def calls(r):
        return [(c.name, c.arguments) for c in r.tool_calls]   # ids are random
    assert (spec.thinking, spec.answer, calls(spec), spec.budget_hit) == \
           (base.thinking, base.answer, calls(base), base.budget_hit)
    assert stats.accepted > 0


SCHEMA = {"type": "json_schema", "json_schema": {"name": "n", "schema": {
    "type": "object", "properties": {"name": {"type": "string"}}, "required": ["name"]}}}


def test_schema_grammar_sees_every_token(scripted_gguf, drafts):
    """A JSON answer under a grammar, drawn from the verification rows: the same answer as
    without a draft (the scripted draft proposes its script; the grammar sends most of it back)."""
    answers = []
    for draft in (None, drafts["agree"]):
        with load(scripted_gguf, n_ctx=512, draft=draft, draft_k=3) as engine:
            reply = Chat(engine, mode="no_think", seed=9, max_tokens=24).send(
                "JSON please.", response_format=SCHEMA)
            answers.append((reply.answer, reply.generated_tokens))
    assert answers[0] == answers[1] and answers[0][0].strip().startswith("{")


def test_prompt_lookup_drafts_what_the_prompt_holds(scripted_gguf, monkeypatch):
    with load(scripted_gguf, n_ctx=512, draft="lookup", draft_k=4) as engine:
        counter = DecodeCounter(monkeypatch, engine)
        reply = Chat(engine, mode="no_think", seed=4).send(f"Repeat: {SCRIPT_ANSWER_TEXT}")
        stats = engine.speculator.stats
    assert reply.answer == SCRIPT_ANSWER_TEXT
    assert stats.accepted >= 3                     # the answer's tokens came from the prompt
    assert counter.calls == 1 + reply.generated_tokens - stats.accepted


def test_greedy_output_is_the_same_with_and_without_speculation(converted):
    """Random weights: greedy text with a draft (the other random model: mostly rejected; the
    same model: all accepted) equals the text without one, token for token."""
    target, other = converted("untied", "f16"), converted("tied", "f16")
    outputs = {}
    for draft in (None, other, target, "lookup"):
        with load(target, n_ctx=512, draft=draft, draft_k=3 if draft else None) as engine:
            r = Chat(engine, mode="no_think", sampling={"temperature": 0}, max_tokens=48).send("Tell me a story.")
            outputs[str(draft)] = (r.answer, r.generated_tokens)
            if draft == target:
                assert engine.speculator.stats.accepted > 0
    assert len(set(outputs.values())) == 1, outputs
    assert outputs["None"][1] == 48


def test_seeded_sampling_draws_the_same_tokens_with_a_draft(converted):
    target = converted("untied", "f16")
    texts = set()
    for draft in (None, target):
        with load(target, n_ctx=512, draft=draft, draft_k=4) as engine:
            texts.add(Chat(engine, mode="no_think", seed=11, max_tokens=40).send("Hello").answer)
    assert len(texts) == 1


# ---- refusals and the memory plan -------------------------------------------------------------
def test_a_draft_with_another_tokenizer_is_refused(scripted_gguf, drafts):
    assert tokenizer_problem(scripted_gguf, drafts["agree"]) is None
    assert "tokenizer.ggml.pre" in tokenizer_problem(scripted_gguf, drafts["other"])
    with pytest.raises(EngineError, match="another tokenizer"):
        load(scripted_gguf, n_ctx=512, draft=drafts["other"])


def test_parallel_slots_with_a_draft_are_refused(scripted_gguf, drafts):
    with pytest.raises(EngineError, match="one stream"):
        load(scripted_gguf, n_ctx=512, draft=drafts["agree"], parallel=2)


def test_auto_draft_is_the_smallest_with_the_same_tokenizer(scripted_gguf, drafts, converted):
    big = converted("untied", "f16")
    cands = [(p, p.stat().st_size) for p in (scripted_gguf, drafts["agree"], drafts["other"], big)]
    assert pick_auto(big, cands) == scripted_gguf            # smaller than agree (hidden 64 < 96)
    assert pick_auto(scripted_gguf, cands) is None           # nothing smaller with its tokenizer


def test_the_memory_plan_counts_the_draft(scripted_gguf, drafts):
    t_info, d_info = read_model_info(scripted_gguf), read_model_info(drafts["agree"])

    def planned(ctx, kv, budget, n_seq=1, device=None):
        return plan_memory(t_info.size_bytes, ctx, t_info.n_layers, t_info.n_kv_heads, t_info.head_dim, budget,
                           type_k=kv, type_v=kv, n_heads=t_info.n_heads, ctx_limit=32768)
    alone = planned(4096, "f16", 1 << 34)
    both = with_draft(planned, d_info, n_batch=512, flash_attn=lambda kv: False)(4096, "f16", 1 << 34)
    assert both.model_bytes == alone.model_bytes + d_info.size_bytes
    assert both.kv_bytes > alone.kv_bytes and both.total_bytes > alone.total_bytes
    # a budget the target alone fits in, the pair not: refused, with a context where both fit
    budget = both.total_bytes - 1
    assert alone.total_bytes < budget
    tight = with_draft(planned, d_info, n_batch=512, flash_attn=lambda kv: False)(4096, "f16", budget)
    assert not tight.fits and 0 < tight.max_ctx < 4096
    with pytest.raises(EngineError, match="does not fit"):
        load(scripted_gguf, n_ctx=4096, kv_cache_type="f16", draft=drafts["agree"], available_bytes=budget)
    with load(scripted_gguf, n_ctx=512, draft=drafts["agree"]) as engine:
        assert engine.memory_plan.model_bytes == t_info.size_bytes + d_info.size_bytes


# ---- the command line -------------------------------------------------------------------------
def test_cli_draft_on_run_chat_and_serve(scripted_gguf, drafts, tmp_path, monkeypatch):
    import shutil

    from typer.testing import CliRunner

    from cli.main import app
    runner = CliRunner(env={"COLUMNS": "200"})
    monkeypatch.setenv("QWEN3_EDGE_HOME", str(tmp_path / "home"))
    r = runner.invoke(app, ["run", str(scripted_gguf), "Hi", "--seed", "2", "--draft", str(drafts["agree"]), "--threads", "1"])
    assert r.exit_code == 0, r.output
    assert SCRIPT_ANSWER_TEXT in r.stdout
    # auto: nothing smaller in the store yet is one clear line
    r = runner.invoke(app, ["run", str(drafts["agree"]), "Hi", "--draft", "auto", "--threads", "1"])
    assert r.exit_code == 1 and "--draft auto" in r.output and "Traceback" not in r.output
    stored = tmp_path / "home" / "models" / "qwen3-tiny" / "f16.gguf"
    stored.parent.mkdir(parents=True)
    shutil.copy(scripted_gguf, stored)
    r = runner.invoke(app, ["chat", str(drafts["agree"]), "--seed", "1", "--draft", "auto", "--threads", "1"], input="Hi\n")
    assert r.exit_code == 0, r.output
    assert "speculative decoding: model draft f16.gguf" in r.output and SCRIPT_ANSWER_TEXT in r.output
    r = runner.invoke(app, ["serve", str(scripted_gguf), "--draft", "lookup", "--parallel", "2"])
    assert r.exit_code == 1 and "one stream" in r.output
