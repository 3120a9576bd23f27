"""OpenAI chat-completions requests and responses, as plain functions (no web framework here).

Requests are checked into a ChatRequest; replies become OpenAI objects, with the thinking in
`reasoning_content` (as DeepSeek, vLLM and llama-server do) and thinking tokens counted in
`usage.completion_tokens_details.reasoning_tokens`.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass, field
from typing import Any

from .chat import Message, Reply
from .modes import Mode, soft_switch

ROLES = ("system", "user", "assistant")


class RequestError(Exception):
    """A bad request: becomes a 4xx with an OpenAI error object."""

    def __init__(self, message: str, param: str | None = None, status: int = 400):
        super().__init__(message)
        self.message, self.param, self.status = message, param, status


@dataclass
class ChatRequest:
    system: str | None
    history: list[Message]
    user: str
    mode: Mode
    budget: int | None
    max_tokens: int | None
    sampling: dict[str, Any]
    presence_penalty: float
    seed: int | None
    stop: list[str]
    stream: bool
    include_usage: bool
    model: str = ""
    extra: dict[str, Any] = field(default_factory=dict)


def error_body(message: str, param: str | None = None, kind: str = "invalid_request_error",
               code: str | None = None) -> dict[str, Any]:
    return {"error": {"message": message, "type": kind, "param": param, "code": code}}


def _text(content: Any, where: str) -> str:
    """OpenAI content: a string, or a list of {"type": "text", "text": ...} parts."""
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


def parse_request(body: Any, n_ctx: int) -> ChatRequest:
    if not isinstance(body, dict):
        raise RequestError("the request body must be a JSON object")
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise RequestError("messages must be a non-empty list", "messages")
    system_parts, turns = [], []
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or m.get("role") not in ROLES:
            role = m.get("role") if isinstance(m, dict) else None
            raise RequestError(f"messages[{i}].role must be one of {', '.join(ROLES)}, got {role!r}", f"messages[{i}].role")
        text = _text(m.get("content"), f"messages[{i}]")
        if m["role"] == "system":
            if turns:
                raise RequestError("system messages must come first", f"messages[{i}]")
            system_parts.append(text)
        else:
            turns.append(Message(m["role"], text))
    if not turns or turns[-1].role != "user":
        raise RequestError("the last message must be from the user", "messages")
    *history, last = turns
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
    return ChatRequest(
        system="\n".join(system_parts) or None, history=history, user=last.content, mode=mode,
        budget=_number(body, "thinking_budget", int, 0, None), max_tokens=max_tokens, sampling=sampling,
        presence_penalty=_number(body, "presence_penalty", float, -2, 2) or 0.0, seed=_number(body, "seed", int),
        stop=stop, stream=bool(body.get("stream")), include_usage=bool(isinstance(options, dict) and options.get("include_usage")),
        model=str(body.get("model") or ""),
    )


def completion_id() -> str:
    return f"chatcmpl-{uuid.uuid4().hex[:24]}"


def finish_reason(stop_reason: str) -> str:
    return "length" if stop_reason == "length" else "stop"


def usage(reply: Reply) -> dict[str, Any]:
    return {"prompt_tokens": reply.prompt_tokens, "completion_tokens": reply.generated_tokens,
            "total_tokens": reply.prompt_tokens + reply.generated_tokens,
            "prompt_tokens_details": {"cached_tokens": reply.prompt_tokens - reply.evaluated_tokens},
            "completion_tokens_details": {"reasoning_tokens": reply.thinking_tokens}}


def completion(cid: str, model: str, reply: Reply, answer: str, reason: str) -> dict[str, Any]:
    message = {"role": "assistant", "content": answer}
    if reply.thinking:
        message["reasoning_content"] = reply.thinking
    return {"id": cid, "object": "chat.completion", "created": int(time.time()), "model": model,
            "choices": [{"index": 0, "message": message, "finish_reason": reason}], "usage": usage(reply)}


def chunk(cid: str, model: str, delta: dict[str, Any], reason: str | None = None,
          usage_: dict[str, Any] | None = None) -> dict[str, Any]:
    body = {"id": cid, "object": "chat.completion.chunk", "created": int(time.time()), "model": model,
            "choices": [] if usage_ is not None else [{"index": 0, "delta": delta, "finish_reason": reason}]}
    if usage_ is not None:
        body["usage"] = usage_
    return body


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
