"""The chat loop on the three kinds of small Qwen3 model, with scripted models carrying 2507-like
templates: a thinking-only model whose template opens <think> in the prompt (its output holds only
</think>), a non-thinking-only model, and the hybrid; plus the automatic and time budgets and
max_tokens leaving room for an answer."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from jinja2 import Environment

from edge import Chat, Engine
from edge.protocol.budget import MIN_BUDGET, auto_budget, difficulty, time_budget, turn_budget
from edge.protocol.model_kind import ModelKind
from quantize import quantize_model
from tests.model_factory import FIXTURES
from tests.scripted_model import (BUDGET_END, DOUBLE_NEWLINE, END_THINK, IM_END, NEWLINE, SCRIPT_ANSWER_IDS,
                                  SCRIPT_ANSWER_TEXT, SCRIPT_THINKING_IDS, SCRIPT_THINKING_TEXT, build_scripted_model,
                                  chain)

TEMPLATES = FIXTURES.parent / "templates"


def thinking_only_script() -> dict[int, int]:
    """The prompt ends "<think>\\n": "\\n" leads straight into the thinking, which </think> closes."""
    table = chain(NEWLINE, [*SCRIPT_THINKING_IDS, END_THINK, DOUBLE_NEWLINE, *SCRIPT_ANSWER_IDS, IM_END])
    table[BUDGET_END] = SCRIPT_ANSWER_IDS[0]
    return table


def answer_only_script() -> dict[int, int]:
    return chain(NEWLINE, [*SCRIPT_ANSWER_IDS, IM_END])


def build(root: Path, name: str, script: dict[int, int], template: str | None) -> Path:
    folder = build_scripted_model(root / name, script)
    if template:
        cfg_path = folder / "tokenizer_config.json"
        cfg = json.loads(cfg_path.read_text())
        cfg["chat_template"] = (TEMPLATES / template).read_text()
        cfg_path.write_text(json.dumps(cfg))
    return Path(quantize_model(folder, "f16", root / f"{name}.gguf").output)


@pytest.fixture(scope="module")
def kinds(tmp_path_factory):
    root = tmp_path_factory.mktemp("kinds")
    paths = {"thinking": build(root, "thinking", thinking_only_script(), "qwen3-thinking-2507.jinja"),
             "instruct": build(root, "instruct", answer_only_script(), "qwen3-instruct-2507.jinja")}
    engines = {k: Engine.load(p, n_ctx=1024) for k, p in paths.items()}
    yield engines
    for e in engines.values():
        e.close()


def reference(template: str, messages, thinking=True) -> str:
    env = Environment(trim_blocks=True, lstrip_blocks=True)
    return env.from_string((TEMPLATES / template).read_text()).render(
        messages=messages, add_generation_prompt=True, enable_thinking=thinking)


def test_thinking_only_model_splits_thinking_from_answer(kinds):
    engine = kinds["thinking"]
    assert engine.kind is ModelKind.THINKING
    chat = Chat(engine, seed=1)
    events = list(chat.stream("Hi"))
    reply = events[-1].reply
    assert (reply.thinking, reply.answer, reply.stop_reason) == (SCRIPT_THINKING_TEXT, SCRIPT_ANSWER_TEXT, "eos")
    assert "".join(e.text for e in events if e.kind == "thinking") == SCRIPT_THINKING_TEXT
    assert "".join(e.text for e in events if e.kind == "answer") == SCRIPT_ANSWER_TEXT
    assert reply.thinking_tokens == len(SCRIPT_THINKING_IDS) and reply.thinking_enabled
    # the history keeps the answer only: the next prompt is the template's, without the thinking
    second = chat.send("Again")
    messages = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": SCRIPT_ANSWER_TEXT,
                                                      "reasoning_content": SCRIPT_THINKING_TEXT},
                {"role": "user", "content": "Again"}]
    prompt = engine.llama.detokenize(engine.llama.input_ids[: second.prompt_tokens].tolist(), special=True).decode()
    assert prompt == reference("qwen3-thinking-2507.jinja", messages)
    assert SCRIPT_THINKING_TEXT not in prompt


@pytest.mark.parametrize("budget", [0, 3])
def test_thinking_only_budget_fires(kinds, budget):
    reply = Chat(kinds["thinking"], budget=budget, seed=2).send("Count")
    assert reply.budget_hit and reply.thinking_tokens == budget and reply.thinking_cut == "budget"
    assert reply.answer == SCRIPT_ANSWER_TEXT
    assert reply.thinking.endswith("based on the thinking directly now.")


def test_no_think_to_a_thinking_only_model_says_so(kinds):
    chat = Chat(kinds["thinking"], seed=3)
    events = list(chat.stream("Quick /no_think"))
    notices = [e.text for e in events if e.kind == "notice"]
    reply = events[-1].reply
    assert notices and "thinking-only" in notices[0] and "/no_think" in notices[0]
    assert reply.notices == tuple(notices) and reply.thinking == SCRIPT_THINKING_TEXT


def test_think_to_a_non_thinking_model_says_so(kinds):
    engine = kinds["instruct"]
    assert engine.kind is ModelKind.NON_THINKING
    chat = Chat(engine, seed=4)
    plain = chat.send("Hi")
    assert (plain.thinking, plain.answer, plain.notices, plain.thinking_enabled) == ("", SCRIPT_ANSWER_TEXT, (), False)
    asked = chat.send("Think hard /think")
    assert asked.answer == SCRIPT_ANSWER_TEXT and "non-thinking-only" in asked.notices[0]
    auto = Chat(engine, mode="auto", seed=4).send("Why is the sky blue?")
    assert "auto mode" in auto.notices[0] and not auto.thinking_enabled


def test_max_tokens_cuts_thinking_to_leave_room_for_an_answer(scripted_gguf):
    with Engine.load(scripted_gguf, n_ctx=1024) as engine:
        reply = Chat(engine, max_tokens=12, seed=5).send("Hi")
        # 12 tokens, a quarter kept for the answer: <think> + 8 thinking tokens, then the phrase
        assert reply.thinking_cut == "max_tokens" and not reply.budget_hit
        assert reply.thinking_tokens == 8 and reply.generated_tokens == 12
        assert reply.answer == "The answer is" and reply.stop_reason == "length"
        assert any("max_tokens" in n for n in reply.notices)
        roomy = Chat(engine, max_tokens=100, seed=5).send("Hi")
        assert roomy.thinking_cut is None and roomy.thinking == SCRIPT_THINKING_TEXT


@pytest.fixture(scope="module")
def looping(looping_gguf):
    with Engine.load(looping_gguf, n_ctx=512) as engine:
        yield engine


@pytest.mark.parametrize("message, speed, expected", [
    ("Hello!", 2.0, 64),                                    # light: min(256, 15 s * 2) -> at least 64
    ("Why do leaves change colour in autumn?", 2.0, 90),    # reasoning: 45 s * 2
    ("Solve 12 * 7 + 3", 1.5, 135),                         # math: 90 s * 1.5
])
def test_auto_budget_follows_difficulty_and_speed(looping, message, speed, expected):
    chat = Chat(looping, budget="auto", seed=6)
    chat.measured_tokens_per_s = speed
    reply = chat.send(message)
    assert reply.thinking_budget == expected == auto_budget(message, speed)
    assert reply.budget_hit and reply.thinking_tokens == expected and reply.answer == SCRIPT_ANSWER_TEXT


def test_think_time_is_a_token_budget_from_the_measured_speed(looping):
    chat = Chat(looping, think_time=20.0, seed=7)
    chat.measured_tokens_per_s = 5.0
    reply = chat.send("Hi")
    assert reply.thinking_budget == 100 and reply.thinking_tokens == 100 and reply.budget_hit
    fresh = Chat(looping, think_time=0.5, seed=7)  # no speed yet: measured on this reply's first tokens
    reply = fresh.send("Hi")
    assert reply.budget_hit and reply.thinking_tokens == reply.thinking_budget >= MIN_BUDGET
    assert fresh.measured_tokens_per_s == reply.tokens_per_s


def test_budget_rules_are_plain():
    assert difficulty("你好") == "light" and difficulty("Fix this `print(1` bug") == "hard"
    assert time_budget(10, 3.3) == 64 and time_budget(100, 3.3) == 330
    assert turn_budget(None, None, "x", 10.0) is None
    assert turn_budget(500, 10.0, "x", 20.0) == 200 and turn_budget(100, 10.0, "x", 20.0) == 100
    assert turn_budget("auto", None, "Hello", None) == 256
    assert auto_budget("Solve 12 * 7 + 3", 100.0) == 4096  # a fast machine: the token cap
    assert turn_budget(None, 5.0, "x", None) is None  # waits for a measured speed


def test_thinking_only_through_run_json_and_serve(kinds):
    import openai
    from typer.testing import CliRunner

    from cli.main import app
    from tests.serve.test_server import reasoning, serving

    engine = kinds["thinking"]
    r = CliRunner().invoke(app, ["run", str(engine.info.path), "Hi", "--json", "--seed", "1"])
    assert r.exit_code == 0, r.output
    out = json.loads(r.stdout)
    assert (out["thinking"], out["answer"]) == (SCRIPT_THINKING_TEXT, SCRIPT_ANSWER_TEXT)
    with serving(engine) as port:
        client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="x", max_retries=0)
        msg = client.chat.completions.create(model="m", messages=[{"role": "user", "content": "Hi"}], seed=1)
        assert (reasoning(msg.choices[0].message), msg.choices[0].message.content) == (SCRIPT_THINKING_TEXT,
                                                                                       SCRIPT_ANSWER_TEXT)
        thinking, answer = [], []
        for c in client.chat.completions.create(model="m", messages=[{"role": "user", "content": "Hi"}], seed=1,
                                                stream=True, extra_body={"thinking_budget": 2}):
            for ch in c.choices:
                thinking.append((ch.delta.model_extra or {}).get("reasoning_content") or "")
                answer.append(ch.delta.content or "")
        assert "".join(thinking).startswith("Let me") and "directly now." in "".join(thinking)
        assert "".join(answer) == SCRIPT_ANSWER_TEXT
        off = client.chat.completions.create(model="m", messages=[{"role": "user", "content": "Hi"}], seed=1,
                                             extra_body={"chat_template_kwargs": {"enable_thinking": False}})
        assert "thinking-only" in off.choices[0].message.model_extra["notices"][0]


def test_the_gguf_brings_its_own_sampling_preset(tmp_path):
    """generation_config.json -> general.sampling.* -> the sampler: for a hybrid model it is the
    thinking preset (Qwen's non-thinking preset stays); overrides still win."""
    from edge.runtime.sampling import NON_THINKING
    folder = build_scripted_model(tmp_path / "preset", answer_only_script())
    (folder / "generation_config.json").write_text(json.dumps({"temperature": 0.55, "top_p": 0.9, "top_k": 30,
                                                               "min_p": 0.01}))
    path = quantize_model(folder, "f16", tmp_path / "preset.gguf").output
    with Engine.load(path, n_ctx=512) as engine:
        think = Chat(engine).sampling_params(True)
        assert (think.temperature, think.top_p, think.top_k, think.min_p) == (0.55, 0.9, 30, 0.01)
        assert Chat(engine).sampling_params(False) == NON_THINKING
        assert Chat(engine, sampling={"top_k": 5}).sampling_params(True).top_k == 5
