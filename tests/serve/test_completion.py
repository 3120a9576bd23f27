"""The messages entry point (edge.complete / Engine.create_chat_completion) and the request fields
it honours, shown through llama.cpp: a scripted model for exact text, a random-weight model
(greedy) for the penalties, whose scripted logits would be too large to move."""

from __future__ import annotations

import pytest

from edge import ChatError, complete
from edge.serve.completion import continuation_prompt
from edge.runtime.engine import Engine
from edge.protocol.modes import Mode
from edge.serve.openai_api import RequestError, parse_request
from tests.scripted_model import SCRIPT_ANSWER_IDS, SCRIPT_ANSWER_TEXT, SCRIPT_THINKING_TEXT

HI = [{"role": "user", "content": "Hi"}]


def refused(body: dict) -> RequestError:
    with pytest.raises(RequestError) as e:
        parse_request(body)
    return e.value


# ---- parse_request: liberal in what it accepts, exact in what it does -----------------------------
def test_unknown_fields_and_message_keys_are_accepted_and_listed():
    req = parse_request({"messages": [{"role": "user", "content": "hi", "id": 1, "opts": {}}], "num_ctx": 4096,
                         "repeat_last_n": 3, "stream_options": {"chunk_size": 3}, "chat_template_kwargs": {"x": 1},
                         "reasoning": {"summary": "auto"}})
    assert req.user == "hi"
    assert req.ignored == ["num_ctx", "repeat_last_n", "messages[0].id", "messages[0].opts",
                           "chat_template_kwargs.x", "reasoning.summary", "stream_options.chunk_size"]


def test_a_known_field_with_a_bad_value_is_still_a_400_naming_it():
    assert refused({"messages": HI, "frequency_penalty": "a lot"}).param == "frequency_penalty"
    assert refused({"messages": HI, "logit_bias": {"x": 1}}).param == "logit_bias"
    assert refused({"messages": HI, "logit_bias": {"5": 101}}).param == "logit_bias.5"
    assert refused({"messages": HI, "n": 0}).param == "n"
    assert refused({"messages": HI, "top_logprobs": 21}).param == "top_logprobs"
    assert refused({"messages": HI, "ignore_eos": "yes"}).param == "ignore_eos"
    assert refused({"messages": HI, "repetition_penalty": 0}).param == "repetition_penalty"
    assert refused({"messages": HI, "thinking": {"type": "sometimes"}}).param == "thinking.type"


def test_sampling_fields_become_sampler_overrides():
    req = parse_request({"messages": HI, "frequency_penalty": 0.5, "repeat_penalty": 1.1, "logit_bias": {"9707": -100},
                         "top_k": 5, "min_p": 0.1})
    assert req.sampling == {"frequency_penalty": 0.5, "repeat_penalty": 1.1, "logit_bias": ((9707, -100.0),),
                            "top_k": 5, "min_p": 0.1}
    assert parse_request({"messages": HI, "repetition_penalty": 1.3, "repeat_penalty": 1.1}).sampling == \
        {"repeat_penalty": 1.3}  # vLLM's name wins over llama.cpp's
    assert parse_request({"messages": HI, "logit_bias": [[7, 2]]}).sampling["logit_bias"] == ((7, 2.0),)


@pytest.mark.parametrize("fields, mode", [
    ({"enable_thinking": False}, Mode.NO_THINK), ({"enable_thinking": True}, Mode.THINK),
    ({"reasoning": {"effort": "none"}}, Mode.NO_THINK), ({"reasoning": {"enabled": False}}, Mode.NO_THINK),
    ({"thinking": {"type": "disabled"}}, Mode.NO_THINK), ({"thinking": {"type": "enabled", "budget_tokens": 9}}, Mode.THINK),
    ({"reasoning_effort": "minimal"}, Mode.NO_THINK), ({"chat_template_kwargs": {"enable_thinking": False}}, Mode.NO_THINK),
])
def test_every_dialects_thinking_switch(fields, mode):
    assert parse_request({"messages": HI, **fields}).mode is mode


def test_thinking_budgets_and_exclude_from_every_dialect():
    assert parse_request({"messages": HI, "thinking_budget": 7}).budget == 7
    assert parse_request({"messages": HI, "reasoning": {"max_tokens": 8, "exclude": True}}).budget == 8
    assert parse_request({"messages": HI, "reasoning": {"exclude": True}}).hide_reasoning
    assert parse_request({"messages": HI, "thinking": {"type": "enabled", "budget_tokens": 9}}).budget == 9


def test_switches_that_disagree_are_refused_naming_the_second():
    e = refused({"messages": HI, "enable_thinking": True, "thinking": {"type": "disabled"}})
    assert e.param == "thinking.type" and "contradicts enable_thinking" in e.message


def test_max_tokens_beyond_the_context_is_kept_not_refused():
    assert parse_request({"messages": HI, "max_tokens": 10**6}, 1024).max_tokens == 10**6


def test_replayed_reasoning_is_kept_as_the_turns_thinking():
    req = parse_request({"messages": [*HI, {"role": "assistant", "content": "a", "reasoning": "r1",
                                            "reasoning_details": [{"type": "reasoning.text"}]},
                                      {"role": "user", "content": "b"}]})
    assert req.history[1].thinking == "r1" and req.ignored == []


def test_prefill_and_system_only_requests():
    req = parse_request({"messages": [*HI, {"role": "assistant", "content": "The answer"}]})
    assert req.user == "Hi" and req.prefill.content == "The answer" and req.mode is Mode.NO_THINK
    req = parse_request({"messages": [{"role": "system", "content": "Greet the user."}]})
    assert req.system == "Greet the user." and req.user is None and req.history == [] and req.prefill is None


def test_media_parts_are_refused_in_one_line():
    e = refused({"messages": [{"role": "user", "content": [{"type": "text", "text": "what is this?"},
                                                           {"type": "image_url", "image_url": {"url": "x"}}]}]})
    assert e.param == "messages[0].content[1]" and "text-only" in e.message
    assert refused({"messages": HI, "modalities": ["text", "audio"]}).param == "modalities"


def test_continuation_prompt_ends_where_the_assistant_message_ended():
    rendered = "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\nThe ans<|im_end|>\n"
    assert continuation_prompt(rendered).endswith("</think>\n\nThe ans")


# ---- through llama.cpp -----------------------------------------------------------------------------
@pytest.fixture(scope="module")
def engine(scripted_gguf):
    with Engine.load(scripted_gguf, n_ctx=512, n_threads=1) as e:
        yield e


def test_complete_returns_openais_shape(engine):
    r = engine.create_chat_completion(HI, seed=1)
    assert r["object"] == "chat.completion" and r["choices"][0]["finish_reason"] == "stop"
    m = r["choices"][0]["message"]
    assert m["content"] == SCRIPT_ANSWER_TEXT and m["reasoning_content"] == SCRIPT_THINKING_TEXT
    assert r["usage"]["completion_tokens_details"]["reasoning_tokens"] > 0 and r["choices"][0]["logprobs"] is None


def test_complete_streams_chunks_that_add_up(engine):
    chunks = list(complete(engine, HI, stream=True, seed=1, stream_options={"include_usage": True}))
    deltas = [c["choices"][0]["delta"] for c in chunks if c["choices"]]
    assert "".join(d.get("content") or "" for d in deltas) == SCRIPT_ANSWER_TEXT
    assert "".join(d.get("reasoning_content") or "" for d in deltas) == SCRIPT_THINKING_TEXT
    assert chunks[-1]["usage"]["completion_tokens"] > 0


def test_a_bad_request_is_a_chat_error_naming_the_field(engine):
    with pytest.raises(ChatError) as e:
        complete(engine, HI, temperature=5)
    assert e.value.param == "temperature"
    with pytest.raises(ChatError, match="beyond the vocabulary"):
        complete(engine, HI, logit_bias={"999999": 5})


def test_n_choices_each_answer(engine):
    r = complete(engine, HI, n=2, seed=3, reasoning_effort="none")
    assert [c["index"] for c in r["choices"]] == [0, 1]
    assert all(c["message"]["content"] == SCRIPT_ANSWER_TEXT for c in r["choices"])
    one = complete(engine, HI, seed=3, reasoning_effort="none")
    assert r["usage"]["completion_tokens"] == 2 * one["usage"]["completion_tokens"]


def test_logit_bias_bans_a_token(engine):
    """Banning the script's first answer token turns the scripted reply off its script."""
    plain = complete(engine, HI, seed=1, enable_thinking=False, max_tokens=8)
    banned = complete(engine, HI, seed=1, enable_thinking=False, max_tokens=8,
                      logit_bias={str(SCRIPT_ANSWER_IDS[0]): -100})
    assert plain["choices"][0]["message"]["content"] == SCRIPT_ANSWER_TEXT
    assert not banned["choices"][0]["message"]["content"].startswith("The")


def test_ignore_eos_generates_to_max_tokens(engine):
    r = complete(engine, HI, seed=1, enable_thinking=False, max_tokens=12, ignore_eos=True)
    assert r["choices"][0]["finish_reason"] == "length" and r["usage"]["completion_tokens"] == 12
    assert r["choices"][0]["message"]["content"].startswith(SCRIPT_ANSWER_TEXT)


def test_max_tokens_past_the_context_ends_with_length(engine):
    r = complete(engine, HI, seed=1, enable_thinking=False, max_tokens=10**6, ignore_eos=True)
    assert r["choices"][0]["finish_reason"] == "length"
    assert r["usage"]["prompt_tokens"] + r["usage"]["completion_tokens"] == engine.n_ctx


def test_logprobs_are_the_sampled_tokens_under_the_chains_temperature(engine):
    r = complete(engine, HI, seed=1, enable_thinking=False, logprobs=True, top_logprobs=3)
    content = r["choices"][0]["logprobs"]["content"]
    assert "".join(e["token"] for e in content) == SCRIPT_ANSWER_TEXT
    assert [e["token"] for e in content] == [engine.llama.detokenize([t]).decode() for t in SCRIPT_ANSWER_IDS]
    for e in content:  # the scripted logit (~40) over 0.7 leaves the others near exp(-57)
        assert -1e-6 < e["logprob"] <= 0 and len(e["top_logprobs"]) == 3
        assert e["top_logprobs"][0]["token"] == e["token"] and e["top_logprobs"][1]["logprob"] < -30
        assert bytes(e["bytes"]).decode() == e["token"]


def test_streamed_logprobs_ride_on_the_content_chunks(engine):
    chunks = list(complete(engine, HI, stream=True, seed=1, enable_thinking=False, logprobs=True))
    entries = [e for c in chunks if c["choices"] and c["choices"][0].get("logprobs")
               for e in c["choices"][0]["logprobs"]["content"]]
    assert "".join(e["token"] for e in entries) == SCRIPT_ANSWER_TEXT


def test_prefill_is_continued(engine):
    r = complete(engine, [*HI, {"role": "assistant", "content": "The answer"}], seed=1)
    assert r["choices"][0]["message"]["content"] == SCRIPT_ANSWER_TEXT.removeprefix("The answer")


def test_system_only_request_is_answered(engine):
    r = complete(engine, [{"role": "system", "content": "Greet."}], seed=1)
    assert r["choices"][0]["message"]["content"] == SCRIPT_ANSWER_TEXT


def test_reasoning_exclude_thinks_but_returns_no_reasoning(engine):
    r = complete(engine, HI, seed=1, reasoning={"exclude": True})
    m = r["choices"][0]["message"]
    assert "reasoning_content" not in m and m["content"] == SCRIPT_ANSWER_TEXT
    assert r["usage"]["completion_tokens_details"]["reasoning_tokens"] > 0


# ---- penalties, on a random-weight model sampled greedily --------------------------------------------
@pytest.fixture(scope="module")
def random_engine(converted):
    with Engine.load(converted("tied", "f16"), n_ctx=512, n_threads=1) as e:
        yield e


def greedy(engine, **fields) -> list[str]:
    r = complete(engine, HI, enable_thinking=False, temperature=0, max_tokens=48, ignore_eos=True,
                 logprobs=True, **fields)
    return [e["token"] for e in r["choices"][0]["logprobs"]["content"]]


@pytest.mark.parametrize("field, value", [("frequency_penalty", 2.0),
                                          ("repeat_penalty", 3.0), ("repetition_penalty", 3.0)])
def test_penalties_change_what_a_repetitive_model_says(random_engine, field, value):
    """A random model sampled greedily repeats itself; llama.cpp's penalties sampler makes it
    repeat less. Its penalty counts the last 64 tokens, so repeats in 48 tokens go down."""
    plain, penalized = greedy(random_engine), greedy(random_engine, **{field: value})
    repeats = lambda tokens: len(tokens) - len(set(tokens))  # noqa: E731
    assert repeats(plain) > 0 and repeats(penalized) < repeats(plain)


def test_logprobs_follow_the_chains_temperature(engine):
    """The runner-up's log-probability scales with 1/temperature (its logit is ~0, the script's ~40)."""
    def runner_up(t: float) -> float:
        r = complete(engine, HI, seed=1, enable_thinking=False, temperature=t, top_logprobs=2, max_tokens=1)
        return r["choices"][0]["logprobs"]["content"][0]["top_logprobs"][1]["logprob"]
    assert runner_up(2.0) / runner_up(0.5) == pytest.approx(0.25, rel=0.02)


def test_n_choices_run_together_on_parallel_slots(scripted_gguf):
    """With two slots the two choices decode in the same llama.cpp batches: fewer decode steps
    than their tokens, and each is the exact script."""
    with Engine.load(scripted_gguf, n_ctx=512, n_threads=1, parallel=2) as e:
        r = complete(e, HI, n=2, seed=1, enable_thinking=False)
        assert [c["message"]["content"] for c in r["choices"]] == [SCRIPT_ANSWER_TEXT] * 2
        assert e.scheduler.steps < r["usage"]["completion_tokens"], e.scheduler.steps  # in turn: one step per token


def test_complete_from_threads_on_one_stream_waits_its_turn(engine):
    """Four threads on a single-stream engine: each reply exact (never two decodes on one context)."""
    from concurrent.futures import ThreadPoolExecutor
    with ThreadPoolExecutor(4) as pool:
        replies = list(pool.map(lambda i: complete(engine, [{"role": "user", "content": f"q{i}"}], seed=i,
                                                   enable_thinking=False), range(4)))
    assert [r["choices"][0]["message"]["content"] for r in replies] == [SCRIPT_ANSWER_TEXT] * 4
