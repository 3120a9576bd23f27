"""Pure pieces of the chat protocol: soft switches, the auto rule, sampling presets."""

from __future__ import annotations

import pytest

from edge.protocol.modes import Mode, auto_wants_thinking, soft_switch, thinking_for
from edge.runtime.sampling import NON_THINKING, THINKING, preset


@pytest.mark.parametrize("text, expected", [
    ("Hello /think", Mode.THINK), ("Hello /no_think", Mode.NO_THINK), ("Hello /no_think  \n", Mode.NO_THINK),
    ("/think about it", None), ("no switch", None), ("path a/think/b", None), ("Hi/think", Mode.THINK),
])
def test_soft_switch_only_at_end(text, expected):
    assert soft_switch(text) is expected


@pytest.mark.parametrize("text", [
    "What is 17 * 23?", "Solve x^2 - 5x + 6 = 0", "How many primes are below 100?",
    "Write a Python function that reverses a list", "Why does this code throw an error: `x = [1][2]`",
    "Explain how TCP congestion control works", "Compare Rust and Go for a CLI tool",
    "How do I plan a three-day trip to Kyoto?", "Is it cheaper? Is it faster?",
    "I have a long story to tell you about my garden " + "and the plants in it " * 8,
])
def test_auto_thinks_for_reasoning(text):
    assert auto_wants_thinking(text)


@pytest.mark.parametrize("text", [
    "Hi!", "Hello, how are you?", "Thanks a lot", "What is the capital of France?",
    "Who wrote Hamlet?", "Translate 'good morning' into German", "Tell me a joke",
])
def test_auto_answers_quickly_for_simple_messages(text):
    assert not auto_wants_thinking(text)


def test_thinking_for_modes():
    assert thinking_for(Mode.THINK, "Hi") and not thinking_for(Mode.NO_THINK, "Solve 2+2")
    assert thinking_for(Mode.AUTO, "Solve 2+2") and not thinking_for(Mode.AUTO, "Hi")


def test_presets_are_qwens_and_never_llama_cpp_python_defaults():
    assert (THINKING.temperature, THINKING.top_p, THINKING.top_k, THINKING.min_p) == (0.6, 0.95, 20, 0.0)
    assert (NON_THINKING.temperature, NON_THINKING.top_p, NON_THINKING.top_k, NON_THINKING.min_p) == (0.7, 0.8, 20, 0.0)
    assert preset(True) is THINKING and preset(False) is NON_THINKING
    custom = THINKING.with_overrides(temperature=0.9, top_k=None, presence_penalty=1.5, seed=7)
    assert (custom.temperature, custom.top_k, custom.presence_penalty, custom.seed) == (0.9, 20, 1.5, 7)


def test_default_quant_type_per_machine():
    from edge.models.store import machine_default_type
    assert machine_default_type("aarch64") == machine_default_type("arm64") == "q4_0"
    assert machine_default_type("x86_64") == "q4_k_m"
