"""edge/runtime/sampling.py's TokenSampler and Grammar, driven directly with logits rows (the path the
scheduler uses) over a byte-level vocabulary: seeds repeat and differ, temperature 0 is greedy,
top_k / top_p / min_p cut where they say, presence_penalty sees the tokens drawn, and a grammar only
ever lets out what it allows (a rejection takes the full pass and is counted). Fast: a 300-token
GGUF (tests/tiny_gguf.py) gives the vocabulary, and no model weights are evaluated. Written against the mutants benchmarks/mutation.py found (docs/MUTATION.md)."""

from __future__ import annotations

import itertools

import llama_cpp
import numpy as np
import pytest

from edge.runtime.sampling import (NON_THINKING, THINKING, Grammar, GrammarCompileError, SamplingParams, TokenSampler,
                           build_sampler, preset)
from tests.tiny_gguf import write_tiny_qwen3

LETTERS = "abcdefgh"


@pytest.fixture(scope="module")
def vocab(tmp_path_factory):
    path = write_tiny_qwen3(tmp_path_factory.mktemp("vocab") / "tiny.gguf")
    llm = llama_cpp.Llama(str(path), vocab_only=True, verbose=False)
    yield llm
    llm.close()


@pytest.fixture(scope="module")
def letter_ids(vocab) -> list[int]:
    ids = [vocab.tokenize(c.encode(), add_bos=False, special=False) for c in LETTERS]
    assert all(len(i) == 1 for i in ids)
    return [i[0] for i in ids]


def never_eog(_token: int) -> bool:
    return False


def row(n_vocab: int, values: dict[int, float], rest: float = -30.0) -> np.ndarray:
    out = np.full(n_vocab, rest, dtype=np.float32)
    for token, logit in values.items():
        out[token] = logit
    return out


def draws(vocab, params: SamplingParams, logits: np.ndarray, n: int, grammar: Grammar | None = None) -> list[int]:
    sampler = TokenSampler(params, vocab.n_vocab())
    if grammar is not None:
        sampler.arm(grammar)
    try:
        return [sampler.sample(None, never_eog, logits=logits) for _ in range(n)]
    finally:
        sampler.close()


def flat(vocab, letter_ids) -> np.ndarray:
    return row(vocab.n_vocab(), {t: 0.0 for t in letter_ids})


def test_presets_and_defaults():
    assert (THINKING.temperature, THINKING.top_p, THINKING.top_k, THINKING.min_p) == (0.6, 0.95, 20, 0.0)
    assert (NON_THINKING.temperature, NON_THINKING.top_p, NON_THINKING.top_k, NON_THINKING.min_p) == (0.7, 0.8, 20, 0.0)
    assert preset(True) is THINKING and preset(False) is NON_THINKING
    plain = SamplingParams(temperature=1.0, top_p=1.0, top_k=0)
    assert (plain.min_p, plain.presence_penalty, plain.seed) == (0.0, 0.0, None)
    assert THINKING.with_overrides(temperature=None, top_k=5, seed=0) == SamplingParams(0.6, 0.95, 5, 0.0, 0.0, 0)


def test_a_seed_repeats_its_draws_and_another_seed_differs(vocab, letter_ids):
    logits = flat(vocab, letter_ids)
    p = SamplingParams(temperature=1.0, top_p=1.0, top_k=0, seed=7)
    first = draws(vocab, p, logits, 24)
    assert set(first) <= set(letter_ids) and len(set(first)) > 3
    assert draws(vocab, p, logits, 24) == first
    assert draws(vocab, p.with_overrides(seed=8), logits, 24) != first
    # no seed: a random one each time (two unseeded samplers agreeing on 24 draws of 8 is ~1e-21)
    unseeded = SamplingParams(temperature=1.0, top_p=1.0, top_k=0)
    assert draws(vocab, unseeded, logits, 24) != draws(vocab, unseeded, logits, 24)


def test_temperature_zero_is_greedy(vocab, letter_ids):
    logits = row(vocab.n_vocab(), {t: 1.0 - 0.01 * k for k, t in enumerate(letter_ids)})
    for seed in (1, 2, 3):
        p = SamplingParams(temperature=0.0, top_p=1.0, top_k=0, seed=seed)
        assert draws(vocab, p, logits, 6) == [letter_ids[0]] * 6


def test_top_k_top_p_and_min_p_cut_where_they_say(vocab, letter_ids):
    a, b, c, d, *_ = letter_ids
    # probabilities at temperature 1: a 0.4, b 0.3, c 0.2, d 0.1 (the rest nothing)
    logits = row(vocab.n_vocab(), {a: np.log(0.4), b: np.log(0.3), c: np.log(0.2), d: np.log(0.1)})
    def seen(**kw):
        return set(draws(vocab, SamplingParams(**{"temperature": 1.0, "top_p": 1.0, "top_k": 0, "seed": 3, **kw}),
                         logits, 200))
    assert seen() == {a, b, c, d}
    assert seen(top_k=2) == {a, b} and seen(top_k=1) == {a}
    assert seen(top_p=0.65) == {a, b}          # 0.4 + 0.3 reaches 0.65
    assert seen(top_p=0.75) == {a, b, c}
    assert seen(top_p=0.3) == {a}              # a alone covers it: no second token is kept
    assert seen(min_p=0.9) == {a}
    assert seen(min_p=0.6) == {a, b}           # p >= 0.6 * 0.4
    assert seen(min_p=0.3) == {a, b, c, d} - {d} and seen(min_p=0.2) == {a, b, c, d}


def test_temperature_sharpens(vocab, letter_ids):
    a, b = letter_ids[:2]
    logits = row(vocab.n_vocab(), {a: 1.0, b: 0.0})
    cold = draws(vocab, SamplingParams(temperature=0.05, top_p=1.0, top_k=0, seed=5), logits, 100)
    hot = draws(vocab, SamplingParams(temperature=1.0, top_p=1.0, top_k=0, seed=5), logits, 100)
    assert cold.count(a) == 100 and 0 < hot.count(b) < 60


def test_presence_penalty_sees_each_drawn_token(vocab, letter_ids):
    """Greedy with a presence penalty: each drawn token is penalised, so the next best comes next."""
    logits = row(vocab.n_vocab(), {t: 10.0 - 0.1 * k for k, t in enumerate(letter_ids)})
    p = SamplingParams(temperature=0.0, top_p=1.0, top_k=0, presence_penalty=1.5, seed=1)
    assert draws(vocab, p, logits, 4) == letter_ids[:4]
    assert draws(vocab, p.with_overrides(presence_penalty=0.0), logits, 4) == [letter_ids[0]] * 4


def test_the_chain_is_built_in_llama_cpps_order(vocab):
    def names(p):
        s = build_sampler(p, vocab.n_vocab())
        try:
            n = llama_cpp.llama_sampler_chain_n(s.sampler)
            return [llama_cpp.llama_sampler_name(llama_cpp.llama_sampler_chain_get(s.sampler, i)).decode()
                    for i in range(n)]
        finally:
            s.close()
    assert names(SamplingParams(0.7, 0.8, 20, 0.0, 0.0, 1)) == ["top-k", "top-p", "temp", "dist"]
    assert names(SamplingParams(0.7, 0.8, 20, 0.05, 1.0, 1)) == ["penalties", "top-k", "top-p", "min-p", "temp", "dist"]
    assert names(SamplingParams(0.0, 0.8, 20, 0.05, 0.0, 1)) == ["greedy"]


# ---- grammars ------------------------------------------------------------------------------------
def test_allows_and_accept_follow_the_grammar(vocab, letter_ids):
    a, b, c = letter_ids[:3]
    g = Grammar(vocab._model.vocab, 'root ::= "a" "b"')
    try:
        assert g.allows(a) and not g.allows(b) and not g.allows(c)
        g.accept(a)
        assert g.allows(b) and not g.allows(a)
        g.accept(b)
        assert g.allows(vocab.token_eos()) and not g.allows(a)
    finally:
        g.close()
    assert g.ptr is None
    g.close()  # twice is harmless


def test_a_grammar_that_does_not_compile_is_refused(vocab):
    with pytest.raises(GrammarCompileError):
        Grammar(vocab._model.vocab, "root ::= (")


def test_a_drawn_token_the_grammar_refuses_takes_the_full_pass(vocab, letter_ids):
    """The model strongly prefers "a"; the grammar allows only "c" then "d": the full pass is
    counted once per refused draw and every token comes out allowed, still drawn by the chain."""
    a, b, c, d = letter_ids[:4]
    logits = row(vocab.n_vocab(), {a: 20.0, b: 0.0, c: 1.0, d: 0.5})
    g = Grammar(vocab._model.vocab, 'root ::= ("c" | "b") "d"')
    sampler = TokenSampler(SamplingParams(temperature=0.0, top_p=1.0, top_k=0, seed=1), vocab.n_vocab())
    try:
        sampler.arm(g)
        assert sampler.sample(None, never_eog, logits=logits) == c   # greedy among what is allowed
        assert sampler.rejections == 1
        assert sampler.sample(None, never_eog, logits=logits) == d   # the grammar moved on: c was accepted
        assert sampler.rejections == 2
        # now only an end of generation is allowed; the row gives it no chance in the chain
        eog = vocab.token_eos()
        logits[eog] = 5.0
        assert sampler.sample(None, lambda t: t == eog, logits=logits) == eog
    finally:
        sampler.close()
        g.close()


def test_an_allowed_draw_skips_the_full_pass(vocab, letter_ids):
    a, b = letter_ids[:2]
    logits = row(vocab.n_vocab(), {a: 20.0, b: 1.0})
    g = Grammar(vocab._model.vocab, 'root ::= "a" "b"')
    sampler = TokenSampler(SamplingParams(temperature=0.0, top_p=1.0, top_k=0, seed=1), vocab.n_vocab())
    try:
        sampler.arm(g)
        assert sampler.sample(None, never_eog, logits=logits) == a and sampler.rejections == 0
        assert sampler.sample(None, never_eog, logits=logits) == b and sampler.rejections == 1
    finally:
        sampler.close()
        g.close()


def test_arm_feeds_the_trigger_first(vocab, letter_ids):
    a, b, c = letter_ids[:3]
    logits = row(vocab.n_vocab(), {a: 5.0, b: 1.0, c: 4.0})
    g = Grammar(vocab._model.vocab, 'root ::= "a" ("b" | "c")')
    sampler = TokenSampler(SamplingParams(temperature=0.0, top_p=1.0, top_k=0, seed=1), vocab.n_vocab())
    try:
        sampler.arm(g, trigger=a)
        assert sampler.grammar is g
        assert sampler.sample(None, never_eog, logits=logits) == c
    finally:
        sampler.close()
        g.close()


def test_a_grammar_pass_samples_with_the_seed_and_temperature(vocab, letter_ids):
    """Under a grammar that refuses the model's favourite, the full pass still draws with the chain:
    the seed repeats, another seed differs, temperature 0 is greedy among the allowed."""
    a, *rest = letter_ids
    logits = row(vocab.n_vocab(), {a: 20.0, **{t: 0.0 for t in rest}})
    gbnf = "root ::= [b-h]+"

    def run(seed, temperature=1.0):
        g = Grammar(vocab._model.vocab, gbnf)
        try:
            return draws(vocab, SamplingParams(temperature=temperature, top_p=1.0, top_k=0, seed=seed), logits, 16, g)
        finally:
            g.close()
    first = run(1)
    assert a not in first and len(set(first)) > 2
    assert run(1) == first and run(2) != first
    greedy = run(1, 0.0)
    assert len(set(greedy)) == 1 and greedy == run(2, 0.0)


def test_a_grammar_that_allows_nothing_here_is_an_error_not_a_crash(vocab, letter_ids):
    a, b = letter_ids[:2]
    g = Grammar(vocab._model.vocab, 'root ::= "a"')
    sampler = TokenSampler(SamplingParams(temperature=1.0, top_p=1.0, top_k=0, seed=1), vocab.n_vocab())
    try:
        sampler.arm(g, trigger=a)
        # only an end of generation may follow "a"; the row makes every token impossible
        logits = np.full(vocab.n_vocab(), -np.inf, dtype=np.float32)
        logits[b] = 1.0
        with pytest.raises(GrammarCompileError):
            sampler.sample(None, never_eog, logits=logits)
    finally:
        sampler.close()
        g.close()


def test_the_penalty_is_presence_only(vocab, letter_ids):
    """A small presence penalty leaves a clear favourite in place however often it came: no
    repetition factor, no frequency term."""
    a, b = letter_ids[:2]
    logits = row(vocab.n_vocab(), {a: 10.0, b: 9.5})
    p = SamplingParams(temperature=0.0, top_p=1.0, top_k=0, presence_penalty=0.3, seed=1)
    assert draws(vocab, p, logits, 5) == [a] * 5


@pytest.mark.parametrize("others, expected", [(63, 1), (64, 0)])
def test_the_penalty_remembers_the_last_64_tokens(vocab, letter_ids, others, expected):
    a, b, c = letter_ids[:3]
    logits = row(vocab.n_vocab(), {a: 10.0, b: 9.0})
    sampler = TokenSampler(SamplingParams(temperature=0.0, top_p=1.0, top_k=0, presence_penalty=5.0, seed=1),
                           vocab.n_vocab())
    try:
        assert sampler.sample(None, never_eog, logits=logits) == a
        for _ in range(others):
            sampler.chain.accept(c)
        assert sampler.sample(None, never_eog, logits=logits) == [a, b][expected]
    finally:
        sampler.close()


def test_the_contexts_own_logits_are_drawn_from_like_a_copied_row(tmp_path):
    """A single-sequence engine samples straight from the context's last logits row (no copy):
    the same draws as from that row copied out, with and without a grammar."""
    path = write_tiny_qwen3(tmp_path / "tiny.gguf", seed=3)
    llm = llama_cpp.Llama(str(path), n_ctx=32, n_batch=32, n_threads=1, verbose=False)
    try:
        llm.eval(llm.tokenize(b"the cat sat on the mat", add_bos=False))  # several tokens: the last row counts
        copied = np.ctypeslib.as_array(llama_cpp.llama_get_logits_ith(llm._ctx.ctx, -1), shape=(llm.n_vocab(),)).copy()
        for params, gbnf in itertools.product(
                (SamplingParams(temperature=1.5, top_p=1.0, top_k=0, seed=9),    # the full pass
                 SamplingParams(temperature=1.5, top_p=0.95, top_k=20, seed=9),  # the shortcut (top_k_superset)
                 SamplingParams(temperature=0.0, top_p=1.0, top_k=20, seed=9)),  # greedy
                (None, 'root ::= [a-d]+')):
            got = []
            for logits in (None, copied):
                grammar = Grammar(llm._model.vocab, gbnf) if gbnf else None
                sampler = TokenSampler(params, llm.n_vocab())
                if grammar:
                    sampler.arm(grammar)
                try:
                    got.append([sampler.sample(llm._ctx, never_eog, logits=logits) for _ in range(12)])
                finally:
                    sampler.close()
                    if grammar:
                        grammar.close()
            assert got[0] == got[1] and (len(set(got[0])) > 2 or params.temperature == 0), (params, gbnf, got)
    finally:
        llm.close()


def test_the_closing_forces_the_grammars_end_only_near_the_budget(vocab, letter_ids):
    """An llguidance constraint inside a JSON string that the row wants to go on forever (`a`):
    with more than the margin to spare the chain draws freely; once the closing (`"` then `]`)
    needs all but CLOSE_MARGIN of the tokens left, its tokens are forced, then the end, each drawn
    by the unchanged chain and counted."""
    from edge.protocol.guidance import compile_grammar, tokenizer_for
    from edge.runtime.sampling import CLOSE_MARGIN
    a = letter_ids[0]
    quote, bracket = (vocab.tokenize(c.encode(), add_bos=False, special=False)[0] for c in '"]')
    eog = vocab.token_eos()
    c = compile_grammar(tokenizer_for(vocab), 'start: %json {"type": "array", "items": {"type": "string"}}')
    for t in vocab.tokenize(b'["aa', add_bos=False, special=False):
        c.accept(t)
    logits = row(vocab.n_vocab(), {a: 10.0, quote: 0.0, bracket: 0.0, eog: 0.0})
    sampler = TokenSampler(SamplingParams(temperature=1.0, top_p=1.0, top_k=0, seed=3), vocab.n_vocab())
    try:
        sampler.arm(c)
        left = 2 + CLOSE_MARGIN + 1
        assert sampler.sample(None, never_eog, logits=logits.copy(), remaining=left) == a   # room to spare
        assert sampler.sample(None, never_eog, logits=logits.copy(), remaining=None) == a   # no budget known
        assert sampler.closed_tokens == 0
        got = [sampler.sample(None, lambda t: t == eog, logits=logits.copy(), remaining=left - 1 - i) for i in range(3)]
        assert got == [quote, bracket, eog] and sampler.closed_tokens == 3
    finally:
        sampler.close()


# ---- the prefiltered draw: a copied row drawn from without filling every candidate ------------------
BIG_VOCAB = 151_936


def _rows() -> dict[str, np.ndarray]:
    """Rows of Qwen3's vocabulary size: plain, peaked, with the largest logits all on the stride
    (where the bound is tightest), mostly masked, and with the largest logit twice."""
    rng = np.random.default_rng(7)
    rows = {"normal": (rng.standard_normal(BIG_VOCAB) * 3).astype(np.float32),
            "peaked": (rng.standard_normal(BIG_VOCAB) + np.where(rng.random(BIG_VOCAB) < 1e-4, 12, 0)).astype(np.float32)}
    on_stride = rng.standard_normal(BIG_VOCAB).astype(np.float32)
    on_stride[np.arange(0, 200 * 8, 8)] = np.linspace(20, 5, 200, dtype=np.float32)
    rows["top on the stride"] = on_stride
    masked = np.full(BIG_VOCAB, -np.inf, dtype=np.float32)
    masked[rng.choice(BIG_VOCAB, 300, replace=False)] = rng.standard_normal(300).astype(np.float32)
    rows["masked"] = masked
    twice = rows["normal"].copy()
    twice[[1234, 98765]] = twice.max() + 1.0
    rows["largest twice"] = twice
    return rows


@pytest.mark.parametrize("k", [1, 20, 128])
def test_the_superset_holds_the_k_largest_and_their_ties(k):
    from edge.runtime.sampling import top_k_superset
    for name, r in _rows().items():
        ids = top_k_superset(r, k)
        finite_on_stride = np.isfinite(r[::8]).sum()
        if finite_on_stride < k:
            assert ids is None, name  # the bound would be -inf: the full pass instead
            continue
        kth = np.sort(r)[-k]
        must = np.flatnonzero(r >= kth)  # the k largest and everything tied with the k-th
        assert ids is not None and np.all(np.diff(ids) > 0), name
        assert set(must.tolist()) <= set(ids.tolist()), (name, k)
        assert ids.size < BIG_VOCAB // 4, (name, ids.size)  # a small set, or the point is lost
    on_stride = _rows()["top on the stride"]
    assert top_k_superset(on_stride, k).size == k  # the bound is exactly the k-th largest there


@pytest.mark.parametrize("params", [
    NON_THINKING.with_overrides(seed=5), THINKING.with_overrides(seed=6),
    SamplingParams(temperature=3.0, top_p=1.0, top_k=20, seed=7),        # every kept token drawn often
    SamplingParams(temperature=1.0, top_p=1.0, top_k=128, min_p=0.01, seed=8),
    SamplingParams(temperature=0.0, top_p=1.0, top_k=20, seed=9),        # greedy
], ids=["non-thinking", "thinking", "hot", "k128-min-p", "greedy"])
def test_a_prefiltered_draw_is_the_full_passs_draw(params):
    """The shortcut for plain chains draws exactly what the chain over all 151,936 candidates
    draws, seed for seed, on every row (the shortcut off: the full pass)."""
    for name, r in _rows().items():
        got = []
        for shortcut in (True, False):
            sampler = TokenSampler(params, BIG_VOCAB)
            if not shortcut:
                sampler._greedy, sampler._prefilter_k = False, 0
            try:
                got.append([sampler.sample(None, never_eog, logits=r) for _ in range(60)])
            finally:
                sampler.close()
        if name == "largest twice" and params.temperature > 0:
            # tied logits may leave top_k's partial sort in another order: the same tokens, drawn
            # as often (two equal logits: the same probability), but not seed for seed
            assert set(got[0]) == set(got[1]), (name, params)
            continue
        assert got[0] == got[1], (name, params)
        assert params.temperature == 0 or len(set(got[0])) > 1 or name == "peaked", (name, got[0][:10])


def test_the_shortcut_is_taken_only_for_plain_chains():
    """Penalties and logit bias see tokens outside the top k: those chains keep the full pass."""
    taken = lambda p: (TokenSampler(p, BIG_VOCAB)._prefilter_k, TokenSampler(p, BIG_VOCAB)._greedy)  # noqa: E731
    assert taken(NON_THINKING) == (20, False)
    assert taken(NON_THINKING.with_overrides(temperature=0.0)) == (0, True)
    assert taken(NON_THINKING.with_overrides(presence_penalty=1.5)) == (0, False)
    assert taken(NON_THINKING.with_overrides(frequency_penalty=0.5)) == (0, False)
    assert taken(NON_THINKING.with_overrides(repeat_penalty=1.1)) == (0, False)
    assert taken(SamplingParams(0.0, 1.0, 20, logit_bias=((5, 2.0),))) == (0, False)
    assert taken(NON_THINKING.with_overrides(top_k=0)) == (0, False)     # no top_k: every token may be drawn
    assert taken(NON_THINKING.with_overrides(top_k=200)) == (0, False)   # past llama.cpp's partial sort
