"""The constraint engine: llguidance, with its token mask applied to llama.cpp's logits row.

Why llguidance (measured in benchmarks/bench_schemas.py and bench_structured.py, README
"Structured output"): it compiles far more of JSON Schema than llama.cpp's GBNF converter
(numbers' bounds, formats, allOf, boolean schemas, min/maxProperties, patternProperties), compiles
a typical app schema in about a millisecond, and computes the whole allowed-token mask for
Qwen's 151,936-token vocabulary in a fraction of a millisecond, so a constrained token costs what a
free one costs. It is the engine llama.cpp (LLAMA_LLGUIDANCE), vLLM and SGLang use.

The mask is written into the logits row in place (-inf for every token the grammar forbids)
*before* llama.cpp's sampler chain runs, so temperature, top_p, top_k, min_p, penalties and the
seed apply to the allowed tokens exactly as they would to a free row.

Grammars here are Lark text (llguidance's dialect): JSON schemas are embedded with ``%json``,
special tokens such as ``<tool_call>`` are written as themselves.
"""

from __future__ import annotations

import re
import threading
import time
import weakref

import llguidance
import numpy as np

# Hostile grammars stay bounded: llguidance's own fuel limits (documented in README), tighter
# than its defaults so that the worst case compiles in well under a second here.
LIMITS = dict(max_items_in_row=2000, initial_lexer_fuel=1_000_000, step_lexer_fuel=200_000,
              step_max_items=50_000, max_lexer_states=100_000, max_grammar_size=200_000, verbose_errors=False)


class ConstraintError(ValueError):
    """llguidance refused a grammar, or the constraint reached a state that allows no token."""


def parser_limits() -> llguidance.LLParserLimits:
    return llguidance.LLParserLimits(**LIMITS)


_tokenizers: "weakref.WeakKeyDictionary[object, llguidance.LLTokenizer]" = weakref.WeakKeyDictionary()
_lock = threading.Lock()


def tokenizer_for(llama) -> llguidance.LLTokenizer:
    """llguidance's view of a Llama's vocabulary, built once per model (about a second: every
    token's bytes are read through the bindings) and kept as long as the model lives. Every
    end-of-generation token (llama_vocab_is_eog) is an end the grammar allows once complete."""
    model = llama._model
    with _lock:
        tok = _tokenizers.get(model)
        if tok is None:
            tok = _tokenizer_from_vocab(model.vocab, llama.n_vocab())
            _tokenizers[model] = tok
        return tok


def _tokenizer_from_vocab(vocab, n_vocab: int) -> llguidance.LLTokenizer:
    """llguidance.llamacpp.lltokenizer_from_vocab's rule (control tokens, and user-defined ones
    spelled <...>, are special: prefixed 0xFF), with the bindings' current attribute call (the
    deprecated one it uses warns 151,936 times)."""
    import ctypes

    import llama_cpp
    buffer = ctypes.create_string_buffer(256)
    tokens, eog = [], []
    special = llama_cpp.LLAMA_TOKEN_ATTR_CONTROL
    for token in range(llama_cpp.llama_vocab_n_tokens(vocab)):
        n = llama_cpp.llama_token_to_piece(vocab, token, buffer, len(buffer), 0, True)
        if n < 0:  # a piece longer than the buffer
            big = ctypes.create_string_buffer(-n)
            n = llama_cpp.llama_token_to_piece(vocab, token, big, len(big), 0, True)
            piece = big.raw[:n]
        else:
            piece = buffer.raw[:n]
        attr = llama_cpp.llama_vocab_get_attr(vocab, token)
        if attr & special or (attr & llama_cpp.LLAMA_TOKEN_ATTR_USER_DEFINED and piece.startswith(b"<")
                              and piece.endswith(b">")):
            piece = b"\xff" + piece
        tokens.append(piece)
        if llama_cpp.llama_vocab_is_eog(vocab, token):
            eog.append(token)
    tokens += [b""] * (n_vocab - len(tokens))
    tokenize = ctypes.cast(llama_cpp.llama_cpp._lib.llama_tokenize, ctypes.c_void_p).value
    return llguidance.LLTokenizer.from_llamacpp(tokens=tokens, vocab_ptr=vocab, tokenize_fptr=tokenize,
                                                eos_token=eog, slices=None)


def compile_grammar(tokenizer: llguidance.LLTokenizer, lark: str) -> "Constraint":
    """A ready matcher for `lark`; ConstraintError with llguidance's first line when it is refused."""
    started = time.perf_counter()
    matcher = llguidance.LLMatcher(tokenizer, lark, log_level=0, limits=parser_limits())
    if matcher.is_error():
        raise ConstraintError(first_line(matcher.get_error()))
    return Constraint(matcher, tokenizer.vocab_size, time.perf_counter() - started, tokenizer.eos_tokens)


def check_grammar(lark: str) -> str | None:
    """Why llguidance refuses `lark` (without a tokenizer: planning is pure), or None."""
    is_error, messages = llguidance.LLMatcher.validate_grammar_with_warnings(lark, None, limits=parser_limits())
    return first_line(messages[0]) if is_error and messages else None


def first_line(message: str) -> str:
    """llguidance's message in one line, without its grammar-position prefix ("at 3(9): ")."""
    line = next((ln.strip() for ln in message.splitlines() if ln.strip()), "refused")
    return re.sub(r"^at \d+\(\d+\): ", "", line)[:300]


_BITS = np.arange(32, dtype=np.uint32)


def apply_mask(logits: np.ndarray, bitmask: np.ndarray) -> int:
    """Set every logit whose bit is clear to -inf, in place; return how many tokens stay allowed.
    `bitmask` is llguidance's int32 words, bit i of word w standing for token 32*w + i.

    Word by word: a word of zeros forbids its 32 tokens at once, a word of ones leaves them, and
    only the few mixed words are unpacked (a mask for 151,936 tokens costs tens of microseconds,
    where unpacking every bit costs milliseconds)."""
    n = logits.shape[0]
    words = bitmask.view(np.uint32)
    full = n // 32
    rows = logits[: full * 32].reshape(full, 32)
    head = words[:full]
    rows[head == 0] = -np.inf
    mixed = np.flatnonzero((head != 0) & (head != 0xFFFFFFFF))
    allowed = 32 * int(np.count_nonzero(head == 0xFFFFFFFF))
    if mixed.size:
        bits = ((head[mixed, None] >> _BITS) & 1).astype(bool)
        block = rows[mixed]
        block[~bits] = -np.inf
        rows[mixed] = block
        allowed += int(np.count_nonzero(bits))
    if n > full * 32:  # a vocabulary that is not a multiple of 32: the last, partial word
        tail = ((words[full] >> _BITS[: n - full * 32]) & 1).astype(bool)
        logits[full * 32:][~tail] = -np.inf
        allowed += int(np.count_nonzero(tail))
    return allowed


class Constraint:
    """One generation's grammar state (an LLMatcher) and its mask buffer."""

    def __init__(self, matcher: llguidance.LLMatcher, n_vocab: int, compile_s: float = 0.0, eog=()):
        self.matcher = matcher
        self.eog = frozenset(eog)
        self.n_vocab = n_vocab
        self.compile_s = compile_s
        self._bitmask = np.full((n_vocab + 31) // 32, -1, dtype=np.int32)
        self.masked_tokens = 0   # tokens drawn under a mask that removed at least one token
        self.steps = 0

    def mask(self, logits: np.ndarray) -> None:
        """Forbid, in `logits` itself, every token the grammar does not allow next."""
        self.matcher.unsafe_compute_mask_ptr(self._bitmask.ctypes.data, self._bitmask.nbytes)
        if self.matcher.is_error():
            raise ConstraintError(f"the grammar failed: {first_line(self.matcher.get_error())}")
        allowed = apply_mask(logits[: self.n_vocab], self._bitmask)
        if logits.shape[0] > self.n_vocab:
            logits[self.n_vocab:] = -np.inf
        if allowed == 0:
            raise ConstraintError("the grammar allows no token here")
        self.steps += 1
        self.masked_tokens += allowed < logits.shape[0]

    def allows(self, token: int) -> bool:
        """Whether `token` may come next (no state change); an end of generation only once complete."""
        if token in self.eog:
            return self.matcher.is_accepting()
        return self.matcher.validate_tokens([token]) == 1

    def accept(self, token: int) -> None:
        if not self.matcher.consume_token(token):
            raise ConstraintError(f"the grammar refused token {token}: {first_line(self.matcher.get_error())}")

    def is_done(self) -> bool:
        """The grammar is complete and allows nothing more than the end of generation."""
        return self.matcher.is_stopped()

    def close(self) -> None:
        self.matcher = None  # freed by llguidance when the last reference goes
