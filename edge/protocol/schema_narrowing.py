"""Decoding copies of a schema that llguidance can enforce, and schemas no answer can meet.

llguidance compiles `not`, `if`/`then`/`else` and `propertyNames` leniently (it ignores them), so
an answer could be valid JSON and still fail the schema (answer_check.py flags it). Where a
keyword can be turned into one llguidance enforces, the copy decoded with says so instead:

- ``propertyNames`` (pydantic's constrained dict keys) becomes ``patternProperties`` plus
  ``additionalProperties: false``: the same rule, enforced exactly.
- ``if``/``then``/``else`` becomes ``allOf: [if, then]`` (or ``else`` when ``if`` is false): every
  answer it allows is one the schema allows; the else branch is not offered.
- ``not: {"type": T, ...}`` becomes a ``type`` outside T: every value of another type fails the
  negated schema, so the ``not`` holds; values of type T are not offered. ``oneOf`` keeps to the
  types no two branches can take.
- ``unevaluatedProperties: false`` alone in a schema becomes ``maxProperties: 0`` (exact).

Each narrowing only removes answers (never adds one) and is said in a notice; a copy llguidance
cannot compile falls back to the schema as sent. All functions are pure: the caller's schema is
read, never changed.
"""

from __future__ import annotations

from typing import Any, Callable, Iterator

import regex

SCHEMA_MAPS = ("properties", "patternProperties", "$defs", "definitions", "dependentSchemas")
SCHEMA_LISTS = ("allOf", "anyOf", "oneOf", "prefixItems")
SCHEMA_VALUES = ("items", "contains", "additionalProperties", "not", "if", "then", "else", "propertyNames",
                 "unevaluatedItems", "unevaluatedProperties")
TYPES = ("null", "boolean", "object", "array", "number", "string")
# Keywords that say nothing about which values are valid.
ANNOTATIONS = {"$schema", "$id", "$comment", "$anchor", "$defs", "definitions", "title", "description", "default",
               "examples", "deprecated", "readOnly", "writeOnly"}

# The keywords that constrain values of one type only (a value of another type meets them).
TYPED_KEYWORDS = {
    "object": {"properties", "required", "additionalProperties", "patternProperties", "minProperties",
               "maxProperties", "propertyNames", "dependentRequired", "dependentSchemas", "unevaluatedProperties"},
    "array": {"items", "prefixItems", "minItems", "maxItems", "uniqueItems", "contains", "minContains",
              "maxContains", "unevaluatedItems"},
    "string": {"minLength", "maxLength", "pattern", "format", "contentEncoding", "contentMediaType"},
    "number": {"minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum", "multipleOf"},
}

OVERLAPPING_PATTERNS = "are not disjoint"
NARROWED_PATTERNS = ("the schema's patternProperties overlap, which cannot be enforced while decoding: "
                     "the answer uses only its listed properties")
NARROWED_CONDITIONAL = ("the schema's if/then/else cannot be enforced while decoding: the answer is held to "
                        "its if and then branches")
NARROWED_NOT = "the schema's not cannot be enforced while decoding: the answer takes a type the not excludes"
NARROWED_ONE_OF = ("the schema's oneOf cannot be enforced while decoding: the answer takes a type only one of its "
                   "branches allows")


def each_subschema(schema: Any, rewrite: Callable[[Any], Any]) -> Any:
    """A shallow copy of `schema` with `rewrite` applied to every direct subschema."""
    if not isinstance(schema, dict):
        return schema
    out = dict(schema)
    for key in SCHEMA_MAPS:
        if isinstance(schema.get(key), dict):
            out[key] = {name: rewrite(sub) for name, sub in schema[key].items()}
    for key in SCHEMA_LISTS:
        if isinstance(schema.get(key), list):
            out[key] = [rewrite(sub) for sub in schema[key]]
    for key in SCHEMA_VALUES:
        if key in schema:
            out[key] = rewrite(schema[key])
    return out


def every_dict(value: Any) -> Iterator[dict]:
    """Every object in the JSON `value`, itself included, walked without recursion (a schema's
    depth is bounded, but not by Python's stack)."""
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            yield item
            stack += item.values()
        elif isinstance(item, list):
            stack += item


def narrow_pattern_properties(schema: Any) -> Any:
    """A copy of `schema` in which every object with more than one patternProperties allows only
    its listed properties instead. Each answer it allows is one the schema allows (a key no
    pattern matches was free to be absent); required keys only a pattern covers make it refused."""
    out = each_subschema(schema, narrow_pattern_properties)
    patterns = schema.get("patternProperties") if isinstance(schema, dict) else None
    if isinstance(patterns, dict) and len(patterns) > 1:
        del out["patternProperties"]
        out["additionalProperties"] = False
    return out


def always_valid(schema: Any) -> bool:
    """`true`, or a schema of annotations only."""
    return schema is True or (isinstance(schema, dict) and schema.keys() <= ANNOTATIONS)


def unsatisfiable(schema: Any) -> str | None:
    """Why no value at all can match `schema`, for the cases that are certain from its shape (a
    refusal up front instead of an answer that can only come back flagged), or None."""
    if schema is False:
        return "it is false"
    if not isinstance(schema, dict):
        return None
    if schema.get("enum") == []:
        return "its enum is empty"
    if "not" in schema and always_valid(schema["not"]):
        return "its not excludes every value"
    for i, sub in enumerate(schema.get("allOf") or []):
        if (why := unsatisfiable(sub)) is not None:
            return f"allOf[{i}]: {why}"
    branches = schema.get("anyOf")
    if isinstance(branches, list) and branches and all(unsatisfiable(b) is not None for b in branches):
        return "no branch of its anyOf can be met"
    branches = schema.get("oneOf")
    if isinstance(branches, list) and branches:
        if all(unsatisfiable(b) is not None for b in branches):
            return "no branch of its oneOf can be met"
        if sum(always_valid(b) for b in branches) >= 2:
            return "two branches of its oneOf accept every value, so no value matches exactly one"
    return None


def narrow_for_decoding(schema: Any, narrowing: bool = True) -> tuple[Any, tuple[str, ...]]:
    """The copy of `schema` llguidance decodes with (see the module's docstring), and the notices
    for the narrowings made (the propertyNames rewrite is exact and needs none)."""
    said: set[str] | None = set() if narrowing else None   # None: the exact rewrites only

    def walk(node: Any) -> Any:
        out = each_subschema(node, walk)
        if not isinstance(node, dict):
            return out
        if "propertyNames" in node:
            out = _property_names(out)
        out = _nothing_evaluated(out)
        if "if" in node:
            out = _conditional(out, said)
        if "not" in node:
            out = _not_types(out, said)
        if isinstance(node.get("oneOf"), list) and node["oneOf"]:
            out = _one_of_types(out, said)
        return out

    if not _references_survive(schema):
        return schema, ()
    narrowed = walk(schema)
    return narrowed, tuple(n for n in (NARROWED_CONDITIONAL, NARROWED_NOT, NARROWED_ONE_OF) if n in (said or ()))


_SAFE_REF = regex.compile(r"^#(/(\$defs|definitions)/[^/]+)?$")


def _references_survive(schema: Any) -> bool:
    """Whether every reference of `schema` still finds its target in a rewritten copy: $refs to
    the root or to a whole $defs entry only (a rewrite may move or drop the `if` or `not` a
    pointer or an $id-based reference names), and no $dynamicRef."""
    return not any("$dynamicRef" in node or _unsafe_ref(node.get("$ref")) for node in every_dict(schema))


def _unsafe_ref(ref: Any) -> bool:
    return ref is not None and not (isinstance(ref, str) and _SAFE_REF.match(ref))


def _property_names(node: dict) -> dict:
    names = node["propertyNames"]
    rule = _name_pattern(names)
    extra = node.get("additionalProperties", True)
    listed = node.get("properties") or {}
    if rule is None or "patternProperties" in node or (listed and not always_valid(extra)) \
            or not all(_matches(rule, name) for name in listed):
        return node   # checked on the finished answer instead
    out = {k: v for k, v in node.items() if k != "propertyNames"}
    if rule == "":                 # propertyNames: true
        return out
    if rule == "false":            # no key is allowed (a listed property made it give up above)
        out["additionalProperties"] = False
        return out
    out["patternProperties"] = {rule: extra}
    out["additionalProperties"] = False
    return out


def _nothing_evaluated(node: dict) -> dict:
    """`unevaluatedProperties: false` (or `unevaluatedItems: false`) with no other keyword beside
    it: nothing in that schema evaluates a member, so every one is unevaluated and only an empty
    object (array) passes: `maxProperties: 0` (`maxItems: 0`), which llguidance enforces. Exact."""
    rules = node.keys() - ANNOTATIONS
    for key, bound in (("unevaluatedProperties", "maxProperties"), ("unevaluatedItems", "maxItems")):
        if rules == {key} and node[key] is False:
            return {**{k: v for k, v in node.items() if k != key}, bound: 0}
    return node


def _matches(rule: str, name: str) -> bool:
    if rule in ("", "false"):
        return rule == ""
    try:
        return regex.search(rule, name) is not None   # ECMA-262 patterns, as schema_validator reads them
    except regex.error:
        return False


def _name_pattern(names: Any) -> str | None:
    """A regex matching exactly the keys `names` (a propertyNames schema) allows: "" for all of
    them, "false" for none, None when it is not one of the shapes handled."""
    if always_valid(names):
        return ""
    if names is False:
        return "false"
    if not isinstance(names, dict):
        return None
    rules = {k: v for k, v in names.items() if k not in ANNOTATIONS and not (k == "type" and v == "string")}
    if rules.keys() == {"pattern"} and isinstance(rules["pattern"], str):
        return rules["pattern"]
    if rules.keys() and rules.keys() <= {"minLength", "maxLength"} and all(
            isinstance(v, int) and v >= 0 for v in rules.values()):
        low, high = rules.get("minLength", 0), rules.get("maxLength", "")
        return f"^[\\s\\S]{{{low},{high}}}$"
    values = [rules["const"]] if rules.keys() == {"const"} else rules.get("enum") if rules.keys() == {"enum"} else None
    if isinstance(values, list) and values and all(isinstance(v, str) for v in values):
        return "^(" + "|".join(_literal(v) for v in values) + ")$"
    return None


def _literal(text: str) -> str:
    """`text` as a regex matching exactly it, in the syntax both ECMA-262 and Rust's regex read."""
    return "".join("\\" + c if c in _META else c for c in text)


_META = set("\\.^$|?*+()[]{}/-")


def _may_narrow(said: set[str] | None, notice: str) -> bool:
    """Whether a rewrite may drop answers the schema allows (`said` is None for the exact rewrites
    only); when it may, its notice is recorded."""
    if said is not None:
        said.add(notice)
    return said is not None


def _conditional(node: dict, said: set[str] | None) -> dict:
    condition = node["if"]
    out = {k: v for k, v in node.items() if k not in ("if", "then", "else")}
    if "then" not in node and "else" not in node:
        return out                       # an if alone changes nothing
    certain = True
    if condition is False or (condition is not True and unsatisfiable(condition) is not None):
        branch = [node.get("else", True)]
    elif always_valid(condition):
        branch = [node.get("then", True)]
    else:
        branch, certain = [condition, node.get("then", True)], False
    if any(unsatisfiable(b) is not None for b in branch):
        return node                      # the other branch would need `not if`: checked on the answer
    # uncertain: the values that fail the condition are no longer offered
    if not certain and not _may_narrow(said, NARROWED_CONDITIONAL):
        return node
    branch = [b for b in branch if not always_valid(b)]
    if branch:
        out["allOf"] = list(node.get("allOf", [])) + branch
    return out


def accepts_every(schema: Any) -> set[str]:
    """The JSON types (of TYPES) all of whose values `schema` certainly accepts: those its `type`
    allows and no keyword constrains (an anyOf: what one branch accepts; an allOf: what all do);
    empty for a schema with any other keyword."""
    if always_valid(schema):
        return set(TYPES)
    if not isinstance(schema, dict):
        return set()
    result = _declared(schema)
    for key in schema.keys() - ANNOTATIONS - {"type"}:
        kinds = [kind for kind, words in TYPED_KEYWORDS.items() if key in words]
        branches = schema[key] if key in ("anyOf", "allOf") and isinstance(schema[key], list) else None
        if kinds:
            result -= set(kinds)
        elif branches and key == "anyOf":
            result &= set().union(*(accepts_every(b) for b in branches))
        elif branches:
            result &= set.intersection(*(accepts_every(b) for b in branches))
        else:
            return set()
    return result


def rejects_every(schema: Any) -> set[str]:
    """The JSON types none of whose values `schema` accepts, as its `type` says (`false`: all;
    an allOf: what one branch rejects; an anyOf: what all do); a type listing "integer" but not
    "number" rejects no number wholly."""
    if schema is False:
        return set(TYPES)
    if not isinstance(schema, dict):
        return set()
    result = set(TYPES) - _declared(schema) - ({"number"} if "integer" in _listed(schema) else set())
    if isinstance(schema.get("allOf"), list) and schema["allOf"]:
        result |= set().union(*(rejects_every(b) for b in schema["allOf"]))
    if isinstance(schema.get("anyOf"), list) and schema["anyOf"]:
        result |= set.intersection(*(rejects_every(b) for b in schema["anyOf"]))
    return result


def _listed(schema: dict) -> set[str]:
    kind = schema.get("type", TYPES)
    return {kind} if isinstance(kind, str) else set(kind)


def _declared(schema: dict) -> set[str]:
    """The types of TYPES `schema`'s `type` allows every value of."""
    return _listed(schema) & set(TYPES)


def _keep_types(node: dict, excluded: set[str]) -> dict | None:
    """`node` held to its types outside `excluded` (an excluded "number" excludes "integer" too),
    or None when none is left."""
    own = node.get("type", TYPES)
    own = [own] if isinstance(own, str) else list(own)
    allowed = [t for t in own if t not in excluded and not (t == "integer" and "number" in excluded)]
    if not allowed:
        return None
    if allowed == own:
        return node
    out = dict(node)
    out["type"] = allowed if len(allowed) > 1 else allowed[0]
    return out


def _not_types(node: dict, said: set[str] | None) -> dict:
    """A value of a type the negated schema accepts wholly never meets the `not` (exact); where the
    types it rejects wholly are left, the node keeps to them and drops the `not` (a narrowing)."""
    negated = node["not"]
    exact = _keep_types(node, accepts_every(negated))
    if exact is None:
        return node                      # nothing is left: the answer check speaks
    rejected = rejects_every(negated)
    narrowed = _keep_types(exact, set(TYPES) - rejected) if rejected else None
    if narrowed is None:
        return exact
    if narrowed is not exact and not _may_narrow(said, NARROWED_NOT):
        return exact
    return {k: v for k, v in narrowed.items() if k != "not"}


def _one_of_types(node: dict, said: set[str] | None) -> dict:
    """Per type, how many branches of the oneOf do not reject it wholly: none (no value of it can
    match) or two that accept it wholly (every value matches both) exclude it exactly; the types
    exactly one branch can take, where there are some, are then kept (a narrowing: a value of a type
    two branches could take might match both), so any answer the anyOf admits matches one branch."""
    branches = node["oneOf"]
    takers = {t: sum(t not in rejects_every(b) for b in branches) for t in TYPES}
    wholly = {t: sum(t in accepts_every(b) for b in branches) for t in TYPES}
    exact = _keep_types(node, {t for t in TYPES if takers[t] == 0 or wholly[t] >= 2})
    if exact is None:
        return node
    narrowed = _keep_types(exact, {t for t in TYPES if takers[t] >= 2})
    if narrowed is None:
        return exact
    if narrowed is not exact and not _may_narrow(said, NARROWED_ONE_OF):
        return exact
    return narrowed
