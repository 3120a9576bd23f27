"""The streaming tool-call parser: every sample split at every position (and every pair of
positions for the short ones) gives the same calls and content as the whole text at once."""

from __future__ import annotations

import pytest

from edge.protocol.tool_calls import Content, InvalidCall, ToolCall, ToolCallParser, parse_call

CALL = '{"name": "get_weather", "arguments": {"city": "Paris"}}'
SAMPLES = [
    # (text, expected items as ("content", text) / ("call", name, args) / ("invalid", text))
    (f"<tool_call>\n{CALL}\n</tool_call>", [("call", "get_weather", {"city": "Paris"})]),
    (f"<tool_call>{CALL}</tool_call>", [("call", "get_weather", {"city": "Paris"})]),
    (f"Let me look.\n\n<tool_call>\n{CALL}\n</tool_call>\nDone.",
     [("content", "Let me look."), ("call", "get_weather", {"city": "Paris"}), ("content", "Done.")]),
    ('<tool_call>\n{"name": "a", "arguments": {}}\n</tool_call>\n<tool_call>\n{"name": "b", "arguments": {"x": [1, 2]}}\n</tool_call>',
     [("call", "a", {}), ("call", "b", {"x": [1, 2]})]),
    ('<tool_call>{"name": "a", "arguments": {"s": "</tool_call> \\" {"}}</tool_call>',
     [("call", "a", {"s": '</tool_call> " {'})]),
    ('<tool_call>{"name": "a", "arguments": "{\\"k\\": 1}"}</tool_call>', [("call", "a", {"k": 1})]),
    ("<tool_call>{not json}</tool_call> tail", [("invalid", "<tool_call>{not json}</tool_call>"), ("content", " tail")]),
    ('<tool_call>{"arguments": {}}</tool_call>', [("invalid", '<tool_call>{"arguments": {}}</tool_call>')]),
    ('<tool_call>{"name": "a", "arguments": [1]}</tool_call>', [("invalid", '<tool_call>{"name": "a", "arguments": [1]}</tool_call>')]),
    (f"<tool_call>\n{CALL}", [("call", "get_weather", {"city": "Paris"})]),          # never closed, but complete
    ('<tool_call>{"name": "a", "argu', [("invalid", '<tool_call>{"name": "a", "argu')]),  # cut off
    ('<tool_call>{"name": "a", "arguments": {"c": "P</tool_call>',
     [("invalid", '<tool_call>{"name": "a", "arguments": {"c": "P</tool_call>')]),
    ("Plain answer with <tool and > signs.", [("content", "Plain answer with <tool and > signs.")]),
    ("Trailing spaces stay inside   text  ", [("content", "Trailing spaces stay inside   text")]),
    ("", []),
]


def run(chunks: list[str]) -> list[tuple]:
    parser = ToolCallParser()
    items = [i for c in chunks for i in parser.feed(c)] + parser.close()
    out: list[tuple] = []
    for item in items:
        if isinstance(item, Content):
            if out and out[-1][0] == "content":
                out[-1] = ("content", out[-1][1] + item.text)
            else:
                out.append(("content", item.text))
        elif isinstance(item, ToolCall):
            out.append(("call", item.name, item.arguments))
        else:
            assert isinstance(item, InvalidCall) and item.reason
            out.append(("invalid", item.text))
    return out


@pytest.mark.parametrize("text, expected", SAMPLES)
def test_every_split_gives_the_same_result(text, expected):
    assert run([text]) == expected
    assert run(list(text)) == expected
    for i in range(len(text) + 1):
        assert run([text[:i], text[i:]]) == expected, i
    if len(text) <= 80:
        for i in range(len(text) + 1):
            for j in range(i, len(text) + 1):
                assert run([text[:i], text[i:j], text[j:]]) == expected, (i, j)


def test_calls_get_distinct_openai_ids_and_arguments_text():
    a, b = parse_call(CALL), parse_call(CALL)
    assert isinstance(a, ToolCall) and a.id != b.id and a.id.startswith("call_")
    assert a.to_openai() == {"id": a.id, "type": "function",
                             "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}}


def test_unknown_tool_name_is_not_a_call():
    item = parse_call(CALL, known={"other"})
    assert isinstance(item, InvalidCall) and "get_weather" in item.reason


def test_deeply_nested_arguments_do_not_crash():
    deep = '{"name": "a", "arguments": ' + "[" * 100000 + "]" * 100000 + "}"
    assert isinstance(parse_call(deep), InvalidCall)
