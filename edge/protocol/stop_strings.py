"""Stop strings: the answer ends just before the first one, wherever the tokens split it.

Text is released as soon as it cannot be the start of a stop string; only a tail that may still
grow into one is held back, so a stream shows nothing of the stop string and loses nothing else.
The same rule serves Chat.send/stream(stop=...) and the server's `stop` field.
"""

from __future__ import annotations

__all__ = ["StopCutter"]


class StopCutter:
    """feed() pieces of the answer in order; `stopped` once a stop string was seen (everything from
    it on is dropped); flush() at the end releases a held tail that never became a stop string."""

    def __init__(self, stops: list[str]):
        self.stops, self.held, self.stopped = [s for s in stops if s], "", False
        self.matched: str | None = None   # the stop string that ended the answer (Anthropic says which)

    def feed(self, text: str) -> str:
        if self.stopped:
            return ""
        self.held += text
        hits = [(i, s) for s in self.stops if (i := self.held.find(s)) >= 0]
        if hits:
            at, self.matched = min(hits)
            out, self.held, self.stopped = self.held[:at], "", True
            return out
        keep = max((k for s in self.stops for k in range(min(len(s) - 1, len(self.held)), 0, -1)
                    if self.held.endswith(s[:k])), default=0)
        out, self.held = self.held[: len(self.held) - keep], self.held[len(self.held) - keep:]
        return out

    def flush(self) -> str:
        out, self.held = ("" if self.stopped else self.held), ""
        return out
