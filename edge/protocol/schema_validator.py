"""Draft 2020-12 validation that reads JSON Schema's regexes as llguidance does.

JSON Schema's ``pattern`` and ``patternProperties`` are ECMA-262 regexes, and schemas use their
Unicode property escapes (``\\p{Letter}``). llguidance (Rust's regex) enforces them; Python's
``re``, which jsonschema uses, has no ``\\p``: such a schema was refused as "not a valid JSON
schema" and an answer to it could not be checked. The ``regex`` module reads them, and reads
every pattern ``re`` reads the same way, so the keywords that search patterns use it here.
"""

from __future__ import annotations

import functools

import jsonschema
import regex
from jsonschema import _keywords

BASE = jsonschema.Draft202012Validator


@functools.lru_cache(maxsize=512)
def _compiled(pattern: str) -> regex.Pattern:
    return regex.compile(pattern)


def _search(pattern: str, text: str) -> bool:
    return _compiled(pattern).search(text) is not None


def _pattern(validator, pattern, instance, schema):
    if validator.is_type(instance, "string") and not _search(pattern, instance):
        yield jsonschema.ValidationError(f"{instance!r} does not match {pattern!r}")


def _pattern_properties(validator, pattern_properties, instance, schema):
    if not validator.is_type(instance, "object"):
        return
    for pattern, subschema in pattern_properties.items():
        for key, value in instance.items():
            if _search(pattern, key):
                yield from validator.descend(value, subschema, path=key, schema_path=pattern)


def _additional(instance: dict, schema: dict):
    """The keys neither ``properties`` nor ``patternProperties`` covers (jsonschema's rule)."""
    properties = schema.get("properties", {})
    patterns = list(schema.get("patternProperties", {}))
    return [key for key in instance if key not in properties and not any(_search(p, key) for p in patterns)]


def _additional_properties(validator, additional, instance, schema):
    if not validator.is_type(instance, "object"):
        return
    extras = _additional(instance, schema)
    if validator.is_type(additional, "object"):
        for extra in extras:
            yield from validator.descend(instance[extra], additional, path=extra)
    elif not additional and extras:
        # jsonschema's own messages, from its keyword run on the extras alone
        yield from _keywords.additionalProperties(validator, False, {k: instance[k] for k in extras},
                                                  {"properties": {}})


def _format_checker() -> jsonschema.FormatChecker:
    checker = jsonschema.FormatChecker(formats=())
    checker.checkers = dict(BASE.FORMAT_CHECKER.checkers)
    checker.checks("regex", raises=regex.error)(lambda value: not isinstance(value, str) or bool(_compiled(value)))
    return checker


FORMAT_CHECKER = _format_checker()
Validator = jsonschema.validators.extend(BASE, {
    "pattern": _pattern, "patternProperties": _pattern_properties, "additionalProperties": _additional_properties,
})


def validator_for(schema) -> jsonschema.protocols.Validator:
    """A Draft 2020-12 validator for `schema` that checks formats and reads ECMA-style regexes."""
    return Validator(schema, format_checker=FORMAT_CHECKER)


def meta_validator() -> jsonschema.protocols.Validator:
    """Draft 2020-12's meta-schema with the same regex dialect (its "regex" format)."""
    return Validator(BASE.META_SCHEMA, format_checker=FORMAT_CHECKER)
