"""Whether a string is text the runtime can take: what the API, the chat and the CLI refuse.

A lone UTF-16 surrogate (JSON's "\\ud800", or a file name's undecodable byte under Python's
surrogateescape) is not Unicode: no UTF-8 encoder accepts it, so the tokenizer cannot take it. A
NUL is valid Unicode but never chat text: it marks binary input, or UTF-16 read as UTF-8 (a NUL
after every ASCII letter). Both are refused, naming the character and where, rather than repaired:
a silent repair would change the user's text without telling them (and OpenAI's API also answers
invalid Unicode with a 400).
"""

from __future__ import annotations


def text_problem(text: str) -> str | None:
    """What is wrong with `text` as a phrase ("holds ..."), or None when it is fine."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as e:
        return (f"holds a lone UTF-16 surrogate (U+{ord(text[e.start]):04X} at character {e.start}), "
                f"which is not valid Unicode")
    if (at := text.find("\x00")) >= 0:
        return f"holds a NUL character (U+0000 at character {at}), which is not text"
    return None


def tree_problem(value: object) -> str | None:
    """The first string (value or key) in decoded JSON that text_problem refuses, as
    "PATH holds ...", or None; walked without recursion."""
    stack: list[tuple[object, str]] = [(value, "")]
    while stack:
        node, path = stack.pop()
        if isinstance(node, str) and (problem := text_problem(node)) is not None:
            return f"{path or 'the text'} {problem}"
        items = node.items() if isinstance(node, dict) else enumerate(node) if isinstance(node, list) else ()
        for key, child in items:
            if isinstance(key, str) and (problem := text_problem(key)) is not None:
                return f"a key in {path or 'the top level'} {problem}"
            stack.append((child, f"{path}[{key}]" if isinstance(key, int) else f"{path}.{key}" if path else key))
    return None
