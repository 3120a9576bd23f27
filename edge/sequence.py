"""The seam between the chat loop and llama.cpp: one sequence of tokens in a KV cache.

Chat._generate talks only to a sequence: prefill(prompt), eval(tokens), sample(sampler, is_eog),
n_tokens, release(). LlamaSequence is the single stream on the Llama's own context, with exactly
the calls the loop made before (no cost on the one-stream path); scheduler.BatchSequence is one
slot of a batched context shared by several generations (continuous batching).
"""

from __future__ import annotations

import threading

import llama_cpp


def common_prefix(cached: list[int], prompt: list[int]) -> int:
    """How many tokens of `prompt` the cache already holds, keeping the last one to evaluate
    again: its logits are where the reply starts."""
    keep = llama_cpp.Llama.longest_token_prefix(cached, prompt)
    return min(keep, len(prompt) - 1)


class LlamaSequence:
    """The Llama's own context: one conversation at a time (the KV prefix carries over)."""

    def __init__(self, llama: llama_cpp.Llama, reserve=None):
        self.llama = llama
        self.reserve = reserve  # reserve(n): a growing context makes room for n tokens (Engine.reserve_ctx)

    @property
    def n_tokens(self) -> int:
        return self.llama.n_tokens

    def prefill(self, prompt: list[int]) -> int:
        """Evaluate what the KV cache lacks of `prompt`; return how many tokens that was."""
        llama = self.llama
        keep = common_prefix(llama.input_ids[: llama.n_tokens].tolist(), prompt)
        llama.n_tokens = keep
        if self.reserve is not None:
            self.reserve(len(prompt))
        llama.eval(prompt[keep:])
        return len(prompt) - keep

    def eval(self, tokens: list[int]) -> None:
        if self.reserve is not None:
            self.reserve(self.llama.n_tokens + len(tokens))
        self.llama.eval(tokens)

    def sample(self, sampler, is_eog) -> int:
        return sampler.sample(self.llama._ctx, is_eog)

    def release(self) -> None:
        pass


def open_sequence(engine, prompt: list[int], cancel: threading.Event):
    """The engine's sequence for a generation of `prompt`: a slot of its scheduler when it has
    one (waiting for a free slot; None if `cancel` is set meanwhile), else its Llama's context."""
    scheduler = getattr(engine, "scheduler", None)
    if scheduler is None:
        seq = LlamaSequence(engine.llama, engine.reserve_ctx if getattr(engine, "max_ctx", None) else None)
        speculator = getattr(engine, "speculator", None)  # draft= (speculative.py): verified in batches
        return seq if speculator is None else speculator.wrap(seq)
    return scheduler.acquire(prompt, cancel)
