"""Scripted Qwen3 models that call a tool (see tests/scripted_model.py for how a script is made).

A bigram script cannot repeat a token, so the call is written in a compact JSON whose tokens are
all distinct: <tool_call>{"name":"get_weather","arguments":{"city": "Paris"}}</tool_call>. The
generation prompt ends with "\\n" (198) in thinking mode and "\\n\\n" (271) in non-thinking mode, so
the mode picks the branch: one branch calls, the other answers (a two-step tool loop switches
mode between its steps).
"""

from __future__ import annotations

from functools import lru_cache

from tokenizers import Tokenizer

from tests.model_factory import FIXTURES
from tests.scripted_model import BUDGET_END, DOUBLE_NEWLINE, END_THINK, IM_END, NEWLINE, THINK
from tests.scripted_model import chain as _chain

TOOL_OPEN, TOOL_CLOSE = 151657, 151658
CALL_JSON = '{"name":"get_weather","arguments":{"city": "Paris"}}'
CALL_TEXT = f"<tool_call>{CALL_JSON}</tool_call>"
THINKING_TEXT = "Let me check the weather"
ANSWER_TEXT = "It is sunny in Paris."
WEATHER_TOOL = {"type": "function", "function": {
    "name": "get_weather", "description": "Current weather in a city.",
    "parameters": {"type": "object", "properties": {"city": {"type": "string", "enum": ["Paris", "Rome"]}},
                   "required": ["city"]}}}
TIME_TOOL = {"type": "function", "function": {
    "name": "get_time", "description": "Local time in a time zone.",
    "parameters": {"type": "object", "properties": {"zone": {"type": "string", "enum": ["CET", "UTC"]}},
                   "required": ["zone"]}}}


@lru_cache(maxsize=None)
def ids(text: str) -> tuple[int, ...]:
    tok = Tokenizer.from_file(str(FIXTURES / "tokenizer.json"))
    return tuple(tok.encode(text, add_special_tokens=False).ids)


def chain(first: int, seq: list[int]) -> dict[int, int]:
    table = _chain(first, seq)
    assert len(table) == len(seq), "a token occurs twice in one script"
    return table


def _table(*chains: dict[int, int]) -> dict[int, int]:
    table: dict[int, int] = {}
    for c in chains:
        assert not table.keys() & c.keys(), "a script token is a source twice"
        table.update(c)
    return table


def call_ids(json_text: str = CALL_JSON) -> list[int]:
    return [TOOL_OPEN, *ids(json_text), TOOL_CLOSE, IM_END]


def think_then_call() -> dict[int, int]:
    """Thinking mode: <think>THINKING</think><tool_call>...; non-thinking, and after a budget cut
    (Qwen's phrase ends "</think>\\n\\n"), the answer."""
    return _table(chain(NEWLINE, [THINK, *ids(THINKING_TEXT), END_THINK, *call_ids()]),
                  chain(DOUBLE_NEWLINE, [*ids(ANSWER_TEXT), IM_END]),
                  {BUDGET_END: TOOL_OPEN})


def call_then_answer() -> dict[int, int]:
    """Non-thinking mode calls at once; thinking mode thinks and answers."""
    return _table(chain(DOUBLE_NEWLINE, call_ids()),
                  chain(NEWLINE, [THINK, *ids(THINKING_TEXT), END_THINK, *ids(ANSWER_TEXT), IM_END]))


def call_in_open_thinking() -> dict[int, int]:
    """The call is written inside a think block that is never closed."""
    return _table(chain(NEWLINE, [THINK, *ids(THINKING_TEXT), *call_ids()]),
                  chain(DOUBLE_NEWLINE, [*ids(ANSWER_TEXT), IM_END]))


def broken_call() -> dict[int, int]:
    """Non-thinking mode writes a call whose JSON never closes: ...{"city": "Paris</tool_call>."""
    body = list(ids(CALL_JSON))[:-1]  # drop the closing '"}}'
    return _table(chain(DOUBLE_NEWLINE, [TOOL_OPEN, *body, TOOL_CLOSE, IM_END]),
                  chain(NEWLINE, [THINK, *ids(THINKING_TEXT), END_THINK, *ids(ANSWER_TEXT), IM_END]))
