"""Qwen3's tool calls: ``<tool_call>{"name": ..., "arguments": {...}}</tool_call>`` blocks in the
answer, split from the content while streaming.

Qwen writes each call as a JSON object between the two marker tokens, with or without newlines
around the JSON, possibly several in a row (parallel calls), possibly with text before or after.
The parser here is pure text: it holds back only what may still become ``<tool_call>`` and, inside
a block, waits for ``</tool_call>`` outside any JSON string, so a block may be split anywhere. A
call is released whole once it is complete and valid, so a client never receives a call that later
turns out malformed; a malformed block goes back into the content, with the reason.
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass, field
from typing import Any

from edge.protocol.thinking_parser import _marker_prefix_len

TOOL_OPEN = "<tool_call>"
TOOL_CLOSE = "</tool_call>"


@dataclass(frozen=True)
class ToolCall:
    """One function call the model asked for. `arguments` is the parsed object; `arguments_json`
    the exact JSON text sent to OpenAI clients."""
    id: str
    name: str
    arguments: dict[str, Any]

    @property
    def arguments_json(self) -> str:
        return json.dumps(self.arguments, ensure_ascii=False)

    def to_openai(self) -> dict[str, Any]:
        return {"id": self.id, "type": "function", "function": {"name": self.name, "arguments": self.arguments_json}}


@dataclass(frozen=True)
class InvalidCall:
    """A ``<tool_call>`` block that is not a call: its text stays in the content."""
    text: str
    reason: str


@dataclass(frozen=True)
class Content:
    text: str


def new_call_id() -> str:
    return f"call_{uuid.uuid4().hex[:24]}"


def parse_call(block: str, known: set[str] | None = None) -> ToolCall | InvalidCall:
    """The JSON inside one ``<tool_call>`` block, as a call or the reason it is not one."""
    raw = TOOL_OPEN + block + TOOL_CLOSE
    try:
        obj = json.loads(block)
    except (json.JSONDecodeError, RecursionError) as e:
        return InvalidCall(raw, f"not valid JSON ({e.msg if isinstance(e, json.JSONDecodeError) else 'too deep'})")
    if not isinstance(obj, dict) or not isinstance(obj.get("name"), str) or not obj["name"]:
        return InvalidCall(raw, 'not an object with a "name"')
    args = obj.get("arguments", {})
    if isinstance(args, str):  # some models write the arguments as a JSON string
        try:
            args = json.loads(args)
        except json.JSONDecodeError:
            return InvalidCall(raw, '"arguments" is a string that is not JSON')
    if not isinstance(args, dict):
        return InvalidCall(raw, '"arguments" is not an object')
    if known is not None and obj["name"] not in known:
        return InvalidCall(raw, f"no tool named {obj['name']!r}")
    return ToolCall(new_call_id(), obj["name"], args)


@dataclass
class _JsonScan:
    """Where a JSON text stands: inside a string or not (escapes followed), incrementally."""
    in_string: bool = False
    escaped: bool = False

    def feed(self, text: str) -> list[int]:
        """Positions in text that lie outside every JSON string (a marker may start there)."""
        outside = []
        for i, ch in enumerate(text):
            if self.in_string:
                if self.escaped:
                    self.escaped = False
                elif ch == "\\":
                    self.escaped = True
                elif ch == '"':
                    self.in_string = False
            else:
                outside.append(i)
                if ch == '"':
                    self.in_string = True
        return outside


@dataclass
class ToolCallParser:
    """Incremental: feed() answer text in order, then close(). Items come out in order: Content,
    ToolCall or InvalidCall. Whitespace right before or after a call, and at the end, is dropped."""
    known: set[str] | None = None
    _state: str = "content"
    _held: str = ""            # content that may be the start of <tool_call>, or trailing whitespace
    _block: str = ""           # text inside the current <tool_call> block
    _scan: _JsonScan = field(default_factory=_JsonScan)
    _outside: set[int] = field(default_factory=set)  # block positions outside JSON strings
    _after_call: bool = False  # drop whitespace that follows a call

    def feed(self, text: str) -> list[Content | ToolCall | InvalidCall]:
        out: list[Content | ToolCall | InvalidCall] = []
        while text:
            text = self._feed_content(text, out) if self._state == "content" else self._feed_block(text, out)
        return out

    def close(self) -> list[Content | ToolCall | InvalidCall]:
        """End of the answer: an unclosed block that holds a complete call is a call (models stop
        before ``</tool_call>`` at times); anything else held is content."""
        out: list[Content | ToolCall | InvalidCall] = []
        if self._state == "block":
            # A </tool_call> inside an unterminated JSON string: the JSON before it is what failed.
            head, closed, tail = self._block.rpartition(TOOL_CLOSE)
            if not closed:
                head, tail = self._block, ""
            item = parse_call(head.strip(), self.known)
            if isinstance(item, ToolCall):
                out.append(item)
                if tail.strip():
                    out.append(Content(tail.strip()))
            else:
                out.append(InvalidCall(TOOL_OPEN + self._block, item.reason if closed else "the call was never closed"))
            self._state, self._block = "content", ""
        elif self._held.strip():
            out.append(Content(self._held.rstrip()))
        self._held = ""
        return out

    def _feed_content(self, text: str, out: list) -> str:
        text, self._held = self._held + text, ""
        if self._after_call:
            text = text.lstrip()
            if not text:
                return ""
            if not text.startswith(TOOL_OPEN):
                self._after_call = False
        start = text.find(TOOL_OPEN)
        if start >= 0:
            if text[:start].strip():
                out.append(Content(text[:start].rstrip()))
            self._state, self._block, self._scan, self._outside = "block", "", _JsonScan(), set()
            return text[start + len(TOOL_OPEN):]
        keep = _marker_prefix_len(text, TOOL_OPEN)
        body, tail = text[: len(text) - keep], text[len(text) - keep:]
        stripped = body.rstrip()
        if stripped:
            out.append(Content(stripped))
        self._held = body[len(stripped):] + tail  # trailing whitespace waits for what follows
        return ""

    def _feed_block(self, text: str, out: list) -> str:
        base = len(self._block)
        self._block += text
        self._outside.update(base + i for i in self._scan.feed(text))
        # </tool_call> counts only where it starts outside a JSON string; search the new text
        # and the marker-length overlap with what came before.
        pos = self._block.find(TOOL_CLOSE, max(0, base - len(TOOL_CLOSE) + 1))
        while pos >= 0 and pos not in self._outside:
            pos = self._block.find(TOOL_CLOSE, pos + 1)
        if pos < 0:
            return ""
        block, rest = self._block[:pos], self._block[pos + len(TOOL_CLOSE):]
        self._state, self._block = "content", ""
        item = parse_call(block.strip(), self.known)
        if isinstance(item, InvalidCall):
            out.append(item)
        else:
            out.append(item)
            self._after_call = True
        return rest
