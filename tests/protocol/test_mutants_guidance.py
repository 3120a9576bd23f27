"""Claims of edge/protocol/guidance.py that its mutants showed untested (docs/MUTATION.md, issue 21):
the mask is exactly llguidance's bits (word by word, and the partial last word), a Constraint's
bookkeeping, llguidance's messages in one line, the limits README states, and which tokens are
special to llguidance. All but the last are pure; the last reads the scripted GGUF's vocabulary."""

from __future__ import annotations

import ctypes
import re
from pathlib import Path

import llama_cpp
import numpy as np
import pytest

from edge.protocol.guidance import LIMITS, Constraint, ConstraintError, apply_mask, first_line, tokenizer_for

README = Path(__file__).resolve().parents[2] / "README.md"


def naive_mask(logits: np.ndarray, words: list[int]) -> tuple[np.ndarray, int]:
    """Bit i of word w allows token 32*w + i: every token unpacked one by one."""
    out = logits.copy()
    allowed = 0
    for t in range(len(out)):
        if (words[t // 32] >> (t % 32)) & 1:
            allowed += 1
        else:
            out[t] = -np.inf
    return out, allowed


@pytest.mark.parametrize("n", [100, 128, 31, 1000])
def test_the_mask_is_exactly_llguidances_bits(n):
    """Words of zeros, of ones and mixed, and a partial last word (a vocabulary that is not a
    multiple of 32): the same tokens forbidden, and counted, as unpacking every bit."""
    rng = np.random.default_rng(n)
    pattern = [0x00000000, 0xFFFFFFFF, 0x80000001, 0x0000FFFF]
    words = [pattern[i % 4] for i in range((n + 31) // 32)]
    words[-1] |= 0b101                      # a partial last word with something allowed
    logits = rng.standard_normal(n).astype(np.float32)
    want, want_allowed = naive_mask(logits, words)
    got = logits.copy()
    allowed = apply_mask(got, np.array(words, dtype=np.uint32).view(np.int32))
    np.testing.assert_array_equal(got, want)
    assert allowed == want_allowed


class _Matcher:
    """An LLMatcher that allows the tokens in `allowed` (its mask written like llguidance's)."""

    def __init__(self, allowed):
        self.allowed = set(allowed)

    def unsafe_compute_mask_ptr(self, ptr, nbytes):
        words = np.zeros(nbytes // 4, dtype=np.uint32)
        for t in self.allowed:
            words[t // 32] |= np.uint32(1 << (t % 32))
        ctypes.memmove(ptr, words.ctypes.data, nbytes)

    def is_error(self):
        return False


def test_rows_past_the_vocabulary_are_forbidden_and_steps_counted():
    """A logits row longer than the vocabulary (llama.cpp pads it) has its tail forbidden; each mask
    is a step, and a step counts as masked only when some token was forbidden."""
    c = Constraint(_Matcher(range(40)), n_vocab=40)
    row = np.zeros(48, dtype=np.float32)
    c.mask(row)
    assert np.isneginf(row[40:]).all() and np.isfinite(row[:40]).all()
    assert (c.steps, c.masked_tokens) == (1, 1)
    c2 = Constraint(_Matcher(range(40)), n_vocab=40)
    c2.mask(np.zeros(40, dtype=np.float32))
    assert (c2.steps, c2.masked_tokens) == (1, 0)       # nothing forbidden: not a masked token


def test_a_mask_that_allows_nothing_is_an_error():
    """A grammar state that allows no token raises ConstraintError rather than sampling from -inf."""
    c = Constraint(_Matcher([]), n_vocab=64)
    with pytest.raises(ConstraintError, match="allows no token"):
        c.mask(np.zeros(64, dtype=np.float32))


def test_llguidance_messages_in_one_line():
    """The first non-blank line, without llguidance's grammar position ("at 3(9): "), at most 300
    characters; "refused" when it said nothing."""
    assert first_line("\n  \nat 3(9): unknown rule foo\nat 4(1): more") == "unknown rule foo"
    assert first_line("at 12(345): x") == "x"
    assert first_line("") == "refused"
    assert len(first_line("y" * 1000)) == 300


def test_the_limits_are_the_ones_readme_states():
    """README ("Structured output") tells users which fuel limits refuse a hostile schema: the same
    numbers are in force."""
    text = " ".join(README.read_text(encoding="utf-8").split())
    m = re.search(r"([\d,]+) lexer fuel to build, ([\d,]+) per mask, ([\d,]+) Earley items per step, "
                  r"([\d,]+) lexer states, ([\d,]+) grammar symbols", text)
    assert m, "README no longer states the limits"
    stated = [int(g.replace(",", "")) for g in m.groups()]
    assert stated == [LIMITS["initial_lexer_fuel"], LIMITS["step_lexer_fuel"], LIMITS["step_max_items"],
                      LIMITS["max_lexer_states"], LIMITS["max_grammar_size"]]


def test_only_control_and_user_defined_angle_tokens_are_special(scripted_gguf):
    """Control tokens (<|im_end|>) and user-defined ones spelled <...> (<tool_call>) are special
    to llguidance; an ordinary token that happens to be spelled <...> is text."""
    llm = llama_cpp.Llama(str(scripted_gguf), vocab_only=True, verbose=False)
    try:
        vocab = llm._model.vocab
        tok = tokenizer_for(llm)
        kinds: dict[str, list[int]] = {"normal": [], "user": [], "control": []}
        for t in range(llm.n_vocab()):
            piece = llm._model.token_get_text(t)
            attr = llama_cpp.llama_vocab_get_attr(vocab, t)
            if attr & llama_cpp.LLAMA_TOKEN_ATTR_CONTROL:
                kinds["control"].append(t)
            elif piece.startswith("<") and piece.endswith(">") and len(piece) > 1:
                kinds["user" if attr & llama_cpp.LLAMA_TOKEN_ATTR_USER_DEFINED else "normal"].append(t)
        assert all(kinds.values()), {k: len(v) for k, v in kinds.items()}
        assert not any(tok.is_special_token(t) for t in kinds["normal"])
        assert all(tok.is_special_token(t) for t in kinds["user"] + kinds["control"])
    finally:
        llm.close()
