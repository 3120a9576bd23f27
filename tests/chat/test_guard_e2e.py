"""End to end through llama.cpp, one test per newer claim (issue 21): the scheduler's prompt chunks,
grammars that leave the thinking free, streamed tool calls, stop strings over several tokens, seeds
(library, `run`, serve) and sampling settings under a grammar, explicit KV types with parallel slots.
The rules themselves are unit-tested in tests/protocol/test_guard_rules.py."""

from __future__ import annotations

import json
import re
import threading
from pathlib import Path

import llama_cpp
import numpy as np
import openai
import pytest
from typer.testing import CliRunner

from cli.main import app
from edge.chat import Chat, Event, Reply
from edge.runtime.cpu_buffers import safe_llama
from edge.runtime.devices import capture_llama_log
from edge.runtime.engine import Engine
from edge.runtime.scheduler import Scheduler
from edge.protocol.tool_calls import ToolCall
from quantize import quantize_model
from tests import tool_scripts
from tests.scripted_model import DOUBLE_NEWLINE, END_THINK, IM_END, NEWLINE, THINK, build_scripted_model
from tests.serve.test_server import serving

runner = CliRunner(env={"COLUMNS": "200"})
NO_THINK = {"chat_template_kwargs": {"enable_thinking": False}}
HI = [{"role": "user", "content": "Hi"}]


@pytest.fixture(scope="module")
def random_gguf(converted) -> Path:
    """Random weights: near-uniform logits, so at temperature 1 the seed decides every token."""
    return converted("untied", "f16")  # the tied one mostly repeats its last token


@pytest.fixture(scope="module")
def random_engine(random_gguf):
    with Engine.load(random_gguf, n_ctx=512, n_threads=2) as engine:
        yield engine


# ---- scheduler: prompt chunks beside a generating slot -------------------------------------------
def test_a_long_prompt_beside_a_generating_slot_goes_in_chunks_at_continuous_positions(random_gguf, monkeypatch):
    """While slot A generates, slot B's 40-token prompt enters at most `prompt_chunk` tokens per
    step, at positions 0..39 in order, and its last logits are those of the same prompt evaluated
    in one piece."""
    chunk, prompt = 8, [(37 * i + 11) % 5000 + 100 for i in range(40)]
    ref = safe_llama(str(random_gguf), n_ctx=64, n_batch=64, n_threads=2, logits_all=True, verbose=False)
    try:
        ref.eval(prompt)
        expected = np.array(ref.scores[len(prompt) - 1], dtype=np.float64)
    finally:
        ref.close()

    llama = safe_llama(str(random_gguf), n_ctx=64, n_batch=64, n_threads=2, verbose=False)
    batches: list[list[tuple[int, int, int]]] = []
    decode = llama_cpp.llama_decode

    def recording(ctx, batch):
        batches.append([(batch.seq_id[i][0], batch.pos[i], batch.token[i]) for i in range(batch.n_tokens)])
        return decode(ctx, batch)

    monkeypatch.setattr(llama_cpp, "llama_decode", recording)
    sched = Scheduler(llama, 2, 256, n_batch=64, prompt_chunk=chunk)
    cancel, a_started, b_done = threading.Event(), threading.Event(), threading.Event()
    try:
        a = sched.acquire([1, 2, 3], cancel)

        def generate():
            a.prefill([1, 2, 3])
            for k in range(150):
                a.eval([500 + k])
                a_started.set()
                if b_done.is_set():
                    break

        worker = threading.Thread(target=generate)
        worker.start()
        assert a_started.wait(60)
        b = sched.acquire(prompt, cancel)
        assert b.seq_id != a.seq_id
        b.prefill(prompt)
        b_done.set()
        worker.join(60)
        got = np.array(b.logits, dtype=np.float64)
        a.release(), b.release()
    finally:
        sched.close()
        llama.close()

    mine = [[(pos, tok) for seq, pos, tok in batch if seq == b.seq_id] for batch in batches]
    mine_with_a = [m for m, batch in zip(mine, batches) if m and any(seq == a.seq_id for seq, _, _ in batch)]
    assert mine_with_a, "slot A generated beside none of B's prompt steps"
    assert max(len(m) for m in mine_with_a) <= chunk
    assert [p for m in mine for p, _ in m] == list(range(len(prompt)))
    assert [t for m in mine for _, t in m] == prompt
    assert np.abs(got - expected).max() < 2e-2 * max(1.0, np.abs(expected).max())
    assert int(got.argmax()) == int(expected.argmax())


# ---- grammars leave the thinking free -------------------------------------------------------------
THINKING_WITH_MARKER = "Maybe<tool_call> is how a call starts, but not yet"
JSON_ANSWER = '{"ok":true}'


@pytest.fixture(scope="module")
def marker_in_thinking_gguf(tmp_path_factory) -> Path:
    """Thinks a text holding <tool_call> followed by prose, closes the thinking, answers JSON."""
    ids = tool_scripts.ids
    thinking = [*ids("Maybe"), tool_scripts.TOOL_OPEN, *ids(" is how a call starts, but not yet")]
    script = tool_scripts.chain(NEWLINE, [THINK, *thinking, END_THINK, DOUBLE_NEWLINE, *ids(JSON_ANSWER), IM_END])
    root = tmp_path_factory.mktemp("marker-in-thinking")
    return Path(quantize_model(build_scripted_model(root / "m", script), "f16", root / "m.gguf").output)


@pytest.mark.parametrize("turn", [{"tools": [tool_scripts.WEATHER_TOOL]},
                                  {"tools": [tool_scripts.WEATHER_TOOL], "response_format": {"type": "json_object"}}],
                         ids=["tools", "tools+json"])
def test_a_tool_call_marker_inside_the_thinking_turns_no_grammar_on(marker_in_thinking_gguf, turn):
    with Engine.load(marker_in_thinking_gguf, n_ctx=512, n_threads=2) as engine:
        reply = Chat(engine, seed=1).send("Weather?", **turn)
    assert reply.thinking == THINKING_WITH_MARKER
    assert reply.grammar_rejections == 0
    assert reply.answer == JSON_ANSWER and reply.tool_calls == () and reply.stop_reason == "eos"


# ---- streamed tool calls: two calls in one reply --------------------------------------------------
def test_two_streamed_calls_have_their_own_index_id_and_arguments(scripted_gguf, monkeypatch):
    """The server's stream of a reply with two calls (the chat's events stand in for a model that
    makes two calls: a bigram script cannot repeat <tool_call>)."""
    calls = (ToolCall("call_a", "get_weather", {"city": "Paris"}), ToolCall("call_b", "get_time", {"zone": "CET"}))

    def two_calls(self, text=None, **turn):
        for c in calls:
            yield Event("tool_call", call=c)
        yield Event("done", reply=Reply(thinking="", answer="", stop_reason="tool_calls", budget_hit=False,
                                        thinking_enabled=False, prompt_tokens=5, evaluated_tokens=5,
                                        generated_tokens=30, thinking_tokens=0, ttft_s=0.0, tokens_per_s=1.0,
                                        seconds=1.0, tool_calls=calls))

    monkeypatch.setattr(Chat, "stream", two_calls)
    with Engine.load(scripted_gguf, n_ctx=512, n_threads=2) as engine, serving(engine) as port:
        client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="x", max_retries=0, timeout=60)
        chunks = list(client.chat.completions.create(
            model="m", messages=HI, stream=True, tools=[tool_scripts.WEATHER_TOOL, tool_scripts.TIME_TOOL]))
    seen: dict[int, dict] = {}
    for c in chunks:
        for tc in (c.choices[0].delta.tool_calls or []) if c.choices else []:
            if tc.index not in seen:
                assert tc.id and tc.type == "function" and tc.function.name, "the first delta names the call"
                seen[tc.index] = {"id": tc.id, "name": tc.function.name, "arguments": tc.function.arguments or ""}
            else:
                assert tc.id is None and tc.type is None and not tc.function.name, "later deltas carry arguments only"
                seen[tc.index]["arguments"] += tc.function.arguments or ""
    assert sorted(seen) == [0, 1]
    assert seen[0]["id"] != seen[1]["id"]
    assert [(seen[i]["name"], json.loads(seen[i]["arguments"])) for i in (0, 1)] == [(c.name, c.arguments) for c in calls]
    assert [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason] == ["tool_calls"]


# ---- stop strings across tokens --------------------------------------------------------------------
@pytest.fixture(scope="module")
def scripted_client(scripted_gguf):
    with Engine.load(scripted_gguf, n_ctx=512, n_threads=2) as engine, serving(engine) as port:
        yield openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="x", max_retries=0, timeout=60)


@pytest.mark.parametrize("stop", ["forty-two", ["nothing here", "y-tw"]])
def test_a_stop_string_over_two_tokens_cuts_the_answer(scripted_client, stop):
    """The scripted answer "The answer is forty-two." arrives as ... " forty", "-two", "."."""
    expected = "The answer is " if stop == "forty-two" else "The answer is fort"
    r = scripted_client.chat.completions.create(model="m", messages=HI, stop=stop, seed=1, extra_body=NO_THINK)
    assert (r.choices[0].message.content, r.choices[0].finish_reason) == (expected, "stop")
    chunks = list(scripted_client.chat.completions.create(model="m", messages=HI, stop=stop, seed=1, stream=True,
                                                          extra_body=NO_THINK))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    reasons = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert (text, reasons) == (expected, ["stop"])


# ---- seeds, on random weights at temperature 1 -------------------------------------------------------
def chat_text(engine, seed, **turn) -> str:
    sampling = turn.pop("sampling", {"temperature": 1.0})
    reply = Chat(engine, mode="no_think", seed=seed, max_tokens=12, sampling=sampling).send("Hi", **turn)
    return reply.answer


def test_a_seeded_chat_repeats_and_another_seed_differs(random_engine):
    first = chat_text(random_engine, 11)
    assert first and chat_text(random_engine, 11) == first
    assert chat_text(random_engine, 12) != first


def test_a_seeded_run_repeats_and_another_seed_differs(random_gguf):
    def run(seed: int) -> str:
        r = runner.invoke(app, ["run", str(random_gguf), "Hi", "--no-think", "--seed", str(seed), "--temperature", "1",
                                "--max-tokens", "12", "--ctx", "512", "--threads", "2", "--json"])
        assert r.exit_code == 0, r.output
        return json.loads(r.stdout)["answer"]
    first = run(21)
    assert first and run(21) == first and run(22) != first


def test_a_seeded_request_repeats_and_another_seed_differs(random_engine):
    with serving(random_engine) as port:
        client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="x", max_retries=0, timeout=60)

        def ask(seed: int, stream: bool = False) -> str:
            kw = dict(model="m", messages=HI, seed=seed, temperature=1.0, max_tokens=12, extra_body=NO_THINK)
            if stream:
                return "".join(c.choices[0].delta.content or "" for c in client.chat.completions.create(stream=True, **kw)
                               if c.choices)
            return client.chat.completions.create(**kw).choices[0].message.content
        first = ask(31)
        assert first and ask(31) == first and ask(31, stream=True) == first
        assert ask(32) != first


# ---- sampling settings under a grammar ----------------------------------------------------------------
WORD_SCHEMA = {"type": "json_schema", "json_schema": {"name": "w", "schema": {
    "type": "object", "properties": {"word": {"type": "string"}}, "required": ["word"]}}}


def test_seed_temperature_and_top_k_apply_under_a_grammar(random_engine):
    """Random weights stray from the schema at nearly every token, so the grammar's full pass picks
    them: it must still sample with the seed, and honour temperature 0 and top_k 1 (greedy)."""
    def answer(seed, sampling=None):
        return chat_text(random_engine, seed, response_format=WORD_SCHEMA,
                         **({"sampling": sampling} if sampling else {}))
    first = answer(41)
    assert first.lstrip().startswith("{") and answer(41) == first
    assert answer(42) != first
    assert answer(41, {"temperature": 0.0}) == answer(42, {"temperature": 0.0})
    assert answer(41, {"temperature": 1.0, "top_k": 1}) == answer(42, {"temperature": 1.0, "top_k": 1}) \
        == answer(43, {"temperature": 0.0})


# ---- explicit options win with parallel slots -----------------------------------------------------------
KV_LINE = re.compile(r"K \((\w+)\):\s+[\d.]+ MiB, V \((\w+)\)")


@pytest.mark.parametrize("parallel", [2, None])
def test_an_explicit_kv_cache_type_reaches_every_parallel_context(random_gguf, parallel):
    """`parallel=None` is what serve passes (as many slots as fit); llama.cpp's own log says which
    cache types each context it made got."""
    with capture_llama_log() as lines:
        engine = Engine.load(random_gguf, n_ctx=256, n_threads=2, kv_cache_type="q8_0", parallel=parallel)
    try:
        assert engine.kv_cache_type == "q8_0" and engine.n_ctx == 256
        assert engine.parallel > 1 if parallel is None else engine.parallel == parallel
        types = KV_LINE.findall("".join(lines))
        assert len(types) >= 2 and set(types) == {("q8_0", "q8_0")}, types
    finally:
        engine.close()


@pytest.mark.parametrize("parallel", [1, 2])
def test_a_streamed_piece_goes_out_before_its_token_is_decoded(scripted_gguf, parallel, monkeypatch):
    """Each answer piece reaches the caller before its token goes to llama.cpp, alone and with
    slots: with slots, evaluating first held every piece (the first one too) back by a whole step
    of the scheduler. The script's answer, in order: piece, then exactly its token's evaluation."""
    from edge.runtime.scheduler import BatchSequence
    from edge.runtime.sequence import LlamaSequence
    order = []
    for cls in (LlamaSequence, BatchSequence):
        real = cls.eval
        monkeypatch.setattr(cls, "eval", lambda self, tokens, real=real: (order.append(("eval", list(tokens))),
                                                                          real(self, tokens))[1])
    with Engine.load(scripted_gguf, n_ctx=512, n_threads=2, parallel=parallel) as engine:
        assert (engine.scheduler is not None) == (parallel > 1)
        for event in Chat(engine, mode="no_think", max_tokens=6).stream("Hi"):
            if event.kind == "answer":
                order.append(("piece", event.text))
        text = lambda tokens: engine.llama.detokenize(tokens, special=False).decode("utf-8")  # noqa: E731
        pieces = [i for i, (kind, _) in enumerate(order) if kind == "piece"]
        assert [order[i][1] for i in pieces] == ["The", " answer", " is", " forty", "-two", "."]
        for i in pieces:
            assert order[i + 1][0] == "eval" and text(order[i + 1][1]) == order[i][1]
