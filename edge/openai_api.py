"""OpenAI chat-completions requests and responses, as plain functions (no web framework here).

Requests are checked into a ChatRequest; replies become OpenAI objects, with the thinking in
`reasoning_content` (as DeepSeek, vLLM and llama-server do) and thinking tokens counted in
`usage.completion_tokens_details.reasoning_tokens`.
"""

from __future__ import annotations

import json
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

from .chat import Message, Reply
from .grammar import GrammarError, plan_constraints
from .modes import Mode, soft_switch
from .tool_calls import ToolCall

ROLES = ("system", "developer", "user", "assistant", "tool")


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
    return {"error": {"message": message, "type": kind, "param": param, "code": code}}


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
    raise RequestError(f"{where}.content must be a string or a list of text parts", where)


def _number(body: dict, key: str, kind: type, low: float | None = None, high: float | None = None):
    value = body.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or (kind is int and not isinstance(value, int)):
        raise RequestError(f"{key} must be a{'n integer' if kind is int else ' number'}", key)
    if (low is not None and value < low) or (high is not None and value > high):
        raise RequestError(f"{key} must be between {low} and {high}", key)
    return value


def _tool_calls(m: dict, where: str) -> tuple[ToolCall, ...]:
    """An assistant message's tool_calls, as the openai client sends them back."""
    calls = m.get("tool_calls") or []
    if not isinstance(calls, list):
        raise RequestError(f"{where}.tool_calls must be a list", f"{where}.tool_calls")
    out = []
    for j, c in enumerate(calls):
        fn = c.get("function") if isinstance(c, dict) else None
        if not isinstance(fn, dict) or not isinstance(c.get("id"), str) or not isinstance(fn.get("name"), str):
            raise RequestError(f"{where}.tool_calls[{j}] must have an id and a function with a name",
                               f"{where}.tool_calls[{j}]")
        args = fn.get("arguments", "{}")
        try:
            args = json.loads(args) if isinstance(args, str) else args
        except json.JSONDecodeError:
            raise RequestError(f"{where}.tool_calls[{j}].function.arguments is not JSON",
                               f"{where}.tool_calls[{j}]") from None
        if not isinstance(args, dict):
            raise RequestError(f"{where}.tool_calls[{j}].function.arguments must be a JSON object",
                               f"{where}.tool_calls[{j}]")
        out.append(ToolCall(c["id"], fn["name"], args))
    return tuple(out)


def _conversation(messages: list) -> tuple[list[str], list[Message]]:
    """System parts and the turns, checked: roles, content, tool results answering real calls."""
    system_parts, turns, open_calls = [], [], set()
    for i, m in enumerate(messages):
        where = f"messages[{i}]"
        role = m.get("role") if isinstance(m, dict) else None
        if role not in ROLES:
            raise RequestError(f"{where}.role must be one of {', '.join(ROLES)}, got {role!r}", f"{where}.role")
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
            if call_id not in open_calls:
                raise RequestError(f"{where}.tool_call_id {call_id!r} answers no call of the assistant message "
                                   f"before it", f"{where}.tool_call_id")
            open_calls.discard(call_id)
            turns.append(Message("tool", _text(m.get("content"), where), tool_call_id=call_id))
        else:
            turns.append(Message("user", _text(m.get("content"), where)))
            open_calls = set()
    return system_parts, turns


def parse_request(body: Any, n_ctx: int) -> ChatRequest:
    if not isinstance(body, dict):
        raise RequestError("the request body must be a JSON object")
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
    kwargs = body.get("chat_template_kwargs") or {}
    if not isinstance(kwargs, dict):
        raise RequestError("chat_template_kwargs must be an object", "chat_template_kwargs")
    mode = Mode.THINK
    for m in history:  # Qwen follows the most recent soft switch
        if m.role == "user" and (switch := soft_switch(m.content)) is not None:
            mode = switch
    if kwargs.get("enable_thinking") is False:
        mode = Mode.NO_THINK
    max_tokens = _number(body, "max_completion_tokens", int, 1, None) or _number(body, "max_tokens", int, 1, None)
    if max_tokens is not None and max_tokens >= n_ctx:
        raise RequestError(f"max_tokens {max_tokens} is beyond the context of {n_ctx} tokens", "max_tokens")
    stop = body.get("stop") or []
    stop = [stop] if isinstance(stop, str) else stop
    if not isinstance(stop, list) or not all(isinstance(s, str) and s for s in stop) or len(stop) > 4:
        raise RequestError("stop must be a string or a list of up to 4 non-empty strings", "stop")
    sampling = {k: v for k, v in (("temperature", _number(body, "temperature", float, 0, 2)),
                                  ("top_p", _number(body, "top_p", float, 0, 1))) if v is not None}
    options = body.get("stream_options") or {}
    tools, tool_choice = body.get("tools") or None, body.get("tool_choice", "auto")
    parallel, response_format = body.get("parallel_tool_calls", True), body.get("response_format")
    if not isinstance(parallel, bool):
        raise RequestError("parallel_tool_calls must be a boolean", "parallel_tool_calls")
    try:
        plan_constraints(tools, tool_choice, response_format, parallel)
    except GrammarError as e:
        raise RequestError(e.message, e.param) from None
    return ChatRequest(
        system="\n".join(system_parts) or None, history=history, user=user, mode=mode,
        budget="auto" if body.get("thinking_budget") == "auto" else _number(body, "thinking_budget", int, 0, None),
        max_tokens=max_tokens, sampling=sampling,
        presence_penalty=_number(body, "presence_penalty", float, -2, 2) or 0.0, seed=_number(body, "seed", int),
        stop=stop, stream=bool(body.get("stream")), include_usage=bool(isinstance(options, dict) and options.get("include_usage")),
        model=str(body.get("model") or ""), tools=tools, tool_choice=tool_choice, parallel_tool_calls=parallel,
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


class StopFilter:
    """Cuts the answer at the first stop string, holding back only what may start one."""

    def __init__(self, stops: list[str]):
        self.stops, self.held, self.stopped = stops, "", False

    def feed(self, text: str) -> str:
        if self.stopped:
            return ""
        self.held += text
        hits = [i for i in (self.held.find(s) for s in self.stops) if i >= 0]
        if hits:
            out, self.held, self.stopped = self.held[: min(hits)], "", True
            return out
        keep = max((k for s in self.stops for k in range(min(len(s) - 1, len(self.held)), 0, -1)
                    if self.held.endswith(s[:k])), default=0)
        out, self.held = self.held[: len(self.held) - keep], self.held[len(self.held) - keep:]
        return out

    def flush(self) -> str:
        out, self.held = ("" if self.stopped else self.held), ""
        return out
