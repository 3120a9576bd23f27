"""The arguments a Chat takes, checked at the door: each function returns what is wrong with a
value as one line naming the argument and what it takes (the line the library raises and the CLI
prints), or None when the value is fine. Ranges are the server's (edge/serve/openai_api.py), so a value
the library takes the server takes too."""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

MODES = ("think", "no_think", "auto")
SAMPLING_RANGES: dict[str, tuple[type, float, float | None]] = {
    "temperature": (float, 0.0, 2.0), "top_p": (float, 0.0, 1.0), "top_k": (int, 0, None), "min_p": (float, 0.0, 1.0),
    "frequency_penalty": (float, -2.0, 2.0), "repeat_penalty": (float, 0.0, None),
}
SAMPLING_KEYS = (*SAMPLING_RANGES, "logit_bias")   # logit_bias: (token, bias) pairs (the server checks them)
PRESENCE_RANGE = (-2.0, 2.0)
SEED_MAX = 0xFFFFFFFE   # llama.cpp's seed is 32-bit and reads 0xFFFFFFFF as "pick one at random"


def _shown(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return (_is_int(value) or isinstance(value, float)) and math.isfinite(value)


def number_problem(name: str, value: Any, kind: type, low: float, high: float | None) -> str | None:
    """`name` must be an int (kind int) or a finite number within [low, high]."""
    ok = _is_int(value) if kind is int else _is_number(value)
    if ok and value >= low and (high is None or value <= high):
        return None
    what = "a whole number" if kind is int else "a number"
    shown = (lambda x: str(int(x))) if kind is int else (lambda x: f"{x:g}")
    span = f"{shown(low)} or more" if high is None else f"from {shown(low)} to {shown(high)}"
    return f"{name} takes {what} {span}, not {_shown(value)}"


def mode_problem(value: Any) -> str | None:
    from edge.protocol.modes import Mode
    if isinstance(value, Mode) or value in MODES:
        return None
    return f"mode takes {', '.join(repr(m) for m in MODES[:-1])} or {MODES[-1]!r}, not {_shown(value)}"


def budget_problem(value: Any) -> str | None:
    if value is None or value == "auto" or (_is_int(value) and value >= 0):
        return None
    return f"budget takes a whole number of thinking tokens (0 or more), 'auto' or None, not {_shown(value)}"


def max_tokens_problem(value: Any) -> str | None:
    if value is None or (_is_int(value) and value >= 1):
        return None
    return f"max_tokens takes a whole number of tokens (1 or more) or None, not {_shown(value)}"


def think_time_problem(value: Any) -> str | None:
    if value is None or (_is_number(value) and value > 0):
        return None
    return f"think_time takes a number of seconds above 0 or None, not {_shown(value)}"


def seed_problem(value: Any) -> str | None:
    if value is None:
        return None
    return number_problem("seed", value, int, 0, SEED_MAX)


def sampling_problem(overrides: Any) -> str | None:
    if overrides is None:
        return None
    if not isinstance(overrides, dict):
        return f"sampling takes a dict of {', '.join(SAMPLING_KEYS)}, not {_shown(overrides)}"
    for key, value in overrides.items():
        if key == "logit_bias":
            pairs_ok = isinstance(value, (list, tuple)) and all(
                isinstance(p, (list, tuple)) and len(p) == 2 and isinstance(p[0], int) and not isinstance(p[0], bool)
                and isinstance(p[1], (int, float)) and not isinstance(p[1], bool) for p in value)
            if not pairs_ok:
                return f"sampling logit_bias takes (token id, bias) pairs, not {_shown(value)}"
            continue
        if key not in SAMPLING_RANGES:
            return f"sampling takes {', '.join(SAMPLING_KEYS)}, not {_shown(key)}"
        if value is not None and (problem := number_problem(key, value, *SAMPLING_RANGES[key])):
            return problem
    return None


def stop_problem(value: Any) -> str | None:
    if value is None or (isinstance(value, str) and value):
        return None
    if isinstance(value, (list, tuple)) and all(isinstance(s, str) and s for s in value):
        return None
    return f"stop takes a non-empty string or a list of them, not {_shown(value)}"


def stop_list(value: str | Iterable[str] | None) -> list[str]:
    """The stop strings as a list (a lone string is one stop string)."""
    if value is None:
        return []
    return [value] if isinstance(value, str) else list(value)


def chat_arguments_problem(*, mode: Any, budget: Any, max_tokens: Any, presence_penalty: Any, seed: Any,
                           sampling: Any, think_time: Any, system: Any) -> str | None:
    """The first thing wrong with Chat(...)'s arguments, in the order they are written."""
    if system is not None and not isinstance(system, str):
        return f"system takes a string or None, not {type(system).__name__}"
    return (mode_problem(mode) or budget_problem(budget) or max_tokens_problem(max_tokens)
            or number_problem("presence_penalty", presence_penalty, float, *PRESENCE_RANGE)
            or seed_problem(seed) or sampling_problem(sampling) or think_time_problem(think_time))
