"""Replaced conversations' KV states kept in host memory, given back to a prompt that shares them.

llama-server does this by default (`--cache-ram 8192` MiB, `--cache-idle-slots`): when a new prompt
takes a slot, what the slot held is copied out of llama.cpp (llama_state_seq_get_data); a later
prompt that shares more with such a copy than with what its slot holds gets the copy back
(llama_state_seq_set_data) and evaluates only the rest. Without it, every prompt that had lost its
slot (more conversations than slots, a warm-up between two requests) was evaluated again here and
not there: most of serve's gap to llama-server at 2 and 4 clients (benchmarks/RESULTS.md,
2026-12-05 afternoon). 90 tokens of the 0.6B are 10 MB, copied in a few milliseconds.

Used by the scheduler's slots and by the Llama's own context (sequence.LlamaSequence), where the
load plan gives them memory (load_plan.saved_states_bytes: when serving several conversations, not
in a chat, whose replaced tail never comes back). Every call runs on the thread that owns the
llama.cpp context.
"""

from __future__ import annotations

import ctypes

import llama_cpp

MIN_SAVED_TOKENS = 8  # a replaced tail shorter than this is not kept; a copy must add as many to be used


class _Saved:
    """A replaced sequence's tokens and the copy of its KV state."""

    def __init__(self, tokens: list[int], state):
        self.tokens, self.state = tokens, state
        self.nbytes = ctypes.sizeof(state)


def shared_prefix(cached: list[int], prompt: list[int]) -> int:
    """Tokens of `prompt` a copy holds, keeping the last one to evaluate (its logits)."""
    return min(llama_cpp.Llama.longest_token_prefix(cached, prompt), len(prompt) - 1)


class RamStates:
    """The copies, least recently used first, within `max_bytes` (0: none kept)."""

    def __init__(self, max_bytes: int):
        self.max_bytes = max_bytes
        self.saved: list[_Saved] = []
        self.restores = 0  # prompts that got a copy back

    def replacing(self, ctx, seq_id: int, held: list[int], keep: int) -> None:
        """A new prompt keeps `keep` of the `held` tokens of `seq_id`: copy the sequence first when
        it loses at least MIN_SAVED_TOKENS."""
        if self.max_bytes <= 0 or len(held) - keep < MIN_SAVED_TOKENS:
            return
        size = llama_cpp.llama_state_seq_get_size(ctx, seq_id)
        if not 0 < size <= self.max_bytes:
            return
        state = (ctypes.c_uint8 * size)()
        if llama_cpp.llama_state_seq_get_data(ctx, state, size, seq_id) != size:
            return
        tokens = list(held)
        self.saved = [s for s in self.saved if llama_cpp.Llama.longest_token_prefix(s.tokens, tokens) < len(s.tokens)]
        self.saved.append(_Saved(tokens, state))
        while sum(s.nbytes for s in self.saved) > self.max_bytes:
            self.saved.pop(0)

    def restore(self, ctx, seq_id: int, prompt: list[int], held: int) -> int | None:
        """If a copy holds at least MIN_SAVED_TOKENS more of `prompt` than the `held` the sequence
        has, put it in `seq_id` cut to what the prompt shares and return that length; None when no
        copy is worth it (the sequence untouched); 0 when llama.cpp refused it (the sequence empty)."""
        if len(prompt) - held <= MIN_SAVED_TOKENS or not self.saved:
            return None
        best, shared = None, held
        for saved in self.saved:
            n = shared_prefix(saved.tokens, prompt)
            if n > shared:
                best, shared = saved, n
        if best is None or shared - held < MIN_SAVED_TOKENS:
            return None
        self.saved.remove(best)
        self.saved.append(best)
        mem = llama_cpp.llama_get_memory(ctx)
        llama_cpp.llama_memory_seq_rm(mem, seq_id, -1, -1)
        state = (ctypes.c_uint8 * best.nbytes).from_buffer(best.state)
        if llama_cpp.llama_state_seq_set_data(ctx, state, best.nbytes, seq_id) != best.nbytes:
            self.saved.remove(best)
            return 0
        if not llama_cpp.llama_memory_seq_rm(mem, seq_id, shared, -1):
            llama_cpp.llama_memory_seq_rm(mem, seq_id, -1, -1)
            return 0
        self.restores += 1
        return shared

    def clear(self) -> None:
        self.saved.clear()
