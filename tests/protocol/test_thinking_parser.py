"""ThinkingParser: chunk boundaries anywhere must not change what is thinking and what is answer."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable

import pytest

from edge.protocol.thinking_parser import Piece, ThinkingParser

GENERATION = "<think>\nThe user asks 2+2.\n\nSo a < b, and </th is not an end.\n</think>\n\nIt is **4**.\n"
THINKING = "The user asks 2+2.\n\nSo a < b, and </th is not an end."
ANSWER = "It is **4**.\n"


def run(chunks: Iterable[str]) -> tuple[str, str, ThinkingParser]:
    """Feed chunks, close, and return the joined thinking and answer text."""
    parser = ThinkingParser()
    pieces: list[Piece] = []
    for chunk in chunks:
        pieces += parser.feed(chunk)
    pieces += parser.close()
    assert all(p.text for p in pieces), "empty piece emitted"
    assert all(p.kind in ("thinking", "answer") for p in pieces)
    kinds = [p.kind for p in pieces]
    assert kinds == sorted(kinds, key=lambda k: k == "answer"), "thinking after answer"
    thought = "".join(p.text for p in pieces if p.kind == "thinking")
    answer = "".join(p.text for p in pieces if p.kind == "answer")
    return thought, answer, parser


def test_whole_string_at_once():
    thought, answer, parser = run([GENERATION])
    assert (thought, answer) == (THINKING, ANSWER)
    assert parser.thinking_closed and not parser.in_thinking


def test_one_character_at_a_time():
    assert run(GENERATION)[:2] == (THINKING, ANSWER)


@pytest.mark.parametrize("i", range(len(GENERATION) + 1))
def test_every_split_point(i):
    assert run([GENERATION[:i], GENERATION[i:]])[:2] == (THINKING, ANSWER)


def test_every_pair_of_split_points():
    s = GENERATION
    for i in range(len(s) + 1):
        for j in range(i, len(s) + 1):
            assert run([s[:i], s[i:j], s[j:]])[:2] == (THINKING, ANSWER), (i, j)


def test_markers_split_over_three_chunks():
    chunks = ["<", "thi", "nk>\nreason", "ing\n<", "/th", "ink", ">\n", "\nans", "wer"]
    assert run(chunks)[:2] == ("reasoning", "answer")


def test_several_markers_in_one_chunk_with_text_on_both_sides():
    chunks = ["\n<think>\nfirst\n</think>\n\nstart of answer", " and more"]
    assert run(chunks)[:2] == ("first", "start of answer and more")


def test_no_think_block_is_all_answer():
    thought, answer, parser = run(["Hello", ", world", "!\n"])
    assert (thought, answer) == ("", "Hello, world!\n")
    assert not parser.in_thinking and not parser.thinking_closed


def test_answer_without_think_in_thinking_mode_is_answer():
    assert run(["Sure", ": 4"])[:2] == ("", "Sure: 4")


def test_stray_think_block_in_non_thinking_mode_is_thinking():
    assert run(["<think>\n\n</think>\n\nHi"])[:2] == ("", "Hi")
    assert run(["<think>\nhm\n</think>\n\nHi"])[:2] == ("hm", "Hi")


def test_unclosed_think_block_is_all_thinking():
    thought, answer, parser = run(["<think>\n", "still going\n", "and going"])
    assert (thought, answer) == ("still going\nand going", "")
    assert parser.in_thinking and not parser.thinking_closed


def test_empty_think_block():
    thought, answer, parser = run(["<think>\n\n</think>\n\n", "Hi"])
    assert (thought, answer) == ("", "Hi")
    assert parser.thinking_closed


def test_angle_brackets_that_are_not_markers_come_through():
    text = "a < b and <thinking> is not a tag, nor </think or <think"
    assert run(text)[:2] == ("", text)
    assert run([text])[:2] == ("", text)


def test_angle_brackets_inside_thinking_come_through():
    inner = "x <y> </thinking> </ think> <think> z <"
    assert run("<think>" + inner + "</think>ok")[:2] == (inner, "ok")


def test_thinking_tag_lookalike_at_start_is_answer():
    assert run(["<thin", "king> is a tag"])[:2] == ("", "<thinking> is a tag")


def test_markers_after_think_block_are_answer_text():
    assert run(["<think>a</think>b<think>c</think>\n"])[:2] == ("a", "b<think>c</think>\n")


def test_think_not_at_start_is_answer_text():
    assert run(["Hi <think>x</think>"])[:2] == ("", "Hi <think>x</think>")


def test_whitespace_before_think_is_dropped():
    assert run([" \n ", "\n<think>x</think>y"])[:2] == ("x", "y")


def test_leading_newlines_of_answer_dropped_but_indentation_kept():
    assert run(["\n\n", "Hello"])[:2] == ("", "Hello")
    assert run(["    ", "return x\n"])[:2] == ("", "    return x\n")


def test_whitespace_only_generation_is_nothing():
    assert run([" \n", "\n "])[:2] == ("", "")


def test_newline_handling():
    chunks = ["<think>", "\n", "\n", "line 1", "\n", "\n", "line 2", "\n", "\n", "</think>", "\n", "\n", "\n", "A", "\n", "\n"]
    assert run(chunks)[:2] == ("line 1\n\nline 2", "A\n\n")


def test_trailing_thinking_newlines_held_until_more_thinking():
    parser = ThinkingParser()
    assert parser.feed("<think>\nabc\n\n") == [Piece("thinking", "abc")]
    assert parser.feed("\n") == []
    assert parser.feed("def") == [Piece("thinking", "\n\n\ndef")]
    assert parser.feed("\n</think>\n\nok") == [Piece("answer", "ok")]


def test_properties_track_the_block():
    parser = ThinkingParser()
    assert not parser.in_thinking and not parser.thinking_closed
    assert parser.feed("<thi") == []
    assert not parser.in_thinking
    parser.feed("nk>\n")
    assert parser.in_thinking and not parser.thinking_closed
    parser.feed("r</think")
    assert parser.in_thinking
    parser.feed(">")
    assert not parser.in_thinking and parser.thinking_closed


def test_partial_marker_held_then_released():
    parser = ThinkingParser()
    assert parser.feed("<think>abc</th") == [Piece("thinking", "abc")]
    assert parser.feed("e") == [Piece("thinking", "</the")]


def test_close_flushes_partial_marker_as_current_kind():
    assert run(["<think>\nabc\n</thi"])[:2] == ("abc\n</thi", "")
    assert run(["  <thi"])[:2] == ("", "  <thi")
    assert run(["<think>x</think>y<"])[:2] == ("x", "y<")


def test_feed_empty_and_piece_is_frozen():
    parser = ThinkingParser()
    assert parser.feed("") == []
    assert parser.close() == []
    with pytest.raises(dataclasses.FrozenInstanceError):
        Piece("answer", "x").text = "y"  # type: ignore[misc]


def test_one_feed_gives_one_piece_per_kind_run():
    pieces = ThinkingParser().feed(GENERATION)
    assert pieces == [Piece("thinking", THINKING), Piece("answer", ANSWER)]
