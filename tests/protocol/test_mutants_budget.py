"""edge/protocol/budget.py's rules as pure functions (the end-to-end budget tests load models and are too
slow to run per mutant): the three difficulty levels and their token / time caps, the floor of 64,
and how a fixed, automatic and time budget combine."""

from __future__ import annotations

import pytest

from edge.protocol.budget import LEVELS, MIN_BUDGET, auto_budget, difficulty, time_budget, turn_budget


@pytest.mark.parametrize("text, level", [("Hello", "light"), ("What is the capital of France?", "light"),
                                         ("Solve 12 * 7 + 3", "hard"), ("Write a Python function to sort a list", "hard"),
                                         ("Why does the moon cause tides? Explain step by step.", "reasoning")])
def test_difficulty_levels(text, level):
    assert difficulty(text) == level


def test_the_levels_are_the_documented_caps():
    assert LEVELS == {"light": (256, 15.0), "reasoning": (1024, 45.0), "hard": (4096, 90.0)}
    assert MIN_BUDGET == 64


@pytest.mark.parametrize("text, speed, expected", [
    ("Hello", None, 256), ("Hello", 100.0, 256), ("Hello", 10.0, 150), ("Hello", 1.0, 64),
    ("Solve 12 * 7 + 3", None, 4096), ("Solve 12 * 7 + 3", 10.0, 900), ("Solve 12 * 7 + 3", 50.0, 4096),
    ("Why does the moon cause tides? Explain step by step.", 10.0, 450),
    ("Why does the moon cause tides? Explain step by step.", 30.0, 1024)])
def test_auto_budget_is_the_smaller_of_tokens_and_time_never_below_64(text, speed, expected):
    assert auto_budget(text, speed) == expected


def test_time_budget_is_seconds_times_speed_at_least_64():
    assert time_budget(10, 6.4) == 64 and time_budget(10, 6.5) == 65 and time_budget(2.5, 100.0) == 250
    assert time_budget(1, 1.0) == 64


def test_turn_budget_combines_a_fixed_auto_and_time_budget():
    assert turn_budget(None, None, "Hello", 10.0) is None
    assert turn_budget(300, None, "Hello", None) == 300 and turn_budget(0, None, "Hello", 5.0) == 0
    assert turn_budget(300, 10.0, "Hello", 20.0) == 200 and turn_budget(150, 10.0, "Hello", 20.0) == 150
    assert turn_budget(None, 10.0, "Hello", 20.0) == 200
    assert turn_budget("auto", None, "Hello", None) == 256 and turn_budget("auto", None, "Hello", 10.0) == 150
    assert turn_budget("auto", 5.0, "Hello", 10.0) == 64      # time 50 tokens, floored to 64, under auto's 150
    assert turn_budget(300, 10.0, "Hello", None) == 300        # the time limit waits for a measured speed
