"""The runtime end to end on a scripted Qwen3 model (it says a known script, see
tests/scripted_model.py), so thinking, answers, budgets, history and KV reuse show as exact text."""

from __future__ import annotations

import json
import threading

import llama_cpp
import numpy as np
import pytest
from jinja2 import Environment

from edge.chat import Chat, ChatError
from edge.runtime.engine import Engine, EngineError, detect_backend
from edge.protocol.modes import Mode
from quantize import quantize_model
from tests.llama_probe import DecodeCount, apply_sampler, cached_ids, common_prefix, kv_tokens
from tests.model_factory import FIXTURES
from tests.tiny_gguf import write_foreign_gguf
from tests.scripted_model import (QWEN3_SCRIPT, SCRIPT_ANSWER_IDS, SCRIPT_ANSWER_TEXT, SCRIPT_THINKING_IDS,
                                  SCRIPT_THINKING_MODE_IDS, SCRIPT_THINKING_TEXT, THINK, build_scripted_model)

# Qwen's thinking-budget phrase, written out here (not imported) so that a reworded phrase fails.
QWEN_BUDGET_PHRASE = ("\n\nConsidering the limited time by the user, I have to give the solution based on "
                      "the thinking directly now.\n</think>\n\n")

QWEN_TEMPLATE = json.loads((FIXTURES / "tokenizer_config.json").read_text())["chat_template"]


@pytest.fixture(scope="module")
def engine(scripted_gguf):
    with Engine.load(scripted_gguf, n_ctx=2048) as e:
        yield e


def reference_prompt(messages, thinking: bool) -> str:
    """Qwen's template from tokenizer_config.json rendered by plain jinja2, as transformers does."""
    env = Environment(trim_blocks=True, lstrip_blocks=True)
    return env.from_string(QWEN_TEMPLATE).render(messages=messages, add_generation_prompt=True,
                                                 enable_thinking=thinking)


def test_engine_basics(engine):
    """The backend is the one the bindings offer: the CPU, or the GPU every layer goes to by default."""
    assert isinstance(engine.llama, llama_cpp.Llama)
    assert engine.backend == detect_backend(-1) and engine.n_ctx == 2048
    assert engine.memory_plan.fits and engine.memory_plan.kv_bytes > 0
    assert not engine.rope_plan.yarn


def test_refuses_a_gguf_that_is_not_qwen3(tmp_path):
    path = write_foreign_gguf(tmp_path / "llama.gguf")
    with pytest.raises(EngineError, match="'llama' is not qwen3"):
        Engine.load(path)


@pytest.mark.parametrize("n_ctx, scaling, scale, orig", [
    (8192, llama_cpp.LLAMA_ROPE_SCALING_TYPE_NONE, None, None),
    (40960, llama_cpp.LLAMA_ROPE_SCALING_TYPE_YARN, 0.5, 32768),
    (65536, llama_cpp.LLAMA_ROPE_SCALING_TYPE_YARN, 0.5, 32768),
    (131072, llama_cpp.LLAMA_ROPE_SCALING_TYPE_YARN, 0.25, 32768),
])
def test_yarn_parameters_reach_llama_cpp(scripted_gguf, n_ctx, scaling, scale, orig):
    with pytest.warns(UserWarning, match="4B") if scale else _no_warning():
        e = Engine.load(scripted_gguf, n_ctx=n_ctx)
    with e:
        params = e.llama.context_params
        assert e.n_ctx == n_ctx and params.rope_scaling_type == scaling
        if scale:
            assert params.rope_freq_scale == scale and params.yarn_orig_ctx == orig


class _no_warning:
    def __enter__(self):
        import warnings
        self._cm = warnings.catch_warnings()
        self._cm.__enter__()
        warnings.simplefilter("error")

    def __exit__(self, *exc):
        self._cm.__exit__(*exc)


def test_memory_plan_refuses_with_largest_fitting_context(scripted_gguf):
    size = scripted_gguf.stat().st_size
    with pytest.warns(UserWarning), pytest.raises(EngineError, match=r"does not fit in memory.*the largest that fits is \d+"):
        Engine.load(scripted_gguf, n_ctx=131072, available_bytes=size + (200 << 20))


def test_thinking_mode_streams_thinking_then_answer(engine):
    chat = Chat(engine, seed=1)
    events = list(chat.stream("Hi"))
    kinds = [e.kind for e in events]
    assert kinds[-1] == "done" and "thinking" in kinds and "answer" in kinds
    assert max(i for i, k in enumerate(kinds) if k == "thinking") < kinds.index("answer")
    reply = events[-1].reply
    assert (reply.thinking, reply.answer, reply.stop_reason) == (SCRIPT_THINKING_TEXT, SCRIPT_ANSWER_TEXT, "eos")
    assert "".join(e.text for e in events if e.kind == "answer") == SCRIPT_ANSWER_TEXT
    assert reply.generated_tokens == len(SCRIPT_THINKING_MODE_IDS) - 1  # all but <|im_end|>
    assert reply.thinking_tokens == len(SCRIPT_THINKING_IDS)
    assert reply.ttft_s > 0 and reply.tokens_per_s > 0


def test_non_thinking_mode_answers_only(engine):
    reply = Chat(engine, mode="no_think", seed=2).send("Hi")
    assert (reply.thinking, reply.answer, reply.thinking_enabled) == ("", SCRIPT_ANSWER_TEXT, False)


def test_history_keeps_answers_only_and_prompt_equals_qwens_template(engine):
    chat = Chat(engine, system="You are terse.", seed=3)
    chat.send("First question")
    chat.send("Second question /no_think")
    assert [m.content for m in chat.history] == ["First question", SCRIPT_ANSWER_TEXT,
                                                 "Second question /no_think", SCRIPT_ANSWER_TEXT]
    messages = chat.messages() + [{"role": "user", "content": "Third"}]
    for thinking in (True, False):
        prompt = chat.render(messages, thinking)
        assert prompt == reference_prompt(messages, thinking)
        assert SCRIPT_THINKING_TEXT not in prompt


@pytest.mark.parametrize("mode", ["think", "no_think"])
def test_tokens_evaluated_are_qwens_prompt(engine, mode):
    """What llama.cpp actually saw for turn 3 is the tokenization of Qwen's own rendering."""
    chat = Chat(engine, system="Sys.", mode=mode, seed=10)
    chat.send("One")
    chat.send("Two")
    before = chat.messages() + [{"role": "user", "content": "Three"}]
    reply = chat.send("Three")
    expected = engine.tokenize(reference_prompt(before, mode == "think"))
    assert engine.llama.input_ids[: reply.prompt_tokens].tolist() == expected


def test_soft_switches_change_this_and_following_turns(engine):
    chat = Chat(engine, mode=Mode.THINK, seed=4)
    assert chat.send("Hello /no_think").thinking == ""
    assert chat.mode is Mode.NO_THINK
    assert chat.send("And now?").thinking == ""
    assert chat.send("Think hard /think").thinking == SCRIPT_THINKING_TEXT
    assert chat.send("Again").thinking == SCRIPT_THINKING_TEXT
    assert chat.history[0].content == "Hello /no_think"  # the marker stays in the message


@pytest.mark.parametrize("budget", [0, 3, 8])
def test_budget_cuts_thinking_at_exactly_n_tokens(engine, budget):
    chat = Chat(engine, budget=budget, seed=5)
    reply = chat.send("Count")
    assert reply.budget_hit and reply.thinking_tokens == budget
    phrase = "Considering the limited time by the user, I have to give the solution based on the thinking directly now."
    first_n = engine.llama.detokenize(SCRIPT_THINKING_IDS[:budget]).decode()
    # on new lines, as Qwen's model card writes it, never glued to the last word of the thinking
    assert reply.thinking == (first_n + "\n\n" + phrase if budget else phrase)
    assert reply.answer == SCRIPT_ANSWER_TEXT and reply.stop_reason == "eos"
    # llama.cpp's cache holds the prompt once, the first N thinking tokens, exactly Qwen's phrase
    # (appended, not re-rendered), then the answer.
    prompt = engine.tokenize(reference_prompt([{"role": "user", "content": "Count"}], True))
    assert cached_ids(engine.llama) == [*prompt, THINK, *SCRIPT_THINKING_IDS[:budget],
                                        *engine.tokenize(QWEN_BUDGET_PHRASE), *SCRIPT_ANSWER_IDS]


def test_budget_larger_than_thinking_is_not_hit(engine):
    reply = Chat(engine, budget=100, seed=6).send("Count")
    assert not reply.budget_hit and reply.thinking == SCRIPT_THINKING_TEXT


def test_follow_up_turn_evaluates_only_new_tokens(engine):
    """Counted by llama.cpp: turn 2 decodes only what its prompt does not share with the cache
    (turn 1's prompt), then its own generation; the prompt's shared head is never decoded again."""
    chat = Chat(engine, seed=7)
    q1 = [{"role": "user", "content": "What is six times seven?"}]
    first = chat.send(q1[0]["content"])
    cache = engine.tokenize(reference_prompt(q1, True)) + SCRIPT_THINKING_MODE_IDS[:-1]  # <|im_end|> is not fed back
    assert kv_tokens(engine.llama) == len(cache)
    q2 = q1 + [{"role": "assistant", "content": SCRIPT_ANSWER_TEXT}, {"role": "user", "content": "And six times eight?"}]
    prompt2 = engine.tokenize(reference_prompt(q2, True))
    kept = common_prefix(cache, prompt2)
    assert kept == first.prompt_tokens  # turn 1's thinking is not in turn 2's prompt: the cache diverges there
    with DecodeCount(engine.llama) as decoded:
        second = chat.send(q2[-1]["content"])
    generated = len(SCRIPT_THINKING_MODE_IDS) - 1
    assert decoded.tokens == len(prompt2) - kept + generated
    assert kv_tokens(engine.llama) == len(prompt2) + generated
    assert second.evaluated_tokens == len(prompt2) - kept  # and the reported figure agrees with llama.cpp


def test_cancel_from_another_thread_keeps_session_usable(engine):
    chat = Chat(engine, mode="no_think", seed=8)
    events = []
    for event in chat.stream("Tell me"):
        events.append(event)
        if event.kind == "answer" and len(events) == 1:
            t = threading.Thread(target=chat.cancel)
            t.start()
            t.join()
    reply = events[-1].reply
    assert reply.stop_reason == "cancelled"
    assert reply.generated_tokens <= 2  # stopped within one token of the request
    assert chat.history[-1].role == "assistant" and chat.history[-1].content == reply.answer
    assert SCRIPT_ANSWER_TEXT.startswith(reply.answer) and reply.answer
    assert chat.send("Go on").answer == SCRIPT_ANSWER_TEXT


def test_history_outgrowing_context_drops_oldest_turns(scripted_gguf):
    with Engine.load(scripted_gguf, n_ctx=256) as small:
        chat = Chat(small, system="Be brief.", mode="no_think", max_tokens=16, seed=9)
        notices = []
        for i in range(8):
            for event in chat.stream(f"Message number {i}: " + "words " * 20):
                if event.kind == "notice":
                    notices.append(event.text)
        assert notices and "dropped" in notices[0]
        assert_system_prompt_leads_the_cache(small, "Be brief.", "Message number 0:")
        assert chat.history[-1].content == SCRIPT_ANSWER_TEXT
        assert len(chat.history) < 16
        with pytest.raises(ChatError, match="too long"):
            chat.send("word " * 400)
        assert chat.history[-1].content == SCRIPT_ANSWER_TEXT


def assert_system_prompt_leads_the_cache(engine, system: str, dropped: str) -> None:
    """After trimming, llama.cpp's cache starts with the system turn, and the oldest user turn is gone."""
    head = engine.tokenize(f"<|im_start|>system\n{system}<|im_end|>\n<|im_start|>user\n")
    ids = cached_ids(engine.llama)
    assert ids[: len(head)] == head
    assert dropped.encode() not in engine.llama.detokenize(ids)


def test_hostile_template_in_gguf_is_rejected_not_executed(tmp_path):
    folder = build_scripted_model(tmp_path / "evil", QWEN3_SCRIPT)
    cfg_path = folder / "tokenizer_config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg["chat_template"] = "{{ ''.__class__.__mro__[1].__subclasses__() }}"
    cfg_path.write_text(json.dumps(cfg))
    gguf_path = quantize_model(folder, "f16", tmp_path / "evil.gguf").output
    with Engine.load(gguf_path, n_ctx=512) as e:
        chat = Chat(e)
        with pytest.raises(ChatError, match="template"):
            chat.send("Hi")
        assert chat.history == []


def test_sampler_chain_is_qwens(engine):
    from edge.runtime.sampling import build_sampler
    chat = Chat(engine, presence_penalty=1.5)
    sampler = build_sampler(chat.sampling_params(True), engine.llama.n_vocab())
    n = llama_cpp.llama_sampler_chain_n(sampler.sampler)
    names = [llama_cpp.llama_sampler_name(llama_cpp.llama_sampler_chain_get(sampler.sampler, i)).decode()
             for i in range(n)]
    assert names == ["penalties", "top-k", "top-p", "temp", "dist"]  # min_p 0 is no filter at all


# 30 candidates whose logits fall by 0.04 per rank, in shuffled id order: flat enough that
# top_k and top_p both decide how many survive.
CANDIDATES = np.empty(30, dtype=np.float32)
CANDIDATES[np.random.default_rng(0).permutation(30)] = 1.0 - 0.04 * np.arange(30)


def expected_survivors(logits, *, top_k, top_p, temperature, min_p=0.0, penalized=(), presence=0.0) -> dict[int, float]:
    """llama.cpp's chain (penalties, top_k, top_p, min_p, temperature) in NumPy: survivor -> logit."""
    ls = logits.astype(np.float64)
    ls[list(penalized)] -= presence
    order = np.argsort(-ls, kind="stable")[:top_k]
    probs = np.exp(ls[order] - ls[order].max())
    cum = np.cumsum(probs / probs.sum())
    assert np.min(np.abs(cum - top_p)) > 1e-3, "candidates too close to the top_p edge for float32"
    order = order[: int(np.argmax(cum >= top_p)) + 1]
    if min_p:
        floor = ls[order].max() + np.log(min_p)
        assert np.min(np.abs(ls[order] - floor)) > 1e-3
        order = order[ls[order] >= floor]
    return {int(i): ls[i] / temperature for i in order}


def assert_chain_keeps(sampler, expected: dict[int, float], accepted=()) -> None:
    logits, probs, selected = apply_sampler(sampler, CANDIDATES, list(accepted))
    assert sorted(logits) == sorted(expected)
    assert [logits[i] for i in sorted(logits)] == pytest.approx([expected[i] for i in sorted(expected)], abs=1e-5)
    want = np.array([expected[i] for i in sorted(expected)])
    want = np.exp(want - want.max())
    assert [probs[i] for i in sorted(probs)] == pytest.approx(want / want.sum(), abs=1e-5)
    assert selected in expected


@pytest.mark.parametrize("thinking, top_p, temperature, survivors", [(True, 0.95, 0.6, 19), (False, 0.8, 0.7, 15)])
def test_sampler_keeps_what_qwens_preset_keeps(engine, thinking, top_p, temperature, survivors):
    """Qwen's settings (top_k 20; top_p 0.95 / 0.8; temperature 0.6 / 0.7; min_p 0), written out
    here, against the chain the chat builds, run by llama.cpp on known candidates."""
    from edge.runtime.sampling import build_sampler
    expected = expected_survivors(CANDIDATES, top_k=20, top_p=top_p, temperature=temperature)
    assert len(expected) == survivors
    assert_chain_keeps(build_sampler(Chat(engine, seed=1).sampling_params(thinking), engine.llama.n_vocab()), expected)


@pytest.mark.parametrize("override, survivors", [
    ({"top_k": 4}, 4), ({"top_p": 0.5}, 9), ({"min_p": 0.8}, 6), ({"temperature": 1.3}, 19), ({"presence_penalty": 0.1}, 19),
])
def test_sampler_applies_each_override(engine, override, survivors):
    """Each field of SamplingParams, changed alone from Qwen's thinking preset, changes what
    llama.cpp keeps or how it scales it. The presence penalty hits two tokens already said (ranks
    0 and 3), small enough that they survive, so its size shows in their logits."""
    from edge.runtime.sampling import SamplingParams, build_sampler
    base = dict(temperature=0.6, top_p=0.95, top_k=20, min_p=0.0, presence_penalty=0.0)
    params = {**base, **override}
    said = [int(np.argsort(-CANDIDATES)[r]) for r in (0, 3)]
    expected = expected_survivors(CANDIDATES, top_k=params["top_k"], top_p=params["top_p"], min_p=params["min_p"],
                                  temperature=params["temperature"], penalized=said, presence=params["presence_penalty"])
    assert len(expected) == survivors and set(said) <= set(expected)
    sampler = build_sampler(SamplingParams(**params, seed=3), engine.llama.n_vocab())
    assert_chain_keeps(sampler, expected, accepted=said)


def test_budget_at_the_end_of_the_context_stops_cleanly(looping_gguf):
    """Thinking that reaches its budget with no room left for Qwen's phrase ends as "length"."""
    with Engine.load(looping_gguf, n_ctx=256) as e:
        chat = Chat(e, budget=236, seed=1)
        reply = chat.send("Hi")
        assert reply.stop_reason == "length" and not reply.budget_hit
        assert e.llama.n_tokens <= e.n_ctx
        assert Chat(e, budget=8, seed=1).send("Again").budget_hit  # the engine is still usable
