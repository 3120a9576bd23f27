"""Claims about edge/protocol/thinking_parser.py that benchmarks/mutation.py found untested (see docs/MUTATION.md)."""

from __future__ import annotations

import string

import pytest

from edge.protocol.thinking_parser import ThinkingParser


def parse(chunks: list[str]) -> tuple[str, str]:
    parser = ThinkingParser()
    pieces = [p for c in chunks for p in parser.feed(c)] + parser.close()
    return ("".join(p.text for p in pieces if p.kind == "thinking"),
            "".join(p.text for p in pieces if p.kind == "answer"))


@pytest.mark.parametrize("text", ["<th", "\n\n<th", " \n<", "\t<think", " \n \n<thin"])
def test_generation_ending_on_a_partial_open_marker_is_answer_with_its_whitespace(text):
    """A generation that stops while it could still have become <think> is answer text: the
    whitespace it began with is kept, except leading newlines, which every answer drops."""
    expected = text.lstrip("\n")
    assert parse([text]) == ("", expected)
    assert parse(list(text)) == ("", expected)  # the whitespace arrives in several chunks


@pytest.mark.parametrize("c", sorted(set(string.printable) - {"\n"}))
def test_only_newlines_are_trimmed_around_thinking_and_answer(c):
    """Newlines at the edges of the thinking and at the start of the answer are the template's;
    any other first or last character is the model's text and is kept."""
    generation = f"<think>\n{c}reasoning{c}\n</think>\n\n{c}answer{c}"
    expected = (f"{c}reasoning{c}", f"{c}answer{c}")
    assert parse([generation]) == expected
    assert parse(list(generation)) == expected
