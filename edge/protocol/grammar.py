"""Tools, tool_choice and response formats checked, and turned into llguidance grammars (Lark).

The constraint engine is llguidance (guidance.py says why); its grammars are Lark text with the
JSON schemas embedded by ``%json``. They constrain only the answer: the chat loop arms them after
``</think>`` (or from the first token without thinking), so the thinking stays free.

- A response format (JSON object or JSON schema): ``start: LEAD? answer``.
- tool_choice "required" or a named function: ``start: LEAD? calls LEAD?``, each call
  ``<tool_call> {"name": "<name>", "arguments": <that tool's parameters>} </tool_call>``
  (name first, as Qwen's template writes it; each tool's parameters are their own ``%json``
  document, so their ``$ref``s resolve against their own ``$defs``).
- tool_choice "auto": a grammar armed when the model itself writes ``<tool_call>`` (its token is
  fed to it first), keeping every call well formed.

Schemas are untrusted input: their size and depth are bounded and llguidance's fuel limits bound
their compilation (guidance.LIMITS). Keywords llguidance cannot enforce while decoding
(``uniqueItems``, ``not``, ``if``/``then``/``else``, ``dependentRequired``, ...) are turned into
ones it enforces where that is sound (schema_narrowing.py), else compiled leniently and checked on
the finished answer (answer_check.py): an answer that fails is returned flagged, never silently.
Schemas no value can meet are refused up front. The caller's schema is never changed (planning reads it only).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any

import jsonschema

from edge.protocol.guidance import check_grammar
from edge.protocol.schema_narrowing import (NARROWED_PATTERNS, OVERLAPPING_PATTERNS, every_dict, narrow_for_decoding,
                                            narrow_pattern_properties, unsatisfiable)
from edge.protocol.schema_validator import meta_validator

MAX_SCHEMA_BYTES = 64 * 1024
MAX_SCHEMA_DEPTH = 24
MAX_ENUM = 512
MAX_TOOLS = 128
MAX_GRAMMAR_BYTES = 256 * 1024
LEAD = r"/[ \t\n]{1,4}/"  # whitespace before the answer or between calls ("\n\n" after </think>)
# JSON whitespace between tokens: at most one space (`{"a": 1}` and `{"a":1}`), so that a model
# never spends its tokens on runs of whitespace
JSON_OPTIONS = {"lenient": True, "whitespace_pattern": r"[ ]?"}
# Objects with listed properties are closed to them while decoding (closed_objects); these
# keywords open an object or combine schemas so that closing could change what validates.
OPENING = {"additionalProperties", "patternProperties", "unevaluatedProperties", "minProperties", "propertyNames"}
COMBINING = {"allOf", "not", "if", "then", "else", "dependentSchemas", "dependentRequired", "$dynamicRef",
             "unevaluatedProperties"}
TOOL_NAME = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")
TYPES = {"object", "array", "string", "number", "integer", "boolean", "null"}


class GrammarError(ValueError):
    """Tools, tool_choice or a schema that cannot be used; `param` names the field."""

    def __init__(self, message: str, param: str | None = None):
        super().__init__(message)
        self.message, self.param = message, param


@dataclass(frozen=True)
class Constraints:
    """What one turn renders, enforces while decoding, and checks on the finished reply."""
    tools: list[dict[str, Any]] | None = None   # for the template; None: no tools in the prompt
    answer_grammar: str | None = None           # Lark, armed when the answer starts
    call_grammar: str | None = None             # Lark, armed when the model writes <tool_call>
    tool_names: frozenset[str] = field(default_factory=frozenset)
    answer_schema: dict | bool | None = None    # the response format's schema (answer_check.py)
    tool_schemas: dict[str, Any] = field(default_factory=dict)  # name -> parameters schema
    notices: tuple[str, ...] = ()               # how the answer was narrowed to be enforceable

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
    """Bounds and validity of an untrusted JSON schema (Draft 2020-12); raises GrammarError naming
    the problem. Depth first: a deeply nested schema is refused for its nesting whatever its size."""
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
    if not isinstance(schema, (dict, bool)):
        raise GrammarError(f"{where} must be a JSON schema object", where)
    if schema is False:
        raise GrammarError(f"{where} is false: no answer can match it", where)
    longest_enum = _longest_enum(schema)
    if longest_enum > MAX_ENUM:
        raise GrammarError(f"{where} has an enum of {longest_enum} values; at most {MAX_ENUM}", where)
    try:
        error = jsonschema.exceptions.best_match(_meta_validator().iter_errors(schema))
    except RecursionError:
        raise GrammarError(f"{where} nests deeper than {MAX_SCHEMA_DEPTH} levels", where) from None
    if error is not None:
        path = "".join(f"[{p!r}]" if isinstance(p, int) else f".{p}" for p in list(error.absolute_path)[:-1])
        message = f"{where}{path} is not a valid JSON schema: {error.message}"
        raise GrammarError(message[:300], where)


_META: list = []


def _meta_validator():
    """Draft 2020-12's meta-schema validator (what check_schema builds on every call), built once,
    reading patterns as ECMA-262 regexes (schema_validator)."""
    if not _META:
        _META.append(meta_validator())
    return _META[0]


def _longest_enum(schema: Any) -> int:
    """The longest "enum" list anywhere in `schema` (its depth is bounded by nesting_depth first)."""
    return max((len(node["enum"]) for node in every_dict(schema) if isinstance(node.get("enum"), list)), default=0)


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
        if not isinstance(spec, dict) or not isinstance(spec.get("schema"), (dict, bool)):
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


def json_rule(schema: Any) -> str:
    """A Lark ``%json`` body for `schema` with our JSON options, which replace any "x-guidance" the
    caller sent (a new top-level dict: the caller's is not touched)."""
    if schema is True:
        schema = {}
    return "%json " + json.dumps({**closed_objects(schema), "x-guidance": JSON_OPTIONS}, ensure_ascii=False)


def closed_objects(schema: Any) -> Any:
    """A copy of `schema` in which every object schema that lists properties (and says nothing
    about others) allows only those while decoding, as llama.cpp's converter does: an answer
    without extra keys validates all the same, and a model cannot wander into invented keys.
    Integer-valued floats of count keywords (``"maxLength": 2.0``) become integers, and an email
    address is held to EMAIL_WHILE_DECODING's common shape (every answer is still one the schema
    accepts). A schema
    with a combining keyword (allOf, not, if, ...) is left as it is: closing a branch could
    make it unsatisfiable."""
    return _close(schema, not _mentions(schema, COMBINING))


# An email address the model writes: the common shape (a dotted domain, as pydantic's EmailStr
# needs), bounded; every such address passes the "email" format check.
EMAIL_WHILE_DECODING = r"^[A-Za-z0-9_%+-]{1,32}(\.[A-Za-z0-9_%+-]{1,16}){0,2}@[A-Za-z0-9]{1,20}(\.[A-Za-z0-9]{1,20}){0,2}\.[A-Za-z]{2,8}$"
COUNTS = {"maxLength", "minLength", "maxItems", "minItems", "maxProperties", "minProperties", "maxContains",
          "minContains"}


def _close(node: Any, close: bool) -> Any:
    if not isinstance(node, dict):
        return node
    out = _counts_as_ints(node)
    for key in ("properties", "$defs", "definitions"):
        if isinstance(node.get(key), dict):
            out[key] = {name: _close(sub, close) for name, sub in node[key].items()}
    for key in ("anyOf", "oneOf", "prefixItems"):
        if isinstance(node.get(key), list):
            out[key] = [_close(sub, close) for sub in node[key]]
    for key in ("items", "contains"):
        if key in node:
            out[key] = _close(node[key], close)
    if node.get("format") == "email" and "pattern" not in node:
        del out["format"]  # the common shape, bounded: a local part that never ends never reaches its "@"
        out["pattern"] = EMAIL_WHILE_DECODING
    props, required = node.get("properties"), node.get("required", [])
    if close and isinstance(props, dict) and props and not (OPENING & node.keys()) and isinstance(required, list) \
            and set(required) <= props.keys():
        out["additionalProperties"] = False
    return out


def _counts_as_ints(node: Any) -> Any:
    if not isinstance(node, dict):
        return node
    return {k: int(v) if k in COUNTS and isinstance(v, float) and v.is_integer() else v for k, v in node.items()}


def _mentions(node: Any, keys: set[str]) -> bool:
    return any(keys & item.keys() for item in every_dict(node))


def _lark_string(text: str) -> str:
    """`text` as a Lark string literal matching exactly those characters."""
    return json.dumps(text, ensure_ascii=False)


def tool_call_rules(tools: list[dict]) -> str:
    """``tool_call`` and its alternatives: <tool_call> {"name": ..., "arguments": ...} </tool_call>."""
    rules, names = [], []
    for i, tool in enumerate(tools):
        name = tool["function"]["name"]  # TOOL_NAME: no quote or backslash to escape
        rules.append(f'call_{i}: "{{" WS? {_lark_string(chr(34) + "name" + chr(34))} WS? ":" WS? '
                     f'{_lark_string(chr(34) + name + chr(34))} WS? "," WS? '
                     f'{_lark_string(chr(34) + "arguments" + chr(34))} WS? ":" WS? args_{i} WS? "}}"\n'
                     f"args_{i}: {json_rule(_decoding_params(tool))}\n")
        names.append(f"call_{i}")
    return ("tool_call: <tool_call> LEAD? call_json LEAD? </tool_call>\n"
            f"call_json: {' | '.join(names)}\n" + "".join(rules) + "WS: /[ \\t\\n]{1,20}/\n")


def _decoding_params(tool: dict) -> Any:
    """The tool's parameters as decoded: with schema_narrowing's exact rewrites only (a tool's
    arguments are never narrowed, so no notice is owed), where llguidance compiles them."""
    params = _params(tool)
    exact, _ = narrow_for_decoding(params, narrowing=False)
    if exact != params and check_grammar(f"start: {json_rule(exact)}\n") is not None:
        return params
    return exact


def _check(lark: str, where: str) -> str:
    if len(lark) > MAX_GRAMMAR_BYTES:
        raise GrammarError(f"the schema makes a grammar of {len(lark)} bytes; at most {MAX_GRAMMAR_BYTES}", where)
    if (problem := check_grammar(lark)) is not None:
        raise GrammarError(f"{where} cannot be enforced: {problem}", where)
    return lark


def _first_enforceable(schema: Any, grammar_for) -> tuple[str, tuple[str, ...]]:
    """The grammar of the first copy of `schema` llguidance compiles: its narrowed decoding copy
    (schema_narrowing.py), the schema as sent, or, where patternProperties overlap, the schema
    kept to its listed properties; with the notices for the narrowing used. The error raised is
    the one for the schema as sent."""
    narrowed, notices = narrow_for_decoding(schema)
    if narrowed != schema:
        try:
            return grammar_for(narrowed), notices
        except GrammarError:
            pass
    try:
        return grammar_for(schema), ()
    except GrammarError as e:
        if OVERLAPPING_PATTERNS not in e.message:
            raise
        return grammar_for(narrow_pattern_properties(schema)), (NARROWED_PATTERNS,)


def plan_constraints(tools: Any = None, tool_choice: Any = "auto", response_format: Any = None,
                     parallel_tool_calls: bool = True) -> Constraints:
    """Check a turn's tools, tool_choice and response format; build its grammars (pure: the
    arguments are read, never changed)."""
    tools = check_tools(tools) if tools else None
    names = {t["function"]["name"] for t in tools or []}
    if tool_choice not in (None, "auto", "none") and not tools:
        raise GrammarError("tool_choice needs tools", "tool_choice")
    choice, only = _tool_choice(tool_choice, names)
    schema = response_schema(response_format)
    if schema is not None:
        check_schema(schema, "response_format")
        if (why := unsatisfiable(schema)) is not None:
            raise GrammarError(f"response_format can never be met: {why}", "response_format")
    if choice == "none":
        tools = None
    lead = f"LEAD: {LEAD}\n"
    calls = call_rules = ""
    if tools:
        chosen = [t for t in tools if only is None or t["function"]["name"] == only]
        call_rules = tool_call_rules(chosen)
        calls = "tool_call (LEAD? tool_call)*" if parallel_tool_calls else "tool_call"
    answer_grammar = call_grammar = None
    notices: tuple[str, ...] = ()
    if choice == "required":
        answer_grammar = _check(f"start: LEAD? ({calls}) LEAD?\n{lead}{call_rules}", "tools")
    elif schema is not None:
        alternatives = f"answer | {calls}" if calls else "answer"

        def answer_grammar_for(rule_schema: Any) -> str:
            return _check(f"start: LEAD? ({alternatives})\n{lead}answer: {json_rule(rule_schema)}\n{call_rules}",
                          "response_format")
        answer_grammar, notices = _first_enforceable(schema, answer_grammar_for)
    if calls and choice == "auto":
        call_grammar = _check(f"start: {calls} LEAD?\n{lead}{call_rules}", "tools")
    return Constraints(tools, answer_grammar, call_grammar, frozenset(names) if tools else frozenset(),
                       schema, {t["function"]["name"]: _params(t) for t in tools or []}, notices)
