"""Render chat templates (Jinja) the way transformers' apply_chat_template does, but safely.

A GGUF carries its own chat template, and a downloaded GGUF is untrusted input: the template is
compiled in a sandbox that refuses every ``_``-prefixed attribute by raising, has no loader (no
``include``/``import``/``extends`` of files) and cannot mutate the messages it is given.
"""

from __future__ import annotations

import json
from datetime import datetime
from importlib import resources
from typing import Any

import jinja2
import jinja2.ext
from jinja2.exceptions import SecurityError
from jinja2.sandbox import ImmutableSandboxedEnvironment

__all__ = ["QWEN3_CHAT_TEMPLATE", "ChatTemplate", "TemplateError", "compile_template"]


class TemplateError(Exception):
    """A chat template failed to compile or render (one-line message)."""


def _load_qwen3_template() -> str:
    """Read the bundled template as exact bytes, so no newline translation alters it."""
    return resources.files(__package__).joinpath("qwen3_chat_template.jinja").read_bytes().decode("utf-8")


#: Qwen3's own template (from its tokenizer_config.json), used when a GGUF carries none.
QWEN3_CHAT_TEMPLATE: str = _load_qwen3_template()


def _one_line(message: object) -> str:
    return " ".join(str(message).split())


def _raise_exception(message: str) -> None:
    """Templates call this to refuse a conversation (e.g. bad role order)."""
    raise TemplateError(_one_line(message))


def _strftime_now(format: str) -> str:  # noqa: A002 - name fixed by HF templates
    return datetime.now().strftime(format)


def _tojson(
    value: Any,
    ensure_ascii: bool = False,
    indent: int | None = None,
    separators: tuple[str, str] | None = None,
    sort_keys: bool = False,
) -> str:
    """transformers' tojson: unlike Jinja's own, it neither HTML-escapes nor sorts keys."""
    return json.dumps(
        value, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys
    )


class _StrictSandbox(ImmutableSandboxedEnvironment):
    """Sandbox where touching an internal attribute is an error, not a silent empty string."""

    def is_safe_attribute(self, obj: Any, attr: str, value: Any) -> bool:
        return not attr.startswith("_") and super().is_safe_attribute(obj, attr, value)

    def unsafe_undefined(self, obj: Any, attribute: str) -> jinja2.Undefined:
        raise SecurityError(f"access to attribute {attribute!r} of {type(obj).__name__!r} object is unsafe")


def _environment() -> jinja2.Environment:
    """The environment transformers uses for apply_chat_template, made strict."""
    env = _StrictSandbox(trim_blocks=True, lstrip_blocks=True, extensions=[jinja2.ext.loopcontrols])
    env.filters["tojson"] = _tojson
    env.globals["raise_exception"] = _raise_exception
    env.globals["strftime_now"] = _strftime_now
    return env


class ChatTemplate:
    """A compiled chat template; build it with compile_template()."""

    def __init__(self, source: str, template: jinja2.Template) -> None:
        self.source = source
        self._template = template

    def render(
        self,
        messages: list[dict],
        *,
        add_generation_prompt: bool = True,
        enable_thinking: bool = True,
        tools: list | None = None,
    ) -> str:
        """Render a conversation to the prompt text; any failure becomes a TemplateError."""
        try:
            return self._template.render(
                messages=messages,
                tools=tools,
                add_generation_prompt=add_generation_prompt,
                enable_thinking=enable_thinking,
            )
        except TemplateError:
            raise
        except RecursionError:
            raise TemplateError("chat template failed: recursion too deep") from None
        except Exception as exc:  # untrusted code: any failure is the template's fault
            raise TemplateError(f"chat template failed: {type(exc).__name__}: {_one_line(exc)}") from exc


def compile_template(source: str) -> ChatTemplate:
    """Compile (untrusted) template source in the strict sandbox; syntax errors -> TemplateError."""
    try:
        template = _environment().from_string(source)
    except jinja2.TemplateSyntaxError as exc:
        raise TemplateError(f"chat template syntax error at line {exc.lineno}: {_one_line(exc.message)}") from exc
    except jinja2.TemplateError as exc:
        raise TemplateError(f"chat template invalid: {_one_line(exc)}") from exc
    return ChatTemplate(source, template)
