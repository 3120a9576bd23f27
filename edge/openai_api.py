"""OpenAI chat-completions requests and responses, as plain functions (no web framework here).

Requests are checked into a ChatRequest; replies become OpenAI objects, with the thinking in
`reasoning_content` (as DeepSeek, vLLM and llama-server do) and thinking tokens counted in
`usage.completion_tokens_details.reasoning_tokens`.

A body is read strictly (`decode_body`): UTF-8 JSON with finite numbers, unique keys, at most
MAX_JSON_DEPTH levels, and strings that are text (no lone UTF-16 surrogate, no NUL). Every field
is one the server honours, ignores by name, or accepts only at its neutral value; any other is
refused, as OpenAI's own API refuses an unrecognized argument: a client is never silently served
something other than what it asked for.
"""

from __future__ import annotations

import json
import math
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

from .chat import Message, Reply
from .grammar import GrammarError, plan_constraints
from .modes import Mode, soft_switch
from .stop_strings import StopCutter
from .text_check import text_problem
from .tool_calls import ToolCall

ROLES = ("system", "developer", "user", "assistant", "tool")
MAX_JSON_DEPTH = 64     # a tool schema may nest 24 levels (grammar.MAX_SCHEMA_DEPTH): ~55 JSON levels
MAX_INT_DIGITS = 40     # beyond any field's range (seed is int64), and far below Python's 4300-digit limit
SEED_RANGE = (-(1 << 63), (1 << 63) - 1)   # OpenAI's seed is an int64

# Accepted and ignored by name, with the type OpenAI gives them: none changes the reply.
IGNORED = {"user": str, "metadata": dict, "store": bool, "service_tier": str, "prompt_cache_key": str,
           "prompt_cache_retention": str, "prompt_cache_options": dict, "safety_identifier": str,
           "prediction": dict}
TYPE_NAMES = {str: "a string", dict: "an object", bool: "true or false"}
# Accepted only at their neutral value (what OpenAI does without them); anything else is refused.
NEUTRAL = {"n": (1,), "logprobs": (False,), "top_logprobs": (0,), "frequency_penalty": (0,),
           "logit_bias": ({},), "modalities": (["text"],), "verbosity": ("medium",), "audio": (),
           "functions": (), "function_call": (), "web_search_options": (), "moderation": ()}
REFUSED_WHY = {"n": "only one choice is generated per request (n must be 1)",
               "logprobs": "log probabilities are not returned",
               "top_logprobs": "log probabilities are not returned",
               "frequency_penalty": "frequency_penalty is not supported (presence_penalty is)",
               "logit_bias": "logit_bias is not supported",
               "modalities": 'only text output is supported (modalities ["text"])',
               "verbosity": "verbosity is not supported",
               "audio": "audio output is not supported",
               "functions": "functions is deprecated: send tools",
               "function_call": "function_call is deprecated: send tool_choice",
               "web_search_options": "web search is not available",
               "moderation": "moderation is not available"}
HONOURED = {"messages", "model", "max_tokens", "max_completion_tokens", "temperature", "top_p", "presence_penalty",
            "seed", "stop", "stream", "stream_options", "tools", "tool_choice", "parallel_tool_calls",
            "response_format", "reasoning_effort",
            "chat_template_kwargs", "thinking_budget", "top_k", "min_p"}  # the last four: as in vLLM / llama-server
KNOWN = HONOURED | set(IGNORED) | set(NEUTRAL)
REASONING_EFFORTS = {"none": False, "minimal": False, "low": True, "medium": True, "high": True, "xhigh": True}
MESSAGE_KEYS = {"role", "content", "name", "tool_calls", "tool_call_id", "reasoning_content",
                "refusal", "annotations", "audio", "function_call", "notices"}  # what clients send back


class RequestError(Exception):
    """A bad request: becomes a 4xx with an OpenAI error object."""

    def __init__(self, message: str, param: str | None = None, status: int = 400):
        super().__init__(message)
        self.message, self.param, self.status = message, param, status


@dataclass
class ChatRequest:
    system: str | None
    history: list[Message]
    user: str | None          # None: the conversation ends with tool results; the model goes on
    mode: Mode
    budget: int | str | None   # tokens, or "auto"
    max_tokens: int | None
    sampling: dict[str, Any]
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
    """OpenAI content: a string, or a list of {"type": "text", "text": ...} parts (or null, for an
    assistant message that only called tools)."""
    if content is None and nullable:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list) and all(isinstance(p, dict) and p.get("type") == "text" and isinstance(p.get("text"), str)
                                         for p in content):
        return "".join(p["text"] for p in content)
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


def _bool(body: dict, key: str, default: bool, where: str | None = None) -> bool:
    value = body.get(key)
    if value is None:
        return default
    if not isinstance(value, bool):  # "stream": "yes" is not true
        raise RequestError(f"{where or key} must be true or false", where or key)
    return value


def _flags(body: dict, key: str, allowed: tuple[str, ...]) -> dict:
    """An object of known boolean flags (chat_template_kwargs, stream_options)."""
    value = body.get(key)
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise RequestError(f"{key} must be an object", key)
    for k in value:
        if k not in allowed:
            raise RequestError(f"{key}.{k} is not supported (known: {', '.join(allowed)})", f"{key}.{k}")
        _bool(value, k, False, f"{key}.{k}")
    return value


def _same(a: Any, b: Any) -> bool:
    """Equal and of the same JSON type (in Python 1 == True and 0 == False)."""
    if isinstance(a, bool) or isinstance(b, bool):
        return a is b
    if isinstance(a, (int, float)) and isinstance(b, (int, float)):
        return a == b
    return type(a) is type(b) and a == b


def _check_fields(body: dict) -> None:
    """Unknown fields refused; ignored ones type-checked; neutral-only ones at their neutral value."""
    for key, value in body.items():
        if key not in KNOWN:
            raise RequestError(f"unrecognized request argument: {key} (qwen3-edge does not support it)", key)
        if value is None:
            continue
        if key in IGNORED and not isinstance(value, IGNORED[key]):
            raise RequestError(f"{key} must be {TYPE_NAMES[IGNORED[key]]}", key)
        if key in NEUTRAL and not any(_same(value, v) for v in NEUTRAL[key]):
            shown = json.dumps(value)[:60]
            raise RequestError(f"{REFUSED_WHY[key]}; got {key}={shown}", key)


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


def _check_message_keys(m: dict, where: str) -> None:
    for key, value in m.items():
        if key not in MESSAGE_KEYS:
            raise RequestError(f"{where}.{key} is not a message field", f"{where}.{key}")
        if key in ("audio", "function_call") and value is not None:
            raise RequestError(f"{where}.{key} is not supported", f"{where}.{key}")
        if key == "name" and not isinstance(value, str):
            raise RequestError(f"{where}.name must be a string", f"{where}.name")


def _conversation(messages: list) -> tuple[list[str], list[Message]]:
    """System parts and the turns, checked: roles, content, tool results answering real calls."""
    system_parts, turns, open_calls = [], [], set()
    for i, m in enumerate(messages):
        where = f"messages[{i}]"
        role = m.get("role") if isinstance(m, dict) else None
        if role not in ROLES:
            raise RequestError(f"{where}.role must be one of {', '.join(ROLES)}, got {json.dumps(role)[:40]}",
                               f"{where}.role")
        _check_message_keys(m, where)
        if role in ("system", "developer"):  # OpenAI's newer name for the system message
            if turns:
                raise RequestError("system messages must come first", where)
            system_parts.append(_text(m.get("content"), where))
        elif role == "assistant":
            calls = _tool_calls(m, where)
            thinking = m.get("reasoning_content")
            if thinking is not None and not isinstance(thinking, str):
                raise RequestError(f"{where}.reasoning_content must be a string", f"{where}.reasoning_content")
            turns.append(Message("assistant", _text(m.get("content"), where, nullable=bool(calls)),
                                 thinking or "", calls))
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


def _mode(body: dict, history: list[Message]) -> Mode:
    """Qwen follows the most recent soft switch; enable_thinking false, or a reasoning_effort of
    none or minimal, turns thinking off (true, or low to xhigh, leaves the soft switches in charge)."""
    kwargs = _flags(body, "chat_template_kwargs", ("enable_thinking",))
    enable = kwargs.get("enable_thinking")
    effort = body.get("reasoning_effort")
    if effort is not None and effort not in REASONING_EFFORTS:
        raise RequestError(f"reasoning_effort must be one of {', '.join(REASONING_EFFORTS)}", "reasoning_effort")
    if effort is not None and enable is not None and REASONING_EFFORTS[effort] is not enable:
        raise RequestError(f"reasoning_effort {effort!r} contradicts chat_template_kwargs.enable_thinking "
                           f"{json.dumps(enable)}", "reasoning_effort")
    mode = Mode.THINK
    for m in history:
        if m.role == "user" and (switch := soft_switch(m.content)) is not None:
            mode = switch
    if enable is False or (effort is not None and not REASONING_EFFORTS[effort]):
        mode = Mode.NO_THINK
    return mode


def _seed(body: dict) -> int | None:
    """llama.cpp takes a 32-bit seed and reads 0xFFFFFFFF as "pick one at random": folding the
    int64 onto 0..0xFFFFFFFE keeps every seeded request repeatable (small seeds unchanged)."""
    seed = _number(body, "seed", int, *SEED_RANGE)
    return None if seed is None else seed % 0xFFFFFFFF


def parse_request(body: Any, n_ctx: int) -> ChatRequest:
    """A decoded body (decode_body) checked into a ChatRequest; RequestError names the field."""
    if not isinstance(body, dict):
        raise RequestError("the request body must be a JSON object")
    _check_fields(body)
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise RequestError("messages must be a non-empty list", "messages")
    system_parts, turns = _conversation(messages)
    if not turns or turns[-1].role not in ("user", "tool"):
        raise RequestError("the last message must be from the user or a tool", "messages")
    if turns[-1].role == "user":
        *history, last = turns
        user = last.content
    else:
        history, user = turns, None
    mode = _mode(body, history)
    completion_cap, cap = _number(body, "max_completion_tokens", int, 1, None), _number(body, "max_tokens", int, 1, None)
    max_tokens = completion_cap or cap  # both checked; the newer name wins when both are given
    if max_tokens is not None and max_tokens >= n_ctx:
        name = "max_completion_tokens" if completion_cap else "max_tokens"
        raise RequestError(f"{name} {max_tokens} is beyond the context of {n_ctx} tokens", name)
    stop = body.get("stop") or []
    stop = [stop] if isinstance(stop, str) else stop
    if not isinstance(stop, list) or not all(isinstance(s, str) and s for s in stop) or len(stop) > 4:
        raise RequestError("stop must be a string or a list of up to 4 non-empty strings", "stop")
    sampling = {k: v for k, v in (("temperature", _number(body, "temperature", float, 0, 2)),
                                  ("top_p", _number(body, "top_p", float, 0, 1)),
                                  ("top_k", _number(body, "top_k", int, 0, None)),
                                  ("min_p", _number(body, "min_p", float, 0, 1))) if v is not None}
    options = _flags(body, "stream_options", ("include_usage", "include_obfuscation"))
    tools, tool_choice = body.get("tools") or None, body.get("tool_choice", "auto")
    parallel, response_format = _bool(body, "parallel_tool_calls", True), body.get("response_format")
    try:
        plan_constraints(tools, tool_choice, response_format, parallel)
    except GrammarError as e:
        raise RequestError(e.message, e.param) from None
    model = body.get("model")
    if model is not None and not isinstance(model, str):
        raise RequestError("model must be a string", "model")
    budget = body.get("thinking_budget")
    return ChatRequest(
        system="\n".join(system_parts) or None, history=history, user=user, mode=mode,
        budget="auto" if budget == "auto" else _number(body, "thinking_budget", int, 0, None),
        max_tokens=max_tokens, sampling=sampling,
        presence_penalty=_number(body, "presence_penalty", float, -2, 2) or 0.0, seed=_seed(body),
        stop=stop, stream=_bool(body, "stream", False), include_usage=_bool(options, "include_usage", False),
        model=model or "", tools=tools, tool_choice=tool_choice, parallel_tool_calls=parallel,
        response_format=response_format,
    )


def completion_id() -> str:
    return f"chatcmpl-{uuid.uuid4().hex[:24]}"


def finish_reason(stop_reason: str) -> str:
    return {"length": "length", "tool_calls": "tool_calls"}.get(stop_reason, "stop")


def usage(reply: Reply) -> dict[str, Any]:
    return {"prompt_tokens": reply.prompt_tokens, "completion_tokens": reply.generated_tokens,
            "total_tokens": reply.prompt_tokens + reply.generated_tokens,
            "prompt_tokens_details": {"cached_tokens": reply.prompt_tokens - reply.evaluated_tokens},
            "completion_tokens_details": {"reasoning_tokens": reply.thinking_tokens}}


def completion(cid: str, model: str, reply: Reply, answer: str, reason: str) -> dict[str, Any]:
    message: dict[str, Any] = {"role": "assistant", "content": answer or (None if reply.tool_calls else "")}
    if reply.thinking:
        message["reasoning_content"] = reply.thinking
    if reply.tool_calls:
        message["tool_calls"] = [c.to_openai() for c in reply.tool_calls]
    if reply.notices:  # what the runtime said about this turn (a mode the model cannot do, a cut)
        message["notices"] = list(reply.notices)
    return {"id": cid, "object": "chat.completion", "created": int(time.time()), "model": model,
            "choices": [{"index": 0, "message": message, "finish_reason": reason}], "usage": usage(reply)}


def chunk(cid: str, model: str, delta: dict[str, Any], reason: str | None = None,
          usage_: dict[str, Any] | None = None) -> dict[str, Any]:
    body = {"id": cid, "object": "chat.completion.chunk", "created": int(time.time()), "model": model,
            "choices": [] if usage_ is not None else [{"index": 0, "delta": delta, "finish_reason": reason}]}
    if usage_ is not None:
        body["usage"] = usage_
    return body


def tool_call_deltas(index: int, call: ToolCall) -> list[dict[str, Any]]:
    """A call as OpenAI streams it: id, type and name first, then the arguments text."""
    return [{"tool_calls": [{"index": index, "id": call.id, "type": "function",
                             "function": {"name": call.name, "arguments": ""}}]},
            {"tool_calls": [{"index": index, "function": {"arguments": call.arguments_json}}]}]


StopFilter = StopCutter  # the rule lives in stop_strings.py, shared with Chat.stream(stop=...)
