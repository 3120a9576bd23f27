"""The rules of the state copies (edge/runtime/ram_states.py) on a stand-in context: which replaced
sequences are copied, which copies are kept within the cap, which one a prompt gets back. The
copies' round trip through llama.cpp itself is test_ram_states.py's and test_parallel.py's."""

from __future__ import annotations

import ctypes
from types import SimpleNamespace

import llama_cpp
import numpy as np
import pytest

from edge.runtime import ram_states
from edge.runtime.ram_states import MIN_SAVED_TOKENS, RamStates


class FakeContext:
    """Sequences of tokens; a sequence's state is its tokens as int32 (4 bytes each)."""

    def __init__(self):
        self.seqs: dict[int, list[int]] = {}
        self.size_calls = 0

    def get_size(self, ctx, seq_id):
        self.size_calls += 1
        return 4 * len(self.seqs.get(seq_id, []))

    def get_data(self, ctx, state, size, seq_id):
        data = np.array(self.seqs[seq_id], dtype=np.int32).tobytes()
        ctypes.memmove(state, data, len(data))
        return len(data)

    def set_data(self, ctx, state, size, seq_id):
        self.seqs[seq_id] = np.frombuffer(bytes(state), dtype=np.int32).tolist()
        return size

    def seq_rm(self, mem, seq_id, p0, p1):
        """llama_memory_seq_rm: positions [p0, p1) removed, a negative bound meaning the end."""
        tokens = self.seqs.get(seq_id, [])
        lo, hi = max(p0, 0), len(tokens) if p1 < 0 else p1
        self.seqs[seq_id] = tokens[:lo] + tokens[hi:]
        return True


@pytest.fixture
def fake(monkeypatch):
    f = FakeContext()
    monkeypatch.setattr(ram_states, "llama_cpp", SimpleNamespace(
        llama_state_seq_get_size=f.get_size, llama_state_seq_get_data=f.get_data,
        llama_state_seq_set_data=f.set_data, llama_get_memory=lambda ctx: None,
        llama_memory_seq_rm=f.seq_rm, Llama=llama_cpp.Llama))
    return f


def held(f: FakeContext, tokens: list[int], seq_id: int = 0) -> list[int]:
    f.seqs[seq_id] = list(tokens)
    return list(tokens)


def test_a_sequence_is_copied_only_when_a_prompt_replaces_at_least_min_saved_tokens(fake):
    states = RamStates(1 << 20)
    seq = held(fake, list(range(100, 100 + 20)))
    states.replacing(None, 0, seq, len(seq) - (MIN_SAVED_TOKENS - 1))  # 7 replaced: not copied
    assert states.saved == []
    states.replacing(None, 0, seq, len(seq) - MIN_SAVED_TOKENS)        # 8 replaced: copied
    assert [s.tokens for s in states.saved] == [seq] and states.saved[0].nbytes == 4 * len(seq)


def test_no_memory_no_copies_and_llama_cpp_is_not_asked(fake):
    states = RamStates(0)
    states.replacing(None, 0, held(fake, list(range(30))), 0)
    assert states.saved == [] and fake.size_calls == 0


def test_a_copy_exactly_the_cap_is_kept_and_one_byte_over_is_not(fake):
    seq = held(fake, list(range(10, 30)))
    exact = RamStates(4 * len(seq))
    exact.replacing(None, 0, seq, 0)
    assert len(exact.saved) == 1
    under = RamStates(4 * len(seq) - 1)
    under.replacing(None, 0, seq, 0)
    assert under.saved == []


def test_the_least_recently_used_copy_goes_first_and_a_restored_one_is_recent_again(fake):
    a, b, c = ([k] * 10 + list(range(k * 100, k * 100 + 10)) for k in (1, 2, 3))  # 20 tokens, 80 bytes each
    states = RamStates(2 * 80)  # two copies fit exactly
    states.replacing(None, 0, held(fake, a), 0)
    states.replacing(None, 0, held(fake, b), 0)
    assert [s.tokens for s in states.saved] == [a, b]
    assert states.restore(None, 1, a + [7], 0) == len(a)  # a is used: b is now the oldest
    assert fake.seqs[1] == a and states.restores == 1
    states.replacing(None, 0, held(fake, c), 0)
    assert [s.tokens for s in states.saved] == [a, c]


def test_a_copy_that_a_newer_one_extends_is_dropped(fake):
    states = RamStates(1 << 20)
    first = list(range(50, 70))
    states.replacing(None, 0, held(fake, first), 0)
    states.replacing(None, 0, held(fake, first + [1, 2, 3]), 0)
    assert [s.tokens for s in states.saved] == [first + [1, 2, 3]]
    states.replacing(None, 0, held(fake, first[:15] + [9] * 10), 0)  # diverges: both kept
    assert len(states.saved) == 2


def test_a_prompt_gets_the_copy_sharing_most_cut_to_what_it_shares(fake):
    states = RamStates(1 << 20)
    head = list(range(200, 220))
    states.replacing(None, 0, held(fake, head + [1] * 10), 0)
    states.replacing(None, 0, held(fake, head[:12] + [2] * 10), 0)
    prompt = head + [1] * 5 + [3, 4]
    assert states.restore(None, 0, prompt, 2) == len(head) + 5
    assert fake.seqs[0] == prompt[: len(head) + 5]


def test_a_copy_must_add_min_saved_tokens_to_what_the_sequence_holds(fake):
    states = RamStates(1 << 20)
    saved = list(range(300, 330))
    states.replacing(None, 0, held(fake, saved), 0)
    prompt = saved + list(range(20))  # a prompt far longer than the copy: only what the copy adds counts
    fake.seqs[1] = ["untouched"]
    assert states.restore(None, 1, prompt, len(saved) - MIN_SAVED_TOKENS + 1) is None  # 7 more
    assert fake.seqs[1] == ["untouched"] and states.restores == 0
    assert states.restore(None, 1, prompt, len(saved) - MIN_SAVED_TOKENS) == len(saved)  # 8 more


@pytest.mark.parametrize("fails", ["set_data", "seq_rm"])
def test_a_copy_llama_cpp_refuses_leaves_the_sequence_empty_and_says_0(fake, monkeypatch, fails):
    """set_data refused: the copy is dropped (it will not load later either); cutting it to the
    shared prefix refused: the sequence is emptied. Either way 0 (evaluate the whole prompt), never
    a sequence holding more than the prompt shares."""
    states = RamStates(1 << 20)
    saved = list(range(400, 430))
    states.replacing(None, 0, held(fake, saved), 0)
    if fails == "set_data":
        monkeypatch.setattr(ram_states.llama_cpp, "llama_state_seq_set_data", lambda ctx, state, size, seq_id: 0)
    else:
        real = fake.seq_rm
        monkeypatch.setattr(ram_states.llama_cpp, "llama_memory_seq_rm",
                            lambda mem, seq_id, p0, p1: p0 < 0 and real(mem, seq_id, p0, p1))
    fake.seqs[1] = [1, 2]
    assert states.restore(None, 1, saved[:20] + [7, 8], 0) == 0
    assert fake.seqs[1] == [] and states.restores == 0
    assert len(states.saved) == (0 if fails == "set_data" else 1)


def test_nothing_is_copied_from_a_sequence_llama_cpp_holds_empty(fake):
    """The tokens the caller lists are what it believes; a sequence llama.cpp emptied (a failed
    decode resets it) has a state of 0 bytes, which is no copy of them."""
    states = RamStates(1 << 20)
    fake.seqs[0] = []
    states.replacing(None, 0, list(range(40)), 0)
    assert states.saved == []
