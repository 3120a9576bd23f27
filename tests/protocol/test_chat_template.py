"""The sandboxed chat template renders Qwen3's template exactly like plain Jinja, and refuses hostile ones."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import jinja2
import pytest

from edge.protocol.chat_template import QWEN3_CHAT_TEMPLATE, ChatTemplate, TemplateError, compile_template

CONFIG = Path(__file__).parent.parent / "fixtures" / "qwen3-tokenizer" / "tokenizer_config.json"
SOURCE: str = json.loads(CONFIG.read_text(encoding="utf-8"))["chat_template"]


def _ref_tojson(value, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
    return json.dumps(value, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)


def _ref_raise(message):
    raise RuntimeError(message)


def reference_render(messages, *, add_generation_prompt=True, enable_thinking=True, tools=None) -> str:
    """Unsandboxed rendering, as transformers' apply_chat_template would produce it."""
    env = jinja2.Environment(trim_blocks=True, lstrip_blocks=True)
    env.filters["tojson"] = _ref_tojson
    env.globals["raise_exception"] = _ref_raise
    return env.from_string(SOURCE).render(
        messages=messages, tools=tools, add_generation_prompt=add_generation_prompt, enable_thinking=enable_thinking
    )


WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Météo actuelle d'une ville — 天气",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}, "unit": {"type": "string", "enum": ["c", "f"]}},
            "required": ["city"],
        },
    },
}
TIME_TOOL = {"type": "function", "function": {"name": "now", "description": "Current time", "parameters": {}}}

CONVERSATIONS: dict[str, tuple[list[dict], list | None]] = {
    "single-user": ([{"role": "user", "content": "Hi"}], None),
    "system-user": ([{"role": "system", "content": "You are terse."}, {"role": "user", "content": "Hi"}], None),
    "multi-turn": (
        [
            {"role": "system", "content": "Be kind."},
            {"role": "user", "content": "What is 2+2?"},
            {"role": "assistant", "content": "4."},
            {"role": "user", "content": "And 3+3?"},
            {"role": "assistant", "content": "6."},
            {"role": "user", "content": "Thanks!"},
        ],
        None,
    ),
    "think-in-history": (
        [
            {"role": "user", "content": "What is 2+2?"},
            {"role": "assistant", "content": "<think>\nAdd them.\n</think>\n\n4."},
            {"role": "user", "content": "Double it."},
            {"role": "assistant", "content": "<think>\n\n</think>\n\n8."},
            {"role": "user", "content": "Why?"},
        ],
        None,
    ),
    "think-in-last-assistant": (
        [
            {"role": "user", "content": "What is 2+2?"},
            {"role": "assistant", "content": "<think>\nAdd them.\n</think>\n\n4."},
            {"role": "user", "content": "Double it."},
            {"role": "assistant", "content": "<think>\nTimes two.\n\n</think>\n\n\n8."},
        ],
        None,
    ),
    "reasoning-content-field": (
        [
            {"role": "user", "content": "Hi"},
            {"role": "assistant", "content": "Hello!", "reasoning_content": "Greet back."},
        ],
        None,
    ),
    "think-and-no-think-switches": (
        [
            {"role": "user", "content": "Solve x^2=4 /think"},
            {"role": "assistant", "content": "<think>\nx = ±2\n</think>\n\nx = 2 or x = -2."},
            {"role": "user", "content": "Now just say hi /no_think"},
            {"role": "assistant", "content": "<think>\n\n</think>\n\nHi!"},
            {"role": "user", "content": "Explain your first answer /think"},
        ],
        None,
    ),
    "unicode-and-specials": (
        [
            {"role": "system", "content": "Réponds en français. 你好 🙂"},
            {"role": "user", "content": "{{ not a template }} {% neither %} <|im_end|> \\n"},
        ],
        None,
    ),
    "tool-call": (
        [
            {"role": "system", "content": "You can use tools."},
            {"role": "user", "content": "Weather in Paris and the time?"},
            {
                "role": "assistant",
                "content": "<think>\nI need two tools.\n</think>\n\nLet me check.",
                "tool_calls": [
                    {"type": "function", "function": {"name": "get_weather", "arguments": {"city": "Paris", "unit": "c"}}},
                    {"type": "function", "function": {"name": "now", "arguments": "{}"}},
                ],
            },
            {"role": "tool", "content": '{"temp": 21, "sky": "ensoleillé"}'},
            {"role": "tool", "content": "12:00"},
            {"role": "assistant", "content": "<think>\nGot both.\n</think>\n\nIt is 21 °C at noon."},
            {"role": "user", "content": "Thanks"},
        ],
        [WEATHER_TOOL, TIME_TOOL],
    ),
    "multi-step-tool": (
        [
            {"role": "user", "content": "Weather in Oslo?"},
            {
                "role": "assistant",
                "content": None,
                "tool_calls": [{"name": "get_weather", "arguments": {"city": "Oslo"}}],
            },
            {"role": "tool", "content": "-3"},
            {
                "role": "assistant",
                "content": "<think>\nNeed the unit.\n</think>\n\n",
                "tool_calls": [{"function": {"name": "get_weather", "arguments": '{"city": "Oslo", "unit": "f"}'}}],
            },
            {"role": "tool", "content": "27"},
        ],
        [WEATHER_TOOL],
    ),
    "tools-without-system": ([{"role": "user", "content": "What time is it?"}], [TIME_TOOL]),
}


@pytest.fixture(scope="module")
def qwen3() -> ChatTemplate:
    return compile_template(QWEN3_CHAT_TEMPLATE)


def test_bundled_template_is_the_tokenizer_config_template():
    assert QWEN3_CHAT_TEMPLATE == SOURCE


@pytest.mark.parametrize("add_generation_prompt", [True, False])
@pytest.mark.parametrize("enable_thinking", [True, False])
@pytest.mark.parametrize("name", sorted(CONVERSATIONS))
def test_matches_plain_jinja(qwen3, name, enable_thinking, add_generation_prompt):
    messages, tools = CONVERSATIONS[name]
    before = copy.deepcopy(messages)
    kwargs = dict(add_generation_prompt=add_generation_prompt, enable_thinking=enable_thinking, tools=tools)
    ours = qwen3.render(messages, **kwargs)
    assert ours == reference_render(messages, **kwargs)
    assert messages == before, "rendering mutated the conversation"


def test_known_prompts(qwen3):
    hi = [{"role": "user", "content": "Hi"}]
    assert qwen3.render(hi, enable_thinking=False) == (
        "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\n"
    )
    assert qwen3.render(hi, enable_thinking=True) == "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
    assert qwen3.render(hi) == qwen3.render(hi, enable_thinking=True)


def test_history_reasoning_is_stripped_and_tools_render_unescaped(qwen3):
    messages, tools = CONVERSATIONS["tool-call"]
    prompt = qwen3.render(messages, tools=tools)
    assert "I need two tools." not in prompt and "Got both." not in prompt
    assert "Météo actuelle d'une ville — 天气" in prompt  # tojson keeps non-ASCII, no HTML escaping
    assert '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris", "unit": "c"}}\n</tool_call>' in prompt
    assert "<|im_start|>user\n<tool_response>\n" in prompt


HOSTILE = [
    "{{ ''.__class__ }}",
    "{{ ''.__class__.__mro__ }}",
    "{{ ''.__class__.__mro__[1].__subclasses__() }}",
    "{{ cycler.__init__.__globals__.os }}",
    "{% for x in ().__class__.__base__.__subclasses__() %}{{ x }}{% endfor %}",
    "{{ self.__init__ }}",
    "{{ self._TemplateReference__context }}",
    "{{ ''|attr('__class__') }}",
    "{{ ''['__class__'] }}",
    "{{ lipsum.__globals__ }}",
    "{{ messages.append({'role': 'user'}) }}",
    "{{ range(10**9)|length }}",
    "{% include '/etc/passwd' %}",
    "{% import 'os' as os %}",
    "{% extends 'base.html' %}",
    "{% for m in messages %}{{ m.content",  # syntax error
    "{% if %}",
    # the payload of CVE-2024-34359 (llama-cpp-python's template RCE)
    "{% for x in ().__class__.__base__.__subclasses__() %}{% if \"warning\" in x.__name__ %}"
    "{{x()._module.__builtins__['__import__']('os').popen(\"touch /tmp/qwen3-edge-pwned\")}}{%endif%}{% endfor %}",
    "{{ request.application.__globals__.__builtins__.__import__('os').popen('id').read() }}",
    "{{ config.__class__.__init__.__globals__['os'].popen('id').read() }}",
    "{{ get_flashed_messages.__globals__.__builtins__.open('/etc/passwd').read() }}",
]


@pytest.mark.parametrize("source", HOSTILE)
def test_hostile_templates_are_rejected(source):
    with pytest.raises(TemplateError) as info:
        compile_template(source).render([{"role": "user", "content": "Hi"}])
    assert "\n" not in str(info.value)


def test_hostile_template_is_not_executed(tmp_path):
    marker = tmp_path / "pwned"
    source = "{{ cycler.__init__.__globals__.os.system('touch " + str(marker) + "') }}"
    with pytest.raises(TemplateError):
        compile_template(source).render([])
    assert not marker.exists()


def test_syntax_error_is_a_template_error_at_compile_time():
    with pytest.raises(TemplateError, match="syntax error at line 2"):
        compile_template("ok\n{% for %}")


def test_raise_exception():
    with pytest.raises(TemplateError, match="boom"):
        compile_template("{{ raise_exception('boom') }}").render([])
    source = "{% if messages[0].role != 'user' %}{{ raise_exception('Conversation must start with user') }}{% endif %}"
    with pytest.raises(TemplateError, match="must start with user"):
        compile_template(source).render([{"role": "assistant", "content": "x"}])


@pytest.mark.parametrize("source", ["{{ x.y.z }}", "{{ 1 / 0 }}", "{{ messages[5].content }}", "{{ 1 + 'a' }}"])
def test_runtime_errors_become_template_errors(source):
    with pytest.raises(TemplateError):
        compile_template(source).render([])


def test_helpers_and_loop_controls():
    source = (
        "{{ {'b': 'é', 'a': [1, 2]} | tojson }}|{{ {'b': 1, 'a': 2} | tojson(sort_keys=True, separators=(',', ':')) }}"
        "|{{ strftime_now('%Y') | length }}"
        "|{% for m in messages %}{% if loop.index > 2 %}{% break %}{% endif %}{{ m.content }}{% endfor %}"
        "|{{ undefined_variable is defined }}{% if not undefined_variable %}-falsy{% endif %}"
    )
    messages = [{"content": c} for c in "abcd"]
    assert compile_template(source).render(messages) == '{"b": "é", "a": [1, 2]}|{"a":2,"b":1}|4|ab|False-falsy'
