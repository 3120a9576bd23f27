"""The model's kind comes from what its template renders: Qwen's hybrid template, templates that
behave like the 2507 models' (tests/fixtures/templates), and odd templates that fall back to hybrid."""

from __future__ import annotations

from pathlib import Path

import pytest

from edge.protocol.chat_template import QWEN3_CHAT_TEMPLATE, compile_template
from edge.protocol.model_kind import ModelKind, detect_kind, prompt_opens_thinking

TEMPLATES = Path(__file__).parent.parent / "fixtures" / "templates"
THINKING_2507 = (TEMPLATES / "qwen3-thinking-2507.jinja").read_text()
INSTRUCT_2507 = (TEMPLATES / "qwen3-instruct-2507.jinja").read_text()
CONVERSATION = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "2+2?"},
                {"role": "assistant", "content": "4", "reasoning_content": "Two and two."},
                {"role": "user", "content": "And 3+3?"}]


def gen_prompt_template(on: str, off: str) -> str:
    """A ChatML template whose generation prompt adds `on` or `off` after the assistant header."""
    return ("{%- for m in messages %}{{- '<|im_start|>' + m.role + '\\n' + m.content + '<|im_end|>\\n' }}{%- endfor %}"
            "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}"
            "{%- if enable_thinking is defined and enable_thinking is false %}{{- " + repr(off) + " }}"
            "{%- else %}{{- " + repr(on) + " }}{%- endif %}{%- endif %}")


def kind_of(source: str) -> ModelKind:
    return detect_kind(compile_template(source))


def test_the_three_kinds():
    assert kind_of(QWEN3_CHAT_TEMPLATE) is ModelKind.HYBRID
    assert kind_of(THINKING_2507) is ModelKind.THINKING
    assert kind_of(INSTRUCT_2507) is ModelKind.NON_THINKING
    assert [k.value for k in ModelKind] == ["hybrid", "thinking-only", "non-thinking-only"]


@pytest.mark.parametrize("on, off, kind", [
    ("", "<think>\n\n</think>\n\n", ModelKind.HYBRID),                       # Qwen3's
    ("<think>\n", "<think>\n\n</think>\n\n", ModelKind.HYBRID),              # hybrid that opens thinking
    ("<think>\n", "<think>\n", ModelKind.THINKING),
    ("", "", ModelKind.NON_THINKING),
    ("<thinking>\n", "<thinking>\n", ModelKind.NON_THINKING),                # not Qwen's markup
    ("<think>\n\n</think>\n\n", "<think>\n\n</think>\n\n", ModelKind.NON_THINKING),  # always the empty block
])
def test_kinds_from_generation_prompts(on, off, kind):
    assert kind_of(gen_prompt_template(on, off)) is kind


@pytest.mark.parametrize("on, off", [
    ("<think>", "<think>"),                          # opens <think> without its newline
    ("<think>\nLet me", "<think>\nLet me"),          # prefilled thinking
    ("<think>\n\n</think>\n\n", ""),                 # empty block only when thinking is on
    ("", "<think>\n"),                               # opens thinking only when it is off
])
def test_odd_generation_prompts_fall_back_to_hybrid(on, off):
    assert kind_of(gen_prompt_template(on, off)) is ModelKind.HYBRID


@pytest.mark.parametrize("source", [
    "{{ raise_exception('this template refuses everything') }}",
    "{{ messages[5].content }}",                       # fails on the one-message probe
    "{%- if enable_thinking is false %}{{ raise_exception('no') }}{% endif %}<think>\n",
])
def test_template_that_fails_on_the_probe_is_hybrid(source):
    assert kind_of(source) is ModelKind.HYBRID


def render(source: str, messages: list[dict], thinking: bool = True) -> str:
    return compile_template(source).render(messages, add_generation_prompt=True, enable_thinking=thinking)


def test_prompt_opens_thinking_on_rendered_prompts():
    assert prompt_opens_thinking(render(THINKING_2507, CONVERSATION))
    assert prompt_opens_thinking(render(THINKING_2507, CONVERSATION, thinking=False))
    assert not prompt_opens_thinking(render(QWEN3_CHAT_TEMPLATE, CONVERSATION))
    assert not prompt_opens_thinking(render(QWEN3_CHAT_TEMPLATE, CONVERSATION, thinking=False))
    assert not prompt_opens_thinking(render(INSTRUCT_2507, CONVERSATION))


def test_prompt_opens_thinking_ignores_think_tags_before_the_assistant_header():
    quoted = [{"role": "user", "content": "What does <think> mean?"}]
    assert not prompt_opens_thinking(render(QWEN3_CHAT_TEMPLATE, quoted))
    # a closed think block in history, a new prompt that opens none
    assert not prompt_opens_thinking("<|im_start|>assistant\n<think>\nx\n</think>\n\nok<|im_end|>\n"
                                     "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n")
    assert not prompt_opens_thinking("<|im_start|>user\n<think><|im_end|>\n<|im_start|>assistant\n")
    assert prompt_opens_thinking("<|im_start|>user\n</think><|im_end|>\n<|im_start|>assistant\n<think>\n")
    assert prompt_opens_thinking("<|im_start|>assistant\n<think>")
    assert not prompt_opens_thinking("")
