"""A tool call written inside the thinking: held back from the streamed reasoning until it is known
whether it is a call.

Small Qwen3 models sometimes write `<tool_call>...</tool_call>` inside a think block they never
close; when the reply ends that way, the call is the reply's call (chat.py). Until then nobody knows:
the think block may still close, making the text reasoning after all. So, with tools on, the
reasoning is streamed up to a `<tool_call>` (a partial tag at the end of a piece is held, as the
answer side's parser holds one) and everything from the tag on is held: released as reasoning when
the think block closes or the reply ends otherwise, parsed for calls when it ends inside it.
"""

from __future__ import annotations

from edge.protocol.thinking_parser import _marker_prefix_len
from edge.protocol.tool_calls import TOOL_OPEN

__all__ = ["ThinkingCallHold"]


class ThinkingCallHold:
    """feed() the reasoning text in order and stream what it returns; release() hands back what
    was held (from the first `<tool_call>` on, or a tail that may begin one)."""

    def __init__(self) -> None:
        self.held = ""
        self.holding = False   # a whole <tool_call> tag was seen: hold everything from it on

    def feed(self, text: str) -> str:
        if self.holding:
            self.held += text
            return ""
        text, self.held = self.held + text, ""
        start = text.find(TOOL_OPEN)
        if start >= 0:
            self.holding, self.held = True, text[start:]
            return text[:start]
        keep = _marker_prefix_len(text, TOOL_OPEN)
        if keep:
            text, self.held = text[:-keep], text[-keep:]
        return text

    def release(self) -> str:
        out, self.held, self.holding = self.held, "", False
        return out
