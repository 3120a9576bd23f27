"""Replaced conversations' KV states kept in host memory (edge/runtime/ram_states.py), on the
Llama's own context: llama-server keeps them by default (--cache-ram, --cache-idle-slots), so a
prompt that lost its place to another is not evaluated again there. The slots' side is in
test_parallel.py (test_a_prompt_that_lost_its_slot_gets_its_state_back_from_memory)."""

from __future__ import annotations

import numpy as np
import pytest

from edge.runtime.engine import Engine
from edge.runtime.sequence import LlamaSequence


@pytest.fixture(scope="module")
def engine(converted):
    """One stream loaded as serve loads it (parallel chosen by the plan, here at most 1)."""
    with Engine.load(converted("tied", "f16"), n_ctx=512, n_threads=2, parallel=None, max_parallel=1) as e:
        assert e.parallel == 1 and e.ram_states is not None
        yield e


def run(engine: Engine, prompt: list[int], feed: list[int]) -> tuple[int, list[np.ndarray]]:
    """(prompt tokens evaluated, the logits rows of the prompt's end and of each fed token)."""
    seq = LlamaSequence(engine.llama, states=engine.ram_states)
    evaluated = seq.prefill(prompt)
    rows = [np.array(engine.llama.scores[engine.llama.n_tokens - 1])]
    for t in feed:
        seq.eval([t])
        rows.append(np.array(engine.llama.scores[engine.llama.n_tokens - 1]))
    return evaluated, rows


def test_a_replaced_conversation_comes_back_from_memory(engine):
    rng = np.random.default_rng(7)
    prompt, feed = [11, 12] + rng.integers(0, 150000, 40).tolist(), rng.integers(0, 150000, 6).tolist()
    evaluated, first = run(engine, prompt, feed)
    assert evaluated == len(prompt)
    other = [11, 12] + rng.integers(0, 150000, 30).tolist()
    assert run(engine, other, [])[0] == len(other) - 2       # the template-like head is kept, the rest replaced
    restores = engine.ram_states.restores
    evaluated, again = run(engine, prompt, feed)
    assert evaluated == 1 and engine.ram_states.restores == restores + 1
    assert max(float(np.abs(x - y).max()) for x, y in zip(first, again)) < 0.05


def test_a_short_replaced_tail_is_not_copied(engine):
    """Continuing a conversation (what the cache holds is a prefix of the prompt) copies nothing."""
    rng = np.random.default_rng(8)
    prompt = rng.integers(0, 150000, 20).tolist()
    run(engine, prompt, [5, 6])
    engine.ram_states.clear()
    run(engine, prompt + [5, 6, 7, 8], [])
    assert engine.ram_states.saved == []


def test_a_chat_keeps_no_copies(converted):
    """A chat or `run` (parallel=1) continues one conversation: the tail a new prompt replaces (the
    last reply's thinking) never comes back, so nothing is copied (a long chat's memory stays flat:
    tests/chat/test_soak.py)."""
    with Engine.load(converted("tied", "f16"), n_ctx=256, n_threads=2) as e:
        assert e.ram_states is None and e.plan.saved_states_bytes == 0
