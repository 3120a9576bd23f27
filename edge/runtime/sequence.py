"""The seam between the chat loop and llama.cpp: one sequence of tokens in a KV cache.

Chat._generate talks only to a sequence: prefill(prompt), eval(tokens), sample(sampler, is_eog),
n_tokens, release(). LlamaSequence is the single stream on the Llama's own context, with exactly
the calls the loop made before (no cost on the one-stream path); scheduler.BatchSequence is one
slot of a batched context shared by several generations (continuous batching).

Either is held by one generation at a time: the Llama's context through the engine's stream lock
(stream_lock.py), a slot through the scheduler. A decode that llama.cpp refuses raises DecodeError
after the cache is put back in a known state (emptied), so the next generation is exact.
"""

from __future__ import annotations

import threading

import llama_cpp

from edge.runtime.stream_lock import Closed, WaitTimeout


class DecodeError(RuntimeError):
    """llama.cpp could not decode; the sequence's cache was reset, the next generation is exact."""


class StreamUnavailable(RuntimeError):
    """No stream for this generation: the engine is closed, or the wait timed out."""


def common_prefix(cached: list[int], prompt: list[int]) -> int:
    """How many tokens of `prompt` the cache already holds, keeping the last one to evaluate
    again: its logits are where the reply starts."""
    keep = llama_cpp.Llama.longest_token_prefix(cached, prompt)
    return min(keep, len(prompt) - 1)


class LlamaSequence:
    """The Llama's own context: one conversation at a time (the KV prefix carries over)."""

    def __init__(self, llama: llama_cpp.Llama, reserve=None, lock=None, prompt_cache=None, states=None):
        self.llama = llama
        self.reserve = reserve  # reserve(n): a growing context makes room for n tokens (Engine.reserve_ctx)
        self.lock = lock        # the engine's stream lock, held until release()
        self.prompt_cache = prompt_cache  # prompt_cache.PromptCache: the system block from disk
        self.states = states    # ram_states.RamStates: replaced conversations' KV states in memory

    @property
    def n_tokens(self) -> int:
        return self.llama.n_tokens

    def prefill(self, prompt: list[int]) -> int:
        """Evaluate what the KV cache lacks of `prompt`; return how many tokens that was."""
        llama = self.llama
        held = llama.input_ids[: llama.n_tokens].tolist()
        keep = common_prefix(held, prompt)
        if self.states is not None:
            self.states.replacing(llama._ctx.ctx, 0, held, keep)
        llama.n_tokens = keep
        if self.reserve is not None:
            self.reserve(len(prompt))
        if self.states is not None:
            n = self.states.restore(llama._ctx.ctx, 0, prompt, keep)
            if n is not None:  # a copy's first n tokens, or an empty sequence (refused)
                llama.input_ids[:n] = prompt[:n]
                llama.n_tokens = keep = n
        loaded = self.prompt_cache.prefill(llama, prompt, keep) if self.prompt_cache is not None else 0
        self._decode(prompt[llama.n_tokens:])
        return len(prompt) - keep - loaded

    def eval(self, tokens: list[int]) -> None:
        if self.reserve is not None:
            self.reserve(self.llama.n_tokens + len(tokens))
        self._decode(tokens)

    def _decode(self, tokens: list[int]) -> None:
        """llama.eval, and on failure an empty cache: llama.cpp may hold part of the batch, which
        the bindings' token list does not know about."""
        try:
            self.llama.eval(tokens)
        except RuntimeError as e:
            self.reset()
            raise DecodeError(f"llama.cpp failed to decode ({e}); the cache was cleared") from None

    def reset(self) -> None:
        """Forget everything cached: the next prompt is evaluated from its first token."""
        self.llama.n_tokens = 0
        llama_cpp.llama_memory_clear(llama_cpp.llama_get_memory(self.llama._ctx.ctx), True)

    def sample(self, sampler, is_eog, remaining: int | None = None) -> int:
        return sampler.sample(self.llama._ctx, is_eog, remaining=remaining)

    def release(self) -> None:
        if self.lock is not None:
            self.lock.release()
            self.lock = None


def open_sequence(engine, prompt: list[int], cancel: threading.Event, timeout: float | None = None):
    """The engine's sequence for a generation of `prompt`: a slot of its scheduler when it has
    one, else its Llama's context, waiting in arrival order while all are busy. None if `cancel`
    is set meanwhile; StreamUnavailable once the engine is closed or after `timeout` seconds."""
    scheduler = getattr(engine, "scheduler", None)
    try:
        if scheduler is not None:
            return scheduler.acquire(prompt, cancel, timeout)
        if not engine.stream_lock.acquire(cancel, timeout):
            return None
    except WaitTimeout:
        raise StreamUnavailable(f"no stream of the model became free within {timeout:g} s "
                                f"({engine.parallel} in use)") from None
    except Closed:
        raise StreamUnavailable("the engine is closed: load the model again") from None
    seq = LlamaSequence(engine.llama, engine.reserve_ctx if getattr(engine, "max_ctx", None) else None,
                        engine.stream_lock, getattr(engine, "prompt_cache", None), getattr(engine, "ram_states", None))
    speculator = getattr(engine, "speculator", None)  # draft= (speculative.py): verified in batches
    return seq if speculator is None else speculator.wrap(seq)
