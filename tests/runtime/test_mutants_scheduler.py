"""Claims of edge/runtime/scheduler.py that its mutants showed untested (docs/MUTATION.md, issue 21):
which free slot a prompt goes to, and how one step's batch is filled (one token per generating
slot first, prompt chunks capped while others generate, positions and logits flags). The
Scheduler's pure parts are run on a stand-in batch, without a llama.cpp context or its thread;
test_parallel runs the same code on a model."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

import edge.runtime.scheduler as sched
from edge.runtime.ram_states import RamStates
from edge.runtime.scheduler import Scheduler, _Slot, _Work


def bare(n_slots: int = 3, n_batch: int = 16, prompt_chunk: int = 4) -> Scheduler:
    """A Scheduler without its context or thread: what _pick and _fill read."""
    s = object.__new__(Scheduler)
    s.slots = [_Slot(i) for i in range(n_slots)]
    s.n_batch, s.prompt_chunk, s.mem, s.ctx, s.states = n_batch, prompt_chunk, None, None, RamStates(0)
    size = n_batch
    s.batch = SimpleNamespace(token=[None] * size, pos=[None] * size, n_seq_id=[None] * size,
                              seq_id=[[None] for _ in range(size)], logits=[None] * size, n_tokens=0)
    return s


def slot(seq_id: int, tokens: list[int], used: int) -> _Slot:
    s = _Slot(seq_id)
    s.tokens, s.used = list(tokens), used
    return s


def test_a_prompt_goes_to_the_slot_holding_its_conversation():
    """The free slot sharing the longest prefix, when it covers more than a tenth of the prompt."""
    s = bare()
    a, b, c = slot(0, [1, 2, 3], used=1), slot(1, [1, 2, 3, 4, 5, 6], used=2), slot(2, [], used=3)
    assert s._pick([a, b, c], [1, 2, 3, 4, 5, 6, 7, 8]) is b


def test_a_short_shared_prefix_takes_the_least_recently_used_slot():
    """A prefix of a tenth of the prompt or less (the template's first tokens) does not choose a
    slot: the least recently used one is taken, and the others keep their conversations."""
    s = bare()
    prompt = [9] + list(range(100, 109))                   # 10 tokens: a shared first token is 0.1
    a, b = slot(0, [9, 50, 51], used=5), slot(1, [70], used=2)
    assert s._pick([a, b], prompt) is b
    c = slot(2, [9, 100, 50], used=7)                       # 2 of 10 shared: over a tenth
    assert s._pick([a, b, c], prompt) is c


def test_between_equal_prefixes_the_least_recently_used_slot_wins():
    """Two slots sharing as much of the prompt: the one released longer ago."""
    s = bare()
    a, b = slot(0, [1, 2, 3, 7], used=9), slot(1, [1, 2, 3, 8], used=4)
    assert s._pick([a, b], [1, 2, 3, 4]) is b


def work(seq_id: int, tokens: list[int], start: int, done: int = 0, held: int | None = None) -> _Work:
    w = _Work(_Slot(seq_id), tokens, start)
    w.slot.tokens = list(range(start if held is None else held))
    w.done = done
    return w


@pytest.fixture
def no_rm(monkeypatch):
    removed = []
    monkeypatch.setattr(sched.llama_cpp, "llama_memory_seq_rm",
                        lambda mem, seq, p0, p1: removed.append((seq, p0, p1)) or True)
    return removed


def test_generating_slots_go_first_and_prompts_are_chunked_beside_them(no_rm):
    """One token per generating slot, then prompt tokens up to prompt_chunk in all while any slot
    generates; positions continue from each work's start; only each work's last token asks for logits."""
    s = bare(n_batch=16, prompt_chunk=4)
    prompt = work(0, list(range(10, 20)), start=0)           # 10 prompt tokens
    gen = work(1, [99], start=7)                             # one token at position 7
    rows = s._fill([prompt, gen])
    b = s.batch
    assert b.n_tokens == 5
    assert b.token[:5] == [99, 10, 11, 12, 13] and b.pos[:5] == [7, 0, 1, 2, 3]
    assert [x[0] for x in b.seq_id[:5]] == [1, 0, 0, 0, 0] and b.n_seq_id[:5] == [1] * 5
    assert b.logits[:5] == [True, False, False, False, False]   # the prompt's last token is not in this step
    assert [(w is gen, take, row) for w, take, row in rows] == [(True, 1, 0), (False, 4, 4)]


def test_a_prompt_alone_fills_the_batch_and_its_last_token_gives_logits(no_rm):
    """Without generating slots a prompt takes up to n_batch tokens; a later chunk continues where
    the last one stopped, and its last token asks for the logits row."""
    s = bare(n_batch=8, prompt_chunk=2)
    w = work(0, list(range(10)), start=3)
    rows = s._fill([w])
    assert s.batch.n_tokens == 8 and s.batch.pos[:8] == list(range(3, 11)) and rows == [(w, 8, 7)]
    w.done = 8
    rows = s._fill([w])
    assert s.batch.n_tokens == 2 and s.batch.token[:2] == [8, 9] and s.batch.pos[:2] == [11, 12]
    assert s.batch.logits[:2] == [False, True] and rows == [(w, 2, 1)]


def test_two_prompts_beside_a_generating_slot_share_one_chunk(no_rm):
    """The prompt_chunk cap is for all prompts of a step together, not each."""
    s = bare(n_batch=16, prompt_chunk=4)
    p1, p2, gen = work(0, list(range(3)), 0), work(1, list(range(50, 56)), 0), work(2, [7], 5)
    rows = s._fill([p1, p2, gen])
    assert [take for _, take, _ in rows] == [1, 3, 1] and s.batch.n_tokens == 5


def test_a_new_prompt_replaces_the_slots_cells_from_its_start(no_rm):
    """A work's first chunk removes what its slot held from `start` on (cells and tokens)."""
    s = bare()
    w = work(2, [5, 6], start=3, held=6)
    s._fill([w])
    assert no_rm == [(2, 3, -1)] and w.slot.tokens == [0, 1, 2]


def test_a_long_prompt_is_read_in_128_token_chunks_by_default():
    """README: "a long prompt is read in 128-token chunks" between the other slots' tokens."""
    import inspect
    assert sched.PROMPT_CHUNK == 128
    assert inspect.signature(Scheduler).parameters["prompt_chunk"].default == 128


class _Reached(Exception):
    pass


class _Llama:
    """Past the slot-count check, the Scheduler reads the Llama's context parameters: stop there."""

    @property
    def context_params(self):
        raise _Reached


def test_llama_cpps_most_sequences_are_accepted_and_one_more_is_refused():
    """n_slots from 1 to llama_max_parallel_sequences() pass the check; 0 and one more are refused."""
    most = sched.llama_cpp.llama_max_parallel_sequences()
    for n in (1, most):
        with pytest.raises(_Reached):
            Scheduler(_Llama(), n, 256)
    for n in (0, most + 1):
        with pytest.raises(sched.SchedulerError, match=f"parallel slots must be 1 to {most}"):
            Scheduler(_Llama(), n, 256)


def test_prefill_evaluates_only_past_the_cached_prefix_and_says_how_many():
    """A slot holding the start of the prompt: only the rest is queued, from its position, and
    prefill returns the number of tokens evaluated."""
    submitted = []

    class Fake:
        prompt_cache = None

        def submit(self, w):
            submitted.append((w.tokens, w.start))
            w.logits = "row"
            return w

    s = _Slot(0)
    s.tokens = [1, 2, 3, 9]
    seq = sched.BatchSequence(Fake(), s)
    assert seq.prefill([1, 2, 3, 4, 5]) == 2
    assert submitted == [([4, 5], 3)] and seq.n_tokens == 5 and seq.logits == "row"


def test_call_gives_the_functions_result_or_raises_its_error():
    """Scheduler.call runs fn(ctx) on the scheduler's side (its _step) and returns the result; an
    exception in fn comes back as one SchedulerError naming it, and the scheduler goes on."""
    import threading
    s = bare()
    s.ctx, s._cv, s._queue = "ctx", threading.Condition(), []

    def submit(w):
        s._queue.append(w)
        s._step([w])
        return w

    s.submit = submit

    def bad(ctx):
        raise ValueError("no such state")

    assert s.call(lambda ctx: ctx + "!") == "ctx!"
    with pytest.raises(sched.SchedulerError, match="ValueError: no such state"):
        s.call(bad)
    assert s.call(lambda ctx: 42) == 42 and s._queue == []


def test_a_failed_removal_starts_the_slot_over(monkeypatch):
    """llama.cpp refuses to remove the cells past `start` (a partial removal): the slot's whole
    sequence is removed and the work re-evaluates the kept tokens from position 0."""
    removed = []

    def seq_rm(mem, seq, p0, p1):
        removed.append((seq, p0, p1))
        return p0 < 0          # only a whole-sequence removal succeeds

    monkeypatch.setattr(sched.llama_cpp, "llama_memory_seq_rm", seq_rm)
    s = bare()
    w = work(1, [7, 8], start=2, held=4)       # the slot holds [0, 1, 2, 3]; the prompt keeps [0, 1]
    s._fill([w])
    assert removed == [(1, 2, -1), (1, -1, -1)]
    assert (w.tokens, w.start, w.slot.tokens) == ([0, 1, 7, 8], 0, [])
    # this step decodes as many as the work asked for ([0, 1], from position 0); the rest comes next step
    assert s.batch.n_tokens == 2 and s.batch.token[:2] == [0, 1] and s.batch.pos[:2] == [0, 1]


def test_a_failed_decode_ends_the_work_with_the_error_and_forgets_the_slot(monkeypatch):
    """llama_decode fails (not for room): the work finishes with the error, and the slot's cells and
    tokens are dropped, since the cache may hold part of the batch."""
    import threading
    removed = []
    monkeypatch.setattr(sched.llama_cpp, "llama_memory_seq_rm",
                        lambda mem, seq, p0, p1: removed.append((seq, p0, p1)) or True)
    monkeypatch.setattr(sched.llama_cpp, "llama_decode", lambda ctx, batch: -3)
    s = bare()
    s.ctx, s._cv, s._queue, s.steps = "ctx", threading.Condition(), [], 0
    w = work(0, [5, 6, 7], start=0)
    s._queue.append(w)
    s._step([w])
    assert w.finished.is_set() and w.error == "llama.cpp failed to decode a batch (code -3)"
    assert removed == [(0, -1, -1)] and w.slot.tokens == [] and s._queue == []
