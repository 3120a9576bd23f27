"""Thinking modes: on, off, and auto; Qwen's /think and /no_think soft switches.

The auto rule is plain and documented so that users can predict it. A message gets thinking when
any of these hold:
- it asks for math: digits joined by an operator (``2+2``, ``3 * 7``), or a word such as solve,
  calculate, prove, equation, integral, derivative, probability, "how many";
- it is about code: a code fence or inline code, or a word such as code, function, bug, error,
  debug, implement, algorithm, regex, SQL, Python, compile;
- it asks for reasoning or several steps: why, explain, compare, analyze, plan, step by step,
  pros and cons, "what if", "how do/does/can/should/would";
- it is long (more than 40 words) or asks several questions (two or more "?").
Anything else (greetings, thanks, short factual questions such as "What is the capital of
France?") gets the quick non-thinking answer.
"""

from __future__ import annotations

import re
from enum import Enum


class Mode(str, Enum):
    THINK = "think"
    NO_THINK = "no_think"
    AUTO = "auto"


_SOFT_SWITCH = re.compile(r"/(no_think|think)\s*$")
_MATH = re.compile(r"\d\s*[-+*/^=×÷]\s*\d|\b(solve|calculate|compute|prove|proof|equation|integral|"
                   r"derivative|probability|how many|how much|percent|sum of|factor)\b", re.I)
_CODE = re.compile(r"```|`[^`]+`|\b(code|function|bug|error|debug|implement|algorithm|regex|sql|python|"
                   r"javascript|rust|compile|script|class|refactor|stack trace)\b", re.I)
_REASONING = re.compile(r"\b(why|explain|compare|analy[sz]e|plan|step[- ]by[- ]step|pros and cons|"
                        r"what if|trade-?offs?|how (do|does|can|should|would|could))\b", re.I)
LONG_WORDS = 40


def soft_switch(text: str) -> Mode | None:
    """THINK or NO_THINK when the message ends with Qwen's /think or /no_think, else None."""
    m = _SOFT_SWITCH.search(text)
    if m is None:
        return None
    return Mode.NO_THINK if m.group(1) == "no_think" else Mode.THINK


def auto_wants_thinking(text: str) -> bool:
    """The auto rule in the module docstring."""
    return bool(_MATH.search(text) or _CODE.search(text) or _REASONING.search(text)
                or len(text.split()) > LONG_WORDS or text.count("?") >= 2)


def thinking_for(mode: Mode, text: str) -> bool:
    """Whether a turn in `mode` thinks for this message."""
    if mode is Mode.AUTO:
        return auto_wants_thinking(text)
    return mode is Mode.THINK
