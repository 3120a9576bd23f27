"""OpenAI chat-completions requests and responses, as plain functions (no web framework here).

Requests are checked into a ChatRequest, the neutral request every API dialect maps to
(completion.py runs it); replies become OpenAI objects, with the thinking in `reasoning_content`
(as DeepSeek, vLLM and llama-server do) and thinking tokens counted in
`usage.completion_tokens_details.reasoning_tokens`.

A body is read strictly (`decode_body`): UTF-8 JSON with finite numbers, unique keys, at most
MAX_JSON_DEPTH levels, and strings that are text (no lone UTF-16 surrogate, no NUL). Then the
rule the best servers follow: every field whose meaning is known is honoured (and a malformed
value of one is a 400 naming it), every other field and message key is accepted and ignored, and
the request says what it ignored (`ChatRequest.ignored`, the server's X-Ignored-Fields header):
a client cannot be changed by its user, so a refusal means the app does not work at all.
"""

from __future__ import annotations

import json
import math
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

from edge.chat import ChatError, Message, Reply
from edge.protocol.grammar import GrammarError, plan_constraints
from edge.protocol.modes import Mode, soft_switch
from edge.protocol.stop_strings import StopCutter
from edge.protocol.text_check import text_problem
from edge.protocol.tool_calls import ToolCall

ROLES = ("system", "developer", "user", "assistant", "tool")
MAX_JSON_DEPTH = 64     # a tool schema may nest 24 levels (grammar.MAX_SCHEMA_DEPTH): ~55 JSON levels
MAX_INT_DIGITS = 40     # beyond any field's range (seed is int64), and far below Python's 4300-digit limit
SEED_RANGE = (-(1 << 63), (1 << 63) - 1)   # OpenAI's seed is an int64
MAX_CHOICES = 16        # n
MAX_TOP_LOGPROBS = 20   # OpenAI's bound

# Known, type-checked, and with no effect on the reply (nothing for them to do on one machine).
IGNORED = {"user": str, "metadata": dict, "store": bool, "service_tier": str, "prompt_cache_key": str,
           "prompt_cache_retention": str, "prompt_cache_options": dict, "safety_identifier": str,
           "prediction": dict, "cache_prompt": bool, "verbosity": str, "web_search_options": dict,
           "moderation": dict}
TYPE_NAMES = {str: "a string", dict: "an object", bool: "true or false"}
# Known, but asking for what a text-only model cannot give: refused (accepting them would serve
# something other than what was asked for).
REFUSED_UNLESS_NEUTRAL = {"modalities": (["text"],), "audio": (), "functions": (), "function_call": ()}
REFUSED_WHY = {"modalities": 'the model is text-only (modalities ["text"])',
               "audio": "the model is text-only: audio output is not available",
               "functions": "functions is deprecated: send tools",
               "function_call": "function_call is deprecated: send tool_choice"}
HONOURED = {"messages", "model", "max_tokens", "max_completion_tokens", "temperature", "top_p", "presence_penalty",
            "frequency_penalty", "repeat_penalty", "repetition_penalty", "logit_bias", "n", "logprobs",
            "top_logprobs", "ignore_eos", "seed", "stop", "stream", "stream_options", "tools", "tool_choice",
            "parallel_tool_calls", "response_format", "reasoning_effort", "chat_template_kwargs", "enable_thinking",
            "thinking_budget", "reasoning", "thinking", "top_k", "min_p"}
KNOWN = HONOURED | set(IGNORED) | set(REFUSED_UNLESS_NEUTRAL)
REASONING_EFFORTS = {"none": False, "minimal": False, "low": True, "medium": True, "high": True, "xhigh": True}
MESSAGE_KEYS = {"role", "content", "name", "tool_calls", "tool_call_id", "reasoning_content", "reasoning",
                "reasoning_details", "refusal", "annotations", "audio", "function_call", "notices"}
MEDIA_PARTS = ("image_url", "image", "input_image", "input_audio", "audio", "file", "video_url", "video")


class RequestError(ChatError):
    """A bad request: a 4xx with an OpenAI error object from the server, a ChatError in the library."""

    def __init__(self, message: str, param: str | None = None, status: int = 400):
        super().__init__(message)
        self.message, self.param, self.status = message, param, status


@dataclass
class ChatRequest:
    """The neutral request: what every API dialect (OpenAI chat, completions, Anthropic, Ollama)
    is checked into, and the one thing completion.py turns into Chat turns."""
    system: str | None
    history: list[Message]
    user: str | None          # None: the conversation ends with tool results (or is only a system prompt)
    mode: Mode
    budget: int | str | None   # tokens, or "auto"
    max_tokens: int | None
    sampling: dict[str, Any]   # SamplingParams overrides: temperature, top_p, ..., penalties, logit_bias
    presence_penalty: float
    seed: int | None
    stop: list[str]
    stream: bool
    include_usage: bool
    model: str = ""
    tools: list[dict] | None = None
    tool_choice: Any = "auto"
    parallel_tool_calls: bool = True
    response_format: Any = None
    extra: dict[str, Any] = field(default_factory=dict)
    n: int = 1
    logprobs: bool = False
    top_logprobs: int = 0
    ignore_eos: bool = False
    prefill: Message | None = None     # a last assistant message: the reply continues it
    hide_reasoning: bool = False       # OpenRouter's reasoning.exclude: think, but do not return it
    raw_prompt: str | None = None      # a text completion: this text is the whole prompt, no template
    ignored: list[str] = field(default_factory=list)   # fields accepted and ignored, for the caller to see

    def turn_options(self) -> dict[str, Any]:
        """The keyword arguments of Chat.stream for this request."""
        return {"tools": self.tools or [], "tool_choice": self.tool_choice, "response_format": self.response_format,
                "parallel_tool_calls": self.parallel_tool_calls}
def error_body(message: str, param: str | None = None, kind: str = "invalid_request_error",
               code: str | None = None) -> dict[str, Any]:
    """OpenAI's error object; text that cannot be UTF-8 (a surrogate echoed from the request) is
    backslash-escaped so the error itself can always be sent."""
    safe = lambda t: t if t is None else t.encode("utf-8", "backslashreplace").decode("utf-8")  # noqa: E731
    return {"error": {"message": safe(message), "type": kind, "param": safe(param), "code": code}}


# ---- strict JSON ------------------------------------------------------------------------------
class _Invalid:
    """Left in the decoded tree where a value is refused, so the walk can name its field."""

    def __init__(self, why: str):
        self.why = why


class _Duplicated(dict):
    """An object that gave a key twice: taking either value would silently drop the other."""

    def __init__(self, pairs: list[tuple[str, Any]], key: str):
        super().__init__(pairs)
        self.key = key


def _non_finite(name: str) -> _Invalid:
    return _Invalid(f"is {name}, which is not a JSON number (numbers must be finite)")


def _finite_float(text: str) -> float | _Invalid:
    value = float(text)
    return value if math.isfinite(value) else _Invalid(f"is {text[:32]}, beyond the range of a double")  # 1e400


def _bounded_int(text: str) -> int | _Invalid:
    digits = len(text.lstrip("-"))
    return int(text) if digits <= MAX_INT_DIGITS else _Invalid(
        f"is an integer of {digits} digits; at most {MAX_INT_DIGITS} are accepted")


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    seen: set[str] = set()
    for key, _ in pairs:
        if key in seen:
            return _Duplicated(pairs, key)
        seen.add(key)
    return dict(pairs)


def _join(path: str | None, key: str | int) -> str:
    if isinstance(key, int):
        return f"{path or ''}[{key}]"
    return f"{path}.{key}" if path else key


def _check_tree(value: Any, root: str | None) -> None:
    """Nesting depth, refused numbers, duplicate keys and strings (values and keys) of decoded
    JSON, walked without recursion; the error names the field."""
    stack = [(value, root, 1)]
    while stack:
        node, path, depth = stack.pop()
        where = path or "the body"
        if isinstance(node, str):
            if (problem := text_problem(node)) is not None:
                raise RequestError(f"{where} {problem}", path)
        elif isinstance(node, _Invalid):
            raise RequestError(f"{where} {node.why}", path)
        elif isinstance(node, (dict, list)):
            if depth > MAX_JSON_DEPTH:
                raise RequestError(f"the JSON nests deeper than {MAX_JSON_DEPTH} levels (at {path})", root)
            if isinstance(node, _Duplicated):
                raise RequestError(f"{where} gives the key {node.key!r} twice", _join(path, node.key))
            for key, child in (node.items() if isinstance(node, dict) else enumerate(node)):
                if isinstance(key, str) and (problem := text_problem(key)) is not None:
                    raise RequestError(f"a key in {where} {problem}", path)
                stack.append((child, _join(path, key), depth + 1))


def loads_strict(text: str, where: str | None = None) -> Any:
    """JSON as the API takes it: no NaN/Infinity or out-of-range numbers, unique keys, at most
    MAX_JSON_DEPTH levels, strings that are text. `where` names a JSON string inside the body."""
    try:
        value = json.loads(text, parse_constant=_non_finite, parse_float=_finite_float, parse_int=_bounded_int,
                           object_pairs_hook=_unique_keys)
    except RecursionError:  # Python's parser recurses per level: far deeper than MAX_JSON_DEPTH
        raise RequestError(f"the JSON nests deeper than {MAX_JSON_DEPTH} levels", where) from None
    except json.JSONDecodeError as e:
        raise RequestError(f"{where + ' is not JSON' if where else 'malformed JSON'}: {e}", where) from None
    _check_tree(value, where)
    return value


def decode_body(raw: bytes) -> Any:
    """The request body: UTF-8 (RFC 8259; a leading BOM, which it lets a reader ignore, is
    ignored), then strict JSON. An empty body is null (refused by parse_request)."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise RequestError(f"the body is not UTF-8 (byte 0x{raw[e.start]:02x} at offset {e.start}); "
                           f"JSON must be sent as UTF-8") from None
    return loads_strict(text.removeprefix("\ufeff") or "null")


# ---- fields -----------------------------------------------------------------------------------
def _text(content: Any, where: str, nullable: bool = False) -> str:
    """A message's content: a string, or a list of {"type": "text", "text": ...} parts (or null, for an
    assistant message that only called tools). Image, audio and file parts are refused in one line
    (the models are text-only); other part types that carry no text are skipped."""
    if content is None and nullable:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list) and all(isinstance(p, dict) for p in content):
        texts = []
        for j, p in enumerate(content):
            kind = p.get("type")
            if kind in MEDIA_PARTS:
                raise RequestError(f"{where}.content[{j}] is a {kind} part: the model is text-only",
                                   f"{where}.content[{j}]")
            if kind in ("text", "input_text", None) and "text" in p:
                if not isinstance(p["text"], str):
                    raise RequestError(f"{where}.content[{j}].text must be a string", f"{where}.content[{j}].text")
                texts.append(p["text"])
            elif kind in ("text", "input_text"):
                raise RequestError(f"{where}.content[{j}] is a text part without text", f"{where}.content[{j}]")
        return "".join(texts)
    raise RequestError(f"{where}.content must be a string or a list of text parts", f"{where}.content")


def _range(low: float | None, high: float | None) -> str:
    if low is not None and high is not None:
        return f"between {low} and {high}"
    return f"at least {low}" if low is not None else f"at most {high}"


def _number(body: dict, key: str, kind: type, low: float | None = None, high: float | None = None,
            where: str | None = None):
    """body[key] as an int or a finite float within [low, high]; None when absent or null."""
    value, where = body.get(key), where or key
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or (kind is int and not isinstance(value, int)):
        raise RequestError(f"{where} must be a{'n integer' if kind is int else ' number'}", where)
    if isinstance(value, float) and not math.isfinite(value):  # NaN passes every comparison below
        raise RequestError(f"{where} must be a finite number", where)
    if (low is not None and value < low) or (high is not None and value > high):
        raise RequestError(f"{where} must be {_range(low, high)}, got {value}", where)
    return float(value) if kind is float else value


def _bool(body: dict, key: str, default: bool | None, where: str | None = None) -> bool | None:
    value = body.get(key)
    if value is None:
        return default
    if not isinstance(value, bool):  # "stream": "yes" is not true
        raise RequestError(f"{where or key} must be true or false", where or key)
    return value


def _object(body: dict, key: str, where: str | None = None) -> dict:
    value, where = body.get(key), where or key
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise RequestError(f"{where} must be an object", where)
    return value


def _flags(body: dict, key: str, allowed: tuple[str, ...], ignored: list[str]) -> dict:
    """An object of known boolean flags (chat_template_kwargs, stream_options); other keys ignored."""
    value = _object(body, key)
    for k in value:
        if k in allowed:
            _bool(value, k, False, f"{key}.{k}")
        else:
            ignored.append(f"{key}.{k}")
    return value


def _same(a: Any, b: Any) -> bool:
    """Equal and of the same JSON type (in Python 1 == True and 0 == False)."""
    if isinstance(a, bool) or isinstance(b, bool):
        return a is b
    if isinstance(a, (int, float)) and isinstance(b, (int, float)):
        return a == b
    return type(a) is type(b) and a == b


def _check_fields(body: dict) -> list[str]:
    """Known ignored fields type-checked, those a text-only model cannot honour refused; the
    unknown ones returned, to be reported."""
    unknown = []
    for key, value in body.items():
        if key not in KNOWN:
            unknown.append(key)
            continue
        if value is None:
            continue
        if key in IGNORED and not isinstance(value, IGNORED[key]):
            raise RequestError(f"{key} must be {TYPE_NAMES[IGNORED[key]]}", key)
        if key in REFUSED_UNLESS_NEUTRAL and not any(_same(value, v) for v in REFUSED_UNLESS_NEUTRAL[key]):
            shown = json.dumps(value)[:60]
            raise RequestError(f"{REFUSED_WHY[key]}; got {key}={shown}", key)
    return unknown


def _tool_calls(m: dict, where: str) -> tuple[ToolCall, ...]:
    """An assistant message's tool_calls, as the openai client sends them back."""
    calls = m.get("tool_calls")
    calls = [] if calls is None else calls  # "" is not "no calls"
    if not isinstance(calls, list):
        raise RequestError(f"{where}.tool_calls must be a list", f"{where}.tool_calls")
    out = []
    for j, c in enumerate(calls):
        fn = c.get("function") if isinstance(c, dict) else None
        if not isinstance(fn, dict) or not isinstance(c.get("id"), str) or not isinstance(fn.get("name"), str):
            raise RequestError(f"{where}.tool_calls[{j}] must have an id and a function with a name",
                               f"{where}.tool_calls[{j}]")
        args = fn.get("arguments", "{}")
        args = loads_strict(args, f"{where}.tool_calls[{j}].function.arguments") if isinstance(args, str) else args
        if not isinstance(args, dict):
            raise RequestError(f"{where}.tool_calls[{j}].function.arguments must be a JSON object",
                               f"{where}.tool_calls[{j}]")
        out.append(ToolCall(c["id"], fn["name"], args))
    return tuple(out)


def _check_message_keys(m: dict, where: str, ignored: list[str]) -> None:
    for key, value in m.items():
        if key not in MESSAGE_KEYS:
            ignored.append(f"{where}.{key}")
        elif key == "audio" and value is not None:
            raise RequestError(f"{where}.audio: the model is text-only", f"{where}.audio")
        elif key == "function_call" and value is not None:
            raise RequestError(f"{where}.function_call is deprecated: send tool_calls", f"{where}.function_call")
        elif key == "name" and value is not None and not isinstance(value, str):
            raise RequestError(f"{where}.name must be a string", f"{where}.name")


def _replayed_thinking(m: dict, where: str) -> str:
    """An assistant message's reasoning as clients send it back: reasoning_content (DeepSeek, vLLM),
    reasoning (OpenRouter, Ollama); reasoning_details is OpenRouter's opaque copy, not text."""
    for key in ("reasoning_content", "reasoning"):
        value = m.get(key)
        if value is not None and not isinstance(value, str):
            raise RequestError(f"{where}.{key} must be a string", f"{where}.{key}")
        if value:
            return value
    return ""


def _conversation(messages: list, ignored: list[str]) -> tuple[list[str], list[Message]]:
    """System parts and the turns, checked: roles, content, tool results answering real calls."""
    system_parts, turns, open_calls = [], [], set()
    for i, m in enumerate(messages):
        where = f"messages[{i}]"
        role = m.get("role") if isinstance(m, dict) else None
        if role not in ROLES:
            raise RequestError(f"{where}.role must be one of {', '.join(ROLES)}, got {json.dumps(role)[:40]}",
                               f"{where}.role")
        _check_message_keys(m, where, ignored)
        if role in ("system", "developer"):  # OpenAI's newer name for the system message
            if turns:
                raise RequestError("system messages must come first", where)
            system_parts.append(_text(m.get("content"), where))
        elif role == "assistant":
            calls = _tool_calls(m, where)
            turns.append(Message("assistant", _text(m.get("content"), where, nullable=True),
                                 _replayed_thinking(m, where), calls))
            open_calls = {c.id for c in calls}
        elif role == "tool":
            call_id = m.get("tool_call_id")
            if not isinstance(call_id, str) or call_id not in open_calls:
                raise RequestError(f"{where}.tool_call_id {json.dumps(call_id)[:80]} answers no call of the "
                                   f"assistant message before it", f"{where}.tool_call_id")
            open_calls.discard(call_id)
            turns.append(Message("tool", _text(m.get("content"), where), tool_call_id=call_id))
        else:
            turns.append(Message("user", _text(m.get("content"), where)))
            open_calls = set()
    return system_parts, turns


def _thinking_switches(body: dict, ignored: list[str]) -> list[tuple[str, bool]]:
    """Every way a client says think or do not think, as (field, on): chat_template_kwargs and
    top-level enable_thinking (Qwen's template, Qwen's cloud API), reasoning_effort (OpenAI),
    reasoning {effort, enabled} (OpenRouter), thinking {type} (Anthropic)."""
    switches = []
    kwargs = _flags(body, "chat_template_kwargs", ("enable_thinking",), ignored)
    for where, value in (("chat_template_kwargs.enable_thinking", kwargs.get("enable_thinking")),
                         ("enable_thinking", _bool(body, "enable_thinking", None))):
        if value is not None:
            switches.append((where, value))
    reasoning, thinking = _object(body, "reasoning"), body.get("thinking")
    for where, effort in (("reasoning_effort", body.get("reasoning_effort")), ("reasoning.effort", reasoning.get("effort"))):
        if effort is not None:
            if not isinstance(effort, str) or effort not in REASONING_EFFORTS:
                raise RequestError(f"{where} must be one of {', '.join(REASONING_EFFORTS)}", where)
            switches.append((where, REASONING_EFFORTS[effort]))
    if (enabled := _bool(reasoning, "enabled", None, "reasoning.enabled")) is not None:
        switches.append(("reasoning.enabled", enabled))
    ignored += [f"reasoning.{k}" for k in reasoning if k not in ("effort", "enabled", "max_tokens", "exclude")]
    if isinstance(thinking, bool):  # some clients send a bare flag
        switches.append(("thinking", thinking))
    elif thinking is not None:
        thinking = _object(body, "thinking")
        kind = thinking.get("type")
        if kind not in (None, "enabled", "disabled", "adaptive"):
            raise RequestError("thinking.type must be enabled, disabled or adaptive", "thinking.type")
        if kind is not None:
            switches.append(("thinking.type", kind != "disabled"))
        ignored += [f"thinking.{k}" for k in thinking if k not in ("type", "budget_tokens")]
    return switches


def _mode(body: dict, history: list[Message], ignored: list[str]) -> Mode:
    """Qwen follows the most recent soft switch; any switch off turns thinking off, any on leaves
    the soft switches in charge; two switches that disagree are a 400 naming the second."""
    switches = _thinking_switches(body, ignored)
    for (first, a), (second, b) in zip(switches, switches[1:]):
        if a is not b:
            raise RequestError(f"{second} ({'on' if b else 'off'}) contradicts {first} ({'on' if a else 'off'})", second)
    mode = Mode.THINK
    for m in history:
        if m.role == "user" and (switch := soft_switch(m.content)) is not None:
            mode = switch
    if switches and switches[0][1] is False:
        mode = Mode.NO_THINK
    return mode


def _budget(body: dict) -> int | str | None:
    """thinking_budget (tokens or "auto"), else reasoning.max_tokens, else thinking.budget_tokens."""
    if body.get("thinking_budget") == "auto":
        return "auto"
    for value in (_number(body, "thinking_budget", int, 0, None),
                  _number(_object(body, "reasoning"), "max_tokens", int, 0, None, "reasoning.max_tokens"),
                  _number(body["thinking"], "budget_tokens", int, 0, None, "thinking.budget_tokens")
                  if isinstance(body.get("thinking"), dict) else None):
        if value is not None:
            return value
    return None


def _seed(body: dict) -> int | None:
    """llama.cpp takes a 32-bit seed and reads 0xFFFFFFFF as "pick one at random": folding the
    int64 onto 0..0xFFFFFFFE keeps every seeded request repeatable (small seeds unchanged)."""
    seed = _number(body, "seed", int, *SEED_RANGE)
    return None if seed is None else seed % 0xFFFFFFFF


def _logit_bias(body: dict) -> dict[int, float]:
    """OpenAI's {"token id": bias in -100..100}; llama-server's [[id, bias], ...] too."""
    value = body.get("logit_bias")
    if value is None:
        return {}
    pairs = value.items() if isinstance(value, dict) else value if isinstance(value, list) else None
    if pairs is None:
        raise RequestError("logit_bias must be an object of token ids to numbers", "logit_bias")
    out = {}
    for pair in pairs:
        if not (isinstance(pair, (tuple, list)) and len(pair) == 2):
            raise RequestError("logit_bias must be an object of token ids to numbers", "logit_bias")
        key, bias = pair
        token = int(key) if isinstance(key, str) and key.strip().lstrip("-").isdigit() and len(key) < 12 else key
        if isinstance(token, bool) or not isinstance(token, int) or token < 0:
            raise RequestError(f"logit_bias keys must be token ids, got {json.dumps(key)[:40]}", "logit_bias")
        out[token] = _number({"b": bias}, "b", float, -100, 100, f"logit_bias.{key}")
    return out


def _sampling(body: dict) -> dict[str, Any]:
    """The sampler overrides the request gives (SamplingParams fields)."""
    repeat = _number(body, "repetition_penalty", float, 0, 10)
    repeat = repeat if repeat is not None else _number(body, "repeat_penalty", float, 0, 10)
    if repeat is not None and repeat <= 0:
        raise RequestError("repetition_penalty must be above 0 (1 is off)", "repetition_penalty")
    bias = _logit_bias(body)
    values = (("temperature", _number(body, "temperature", float, 0, 2)),
              ("top_p", _number(body, "top_p", float, 0, 1)),
              ("top_k", _number(body, "top_k", int, 0, None)),
              ("min_p", _number(body, "min_p", float, 0, 1)),
              ("frequency_penalty", _number(body, "frequency_penalty", float, -2, 2)),
              ("repeat_penalty", repeat),
              ("logit_bias", tuple(sorted(bias.items())) if bias else None))
    return {k: v for k, v in values if v is not None}


def _turns_to_answer(turns: list[Message]) -> tuple[list[Message], str | None, Message | None]:
    """(history, user message, prefill): a last assistant message is a prefill to continue (as
    llama-server does); before it, the user message or tool results it answers, or nothing (a
    system-only request: the model speaks first)."""
    prefill = None
    if turns and turns[-1].role == "assistant":
        *turns, prefill = turns
        if prefill.tool_calls:
            raise RequestError("the last message is an assistant message with tool calls: send their "
                               "results as tool messages", "messages")
    if turns and turns[-1].role == "user":
        return turns[:-1], turns[-1].content, prefill
    return turns, None, prefill


def parse_request(body: Any, n_ctx: int | None = None) -> ChatRequest:
    """A decoded body (decode_body) checked into a ChatRequest; RequestError names the field.
    A max_tokens beyond the context is kept: the reply ends at the context's end ("length")."""
    if not isinstance(body, dict):
        raise RequestError("the request body must be a JSON object")
    ignored = _check_fields(body)
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise RequestError("messages must be a non-empty list", "messages")
    system_parts, turns = _conversation(messages, ignored)
    history, user, prefill = _turns_to_answer(turns)
    mode = _mode(body, history, ignored)  # the last message's own soft switch is the Chat's to read
    if prefill is not None:
        mode = Mode.NO_THINK  # the answer is under way: its thinking, if any, is already written
    completion_cap, cap = _number(body, "max_completion_tokens", int, 1, None), _number(body, "max_tokens", int, 1, None)
    max_tokens = completion_cap or cap  # both checked; the newer name wins when both are given
    stop = body.get("stop") or []
    stop = [stop] if isinstance(stop, str) else stop
    if not isinstance(stop, list) or not all(isinstance(s, str) and s for s in stop) or len(stop) > 16:
        raise RequestError("stop must be a string or a list of up to 16 non-empty strings", "stop")
    options = _flags(body, "stream_options", ("include_usage", "include_obfuscation", "continuous_usage_stats"),
                     ignored)
    tools, tool_choice = body.get("tools") or None, body.get("tool_choice", "auto")
    parallel, response_format = _bool(body, "parallel_tool_calls", True), body.get("response_format")
    try:
        plan_constraints(tools, tool_choice, response_format, parallel)
    except GrammarError as e:
        raise RequestError(e.message, e.param) from None
    model = body.get("model")
    if model is not None and not isinstance(model, str):
        raise RequestError("model must be a string", "model")
    top_logprobs = _number(body, "top_logprobs", int, 0, MAX_TOP_LOGPROBS) or 0
    reasoning = _object(body, "reasoning")
    return ChatRequest(
        system="\n".join(system_parts) or None, history=history, user=user, mode=mode, budget=_budget(body),
        max_tokens=max_tokens, sampling=_sampling(body),
        presence_penalty=_number(body, "presence_penalty", float, -2, 2) or 0.0, seed=_seed(body),
        stop=stop, stream=_bool(body, "stream", False), include_usage=_bool(options, "include_usage", False),
        model=model or "", tools=tools, tool_choice=tool_choice, parallel_tool_calls=parallel,
        response_format=response_format, n=_number(body, "n", int, 1, MAX_CHOICES) or 1,
        logprobs=bool(_bool(body, "logprobs", False) or top_logprobs), top_logprobs=top_logprobs,
        ignore_eos=bool(_bool(body, "ignore_eos", False)), prefill=prefill,
        hide_reasoning=bool(_bool(reasoning, "exclude", False, "reasoning.exclude")), ignored=ignored,
    )

def completion_id() -> str:
    return f"chatcmpl-{uuid.uuid4().hex[:24]}"


def finish_reason(stop_reason: str) -> str:
    return {"length": "length", "tool_calls": "tool_calls"}.get(stop_reason, "stop")


def usage(reply: Reply, more: list[Reply] = ()) -> dict[str, Any]:
    """OpenAI's usage: the prompt once, the completion tokens of every choice."""
    replies = [reply, *more]
    generated, thinking = sum(r.generated_tokens for r in replies), sum(r.thinking_tokens for r in replies)
    return {"prompt_tokens": reply.prompt_tokens, "completion_tokens": generated,
            "total_tokens": reply.prompt_tokens + generated,
            "prompt_tokens_details": {"cached_tokens": reply.prompt_tokens - reply.evaluated_tokens},
            "completion_tokens_details": {"reasoning_tokens": thinking}}


def message(reply: Reply, answer: str, hide_reasoning: bool = False) -> dict[str, Any]:
    out: dict[str, Any] = {"role": "assistant", "content": answer or (None if reply.tool_calls else "")}
    if reply.thinking and not hide_reasoning:
        out["reasoning_content"] = reply.thinking
    if reply.tool_calls:
        out["tool_calls"] = [c.to_openai() for c in reply.tool_calls]
    if reply.notices:  # what the runtime said about this turn (a mode the model cannot do, a cut)
        out["notices"] = list(reply.notices)
    return out


def completion_response(cid: str, model: str, req: ChatRequest, choices: list) -> dict[str, Any]:
    """A chat.completion object from completion.Choice objects."""
    return {"id": cid, "object": "chat.completion", "created": int(time.time()), "model": model,
            "choices": [{"index": c.index, "message": message(c.reply, c.answer, req.hide_reasoning),
                         "logprobs": {"content": c.logprobs} if c.logprobs is not None else None,
                         "finish_reason": c.finish_reason} for c in choices],
            "usage": usage(choices[0].reply, [c.reply for c in choices[1:]])}


def chunk(cid: str, model: str, delta: dict[str, Any], reason: str | None = None,
          usage_: dict[str, Any] | None = None, index: int = 0, logprobs: list[dict] | None = None) -> dict[str, Any]:
    body = {"id": cid, "object": "chat.completion.chunk", "created": int(time.time()), "model": model,
            "choices": [] if usage_ is not None else [{"index": index, "delta": delta, "finish_reason": reason}]}
    if logprobs is not None and usage_ is None:
        body["choices"][0]["logprobs"] = {"content": logprobs}
    if usage_ is not None:
        body["usage"] = usage_
    return body


class ChunkShaper:
    """completion.ChoiceEvents as chat.completion.chunk objects: the role first, reasoning_content
    and content deltas, tool calls as OpenAI streams them, a finish chunk per choice, usage last."""

    def __init__(self, cid: str, model: str, req: ChatRequest):
        self.cid, self.model, self.req = cid, model, req
        self.calls = [0] * req.n

    def start(self) -> list[dict]:
        return [chunk(self.cid, self.model, {"role": "assistant", "content": ""}, index=i) for i in range(self.req.n)]

    def feed(self, item) -> list[dict]:
        e, i = item.event, item.index
        if e.kind == "thinking" and not self.req.hide_reasoning:
            return [chunk(self.cid, self.model, {"reasoning_content": e.text}, index=i)]
        if e.kind == "answer":
            return [chunk(self.cid, self.model, {"content": e.text}, index=i,
                          logprobs=item.logprobs if self.req.logprobs else None)]
        if e.kind == "tool_call":
            self.calls[i] += 1
            return [chunk(self.cid, self.model, d, index=i) for d in tool_call_deltas(self.calls[i] - 1, e.call)]
        return []

    def finish(self, choices: list) -> list[dict]:
        out = [chunk(self.cid, self.model, {"notices": list(c.reply.notices)} if c.reply.notices else {},
                     c.finish_reason, index=c.index) for c in choices]
        if self.req.include_usage and choices:
            out.append(chunk(self.cid, self.model, {}, usage_=usage(choices[0].reply, [c.reply for c in choices[1:]])))
        return out


def tool_call_deltas(index: int, call: ToolCall) -> list[dict[str, Any]]:
    """A call as OpenAI streams it: id, type and name first, then the arguments text."""
    return [{"tool_calls": [{"index": index, "id": call.id, "type": "function",
                             "function": {"name": call.name, "arguments": ""}}]},
            {"tool_calls": [{"index": index, "function": {"arguments": call.arguments_json}}]}]


StopFilter = StopCutter  # the rule lives in stop_strings.py, shared with Chat.stream(stop=...)
