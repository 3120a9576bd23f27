"""Claims about edge/protocol/modes.py that benchmarks/mutation.py found untested (see docs/MUTATION.md)."""

from __future__ import annotations

import pytest

from edge.protocol.modes import LONG_WORDS, Mode, auto_wants_thinking


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


@pytest.mark.parametrize("text", [
    "证明它", "クラスに何人いますか",               # Chinese/Japanese math words: first and last
    "my code", "ein neuer Algorithmus",          # Latin code words: first and last
    "代码", "このスクリプト",                    # Chinese/Japanese code words: first and last
    "why not", "wie kann ich das",               # Latin reasoning words: first and last
])
def test_each_word_list_counts_to_its_ends(text):
    """Every word of a signal list counts, the first and the last ones too (the lists are joined
    alternations, where an edit at either end is the easy one to miss)."""
    assert auto_wants_thinking(text)


@pytest.mark.parametrize("text", ["I use Xcode daily", "Pythonic style", "a debugger-free day"])
def test_latin_words_match_whole_words_only(text):
    """"Latin-script words match whole words": code inside Xcode, python inside Pythonic, and
    debug inside debugger are not the words."""
    assert not auto_wants_thinking(text)
