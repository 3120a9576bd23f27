"""A context that grows with the conversation (edge/runtime/context_growth.py, Engine.reserve_ctx): llama.cpp
is asked for its n_ctx after each growth, the scripted model still says its exact script across a
growth in the middle of a reply, the KV cache comes across exactly (a random-weight model's logits
after growth equal those of a context made large from the start), and the chat's room checks use
the ceiling, not the size allocated now."""

from __future__ import annotations

import llama_cpp
import numpy as np
import pytest

import edge.runtime.footprint
from edge.chat import Chat
from edge.runtime.engine import Engine
from tests.llama_probe import cached_ids, kv_tokens
from tests.scripted_model import SCRIPT_ANSWER_TEXT, SCRIPT_THINKING_TEXT


def llama_n_ctx(engine: Engine) -> int:
    return llama_cpp.llama_n_ctx(engine.llama._ctx.ctx)


def last_logits(engine: Engine) -> np.ndarray:
    llama = engine.llama
    return np.ctypeslib.as_array(llama_cpp.llama_get_logits_ith(llama._ctx.ctx, -1), shape=(llama.n_vocab(),)).copy()


@pytest.fixture
def small_start(monkeypatch):
    """Growing contexts start at 256 tokens, so that a test crosses a growth cheaply."""
    monkeypatch.setattr(edge.runtime.footprint, "START_CTX", 256)


def system_for(chat: Chat, prompt_tokens: int) -> str:
    """A system prompt that makes the first turn's prompt exactly `prompt_tokens` long."""
    words = 1
    while True:
        chat.system = "word " * words
        n = len(chat.engine.tokenize(chat.render(chat.messages([]) + [{"role": "user", "content": "Hi"}], True)))
        if n >= prompt_tokens:
            assert n == prompt_tokens, f"cannot hit {prompt_tokens} exactly ({n})"
            return chat.system
        words += 1


def test_a_reply_that_outgrows_the_context_keeps_its_exact_text(scripted_gguf, small_start):
    with Engine.load(scripted_gguf, n_ctx=4096, grow=True, n_threads=1) as engine:
        assert (llama_n_ctx(engine), engine.allocated_ctx, engine.n_ctx) == (256, 256, 4096)
        chat = Chat(engine, seed=0)
        system_for(chat, 250)                 # the script's 22 tokens cross 256 mid-reply
        r = chat.send("Hi")
        assert (r.thinking.strip(), r.answer) == (SCRIPT_THINKING_TEXT, SCRIPT_ANSWER_TEXT)
        assert r.prompt_tokens == 250 and r.stop_reason == "eos"
        assert [g[:2] for g in engine.growths] == [(256, 512)]
        assert llama_n_ctx(engine) == 512 == engine.allocated_ctx and engine.n_ctx == 4096
        assert kv_tokens(engine.llama) == 250 + r.generated_tokens  # every token but <|im_end|> went in
        # the next turn reuses the grown cache: only what the template changed is evaluated again
        cached = cached_ids(engine.llama)
        r2 = chat.send("Again")
        assert (r2.thinking.strip(), r2.answer) == (SCRIPT_THINKING_TEXT, SCRIPT_ANSWER_TEXT)
        assert r2.evaluated_tokens < r2.prompt_tokens - 200
        assert cached[:250] == cached_ids(engine.llama)[:250]


def test_a_long_prompt_grows_the_context_before_it_is_evaluated(scripted_gguf, small_start):
    with Engine.load(scripted_gguf, n_ctx=4096, grow=True, n_threads=1) as engine:
        chat = Chat(engine, seed=0)
        system_for(chat, 1010)                # 1010 tokens: 256 doubles to 1024, then to 2048 in the reply
        r = chat.send("Hi")
        assert r.answer == SCRIPT_ANSWER_TEXT
        assert [g[:2] for g in engine.growths] == [(256, 1024), (1024, 2048)]
        assert llama_n_ctx(engine) == 2048


def test_the_room_checks_use_the_ceiling(scripted_gguf, small_start):
    """A prompt far past the allocated size is not trimmed, one past the ceiling is."""
    with Engine.load(scripted_gguf, n_ctx=1024, grow=True, n_threads=1) as engine:
        chat = Chat(engine, seed=0, max_tokens=40)
        system_for(chat, 700)
        r = chat.send("Hi")
        assert r.answer == SCRIPT_ANSWER_TEXT and not r.notices and llama_n_ctx(engine) == 1024
        chat.reset()
        system_for(chat, 1000)                # + the 40-token reserve > 1024
        with pytest.raises(Exception, match="context holds 1024"):
            chat.send("Hi")


def test_growth_stops_at_the_ceiling(scripted_gguf, small_start):
    with Engine.load(scripted_gguf, n_ctx=600, grow=True, n_threads=1) as engine:
        engine.reserve_ctx(590)
        assert llama_n_ctx(engine) == 768 and engine.allocated_ctx == 600 == engine.n_ctx  # llama.cpp pads to 256
        engine.reserve_ctx(5000)
        assert len(engine.growths) == 1


def test_the_grown_cache_is_the_same_cache(converted, small_start):
    """Random weights, f32 KV: after growing twice the logits equal a context made big at once."""
    gguf = converted("tied", "f32")
    rng = np.random.default_rng(0)
    with Engine.load(gguf, n_ctx=4096, n_threads=1, kv_cache_type="f32", flash_attn=False) as big:
        vocab = big.llama.n_vocab()
        tokens = rng.integers(0, vocab, size=700).tolist()
        big.llama.eval(tokens)
        want = last_logits(big)
    with Engine.load(gguf, n_ctx=4096, grow=True, n_threads=1, kv_cache_type="f32", flash_attn=False) as grown:
        from edge.runtime.sequence import open_sequence
        import threading
        seq = open_sequence(grown, tokens[:200], threading.Event())
        seq.prefill(tokens[:200])
        for t in tokens[200:]:
            seq.eval([t])
        assert [g[:2] for g in grown.growths] == [(256, 512), (512, 1024)] and llama_n_ctx(grown) == 1024
        got = last_logits(grown)
        seq.release()   # the engine's stream: close() would wait for it
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-5)
    assert np.abs(want).max() > 0.1   # the logits say something


def test_without_grow_the_whole_context_is_made_at_once(scripted_gguf, small_start):
    with Engine.load(scripted_gguf, n_ctx=1024, n_threads=1) as engine:   # an explicit n_ctx: fixed
        assert llama_n_ctx(engine) == 1024 and engine.max_ctx is None


def test_a_growth_llama_cpp_refuses_ends_the_reply_and_keeps_the_chat(scripted_gguf, small_start, monkeypatch):
    """llama.cpp cannot make the larger context (memory taken meanwhile): one ChatError, the old
    context is back with its cached tokens, n_ctx drops to it, and the chat goes on within it."""
    import edge.runtime.context_growth as growth
    from edge.chat import ChatError
    real = growth.internals.LlamaContext

    def refusing(*, model, params, verbose):
        if params.n_ctx > 256:
            raise ValueError("Failed to create llama_context")
        return real(model=model, params=params, verbose=verbose)

    with Engine.load(scripted_gguf, n_ctx=4096, grow=True, n_threads=1) as engine:
        chat = Chat(engine, seed=0)
        chat.system = "S"
        first = chat.send("Hi")
        cached = cached_ids(engine.llama)
        monkeypatch.setattr(growth.internals, "LlamaContext", refusing)
        system = system_for(chat, 250)
        history = list(chat.history)
        with pytest.raises(ChatError, match="could not make a 512-token context"):
            chat.send("Hi")
        assert chat.history == history and engine.n_ctx == 256 == llama_n_ctx(engine)
        # llama.cpp still holds what the refused prompt shared with the cache ("<|im_start|>system\n")
        assert cached_ids(engine.llama) == cached[:3]
        chat.system = "S"
        again = chat.send("Hi")
        assert (again.thinking, again.answer) == (first.thinking, first.answer) and system


# ---- defaults and explicit flags, as llama.cpp got them ------------------------------------------
def test_library_defaults_reach_llama_cpp(converted):
    from tests.llama_probe import load_settings
    gguf = converted("tied", "q8_0")
    with Engine.load(gguf, n_threads=1) as engine:
        got = load_settings(engine.llama, gguf)
        assert engine.footprint.chosen == ("ctx", "kv", "mmap")
        assert got.n_ctx == edge.runtime.footprint.START_CTX == 2048 and engine.n_ctx == engine.footprint.n_ctx >= 4096
        assert got.type_k == got.type_v == llama_cpp.GGML_TYPE_F16
        assert got.flash_attn_type == llama_cpp.LLAMA_FLASH_ATTN_TYPE_DISABLED
        # read in where llama.cpp repacks the quantized weights (its extra buffers on), else mapped
        assert got.file_mapped == (not engine.extra_buffers)


def test_explicit_cli_flags_win(scripted_gguf, monkeypatch, tmp_path):
    from typer.testing import CliRunner

    from cli.main import app
    from tests.llama_probe import load_settings
    monkeypatch.setenv("QWEN3_EDGE_HOME", str(tmp_path / "home"))
    real, seen = Engine.load.__func__, []

    def load(cls, path, *args, **kwargs):
        engine = real(cls, path, *args, **kwargs)
        seen.append((load_settings(engine.llama, path), engine.n_ctx))
        return engine

    monkeypatch.setattr(Engine, "load", classmethod(load))
    runner = CliRunner(env={"COLUMNS": "300"})
    r = runner.invoke(app, ["chat", str(scripted_gguf), "--ctx", "8192", "--kv-cache", "q4_0", "--no-mmap",
                            "--threads", "1"], input="Hi\n")
    assert r.exit_code == 0, r.output
    assert "context 2048 tokens, growing to 8192 as the chat needs, q4_0 KV cache, weights read into memory " \
           "(no mmap)\n" in r.stdout and "ctx 8192" in r.stdout and "chosen for" not in r.stdout
    (got, n_ctx), = seen
    assert (got.n_ctx, n_ctx, got.type_k, got.file_mapped) == (2048, 8192, llama_cpp.GGML_TYPE_Q4_0, False)
    seen.clear()
    r = runner.invoke(app, ["chat", str(scripted_gguf), "--mmap", "--threads", "1"], input="Hi\n")
    assert r.exit_code == 0, r.output
    assert "f16 KV cache, weights memory-mapped (chosen for" in r.stdout and "--ctx, --kv-cache to set)" in r.stdout
    (got, n_ctx), = seen
    assert got.file_mapped and got.type_k == llama_cpp.GGML_TYPE_F16 and got.n_ctx == 2048 < n_ctx
