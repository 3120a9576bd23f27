"""Split a streamed Qwen3 generation into thinking and answer text, token by token.

Qwen3 writes ``<think>\\n...reasoning...\\n</think>\\n\\nanswer``. Tokens arrive in arbitrary
pieces, so a marker can straddle chunks: the parser holds back only what might still turn into a
marker (or trailing newlines of the thinking) and releases it as soon as it is known to be text.
Each feed() costs O(len(chunk)).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

__all__ = ["Piece", "ThinkingParser"]

THINK_OPEN = "<think>"
THINK_CLOSE = "</think>"

_START, _THINKING, _ANSWER = "start", "thinking", "answer"


@dataclass(frozen=True)
class Piece:
    """A run of generated text, tagged as reasoning or as the answer shown to the user."""

    kind: Literal["thinking", "answer"]
    text: str


def _marker_prefix_len(text: str, marker: str) -> int:
    """Length of the longest suffix of text that is a proper prefix of marker (it may yet complete)."""
    for k in range(min(len(marker) - 1, len(text)), 0, -1):
        if text.endswith(marker[:k]):
            return k
    return 0


class ThinkingParser:
    """Incremental parser for one generation; feed() chunks in order, then close().

    Before any content, whitespace is held: dropped if ``<think>`` follows, otherwise it starts the
    answer. ``<think>`` only counts at the very start; ``</think>`` only inside the think block;
    after it everything (markers included) is answer text. A ``<think>`` that opens the think block
    a second time (the template opened it and the model writes it again) is dropped once, before any
    reasoning, as SGLang's reasoning parser drops it. Leading newlines of the thinking and of
    the answer, and trailing newlines of the thinking, are dropped.
    """

    def __init__(self, opened: bool = False) -> None:
        # The same parse serves both modes: a non-thinking generation has no <think> and is all
        # answer; a stray <think> at its very start is still honoured. `opened`: the prompt itself
        # ended with <think> (Thinking-2507's template), so the output starts inside the thinking.
        self._state = _THINKING if opened else _START
        self._closed = False  # saw </think>
        self._lead: list[str] = []  # whitespace before any content (start state)
        self._partial = ""  # held suffix that may be the start of a marker
        self._newlines = 0  # held trailing newlines of the thinking
        self._segment_start = True  # no text emitted yet in the current thinking/answer segment
        self._reopen_checked = False  # looked for a repeated <think> at the start of the thinking

    @property
    def in_thinking(self) -> bool:
        """True while inside the think block (after <think>, before </think>)."""
        return self._state == _THINKING

    @property
    def thinking_closed(self) -> bool:
        """True once </think> has been seen."""
        return self._closed

    def feed(self, text: str) -> list[Piece]:
        """Consume the next chunk of generated text; return what is now known to be final."""
        out: list[Piece] = []
        if text:
            self._dispatch(text, out)
        return out

    def close(self) -> list[Piece]:
        """End of generation: release everything held back, as text of the current kind."""
        out: list[Piece] = []
        partial, self._partial = self._partial, ""
        if self._state == _START:
            if partial:  # a lone "<th..." is the answer; whitespace alone is nothing
                self._state = _ANSWER
                self._feed_answer("".join(self._lead) + partial, out)
            self._lead.clear()
        elif self._state == _THINKING:
            held = "\n" * self._newlines + partial
            self._newlines = 0
            if held:
                _append(out, "thinking", held)
                self._segment_start = False
        return out

    def _dispatch(self, text: str, out: list[Piece]) -> None:
        if self._state == _START:
            self._feed_start(text, out)
        elif self._state == _THINKING:
            self._feed_thinking(text, out)
        else:
            self._feed_answer(text, out)

    def _feed_start(self, text: str, out: list[Piece]) -> None:
        if self._partial:
            text, self._partial = self._partial + text, ""
        else:
            content = text.lstrip()
            if not content:
                self._lead.append(text)
                return
            self._lead.append(text[: len(text) - len(content)])
            text = content
        # text now begins with the first non-whitespace character of the generation
        if text.startswith(THINK_OPEN):
            self._lead.clear()
            self._state = _THINKING
            self._segment_start = True
            self._feed_thinking(text[len(THINK_OPEN) :], out)
        elif THINK_OPEN.startswith(text):
            self._partial = text
        else:
            lead = "".join(self._lead)
            self._lead.clear()
            self._state = _ANSWER
            self._segment_start = True
            self._feed_answer(lead + text, out)

    def _feed_thinking(self, text: str, out: list[Piece]) -> None:
        if self._partial:
            text, self._partial = self._partial + text, ""
        if not self._reopen_checked:
            body = text.lstrip()
            if body.startswith(THINK_OPEN):  # the block is already open: the tag is not reasoning
                text, self._reopen_checked = body[len(THINK_OPEN):], True
            elif body and THINK_OPEN.startswith(body):
                self._partial = text  # may still become a repeated <think>
                return
            elif body:
                self._reopen_checked = True
        end = text.find(THINK_CLOSE)
        if end >= 0:
            self._emit_thinking(text[:end], out)
            self._newlines = 0  # newlines just before </think> are dropped
            self._closed = True
            self._state = _ANSWER
            self._segment_start = True
            self._feed_answer(text[end + len(THINK_CLOSE) :], out)
            return
        keep = _marker_prefix_len(text, THINK_CLOSE)
        if keep:
            text, self._partial = text[:-keep], text[-keep:]
        self._emit_thinking(text, out)

    def _emit_thinking(self, text: str, out: list[Piece]) -> None:
        """Emit thinking text, holding its trailing newlines until more thinking follows."""
        if self._segment_start:
            text = text.lstrip("\n")
            if not text:
                return
        body = text.rstrip("\n")
        if not body:
            self._newlines += len(text)
            return
        _append(out, "thinking", "\n" * self._newlines + body)
        self._newlines = len(text) - len(body)
        self._segment_start = False

    def _feed_answer(self, text: str, out: list[Piece]) -> None:
        if self._segment_start:
            text = text.lstrip("\n")
            if not text:
                return
            self._segment_start = False
        _append(out, "answer", text)


def _append(out: list[Piece], kind: Literal["thinking", "answer"], text: str) -> None:
    """Add text to out, merging with the previous piece when it is of the same kind."""
    if out and out[-1].kind == kind:
        out[-1] = Piece(kind, out[-1].text + text)
    else:
        out.append(Piece(kind, text))
