"""Qwen3's sampling presets and the llama.cpp sampler chain built from them.

Qwen's published settings: thinking temperature 0.6, top_p 0.95, top_k 20, min_p 0 (never
greedy); non-thinking 0.7, 0.8, 20, 0; presence_penalty up to 1.5 against endless repetition in
quantized models. llama-cpp-python's own defaults (temp 0.2, top_k 40, min_p 0.05) are never
used: every field is set here, explicitly, on llama.cpp's C sampler chain.
"""

from __future__ import annotations

import ctypes
import math
import random
from dataclasses import dataclass, replace

import llama_cpp
import numpy as np
from llama_cpp import _internals as internals

from edge.protocol.guidance import Constraint, ConstraintError

PENALTY_LAST_N = 64

# Closing a constrained answer within its budget (README "Structured output"): within the last
# CLOSE_WINDOW tokens a turn may still generate, each step looks for a short way the grammar can
# be completed (Constraint.closing_path); once that needs all but CLOSE_MARGIN of the tokens left,
# its first token is forced. The margin covers a free token that opens more than it closes (`[{"`
# owes a key, a value and two brackets). Before the window every CLOSE_STRIDE-th step looks too, so
# that a schema whose completion alone is longer than the window (many required fields) is
# watched early enough.
CLOSE_WINDOW = 64
CLOSE_MARGIN = 4
CLOSE_STRIDE = 16

# A row (a slot's copy, or the context's own) is drawn from without filling 151,936 candidates
# when the chain is plain (no logit bias, no penalties): greedy is the row's argmax, and top_k (up
# to PREFILTER_MAX_K) runs the chain on the few tokens top_k_superset keeps. Filling every
# candidate from numpy took 0.36 ms of a 0.52 ms draw on a 2-core Xeon, the largest share of the
# Python between two batched steps; llama.cpp's own fill in C took 0.39 ms a draw, the shortcut 0.14.
PREFILTER_MAX_K = 128
PREFILTER_STRIDE = 8


@dataclass(frozen=True)
class SamplingParams:
    temperature: float
    top_p: float
    top_k: int
    min_p: float = 0.0
    presence_penalty: float = 0.0
    seed: int | None = None
    frequency_penalty: float = 0.0
    repeat_penalty: float = 1.0                     # llama.cpp's multiplicative penalty (1 is off)
    logit_bias: tuple[tuple[int, float], ...] = ()  # (token, bias); -inf bans a token

    def with_overrides(self, **overrides: float | int | None) -> "SamplingParams":
        """Apply the overrides that are not None (CLI flags, API arguments)."""
        return replace(self, **{k: v for k, v in overrides.items() if v is not None})


THINKING = SamplingParams(temperature=0.6, top_p=0.95, top_k=20, min_p=0.0)
NON_THINKING = SamplingParams(temperature=0.7, top_p=0.8, top_k=20, min_p=0.0)


def preset(thinking: bool) -> SamplingParams:
    return THINKING if thinking else NON_THINKING


def top_k_superset(row: np.ndarray, k: int) -> np.ndarray | None:
    """The ids (ascending) of a set holding the row's k largest logits and every logit tied with
    them: all logits at least the k-th largest of every PREFILTER_STRIDE-th one, which can be no
    larger than the k-th largest of the whole row. None where that bound is not finite (a masked
    row with fewer than k allowed tokens on the stride, or NaN): the full pass is then needed."""
    sub = row[::PREFILTER_STRIDE]
    if k <= 0 or sub.size < k:
        return None
    bound = np.partition(sub, sub.size - k)[sub.size - k]
    if not np.isfinite(bound):
        return None
    return np.flatnonzero(row >= bound)


def plain_chain(params: SamplingParams) -> bool:
    """No logit bias and no penalties: the chain looks at nothing but the logits."""
    return not params.logit_bias and not (params.presence_penalty or params.frequency_penalty
                                          or params.repeat_penalty != 1.0)


def build_sampler(params: SamplingParams, n_vocab: int) -> internals.LlamaSampler:
    """llama.cpp's chain in its own order (common_sampler's): logit bias, penalties, top_k, top_p,
    min_p, temperature, dist. Temperature 0 (only by explicit override) samples greedily."""
    sampler = internals.LlamaSampler()
    if params.logit_bias:
        sampler.add_logit_bias(n_vocab, dict(params.logit_bias))
    if params.presence_penalty or params.frequency_penalty or params.repeat_penalty != 1.0:
        sampler.add_penalties(n_vocab=n_vocab, penalty_last_n=PENALTY_LAST_N, penalty_repeat=params.repeat_penalty,
                              penalty_freq=params.frequency_penalty, penalty_present=params.presence_penalty)
    if params.temperature <= 0:
        sampler.add_greedy()
        return sampler
    sampler.add_top_k(params.top_k)
    sampler.add_top_p(params.top_p, 1)
    if params.min_p > 0:  # Qwen's min_p is 0: no filter, so no pass over the candidates
        sampler.add_min_p(params.min_p, 1)
    sampler.add_temp(params.temperature)
    sampler.add_dist(params.seed if params.seed is not None else random.getrandbits(32))
    return sampler


# ---- grammars: llama.cpp's grammar sampler, applied the way llama.cpp's own common_sampler does --------
TOKEN_DATA = np.dtype([("id", np.int32), ("logit", np.float32), ("p", np.float32)])  # llama_token_data


class GrammarCompileError(ValueError):
    """llama.cpp refused a GBNF grammar (the reason went to its log)."""


class Grammar:
    """A compiled llama.cpp grammar sampler; close() frees it. Never fed a token it rejects
    (llama.cpp would abort the process), and never an end-of-generation token."""

    def __init__(self, vocab, gbnf: str):
        self.ptr = llama_cpp.llama_sampler_init_grammar(vocab, gbnf.encode("utf-8"), b"root")
        if not self.ptr:
            raise GrammarCompileError("llama.cpp could not compile the grammar")
        self._one = (llama_cpp.llama_token_data * 1)()

    def allows(self, token: int) -> bool:
        """Whether the grammar accepts `token` next (a one-candidate pass: cheap)."""
        self._one[0].id, self._one[0].logit, self._one[0].p = token, 0.0, 0.0
        arr = llama_cpp.llama_token_data_array(data=self._one, size=1, selected=-1, sorted=False)
        llama_cpp.llama_sampler_apply(self.ptr, ctypes.byref(arr))
        return math.isfinite(self._one[0].logit)

    def accept(self, token: int) -> None:
        llama_cpp.llama_sampler_accept(self.ptr, token)

    def close(self) -> None:
        if self.ptr:
            llama_cpp.llama_sampler_free(self.ptr)
            self.ptr = None


class TokenSampler:
    """The sampler chain, plus at most one active grammar.

    Without a grammar a token is drawn by llama.cpp's C chain in one call. With one, the chain
    draws first and the grammar checks only the drawn token; only when it rejects it is the
    grammar applied to the whole vocabulary and the chain run again on what survives (llama.cpp's
    own order: a grammar pass over 151,936 tokens is the expensive part, so it runs only when
    the model strays)."""

    def __init__(self, params: SamplingParams, n_vocab: int):
        self.chain = build_sampler(params, n_vocab)
        self.grammar: Grammar | None = None
        self.n_vocab = n_vocab
        self._cand = np.zeros(n_vocab, dtype=TOKEN_DATA)
        self._ids = np.arange(n_vocab, dtype=np.int32)
        self.rejections = 0  # tokens the grammar sent back to the full pass
        self.closed_tokens = 0  # tokens the closing forced (an answer steered to end within its budget)
        self._banned = frozenset(t for t, bias in params.logit_bias if bias == -math.inf)
        self._watch_from = 0    # remaining tokens from which the closing looks at every step
        plain = plain_chain(params)
        self._greedy = plain and params.temperature <= 0
        self._prefilter_k = params.top_k if plain and params.temperature > 0 and 0 < params.top_k <= PREFILTER_MAX_K else 0

    def close(self) -> None:
        """Free the chain (its penalty buffers are large); grammars are closed by their owner."""
        self.chain.close()

    def arm(self, grammar: Grammar, trigger: int | None = None) -> None:
        """Constrain every following token; `trigger` (already sampled) is fed to it first."""
        self.grammar = grammar
        if trigger is not None:
            grammar.accept(trigger)

    def sample(self, ctx, is_eog, logits: np.ndarray | None = None, remaining: int | None = None) -> int:
        """Draw from the context's last logits row, or from `logits` (a row copied out of a batched
        decode, scheduler.py): the same chain and the same draws either way. `remaining` is how many
        tokens the turn may still generate, this one included (max_tokens, the context's end); an
        llguidance constraint uses it to close the answer in time (_close)."""
        if self.grammar is None and logits is None:
            return self._sample_context(ctx)
        if isinstance(self.grammar, Constraint):
            return self._sample_masked(ctx, is_eog, logits, remaining)
        token = self._draw(ctx, with_grammar=False, logits=logits)
        if self.grammar is not None and not self.grammar.allows(token):
            self.rejections += 1
            token = self._draw(ctx, with_grammar=True, logits=logits)
        self.chain.accept(token)
        if self.grammar is None:
            return token
        if not is_eog(token):
            self.grammar.accept(token)
        return token

    def _sample_masked(self, ctx, is_eog, logits: np.ndarray | None, remaining: int | None = None) -> int:
        """llguidance's mask written into the logits row in place (the context's own buffer, or the
        row the scheduler copied out), then the unchanged chain: every sampler setting applies to
        the allowed tokens. `rejections` counts tokens where the mask removed the model's top choice."""
        row = logits if logits is not None else self._context_row(ctx)
        top = int(row.argmax())
        try:
            self.grammar.mask(row)
        except ConstraintError as e:
            raise GrammarCompileError(str(e)) from None
        self.rejections += not math.isfinite(row[top])
        if remaining is not None:
            self._close(row, remaining)
        if logits is None:
            token = self._sample_context(ctx, row)
        else:
            token = self._draw(ctx, with_grammar=False, logits=row)
            self.chain.accept(token)
        if not is_eog(token):
            try:
                self.grammar.accept(token)
            except ConstraintError as e:
                raise GrammarCompileError(str(e)) from None
        return token

    def _close(self, row: np.ndarray, remaining: int) -> None:
        """Near the budget's end, steer the answer to a complete one: when the shortest closing the
        search finds needs all but CLOSE_MARGIN of the `remaining` tokens, the row keeps only its
        first token (or, the grammar being complete already, the ends of generation), and the
        unchanged chain draws it, so its state (penalties, the seed's stream) stays its own."""
        if remaining > max(CLOSE_WINDOW, self._watch_from) and remaining % CLOSE_STRIDE:
            return
        path = self.grammar.closing_path(remaining)
        if path is None:
            return
        if len(path) + CLOSE_MARGIN + CLOSE_STRIDE >= remaining:
            self._watch_from = max(self._watch_from, remaining)  # the next stride would be too late
        if len(path) + CLOSE_MARGIN < remaining:
            return
        keep = path[:1] or [t for t in sorted(self.grammar.eog) if t < row.shape[0] and math.isfinite(row[t])]
        keep = [t for t in keep if t not in self._banned]
        if not keep:
            return
        kept = row[keep].copy()
        row[:] = -np.inf
        row[keep] = kept
        self.closed_tokens += 1

    def _context_row(self, ctx) -> np.ndarray:
        """The context's last logits row, in place (no copy): masks written into it are what
        llama_sampler_sample reads."""
        return np.ctypeslib.as_array(llama_cpp.llama_get_logits_ith(ctx.ctx, -1), shape=(self.n_vocab,))

    def _sample_context(self, ctx, row: np.ndarray | None = None) -> int:
        """A draw from the context's last row (read in place): the shortcut where it applies, else
        llama.cpp's own llama_sampler_sample, which fills every candidate in C; both accept the
        token into the chain. Either way the draws are those of a copied row (_draw)."""
        token = self._shortcut(self._context_row(ctx) if row is None else row)
        if token is None:
            return self.chain.sample(ctx, -1)
        self.chain.accept(token)
        return token

    def _shortcut(self, row: np.ndarray) -> int | None:
        """A plain chain's draw without filling every candidate (PREFILTER_MAX_K): greedy is the
        first largest logit, as llama.cpp's greedy sampler picks; top_k runs the chain on the
        tokens top_k_superset keeps, in id order like the full array. The draws are the full pass's,
        seed for seed, except that tokens whose logits tie exactly may come out of top_k's partial
        sort in another order (llama.cpp promises no order there either). None: no shortcut."""
        if self._greedy:
            return int(row.argmax())
        ids = top_k_superset(row, self._prefilter_k) if self._prefilter_k else None
        if ids is None:
            return None
        cand = np.empty(ids.size, dtype=TOKEN_DATA)
        cand["id"], cand["logit"], cand["p"] = ids, row[ids], 0.0
        return self._apply_chain(cand, with_grammar=False)

    def _draw(self, ctx, with_grammar: bool, logits: np.ndarray | None = None) -> int:
        if logits is None:
            logits = self._context_row(ctx)
        if not with_grammar and (token := self._shortcut(logits)) is not None:
            return token
        cand = self._cand
        cand["id"] = self._ids  # the chain sorts the candidates in place
        cand["logit"] = logits
        cand["p"] = 0.0
        return self._apply_chain(cand, with_grammar)

    def _apply_chain(self, cand: np.ndarray, with_grammar: bool) -> int:
        data = cand.ctypes.data_as(ctypes.POINTER(llama_cpp.llama_token_data))
        arr = llama_cpp.llama_token_data_array(data=data, size=cand.size, selected=-1, sorted=False)
        if with_grammar:
            llama_cpp.llama_sampler_apply(self.grammar.ptr, ctypes.byref(arr))
            if not np.isfinite(cand["logit"]).any():
                raise GrammarCompileError("the grammar allows no token here")
        llama_cpp.llama_sampler_apply(self.chain.sampler, ctypes.byref(arr))
        chosen = arr.data[arr.selected]
        if with_grammar and not math.isfinite(chosen.logit):
            raise GrammarCompileError("the sampler chose a token the grammar forbids")
        return int(chosen.id)

