"""Which of the three small-Qwen3 kinds a model is, decided from what its chat template renders.

Never from a name: a renamed or fine-tuned GGUF keeps its template, and the template is what the
model was trained to follow. A probe conversation (one user message) is rendered with the
generation prompt, once with enable_thinking True and once False, and the text the generation
prompt adds is classified:

- "open": it ends with ``<think>\\n`` (the prompt leaves the model inside its thinking);
- "closed": it ends with the empty think block ``<think>\\n\\n</think>\\n\\n``;
- "none": it holds no think markup at all;
- anything else is "odd".

(True, False) -> kind:
- hybrid (Qwen3 of April 2025): (none, closed), or (open, closed) for a hybrid template that opens
  the thinking itself;
- thinking-only (Thinking-2507): (open, open), the thinking opened whatever enable_thinking says;
- non-thinking-only (Instruct-2507): (none, none), or (closed, closed) for a template that always
  writes the empty block.

Fallback: a template that fails on the probe, or renders any other combination (e.g. opens
``<think>`` without its newline, or writes the empty block only when thinking is on), is HYBRID.
That is how qwen3-edge treated every model before kinds existed: no mode is refused and no notice
is shown, enable_thinking goes to the template, and the output is parsed as it comes (a
``<think>`` the model writes starts thinking; everything else is answer). NON_THINKING would
refuse /think and auto mode on a model that may well think, on the strength of a template we
could not read.
"""

from __future__ import annotations

from enum import Enum

from edge.protocol.chat_template import ChatTemplate, TemplateError

OPEN_THINK = "<think>\n"
EMPTY_THINK = "<think>\n\n</think>\n\n"
ASSISTANT_HEADER = "<|im_start|>assistant"
PROBE = [{"role": "user", "content": "Hello"}]


class ModelKind(str, Enum):
    HYBRID = "hybrid"
    THINKING = "thinking-only"
    NON_THINKING = "non-thinking-only"


def prompt_opens_thinking(prompt: str) -> bool:
    """Whether a rendered prompt ends inside an open think block: its last ``<think>`` comes
    after its last ``</think>`` and after the last assistant header (so a ``<think>`` quoted in a
    user message, or a closed block in history, does not count)."""
    last_open = prompt.rfind("<think>")
    return last_open >= 0 and last_open > prompt.rfind("</think>") and last_open > prompt.rfind(ASSISTANT_HEADER)


def generation_prompt(template: ChatTemplate, enable_thinking: bool) -> str:
    """The text the generation prompt adds after the probe conversation (TemplateError if the
    template fails). When the rendering without it is not a prefix, from the last assistant header."""
    full = template.render(PROBE, add_generation_prompt=True, enable_thinking=enable_thinking)
    base = template.render(PROBE, add_generation_prompt=False, enable_thinking=enable_thinking)
    if full.startswith(base):
        return full[len(base):]
    return full[max(full.rfind(ASSISTANT_HEADER), 0):]


def classify(gen: str) -> str:
    """"open", "closed", "none" or "odd" (see the module docstring)."""
    if gen.endswith(OPEN_THINK) and prompt_opens_thinking(gen):
        return "open"
    if gen.endswith(EMPTY_THINK) and gen.count("<think>") == 1 and gen.count("</think>") == 1:
        return "closed"
    if "<think>" not in gen and "</think>" not in gen:
        return "none"
    return "odd"


_KINDS = {("none", "closed"): ModelKind.HYBRID, ("open", "closed"): ModelKind.HYBRID,
          ("open", "open"): ModelKind.THINKING,
          ("none", "none"): ModelKind.NON_THINKING, ("closed", "closed"): ModelKind.NON_THINKING}


def detect_kind(template: ChatTemplate) -> ModelKind:
    """The model's kind from its template; HYBRID when the template cannot tell (module docstring)."""
    try:
        states = (classify(generation_prompt(template, True)), classify(generation_prompt(template, False)))
    except TemplateError:
        return ModelKind.HYBRID
    return _KINDS.get(states, ModelKind.HYBRID)
