"""Claims about edge/modes.py that benchmarks/mutation.py found untested (see docs/MUTATION.md)."""

from __future__ import annotations

import pytest

from edge.modes import LONG_WORDS, Mode, auto_wants_thinking


@pytest.mark.parametrize("name, mode", [("think", Mode.THINK), ("no_think", Mode.NO_THINK), ("auto", Mode.AUTO)])
def test_mode_names_are_the_commands_and_the_transcript_field(name, mode):
    """The REPL's /think, /no_think, /auto build Mode(name), and saved transcripts store mode.value:
    renaming a mode would break the commands and every transcript written before."""
    assert Mode(name) is mode and mode.value == name


def test_long_means_more_than_40_words():
    """The documented rule: more than 40 words thinks; exactly 40 plain words does not."""
    assert LONG_WORDS == 40
    assert not auto_wants_thinking(" ".join(["garden"] * 40))
    assert auto_wants_thinking(" ".join(["garden"] * 41))
