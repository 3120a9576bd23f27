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

from edge.protocol.number_bound import NumberRun, bound, digit_words

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
    return Constraint(matcher, tokenizer.vocab_size, time.perf_counter() - started, tokenizer.eos_tokens,
                      tokenizer=tokenizer)


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


# ---- closing an answer within its budget (issue 24) ------------------------------------------------
CLOSE_CANDIDATES = 24    # tokens tried at one state of the closing search, best first
CLOSE_NODES = 256        # states (masks) one search may look at: a closing of about 120 tokens, ~10 ms
_STRUCTURAL = frozenset(b'{}[]",:')
_LITERALS = frozenset([b"0", b"1", b"true", b"false", b"null", b'""', b"[]", b"{}"])


class CloserTable:
    """The few hundred tokens a closing is built from, found once per vocabulary (a 151,936-token
    vocabulary is read in tens of milliseconds) so that a search step never scans all of it:
    JSON's punctuation (`"}`, `]}`, `",` ...), short literals (0, 1, true, null, "" ...), single
    printable characters (string content a pattern or a minLength wants) and the special tokens
    that are not ends of generation (`</tool_call>`). `rank` orders them within a heuristic tie:
    punctuation, then literals, then characters, then special tokens. `digits` (number_bound.py)
    is read from the same scan of the vocabulary."""

    def __init__(self, pieces: list[bytes], special: list[bool], eos: frozenset[int]):
        ids, ranks, texts = [], [], []
        for token, piece in enumerate(pieces):
            if token in eos or not piece:
                continue
            core = piece.strip(b" ")
            if special[token]:
                rank = 3
            elif core and len(piece) <= 4 and all(b in _STRUCTURAL for b in core):
                rank = 0
            elif core in _LITERALS and len(piece) <= 6:
                rank = 1
            elif len(piece) == 1 and (0x20 <= piece[0] < 0x7F or piece == b"\n"):
                rank = 2
            else:
                continue
            ids.append(token)
            ranks.append(rank)
            texts.append(b"" if special[token] else piece)
        self.ids = np.array(ids, dtype=np.int64)
        self.words, self.bits = self.ids >> 5, (self.ids & 31).astype(np.uint32)
        self.rank = dict(zip(ids, ranks))
        self.text = dict(zip(ids, texts))
        self.digits = digit_words(pieces, len(pieces))

    def allowed(self, bitmask: np.ndarray) -> np.ndarray:
        """The table's tokens whose bit is set in llguidance's mask words."""
        words = bitmask.view(np.uint32)
        return self.ids[((words[self.words] >> self.bits) & 1).astype(bool)]


_closers: dict[int, tuple[llguidance.LLTokenizer, CloserTable]] = {}


def closer_table(tokenizer: llguidance.LLTokenizer) -> CloserTable:
    """The CloserTable of `tokenizer`, built on first use and kept for the last few tokenizers
    (an LLTokenizer takes no weak reference; one per loaded model is the usual count)."""
    with _lock:
        held = _closers.get(id(tokenizer))
        if held is not None and held[0] is tokenizer:
            return held[1]
    n = tokenizer.vocab_size
    pieces = [tokenizer.decode_bytes([t]) for t in range(n)]
    table = CloserTable(pieces, [tokenizer.is_special_token(t) for t in range(n)], frozenset(tokenizer.eos_tokens))
    with _lock:
        while len(_closers) >= 4:
            _closers.pop(next(iter(_closers)))
        _closers[id(tokenizer)] = (tokenizer, table)
    return table


class JsonDepth:
    """How much of a JSON text is still open, read byte by byte: its open objects and arrays, an
    open string, and a member or item still owed (after `,` or `:`, or a key without its value).
    The closing search's estimate of how far a state is from complete; bytes outside JSON (a
    `<tool_call>` tag, whitespace) change nothing. A heuristic only: the matcher decides."""

    __slots__ = ("stack", "in_string", "escape", "key", "last")

    def __init__(self):
        self.stack, self.in_string, self.escape, self.key, self.last = "", False, False, False, 0

    def copy(self) -> "JsonDepth":
        other = JsonDepth.__new__(JsonDepth)
        other.stack, other.in_string, other.escape, other.key, other.last = (
            self.stack, self.in_string, self.escape, self.key, self.last)
        return other

    def feed(self, data: bytes) -> "JsonDepth":
        for b in data:
            if self.in_string:
                if self.escape:
                    self.escape = False
                elif b == 0x5C:      # backslash
                    self.escape = True
                elif b == 0x22:      # the closing quote: a key still owes its value
                    self.in_string, self.last = False, 0x4B if self.key else 0x22
            elif b == 0x22:
                self.in_string = True
                self.key = self.stack[-1:] == "{" and self.last in (0x7B, 0x2C)
                self.last = 0x22
            elif b in (0x7B, 0x5B):  # { [
                self.stack += chr(b)
                self.last = b
            elif b in (0x7D, 0x5D):  # } ]
                self.stack = self.stack[:-1]
                self.last = b
            elif b in (0x2C, 0x3A) or not (b in b" \t\r\n" or b >= 0x80 or b == 0x3C or b == 0x3E):
                self.last = b        # , : and the bytes of numbers and literals
        return self

    def open(self) -> int:
        owed = self.last in (0x2C, 0x3A, 0x4B) or (self.in_string and self.key)
        return len(self.stack) + self.in_string + owed


class Constraint:
    """One generation's grammar state (an LLMatcher) and its mask buffer."""

    def __init__(self, matcher: llguidance.LLMatcher, n_vocab: int, compile_s: float = 0.0, eog=(),
                 tokenizer: llguidance.LLTokenizer | None = None):
        self.matcher = matcher
        self.eog = frozenset(eog)
        self.n_vocab = n_vocab
        self.compile_s = compile_s
        self._bitmask = np.full((n_vocab + 31) // 32, -1, dtype=np.int32)
        self.masked_tokens = 0   # tokens drawn under a mask that removed at least one token
        self.steps = 0
        # Without a tokenizer (tests' stand-in matchers) closing_path finds nothing.
        self.tokenizer = tokenizer
        self.closers = closer_table(tokenizer) if tokenizer is not None else None
        self._depth = JsonDepth()
        self._plan: list[int] | None = None   # the last closing found, less the tokens taken from it since
        self._search_mask = np.zeros_like(self._bitmask)
        self.search_nodes = 0    # states the last closing_path looked at
        self._number = NumberRun()
        self.bounded_tokens = 0  # tokens drawn with a number's digits at their bound (number_bound.py)

    def mask(self, logits: np.ndarray) -> None:
        """Forbid, in `logits` itself, every token the grammar does not allow next, and a digit past
        a number's bound (number_bound.py) where the grammar allows something else."""
        self.matcher.unsafe_compute_mask_ptr(self._bitmask.ctypes.data, self._bitmask.nbytes)
        if self.matcher.is_error():
            raise ConstraintError(f"the grammar failed: {first_line(self.matcher.get_error())}")
        if self.closers is not None and self._number.full():
            self.bounded_tokens += bound(self._bitmask, self.closers.digits, self._search_mask)
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
        if self.tokenizer is not None:
            text = self._text(token)
            self._depth.feed(text)
            self._number.feed(text)
        if self._plan:
            self._plan = self._plan[1:] if self._plan[0] == token else None

    def closing_path(self, limit: int) -> list[int] | None:
        """At most `limit` tokens that take the grammar from here to a complete (accepting) state,
        or None when the bounded search finds none; [] when it is complete already. The matcher is
        left exactly as it was: the search runs on a copy of it (deep_copy: microseconds), walking
        forward with consume_token and back with rollback.

        Depth first, best candidate first: at each state the forced tokens (compute_ff_tokens) are
        taken as they are; otherwise the CloserTable's tokens the mask allows are tried in the order
        of how much JSON they leave open (JsonDepth), then their rank, at most CLOSE_CANDIDATES of
        them, and the whole search looks at no more than CLOSE_NODES states. A closing found on an
        earlier step whose tokens the answer has followed since is still one: its rest is returned
        without a new search, so a closing under way never grows (a fresh search from the next state
        may find a longer one) and costs nothing more."""
        if self.matcher is None or self.closers is None or limit < 0 or self.matcher.is_error():
            return None
        if self.matcher.is_accepting():
            return []
        if self._plan is not None and len(self._plan) <= limit:
            return list(self._plan)
        matcher = self.matcher.deep_copy()
        path: list[int] = []
        self.search_nodes = 0
        found = self._search(matcher, path, self._depth.copy(), limit)
        if matcher.is_error():   # a token the mask allowed and the parser then refused: no answer
            found = False
        else:
            matcher.rollback(len(path))
        self._plan = list(path) if found else None
        return None if self._plan is None else list(self._plan)

    def _search(self, matcher, path: list[int], depth: JsonDepth, left: int) -> bool:
        if matcher.is_accepting():
            return True
        if left <= 0 or self.search_nodes >= CLOSE_NODES or matcher.is_stopped():
            return False
        self.search_nodes += 1
        forced = matcher.compute_ff_tokens()
        if forced:
            if len(forced) > left or not matcher.consume_tokens(forced):
                return False
            path.extend(forced)
            after = depth.copy()
            for t in forced:
                after.feed(self._text(t))
            if self._search(matcher, path, after, left - len(forced)):
                return True
            matcher.rollback(len(forced))
            del path[-len(forced):]
            return False
        matcher.unsafe_compute_mask_ptr(self._search_mask.ctypes.data, self._search_mask.nbytes)
        if matcher.is_error():
            return False
        table = self.closers
        scored, before, level, recent = [], depth.open(), len(path), path[-4:]
        for t in table.allowed(self._search_mask).tolist():
            after = depth.copy().feed(table.text[t])
            h, rank = after.open(), table.rank[t]
            if rank == 0 or h < before:   # punctuation, or a literal that completes a value
                scored.append((h, 0, rank, len(table.text[t]), t, after))
            else:  # more of a string or a number: punctuation first (what formats and patterns hinge on:
                # @ . - :), a token used in the last few steps after the others, then a varying order
                text = table.text[t]
                scored.append((h + 1, 1, recent.count(t), text.isalnum(), (t * 40503 + level * 2654435761) & 0xFFFF,
                               t, after))
        scored.sort(key=lambda c: c[:-1])
        for *_, t, after in scored[:CLOSE_CANDIDATES]:
            if not matcher.consume_token(t):
                return False  # the matcher is in error: nothing more can be learned from this copy
            path.append(t)
            if self._search(matcher, path, after, left - 1):
                return True
            matcher.rollback(1)
            path.pop()
            if self.search_nodes >= CLOSE_NODES:
                return False
        return False

    def _text(self, token: int) -> bytes:
        text = self.closers.text.get(token)
        return text if text is not None else self.tokenizer.decode_bytes([token])

    def is_done(self) -> bool:
        """The grammar is complete and allows nothing more than the end of generation."""
        return self.matcher.is_stopped()

    def close(self) -> None:
        self.matcher = None  # freed by llguidance when the last reference goes
