"""Speculative decoding at the sequence seam: a drafter guesses, the target verifies in one batch.

The chat loop (chat.py) talks to a sequence: sample() draws the next token from the last logits,
eval([token]) appends it. SpeculativeSequence keeps that contract exactly, so the thinking parser,
budgets, tool-call and schema grammars and stop strings see every token one by one, in order:

- eval([t]) of a token that is not already verified starts a round: the drafter proposes up to k
  tokens after t, and the target decodes [t, d1..dk] in ONE batch with a logits row per token.
  The cache now holds t and the drafts; n_tokens counts only t.
- sample() draws from the row after the last accepted token, with the loop's own sampler (its
  chain, penalties and grammar state as they are at that moment), exactly as without speculation.
- eval([s]) of the drafted token that comes next only moves n_tokens on: no decode. Any other
  token (a rejection) removes the drafts past n_tokens from the cache (llama_memory_seq_rm) and
  starts the next round with s. The draft model's cache rolls back the same way (ModelDrafter).

Acceptance: greedy sampling accepts the longest prefix that equals the target's argmax. With a
sampler, each token is drawn from the target's own distribution p and the draft d is kept when the
draw is d. Since the drafter is deterministic (its proposal distribution q is one-hot on d), this IS
the speculative-sampling rule (accept with min(1, p(d)/q(d)) = p(d); on rejection draw from
norm(max(0, p - q)) = p without d): `accept_or_resample` below, checked against it in the tests.
The output distribution is the target's, and with a seed even the draws are the same ones.

SpecPolicy chooses k from the measured acceptance and costs (expected tokens per round over its
cost in target decodes) and switches speculation off, with a growing back-off, when no k pays.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import llama_cpp
import numpy as np
from llama_cpp import _internals as internals
from llama_cpp.llama_speculative import LlamaPromptLookupDecoding

K_MAX = 8            # drafted tokens per round, at most
MIN_GAIN = 1.05      # a k must promise this many tokens per target-decode's worth of work
BACKOFF_START = 16   # tokens decoded plainly after speculation stopped paying, doubling...
BACKOFF_MAX = 512    # ...up to this, then a probe round at PROBE_K
PROBE_K = 2
DECAY = 0.8          # weight of the past in the acceptance and cost estimates


# ---- pure decisions ---------------------------------------------------------------------------
def expected_tokens(alpha: float, k: int) -> float:
    """Tokens one round yields with k drafts when each is accepted with probability alpha (given
    the ones before it were): the accepted prefix plus the target's own token, (1-a^(k+1))/(1-a)."""
    if alpha >= 1.0:
        return float(k + 1)
    return (1.0 - alpha ** (k + 1)) / (1.0 - alpha)


def round_cost(k: int, draft_cost: float, verify_cost: float) -> float:
    """A round's cost in plain target decodes: k draft decodes (draft_cost each) and one batch of
    k+1 target tokens (1 + verify_cost per token beyond the first)."""
    return 1.0 + k * (verify_cost + draft_cost)


def choose_k(alpha: float, draft_cost: float, verify_cost: float, k_max: int = K_MAX) -> int:
    """The k (1..k_max) with the most tokens per unit of work, or 0 when none beats plain decoding
    by MIN_GAIN (speculation does not pay)."""
    best_k, best = 0, MIN_GAIN
    for k in range(1, k_max + 1):
        gain = expected_tokens(alpha, k) / round_cost(k, draft_cost, verify_cost)
        if gain > best:
            best_k, best = k, gain
    return best_k


def accept_or_resample(p: np.ndarray, draft: int, u: float, v: float) -> int:
    """The speculative-sampling rule for a deterministic draft `draft` under target probabilities
    `p`: keep it when u < p[draft]; else draw (with v in [0,1)) from p with the draft removed. This
    is what SpeculativeSequence does implicitly: a draw from p that equals the draft keeps it."""
    if u < p[draft]:
        return draft
    rest = p.astype(np.float64).copy()
    rest[draft] = 0.0
    total = rest.sum()
    if total <= 0:
        return draft
    cdf = np.cumsum(rest / total)
    return int(min(np.searchsorted(cdf, v, side="right"), len(p) - 1))


@dataclass
class SpecPolicy:
    """Adaptive k and switch-off. Acceptance is a decayed count of drafts accepted over drafts
    judged; costs are decayed measurements in units of one plain target decode (priors until
    measured). `fixed_k` turns adaptation off (tests, benchmarks of one setting)."""
    draft_cost: float                 # prior: a draft decode over a target decode (weights bytes ratio)
    verify_cost: float = 0.1          # prior: each extra token of a verification batch
    fixed_k: int | None = None
    k_max: int = K_MAX
    accepted: float = 1.0             # prior: 1 of 2 judged (alpha 0.5) until measured
    judged: float = 2.0
    t_plain: float | None = None      # seconds of one plain target decode
    off_for: int = 0                  # plain decodes left before a probe
    backoff: int = BACKOFF_START
    probing: bool = False
    rounds: int = 0
    history: list = field(default_factory=list)   # (drafted, accepted) per round, for reports

    @property
    def alpha(self) -> float:
        return self.accepted / self.judged if self.judged else 0.0

    def next_k(self) -> int:
        """Drafts for the next round; 0 decodes plainly (speculation off or not paying)."""
        if self.fixed_k is not None:
            return self.fixed_k
        if self.off_for > 0:
            self.off_for -= 1
            if self.off_for == 0:
                self.probing = True
            return 0
        if self.probing:
            return PROBE_K
        k = choose_k(self.alpha, self.draft_cost, self.verify_cost, self.k_max)
        if k == 0:
            # this decode and backoff - 1 more are plain, then a probe; each failure doubles it
            self.off_for, self.backoff = self.backoff - 1, min(self.backoff * 2, BACKOFF_MAX)
        return k

    def record_round(self, drafted: int, accepted: int, rejected: bool) -> None:
        """A finished round: `accepted` of `drafted` kept; `rejected` when one was refused."""
        self.rounds += 1
        self.history.append((drafted, accepted))
        judged = accepted + (1 if rejected else 0)
        self.accepted = DECAY * self.accepted + accepted
        self.judged = DECAY * self.judged + judged
        if self.probing:
            self.probing = False
            if accepted and self.fixed_k is None:
                self.backoff = BACKOFF_START  # the probe found agreement again

    def record_plain(self, seconds: float) -> None:
        self.t_plain = seconds if self.t_plain is None else DECAY * self.t_plain + (1 - DECAY) * seconds

    def record_costs(self, n_batch: int, verify_s: float, draft_s: float, drafted: int) -> None:
        """Measured costs of a round, against the plain decode time (once one is known)."""
        if self.t_plain is None or self.t_plain <= 0:
            return
        if n_batch > 1:
            v = max(0.0, (verify_s / self.t_plain - 1.0) / (n_batch - 1))
            self.verify_cost = DECAY * self.verify_cost + (1 - DECAY) * v
        if drafted:
            c = (draft_s / drafted) / self.t_plain
            self.draft_cost = DECAY * self.draft_cost + (1 - DECAY) * c


def shared_prefix(a: np.ndarray, b: np.ndarray) -> int:
    """How many leading tokens two arrays share."""
    m = min(len(a), len(b))
    diff = np.flatnonzero(a[:m] != b[:m])
    return int(diff[0]) if diff.size else m


# ---- drafters ---------------------------------------------------------------------------------
class PromptLookupDrafter:
    """Drafts by n-gram lookup in the tokens so far (prompt and reply): llama-cpp-python's
    LlamaPromptLookupDecoding. No model, so no cost beyond the target's verification."""
    kind = "lookup"

    def __init__(self, max_ngram: int = 3):
        self.max_ngram = max_ngram
        self.prior_cost = 0.0

    def propose(self, history: np.ndarray, k: int) -> list[int]:
        found = LlamaPromptLookupDecoding.find_candidate_pred_tokens(history, self.max_ngram, k)
        return [int(t) for t in found[:k]]

    def close(self) -> None:
        pass


class ModelDrafter:
    """A small model with the target's tokenizer (Qwen3-0.6B for the 4B), drafting greedily on its
    own context. Its cache keeps the longest prefix it shares with the target's accepted tokens;
    what the target rejected is removed before the next proposal (llama_memory_seq_rm through
    Llama.eval), and its context grows with the conversation (context_growth.py)."""
    kind = "model"

    def __init__(self, llama: llama_cpp.Llama, prior_cost: float, max_ctx: int, is_eog):
        self.llama, self.prior_cost, self.max_ctx, self.is_eog = llama, prior_cost, max_ctx, is_eog
        self._n_vocab = llama.n_vocab()

    def _room(self, n: int) -> bool:
        from edge.runtime.context_growth import GrowthError, resize_context
        from edge.runtime.footprint import next_ctx
        have = min(self.llama.n_ctx(), len(self.llama.input_ids))
        if n <= have:
            return True
        if have >= self.max_ctx or n > self.max_ctx:
            return False
        try:
            resize_context(self.llama, next_ctx(have, n, self.max_ctx))
        except GrowthError:
            self.max_ctx = have
            return False
        return True

    def propose(self, history: np.ndarray, k: int) -> list[int]:
        d = self.llama
        if not self._room(len(history) + k):
            k = max(0, min(self.max_ctx, min(d.n_ctx(), len(d.input_ids))) - len(history))
            if k <= 0:
                return []
        d.n_tokens = min(shared_prefix(d.input_ids[: d.n_tokens], history), len(history) - 1)
        d.eval(history[d.n_tokens:].tolist())  # Llama.eval removes the cells past n_tokens first
        out: list[int] = []
        for i in range(k):
            logits = np.ctypeslib.as_array(llama_cpp.llama_get_logits_ith(d._ctx.ctx, -1), shape=(self._n_vocab,))
            token = int(np.argmax(logits))
            out.append(token)
            if self.is_eog(token) or i == k - 1:
                break
            d.eval([token])
        return out

    def close(self) -> None:
        self.llama.close()


# ---- the sequence -----------------------------------------------------------------------------
class Speculator:
    """What the Engine keeps between generations: the drafter and its policy."""

    def __init__(self, drafter, policy: SpecPolicy):
        self.drafter, self.policy = drafter, policy
        self.stats = SpecStats()

    def wrap(self, seq) -> "SpeculativeSequence":
        return SpeculativeSequence(seq, self)

    def close(self) -> None:
        self.drafter.close()

    def describe(self) -> str:
        return (f"{self.drafter.kind} draft" + (f" {self.drafter.name}" if getattr(self.drafter, "name", None) else "")
                + (f", k {self.policy.fixed_k}" if self.policy.fixed_k is not None else ", adaptive k"))


@dataclass
class SpecStats:
    """Counts since load: rounds, tokens drafted and accepted, target decode calls."""
    rounds: int = 0
    drafted: int = 0
    accepted: int = 0
    target_decodes: int = 0
    plain_decodes: int = 0

    @property
    def acceptance(self) -> float:
        return self.accepted / self.drafted if self.drafted else 0.0


class SpeculativeSequence:
    """A LlamaSequence whose eval() verifies drafts in batches (see the module docstring)."""

    def __init__(self, base, speculator: Speculator):
        self.base, self.spec = base, speculator
        self.llama: llama_cpp.Llama = base.llama
        self._n_vocab = self.llama.n_vocab()
        self._batch: internals.LlamaBatch | None = None
        self.pending: list[int] = []   # drafts in the cache past n_tokens, not yet accepted
        self.row: int | None = None    # the verification batch's logits row for the next sample
        self._round = (0, 0)           # (drafted, accepted) of the round in progress

    @property
    def n_tokens(self) -> int:
        return self.llama.n_tokens

    def prefill(self, prompt: list[int]) -> int:
        self._end_round(rejected=False)
        return self.base.prefill(prompt)

    def sample(self, sampler, is_eog, remaining: int | None = None) -> int:
        if self.row is None:
            return self.base.sample(sampler, is_eog, remaining)
        ctx = self.llama._ctx
        logits = np.ctypeslib.as_array(llama_cpp.llama_get_logits_ith(ctx.ctx, self.row), shape=(self._n_vocab,))
        return sampler.sample(ctx, is_eog, logits=logits, remaining=remaining)

    def eval(self, tokens: list[int]) -> None:
        if len(tokens) == 1 and self.pending and tokens[0] == self.pending[0]:
            self.pending.pop(0)          # verified already: the cache holds it
            self.llama.n_tokens += 1
            self.row += 1
            drafted, accepted = self._round
            self._round = (drafted, accepted + 1)
            if not self.pending:
                self._end_round(rejected=False)
            return
        self._end_round(rejected=bool(self.pending))
        if len(tokens) != 1:             # the budget phrase, a closed thinking: appended plainly
            self.base.eval(tokens)
            return
        self._start_round(tokens[0])

    def release(self) -> None:
        self._end_round(rejected=False)
        self.base.release()

    # ---- rounds -------------------------------------------------------------------------------
    def _end_round(self, rejected: bool) -> None:
        """Close the round in progress: the drafts not accepted leave the target's cache."""
        drafted, accepted = self._round
        if drafted:
            self.spec.policy.record_round(drafted, accepted, rejected)
            st = self.spec.stats
            st.rounds, st.drafted, st.accepted = st.rounds + 1, st.drafted + drafted, st.accepted + accepted
        if self.pending:
            self.llama._ctx.kv_cache_seq_rm(0, self.llama.n_tokens, -1)
        self.pending, self.row, self._round = [], None, (0, 0)

    def _start_round(self, token: int) -> None:
        llama, policy, stats = self.llama, self.spec.policy, self.spec.stats
        n = llama.n_tokens
        if self.base.reserve is not None:
            self.base.reserve(n + 1)
        room = min(llama.n_ctx(), len(llama.input_ids)) - (n + 1)
        measure = policy.t_plain is None and policy.fixed_k is None  # costs are relative to a plain decode
        k = 0 if measure else min(policy.next_k(), room, llama.n_batch - 1)
        drafts: list[int] = []
        draft_s = 0.0
        if k > 0:
            history = np.empty(n + 1, dtype=np.intc)
            history[:n] = llama.input_ids[:n]
            history[n] = token
            started = time.perf_counter()
            drafts = self.spec.drafter.propose(history, k)[:k]
            draft_s = time.perf_counter() - started
        if not drafts:
            started = time.perf_counter()
            llama.eval([token])
            llama_cpp.llama_synchronize(llama._ctx.ctx)
            policy.record_plain(time.perf_counter() - started)
            stats.plain_decodes += 1
            stats.target_decodes += 1
            return
        batch = [token, *drafts]
        started = time.perf_counter()
        self._decode_all(batch, n)
        verify_s = time.perf_counter() - started
        stats.target_decodes += 1
        policy.record_costs(len(batch), verify_s, draft_s if self.spec.drafter.kind == "model" else 0.0, len(drafts))
        llama.n_tokens = n + 1
        self.pending, self.row, self._round = list(drafts), 0, (len(drafts), 0)

    def _decode_all(self, tokens: list[int], n_past: int) -> None:
        """One llama_decode of `tokens` at positions n_past.., with a logits row for each."""
        llama = self.llama
        if self._batch is None:
            self._batch = internals.LlamaBatch(n_tokens=llama.n_batch, embd=0, n_seq_max=1, verbose=False)
        llama._ctx.kv_cache_seq_rm(0, n_past, -1)
        self._batch.set_batch(batch=tokens, n_past=n_past, logits_all=True)
        llama._ctx.decode(self._batch)
        llama_cpp.llama_synchronize(llama._ctx.ctx)
        llama.input_ids[n_past: n_past + len(tokens)] = tokens


def n_eval_tokens(llama: llama_cpp.Llama) -> tuple[int, int]:
    """llama.cpp's own perf counters of a context: (prompt-batch tokens, single-token decodes)."""
    data = llama_cpp.llama_perf_context(llama._ctx.ctx)
    return int(data.n_p_eval), int(data.n_eval)


__all__ = ["SpecPolicy", "Speculator", "SpeculativeSequence", "ModelDrafter", "PromptLookupDrafter",
           "choose_k", "expected_tokens", "round_cost", "accept_or_resample", "n_eval_tokens"]
