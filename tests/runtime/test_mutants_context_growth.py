"""Claims of edge/runtime/context_growth.py that its mutants showed untested (docs/MUTATION.md,
issue 21): the old context is freed before the larger one is made (never two at once), and when
llama.cpp does not take the cached tokens back the Llama is left with none of them, not with a
wrong count. llama.cpp's context and sequence-state calls are stood in for, so each path (and its
order) is seen without a model; test_context_growth covers the same paths on real contexts."""

from __future__ import annotations

import contextlib
from types import SimpleNamespace

import llama_cpp
import numpy as np
import pytest

import edge.runtime.context_growth as growth

STATE = 1000   # bytes of sequence state llama.cpp says it holds


@pytest.fixture
def fake(monkeypatch):
    """A stand-in llama.cpp: contexts that log what is done to them, and sequence state that is
    taken back unless `world.take_back` is False; sizes in `world.refuse` cannot be made."""
    world = SimpleNamespace(log=[], refuse=set(), take_back=True)

    class Context:
        def __init__(self, *, model, params, verbose):
            if params.n_ctx in world.refuse:
                raise ValueError("Failed to create llama_context")
            self.size, self.ctx = params.n_ctx, object()
            world.log.append(("make", self.size))

        def n_ctx(self):
            return self.size

        def kv_cache_seq_rm(self, seq, p0, p1):
            world.log.append(("rm", seq, p0, "end" if p1 < 0 else p1))   # llama.cpp: p1 < 0 is "to the end"

        def close(self):
            world.log.append(("close", self.size))

    def get_data(ctx, state, size, seq):
        assert len(state) >= size
        return size

    monkeypatch.setattr(growth.internals, "LlamaContext", Context)
    monkeypatch.setattr(growth.llama_cpp, "llama_state_seq_get_size", lambda ctx, seq: STATE)
    monkeypatch.setattr(growth.llama_cpp, "llama_state_seq_get_data", get_data)
    monkeypatch.setattr(growth.llama_cpp, "llama_state_seq_set_data",
                        lambda ctx, state, n, seq: n if world.take_back else 0)

    def llama(n_ctx: int, n_tokens: int):
        params = llama_cpp.llama_context_params()
        params.n_ctx = n_ctx
        first = Context(model=None, params=params, verbose=False)
        world.log.clear()
        return SimpleNamespace(_ctx=first, context_params=params, _model=None, verbose=False,
                               _stack=contextlib.ExitStack(), _n_ctx=n_ctx, n_tokens=n_tokens,
                               input_ids=np.arange(n_ctx, dtype=np.intc))

    world.llama = llama
    return world


def test_the_old_context_is_freed_before_the_larger_one_is_made(fake):
    """Stale cells are dropped, the state copied, the old context closed, and only then the new one
    made: the peak of a growth is one context plus the copied state."""
    llama = fake.llama(256, 100)
    growth.resize_context(llama, 512)
    assert fake.log == [("rm", 0, 100, "end"), ("close", 256), ("make", 512)]
    assert (llama.n_tokens, llama._n_ctx, len(llama.input_ids)) == (100, 512, 512)
    assert llama.input_ids[:100].tolist() == list(range(100))


def test_tokens_not_taken_back_leave_the_llama_empty(fake):
    """llama.cpp made the larger context but refused the state: GrowthError, and the Llama holds no
    cached tokens (not a count of tokens its cache lacks)."""
    fake.take_back = False
    llama = fake.llama(256, 100)
    with pytest.raises(growth.GrowthError, match="did not take back the cached tokens"):
        growth.resize_context(llama, 512)
    assert (llama.n_tokens, llama._n_ctx) == (0, 512)


def test_a_refused_size_and_refused_state_leave_the_old_size_empty(fake):
    """llama.cpp can make neither the larger context nor take the state back into the old size:
    GrowthError naming both sizes, the old size back, and no cached tokens."""
    fake.refuse, fake.take_back = {512}, False
    llama = fake.llama(256, 100)
    with pytest.raises(growth.GrowthError, match="could not make a 512-token context .* stays at 256"):
        growth.resize_context(llama, 512)
    assert fake.log[-1] == ("make", 256)
    assert (llama.n_tokens, llama._n_ctx) == (0, 256)


def test_a_refused_size_keeps_the_tokens_when_they_go_back(fake):
    """The old size re-made and the state taken back: the Llama keeps its cached tokens."""
    fake.refuse = {512}
    llama = fake.llama(256, 100)
    with pytest.raises(growth.GrowthError):
        growth.resize_context(llama, 512)
    assert (llama.n_tokens, llama._n_ctx) == (100, 256)
