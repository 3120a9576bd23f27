"""The runtime end to end on a scripted Qwen3 model (it says a known script, see
tests/scripted_model.py), so thinking, answers, budgets, history and KV reuse show as exact text."""

from __future__ import annotations

import json
import threading

import llama_cpp
import pytest
from jinja2 import Environment

from edge.chat import BUDGET_PHRASE, Chat, ChatError
from edge.engine import Engine, EngineError
from edge.modes import Mode
from quantize import quantize_model
from tests.model_factory import FIXTURES
from tests.tiny_gguf import write_foreign_gguf
from tests.scripted_model import (QWEN3_SCRIPT, SCRIPT_ANSWER_TEXT, SCRIPT_THINKING_IDS, SCRIPT_THINKING_MODE_IDS,
                                  SCRIPT_THINKING_TEXT, build_scripted_model)

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
    assert isinstance(engine.llama, llama_cpp.Llama)
    assert engine.backend == "cpu" and engine.n_ctx == 2048
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
    phrase = BUDGET_PHRASE[: BUDGET_PHRASE.index("</think>")].rstrip("\n")
    first_n = engine.llama.detokenize(SCRIPT_THINKING_IDS[:budget]).decode()
    assert reply.thinking == (first_n + phrase if budget else phrase)
    assert reply.answer == SCRIPT_ANSWER_TEXT and reply.stop_reason == "eos"
    # The phrase went onto the KV cache after the thinking: the prompt was evaluated once.
    assert engine.llama.n_tokens == reply.prompt_tokens + reply.generated_tokens + len(engine.tokenize(BUDGET_PHRASE))


def test_budget_larger_than_thinking_is_not_hit(engine):
    reply = Chat(engine, budget=100, seed=6).send("Count")
    assert not reply.budget_hit and reply.thinking == SCRIPT_THINKING_TEXT


def test_follow_up_turn_evaluates_only_new_tokens(engine):
    chat = Chat(engine, seed=7)
    first = chat.send("What is six times seven?")
    second = chat.send("And six times eight?")
    # Turn 1's prompt is a prefix of turn 2's: only the answer and the new message are evaluated.
    assert second.evaluated_tokens == second.prompt_tokens - first.prompt_tokens
    assert second.evaluated_tokens < second.prompt_tokens


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
        assert chat.messages()[0] == {"role": "system", "content": "Be brief."}
        assert chat.history[-1].content == SCRIPT_ANSWER_TEXT
        assert len(chat.history) < 16
        with pytest.raises(ChatError, match="too long"):
            chat.send("word " * 400)
        assert chat.history[-1].content == SCRIPT_ANSWER_TEXT


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
    from edge.sampling import build_sampler
    chat = Chat(engine, presence_penalty=1.5)
    sampler = build_sampler(chat.sampling_params(True), engine.llama.n_vocab())
    n = llama_cpp.llama_sampler_chain_n(sampler.sampler)
    names = [llama_cpp.llama_sampler_name(llama_cpp.llama_sampler_chain_get(sampler.sampler, i)).decode()
             for i in range(n)]
    assert names == ["penalties", "top-k", "top-p", "temp", "dist"]  # min_p 0 is no filter at all
    assert chat.sampling_params(True).presence_penalty == 1.5
    assert chat.sampling_params(False).temperature == 0.7


def test_budget_at_the_end_of_the_context_stops_cleanly(tmp_path):
    """Thinking that reaches its budget with no room left for Qwen's phrase ends as "length"."""
    from tests.test_tmux_chat import looping_script
    folder = build_scripted_model(tmp_path / "looping", looping_script())
    path = quantize_model(folder, "f16", tmp_path / "looping.gguf").output
    with Engine.load(path, n_ctx=256) as e:
        chat = Chat(e, budget=236, seed=1)
        reply = chat.send("Hi")
        assert reply.stop_reason == "length" and not reply.budget_hit
        assert e.llama.n_tokens <= e.n_ctx
        assert Chat(e, budget=8, seed=1).send("Again").budget_hit  # the engine is still usable
