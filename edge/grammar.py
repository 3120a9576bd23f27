"""Tools, tool_choice and response formats checked, and turned into llama.cpp grammars (GBNF).

The grammars come from llama.cpp's own JSON-schema converter (the bindings' SchemaConverter),
wrapped in a few rules of ours. They constrain only the answer: the chat loop arms them after
``</think>`` (or from the first token without thinking), so the thinking stays free.

- A response format (JSON object or JSON schema): ``root ::= lead answer``.
- tool_choice "required" or a named function: ``root ::= lead calls``, each call
  ``<tool_call> lead {"name": <const>, "arguments": <that tool's parameters>} lead </tool_call>``.
- tool_choice "auto": a grammar armed when the model itself writes ``<tool_call>`` (so its root
  begins with that literal, whose token is fed to it first), keeping every call well formed.

Schemas are untrusted input: their size, depth and enum lengths are bounded before conversion,
and keywords the converter would silently ignore (``minimum``, ``uniqueItems``, ...) are refused,
so that an answer that matches the grammar also validates against the schema.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any

from llama_cpp.llama_grammar import SchemaConverter

MAX_SCHEMA_BYTES = 64 * 1024
MAX_SCHEMA_DEPTH = 24
MAX_ENUM = 512
MAX_TOOLS = 128
MAX_GRAMMAR_BYTES = 256 * 1024
LEAD = r"[ \t\n]{0,4}"
# The bindings' converter lets raw control characters into strings (its char rule is [^"\\]),
# which json.loads refuses; llama.cpp's C++ converter excludes them. Ours does too.
CHAR_RULE = r'char ::= [^"\\\x7F\x00-\x1F] | "\\" (["\\/bfnrt] | "u" [0-9a-fA-F]{4})'
       # whitespace before the answer or between calls ("\n\n" after </think>)
TOOL_NAME = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")

# Keywords the converter does not enforce: a schema using them could be matched by the grammar
# and still fail validation, so it is refused with the keyword named.
UNENFORCED = {"minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum", "multipleOf", "uniqueItems",
              "minProperties", "maxProperties", "patternProperties", "propertyNames", "not", "if", "then", "else",
              "dependentRequired", "dependentSchemas", "dependencies", "contains", "minContains", "maxContains",
              "unevaluatedProperties", "unevaluatedItems"}
FORMATS = {"date", "time", "date-time", "uuid", "uuid1", "uuid2", "uuid3", "uuid4", "uuid5"}
TYPES = {"object", "array", "string", "number", "integer", "boolean", "null"}


class GrammarError(ValueError):
    """Tools, tool_choice or a schema that cannot be used; `param` names the field."""

    def __init__(self, message: str, param: str | None = None):
        super().__init__(message)
        self.message, self.param = message, param


@dataclass(frozen=True)
class Constraints:
    """What one turn renders and enforces."""
    tools: list[dict[str, Any]] | None = None   # for the template; None: no tools in the prompt
    answer_gbnf: str | None = None              # armed when the answer starts
    call_gbnf: str | None = None                # armed when the model writes <tool_call>
    tool_names: frozenset[str] = field(default_factory=frozenset)

    @property
    def parse_calls(self) -> bool:
        return bool(self.tools)


def nesting_depth(value: Any, limit: int) -> int:
    """Levels of objects and arrays in `value`, counted without recursion and stopping past
    `limit`, so the depth rule holds on every Python (json.dumps raises RecursionError for deep
    input on 3.11 but serializes it on 3.12, where the size limit then spoke first)."""
    deepest, stack = 0, [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if not isinstance(item, (dict, list)):
            continue
        deepest = max(deepest, depth)
        if deepest > limit:
            return deepest
        stack.extend((child, depth + 1) for child in (item.values() if isinstance(item, dict) else item))
    return deepest


def check_schema(schema: Any, where: str) -> None:
    """Bounds and keywords of an untrusted JSON schema; raises GrammarError naming the problem.
    Depth first: a deeply nested schema is refused for its nesting whatever its size."""
    if nesting_depth(schema, 2 * MAX_SCHEMA_DEPTH + 2) > 2 * MAX_SCHEMA_DEPTH + 1:
        raise GrammarError(f"{where} nests deeper than {MAX_SCHEMA_DEPTH} levels", where)
    try:
        size = len(json.dumps(schema))
    except RecursionError:
        raise GrammarError(f"{where} nests deeper than {MAX_SCHEMA_DEPTH} levels", where) from None
    except (TypeError, ValueError):
        raise GrammarError(f"{where} is not a JSON schema (not serializable JSON)", where) from None
    if size > MAX_SCHEMA_BYTES:
        raise GrammarError(f"{where} is {size} bytes; at most {MAX_SCHEMA_BYTES} are accepted", where)
    _walk(schema, where, 0)


def _walk(schema: Any, where: str, depth: int) -> None:
    if isinstance(schema, bool):
        return
    if not isinstance(schema, dict):
        raise GrammarError(f"{where} must be a JSON schema object", where)
    if depth > MAX_SCHEMA_DEPTH:
        raise GrammarError(f"{where} nests deeper than {MAX_SCHEMA_DEPTH} levels", where)
    if bad := sorted(UNENFORCED & schema.keys()):
        raise GrammarError(f"{where} uses {bad[0]!r}, which the grammar cannot enforce; remove it "
                           f"(and check it in the application)", where)
    kind = schema.get("type")
    for t in kind if isinstance(kind, list) else [kind]:
        if t is not None and t not in TYPES:
            raise GrammarError(f"{where}.type {t!r} is not a JSON schema type", where)
    if "format" in schema and schema.get("type") == "string" and schema["format"] not in FORMATS:
        raise GrammarError(f"{where}.format {schema['format']!r} cannot be enforced (supported: "
                           f"{', '.join(sorted(FORMATS))})", where)
    for key in ("enum",):
        if key in schema and (not isinstance(schema[key], list) or not schema[key] or len(schema[key]) > MAX_ENUM):
            raise GrammarError(f"{where}.{key} must be a list of 1 to {MAX_ENUM} values", where)
    children: list[tuple[str, Any]] = []
    for key in ("properties", "$defs", "definitions"):
        value = schema.get(key, {})
        if not isinstance(value, dict):
            raise GrammarError(f"{where}.{key} must be an object", where)
        children += [(f"{where}.{key}.{k}", v) for k, v in value.items()]
    for key in ("items", "additionalProperties"):
        if isinstance(schema.get(key), dict):
            children.append((f"{where}.{key}", schema[key]))
    for key in ("anyOf", "oneOf", "allOf", "prefixItems"):
        value = schema.get(key, [])
        if not isinstance(value, list):
            raise GrammarError(f"{where}.{key} must be a list", where)
        children += [(f"{where}.{key}[{i}]", v) for i, v in enumerate(value)]
    if isinstance(schema.get("items"), list):
        children += [(f"{where}.items[{i}]", v) for i, v in enumerate(schema["items"])]
    for child_where, child in children:
        _walk(child, child_where, depth + 1)


def response_schema(response_format: Any) -> dict | None:
    """The JSON schema a response format asks for: OpenAI's {"type": "text" | "json_object" |
    "json_schema"} forms, the string "json_object", or a bare JSON schema (library use)."""
    if response_format is None or response_format == "text":
        return None
    if response_format == "json_object":
        return {"type": "object"}
    if not isinstance(response_format, dict):
        raise GrammarError("response_format must be an object", "response_format")
    kind = response_format.get("type")
    if kind == "text":
        return None
    if kind == "json_object":
        return {"type": "object"}
    if kind == "json_schema":
        spec = response_format.get("json_schema")
        if not isinstance(spec, dict) or not isinstance(spec.get("schema"), dict):
            raise GrammarError("response_format.json_schema.schema must be a JSON schema object",
                               "response_format.json_schema")
        return spec["schema"]
    if "type" in response_format and kind not in TYPES and not isinstance(kind, list):
        raise GrammarError(f"response_format.type must be text, json_object or json_schema, got {kind!r}",
                           "response_format")
    return response_format  # a bare schema


def check_tools(tools: Any) -> list[dict[str, Any]]:
    """OpenAI function tools, checked; returned as given (that is what the template renders)."""
    if not isinstance(tools, list) or len(tools) > MAX_TOOLS:
        raise GrammarError(f"tools must be a list of at most {MAX_TOOLS} tools", "tools")
    names = set()
    for i, tool in enumerate(tools):
        where = f"tools[{i}]"
        fn = tool.get("function") if isinstance(tool, dict) else None
        if not isinstance(tool, dict) or tool.get("type", "function") != "function" or not isinstance(fn, dict):
            raise GrammarError(f'{where} must be {{"type": "function", "function": {{...}}}}', where)
        name = fn.get("name")
        if not isinstance(name, str) or not TOOL_NAME.match(name):
            raise GrammarError(f"{where}.function.name must be 1-64 letters, digits, '_', '.' or '-'", where)
        if name in names:
            raise GrammarError(f"{where}.function.name {name!r} is given twice", where)
        names.add(name)
        params = fn.get("parameters", {"type": "object", "properties": {}})
        if not isinstance(params, dict) or params.get("type", "object") != "object":
            raise GrammarError(f"{where}.function.parameters must be a JSON schema of type object", where)
        check_schema(params, f"{where}.function.parameters")
    return tools


def _tool_choice(tool_choice: Any, names: set[str]) -> tuple[str, str | None]:
    """("auto" | "none" | "required", the one name required or None)."""
    if tool_choice in (None, "auto", "none", "required"):
        return tool_choice or "auto", None
    fn = tool_choice.get("function") if isinstance(tool_choice, dict) else None
    name = fn.get("name") if isinstance(fn, dict) else None
    if not isinstance(name, str) or tool_choice.get("type", "function") != "function":
        raise GrammarError('tool_choice must be "auto", "none", "required" or '
                           '{"type": "function", "function": {"name": ...}}', "tool_choice")
    if name not in names:
        raise GrammarError(f"tool_choice names {name!r}, which is not among the tools", "tool_choice")
    return "required", name


def _params(tool: dict) -> dict:
    return tool["function"].get("parameters") or {"type": "object", "properties": {}}


def _convert(converter: SchemaConverter, schema: dict, name: str, where: str) -> str:
    try:
        return converter.visit(converter.resolve_refs(schema, "request"), name)
    except RecursionError:
        raise GrammarError(f"{where} nests too deeply", where) from None
    except Exception as e:  # the converter asserts and raises on schemas it cannot express
        raise GrammarError(f"{where} cannot be turned into a grammar ({type(e).__name__}: {e})"[:300], where) from None


def _strict_chars(rules: str) -> str:
    return "\n".join(CHAR_RULE if line.startswith("char ::=") else line for line in rules.split("\n"))


def plan_constraints(tools: Any = None, tool_choice: Any = "auto", response_format: Any = None,
                     parallel_tool_calls: bool = True) -> Constraints:
    """Check a turn's tools, tool_choice and response format; build its grammars (pure)."""
    tools = check_tools(tools) if tools else None
    names = {t["function"]["name"] for t in tools or []}
    if tool_choice not in (None, "auto", "none") and not tools:
        raise GrammarError("tool_choice needs tools", "tool_choice")
    choice, only = _tool_choice(tool_choice, names)
    schema = response_schema(response_format)
    if schema is not None:
        check_schema(schema, "response_format")
    if choice == "none":
        tools = None
    converter = SchemaConverter(prop_order={"name": 0, "arguments": 1}, allow_fetch=False, dotall=False,
                                raw_pattern=False)
    answer_rule = _convert(converter, schema, "answer", "response_format") if schema is not None else None
    calls_rule = call_rule = None
    if tools:
        chosen = [t for t in tools if only is None or t["function"]["name"] == only]
        call_schema = {"anyOf": [{"type": "object", "properties": {
            "name": {"const": t["function"]["name"]}, "arguments": _params(t)},
            "required": ["name", "arguments"], "additionalProperties": False} for t in chosen]}
        body = _convert(converter, call_schema, "call-json", "tools")
        call_rule = f'tool-call ::= "<tool_call>" lead {body} lead "</tool_call>"\n'
        calls_rule = "tool-call (lead tool-call)*" if parallel_tool_calls else "tool-call"
    rules = _strict_chars(converter.format_grammar()) + f"\nlead ::= {LEAD}\n" + (call_rule if tools else "")
    answer_gbnf = call_gbnf = None
    if choice == "required":
        answer_gbnf = rules + f"root ::= lead ({calls_rule}) lead\n"
    elif answer_rule is not None:
        alternatives = f"{answer_rule} | {calls_rule}" if calls_rule else answer_rule
        answer_gbnf = rules + f"root ::= lead ({alternatives})\n"
    if calls_rule and choice == "auto":
        call_gbnf = rules + f"root ::= {calls_rule} lead\n"
    for gbnf in (answer_gbnf, call_gbnf):
        if gbnf and len(gbnf) > MAX_GRAMMAR_BYTES:
            raise GrammarError(f"the schema makes a grammar of {len(gbnf)} bytes; at most {MAX_GRAMMAR_BYTES}",
                               "response_format" if schema is not None else "tools")
    return Constraints(tools, answer_gbnf, call_gbnf, frozenset(names) if tools else frozenset())
