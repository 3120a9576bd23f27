"""Thinking budgets sized for the machine: an automatic budget per message and a time budget.

A small board generates a few tokens a second, so a hard question may think for many minutes
before it answers. Both budgets here are token budgets, computed from the measured generation
speed of the loaded model (tokens/s of the replies so far, or of this reply's first tokens):

- ``think_time`` seconds: ``budget = think_time * tokens_per_s``.
- ``auto``: how much a message deserves, by the same plain signals as auto mode (modes.py):
  a greeting or short factual question 256 tokens or 15 s of thinking, a reasoning question
  1,024 tokens or 45 s, math or code 4,096 tokens or 90 s, whichever is smaller; never below 64.
"""

from __future__ import annotations

from edge.protocol.modes import _CODE, _MATH, auto_wants_thinking

MIN_BUDGET = 64
LEVELS = {"light": (256, 15.0), "reasoning": (1024, 45.0), "hard": (4096, 90.0)}


def difficulty(text: str) -> str:
    """"hard" for math or code, "reasoning" for other messages auto mode would think on, else "light"."""
    if _MATH.search(text) or _CODE.search(text):
        return "hard"
    return "reasoning" if auto_wants_thinking(text) else "light"


def time_budget(seconds: float, tokens_per_s: float) -> int:
    """Thinking tokens that fit in `seconds` at the measured speed (at least MIN_BUDGET)."""
    return max(MIN_BUDGET, int(seconds * tokens_per_s))


def auto_budget(text: str, tokens_per_s: float | None) -> int:
    """The automatic budget for a message (module docstring); without a speed yet, the token cap."""
    tokens, seconds = LEVELS[difficulty(text)]
    return tokens if tokens_per_s is None else max(MIN_BUDGET, min(tokens, int(seconds * tokens_per_s)))


def answer_reserve(max_tokens: int) -> int:
    """Tokens kept for the answer when a reply's max_tokens would go to thinking: a quarter, at
    most 1,024, at least 1."""
    return max(1, min(max_tokens // 4, 1024))


def turn_budget(budget: int | str | None, think_time: float | None, text: str, tokens_per_s: float | None) -> int | None:
    """One turn's thinking budget in tokens: a fixed number, "auto", and/or a time limit (the
    smaller wins); None when there is no limit, or when a time limit waits for a measured speed."""
    tokens = auto_budget(text, tokens_per_s) if budget == "auto" else budget
    if think_time is not None and tokens_per_s is not None:
        limit = time_budget(think_time, tokens_per_s)
        tokens = limit if tokens is None else min(tokens, limit)
    return tokens
