"""The scripted model, converted by our own converter, says its script through llama.cpp even
under Qwen's thinking sampler, in both modes and after a thinking-budget cut."""

from __future__ import annotations

from pathlib import Path

import pytest
from tokenizers import Tokenizer

from quantize import quantize_model
from tests.model_factory import FIXTURES
from edge.runtime.cpu_buffers import safe_llama
from tests.scripted_model import (
    BUDGET_END, DOUBLE_NEWLINE, END_THINK, IM_END, NEWLINE, QWEN3_SCRIPT, SCRIPT_ANSWER_IDS, SCRIPT_ANSWER_MODE_IDS,
    SCRIPT_ANSWER_TEXT, SCRIPT_THINKING_IDS, SCRIPT_THINKING_MODE_IDS, SCRIPT_THINKING_TEXT, THINK,
    build_scripted_model, scripted_tensors, SCRIPT_SHAPE,
)

llama_cpp = pytest.importorskip("llama_cpp")

THINKING_PROMPT = "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
NON_THINKING_PROMPT = THINKING_PROMPT + "<think>\n\n</think>\n\n"
BUDGET_PHRASE = ("\n\nConsidering the limited time by the user, I have to give the solution based on the "
                 "thinking directly now.\n</think>\n\n")
THINKING_SAMPLER = dict(temp=0.6, top_p=0.95, top_k=20, min_p=0.0)
SEEDS = [0, 1, 7, 42, 12345]


@pytest.fixture(scope="module")
def tokenizer() -> Tokenizer:
    return Tokenizer.from_file(str(FIXTURES / "tokenizer.json"))


@pytest.fixture(scope="module")
def scripted_gguf(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("scripted")
    folder = build_scripted_model(root / "hf", QWEN3_SCRIPT)
    return Path(quantize_model(folder, "f16", root / "scripted-f16.gguf").output)


def generate(gguf: Path, prompt: str, seed: int, limit: int = 64) -> list[int]:
    """Token ids sampled with Qwen's thinking settings, up to and including <|im_end|>."""
    llm = safe_llama(str(gguf), n_ctx=512, n_threads=2, verbose=False, seed=seed)
    try:
        tokens = llm.tokenize(prompt.encode(), add_bos=False, special=True)
        out: list[int] = []
        for tok in llm.generate(tokens, **THINKING_SAMPLER):
            out.append(tok)
            if tok == IM_END or len(out) >= limit:
                break
        return out
    finally:
        llm.close()


def test_script_is_a_valid_bigram_table():
    assert len(QWEN3_SCRIPT) <= SCRIPT_SHAPE.hidden
    assert QWEN3_SCRIPT[NEWLINE] == THINK and QWEN3_SCRIPT[DOUBLE_NEWLINE] == SCRIPT_ANSWER_IDS[0]
    assert QWEN3_SCRIPT[BUDGET_END] == SCRIPT_ANSWER_IDS[0] and QWEN3_SCRIPT[SCRIPT_ANSWER_IDS[-1]] == IM_END
    assert IM_END not in QWEN3_SCRIPT
    spoken = SCRIPT_THINKING_MODE_IDS[:-1]
    assert len(set(spoken)) == len(spoken)        # every token is a source once
    assert not {NEWLINE, DOUBLE_NEWLINE, BUDGET_END} & set(SCRIPT_THINKING_IDS + SCRIPT_ANSWER_IDS)


def test_script_text_matches_the_qwen3_tokenizer(tokenizer):
    assert tokenizer.decode(SCRIPT_THINKING_IDS).strip("\n") == SCRIPT_THINKING_TEXT
    assert tokenizer.decode(SCRIPT_ANSWER_IDS) == SCRIPT_ANSWER_TEXT
    # Re-tokenizing the text gives the same ids, so history built from text stays on script.
    assert tokenizer.encode(SCRIPT_THINKING_TEXT + "\n", add_special_tokens=False).ids == SCRIPT_THINKING_IDS
    assert tokenizer.encode(SCRIPT_ANSWER_TEXT, add_special_tokens=False).ids == SCRIPT_ANSWER_IDS
    assert tokenizer.encode(THINKING_PROMPT, add_special_tokens=False).ids[-1] == NEWLINE
    assert tokenizer.encode(NON_THINKING_PROMPT, add_special_tokens=False).ids[-1] == DOUBLE_NEWLINE
    assert tokenizer.encode(BUDGET_PHRASE, add_special_tokens=False).ids[-2:] == [END_THINK, DOUBLE_NEWLINE]


def test_weights_make_the_next_token_win_by_a_wide_margin():
    tensors = scripted_tensors(QWEN3_SCRIPT, SCRIPT_SHAPE)
    embed, head = tensors["model.embed_tokens.weight"], tensors["lm_head.weight"]
    for src, dst in QWEN3_SCRIPT.items():
        h = embed[src] * (SCRIPT_SHAPE.hidden ** 0.5)   # the final RMSNorm of a one-hot vector
        logits = head @ h
        assert logits.argmax() == dst and logits[dst] >= 40 and sorted(logits)[-2] == 0


@pytest.mark.parametrize("seed", SEEDS)
def test_thinking_mode_says_the_whole_script(scripted_gguf, seed):
    assert generate(scripted_gguf, THINKING_PROMPT, seed) == SCRIPT_THINKING_MODE_IDS


@pytest.mark.parametrize("seed", SEEDS[:3])
def test_non_thinking_mode_says_only_the_answer(scripted_gguf, seed):
    assert generate(scripted_gguf, NON_THINKING_PROMPT, seed) == SCRIPT_ANSWER_MODE_IDS


def test_budget_cut_continues_into_the_answer(scripted_gguf):
    partial = "<think>" + SCRIPT_THINKING_TEXT.split(" count")[0]   # "<think>Let me"
    assert generate(scripted_gguf, THINKING_PROMPT + partial + BUDGET_PHRASE, seed=3) == SCRIPT_ANSWER_MODE_IDS


def test_how_llama_cpp_detokenizes_the_script(scripted_gguf):
    """<think> and </think> are ordinary added tokens (not "special"), so llama.cpp renders them
    even with special=False; <|im_end|> appears only with special=True."""
    llm = safe_llama(str(scripted_gguf), n_ctx=64, verbose=False, vocab_only=True)
    try:
        body = f"<think>{SCRIPT_THINKING_TEXT}\n</think>\n\n{SCRIPT_ANSWER_TEXT}"
        assert llm.detokenize(SCRIPT_THINKING_MODE_IDS).decode() == body
        assert llm.detokenize(SCRIPT_THINKING_MODE_IDS, special=True).decode() == body + "<|im_end|>"
        assert llm.tokenize(b"<think>", add_bos=False, special=False) == [THINK]
        assert llm.tokenize(b"<|im_end|>", add_bos=False, special=False) != [IM_END]
    finally:
        llm.close()


@pytest.mark.parametrize("n_ctx", [512, 40960])
def test_rope_plan_kwargs_are_accepted_by_llama_cpp(scripted_gguf, n_ctx):
    from edge.runtime.context_plan import plan_rope
    plan = plan_rope(n_ctx)
    llm = safe_llama(str(scripted_gguf), n_ctx=n_ctx, n_threads=2, verbose=False, seed=5,
                          **plan.llama_kwargs())
    try:
        assert llm.n_ctx() == n_ctx
        tokens = llm.tokenize(NON_THINKING_PROMPT.encode(), add_bos=False, special=True)
        out = []
        for tok in llm.generate(tokens, **THINKING_SAMPLER):
            out.append(tok)
            if tok == IM_END or len(out) >= 16:
                break
        assert out == SCRIPT_ANSWER_MODE_IDS
    finally:
        llm.close()
