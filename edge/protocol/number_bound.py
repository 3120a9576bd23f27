"""Numbers an answer writes stay numbers a double holds: at most MAX_DIGITS digits before the
exponent and MAX_EXPONENT_DIGITS in it.

JSON puts no bound on a number's length, and neither does a schema's grammar: a small model that
starts a number can write digits until max_tokens (`37e7742022752733...`), and the text, valid
JSON, is read by every client as infinity, -0.0 or a float that lost its digits, so an answer
valid as text fails the schema as data (`exclusiveMaximum: 0` met by `-4e-2152227...`, read as
-0.0). While a number is being written these rules forbid the tokens that would add a digit (or
a decimal point) past the bound; the grammar's own mask is kept whole when the bound would leave
it no token (a `const` of 20 digits, a `minimum` of 1e20 for an integer), so a schema that needs a
longer number is still met.

15 digits: every integer up to 10**15 - 1 is exact in a double (2**53 is about 9.007e15), and so is
every decimal of 15 significant digits when read back; an exponent of 2 digits keeps the value
inside a double's normal range (1e-308 .. 1.8e308) for any such mantissa.
"""

from __future__ import annotations

import numpy as np

MAX_DIGITS = 15
MAX_EXPONENT_DIGITS = 2
_DIGITS = frozenset(b"0123456789")
_NUMBER_BYTES = frozenset(b"0123456789.eE+-")
_STARTS = frozenset(b"-0123456789")


class NumberRun:
    """Where the number being written stands, read byte by byte from the answer's JSON: outside
    any string, `-` or a digit starts a number; its digits are counted before and after the
    exponent's `e`; any other byte ends it. Bytes outside JSON (a `<tool_call>` tag, whitespace)
    start nothing."""

    __slots__ = ("in_string", "escape", "part", "digits", "exponent_digits")

    def __init__(self):
        self.in_string = self.escape = False
        self.part = 0              # 0: no number, 1: its mantissa, 2: its exponent
        self.digits = self.exponent_digits = 0

    def feed(self, data: bytes) -> "NumberRun":
        for b in data:
            if self.in_string:
                if self.escape:
                    self.escape = False
                elif b == 0x5C:
                    self.escape = True
                elif b == 0x22:
                    self.in_string = False
                continue
            if self.part == 1 and (b in _DIGITS or b == 0x2E):
                self.digits += b in _DIGITS
            elif self.part == 1 and b in b"eE":
                self.part, self.exponent_digits = 2, 0
            elif self.part == 2 and (b in _DIGITS or b in b"+-"):
                self.exponent_digits += b in _DIGITS
            elif b in _STARTS:
                self.part, self.digits = 1, int(b in _DIGITS)
            else:
                self.part = 0
                self.in_string = b == 0x22
        return self

    def full(self) -> bool:
        """Whether one more digit would pass the bound of the part being written."""
        return (self.part == 1 and self.digits >= MAX_DIGITS) or \
            (self.part == 2 and self.exponent_digits >= MAX_EXPONENT_DIGITS)


def digit_words(pieces: list[bytes], n_vocab: int) -> np.ndarray:
    """llguidance-style mask words (int32, bit i of word w for token 32*w + i) with the bit set for
    every token whose leading run of number bytes holds a digit or a decimal point: the tokens
    that lengthen a number's digits when written inside one."""
    words = np.zeros((n_vocab + 31) // 32, dtype=np.uint32)
    for token, piece in enumerate(pieces[:n_vocab]):
        for b in piece:
            if b not in _NUMBER_BYTES:
                break
            if b in _DIGITS or b == 0x2E:
                words[token >> 5] |= np.uint32(1 << (token & 31))
                break
    return words.view(np.int32)


def bound(bitmask: np.ndarray, digits: np.ndarray, scratch: np.ndarray) -> bool:
    """Clear `digits`' tokens from llguidance's `bitmask` in place, unless that leaves no token
    allowed (then the mask stays as the grammar made it). Returns whether the bound applied."""
    np.bitwise_and(bitmask, ~digits, out=scratch)
    if not scratch.any():
        return False
    bitmask[:] = scratch
    return True
