"""number_bound.py (issue 24): a number the answer writes stops at 15 digits and a 2-digit
exponent where the grammar allows anything else, so an answer valid as text is the same value
as data (no `1e999` read as infinity, no 80-digit integer); a schema that needs a longer number
keeps the grammar's whole mask. Checked with llguidance's own masks over Qwen3's vocabulary."""

from __future__ import annotations

import json

import llama_cpp
import numpy as np
import pytest

from edge.protocol.grammar import plan_constraints
from edge.protocol.guidance import compile_grammar, tokenizer_for
from edge.protocol.number_bound import MAX_DIGITS, MAX_EXPONENT_DIGITS, NumberRun, bound, digit_words


@pytest.mark.parametrize("text, full", [
    ("1" * MAX_DIGITS, True),
    ("1" * (MAX_DIGITS - 1), False),
    ("-0." + "0" * (MAX_DIGITS - 1), True),                 # the point is not a digit; zeros are
    ("12.5e" + "9" * MAX_EXPONENT_DIGITS, True),
    ("12.5e-" + "9" * (MAX_EXPONENT_DIGITS - 1), False),
    ("1" * MAX_DIGITS + "e", False),                         # the exponent starts its own count
    ('{"k": "' + "1" * 40, False),                            # digits inside a string are text
    ('{"k\\"' + "1" * 40 + '": 3', False),                    # an escaped quote keeps the string open
    ('[' + "1" * MAX_DIGITS + ", 2", False),                  # a new number after the comma
    ('{"a": true, "b": ' + "7" * MAX_DIGITS, True),
    ('["a\\"b", ' + "1" * MAX_DIGITS, True),               # the string ends at the unescaped quote
    ('["a\\"' + "1" * MAX_DIGITS, False),                   # ... and not at the escaped one
    ('["a\\n", ' + "1" * MAX_DIGITS, True),                 # an escape covers one character only
])
def test_the_run_counts_a_numbers_digits_outside_strings(text, full):
    assert NumberRun().feed(text.encode()).full() is full


def test_the_digit_words_hold_the_tokens_that_lengthen_a_number():
    pieces = [b"1", b"a", b".5", b"e5", b"-", b",", b"12,", b" 1", b"e-"] + [b"x"] * 60 + [b"7", b"x"]
    words = digit_words(pieces, len(pieces)).view(np.uint32)
    assert words.shape == (3,)
    held = [t for t in range(len(pieces)) if words[t >> 5] >> (t & 31) & 1]
    assert held == [0, 2, 3, 6, 69]    # a leading digit or point, before any other byte


def test_the_bound_is_what_a_double_holds():
    """15 digits: the most for which every integer is exact in a double (16 are not: 2**53 + 1);
    2 exponent digits: the largest such value and the smallest stay finite and normal."""
    assert all(int(float(n)) == n for n in (10 ** MAX_DIGITS - 1, 10 ** MAX_DIGITS - 3))
    assert int(float(10 ** (MAX_DIGITS + 1) - 1)) != 10 ** (MAX_DIGITS + 1) - 1
    top = float("9" * MAX_DIGITS + "e" + "9" * MAX_EXPONENT_DIGITS)
    low = float("0." + "0" * (MAX_DIGITS - 2) + "1e-" + "9" * MAX_EXPONENT_DIGITS)
    assert top < float("inf") and low > 2.2250738585072014e-308
    assert float("1e" + "9" * (MAX_EXPONENT_DIGITS + 1)) == float("inf")


def test_the_bound_keeps_the_grammars_mask_when_it_would_leave_nothing():
    digits = digit_words([b"1", b"2", b","], 3)
    only_digits = np.array([0b011], dtype=np.int32)
    scratch = np.zeros_like(only_digits)
    mask = only_digits.copy()
    assert bound(mask, digits, scratch) is False and mask[0] == 0b011
    mask = np.array([0b111], dtype=np.int32)
    assert bound(mask, digits, scratch) is True and mask[0] == 0b100


@pytest.fixture(scope="module")
def vocab(scripted_gguf):
    llm = llama_cpp.Llama(str(scripted_gguf), vocab_only=True, verbose=False)
    yield llm
    llm.close()


def constraint(llm, schema, prefix: str):
    plan = plan_constraints(response_format={"type": "json_schema", "json_schema": {"name": "t", "schema": schema}})
    c = compile_grammar(tokenizer_for(llm), plan.answer_grammar)
    for token in llm.tokenize(prefix.encode(), add_bos=False, special=True):
        c.accept(token)
    return c


def allowed_texts(llm, c) -> set[str]:
    row = np.zeros(c.n_vocab, dtype=np.float32)
    c.mask(row)
    return {llm.detokenize([t]).decode(errors="replace") for t in np.flatnonzero(np.isfinite(row))}


def test_a_number_at_its_bound_may_only_end_or_take_an_exponent(vocab):
    c = constraint(vocab, {"type": "object", "properties": {"n": {"type": "number"}}, "required": ["n"]},
                   '{"n": ' + "3" * MAX_DIGITS)
    texts = allowed_texts(vocab, c)
    assert "}" in texts and "e" in texts
    assert not any(t[:1].isdigit() or t[:1] == "." for t in texts), sorted(texts)[:10]
    assert c.bounded_tokens == 1


def test_an_exponent_at_its_bound_may_only_end(vocab):
    c = constraint(vocab, {"type": "array", "items": {"type": "number"}}, "[1e-" + "4" * MAX_EXPONENT_DIGITS)
    texts = allowed_texts(vocab, c)
    assert "," in texts and not any(t[:1].isdigit() for t in texts)


def test_a_number_below_its_bound_is_left_to_the_grammar(vocab):
    c = constraint(vocab, {"type": "number"}, "3" * (MAX_DIGITS - 1))
    assert "4" in allowed_texts(vocab, c) and c.bounded_tokens == 0


def test_a_const_longer_than_the_bound_is_still_written(vocab):
    const = 2 ** 60   # 19 digits, exact in a double (llguidance reads numbers as doubles)
    c = constraint(vocab, {"const": const}, str(const)[: MAX_DIGITS + 2])
    assert allowed_texts(vocab, c) == {str(const)[MAX_DIGITS + 2]}
    assert c.bounded_tokens == 0


def test_digits_in_a_string_are_not_bounded(vocab):
    c = constraint(vocab, {"type": "string"}, '"' + "5" * 30)
    assert "5" in allowed_texts(vocab, c) and json.loads('"' + "5" * 30 + '"')
