"""The Anthropic Messages API (/v1/messages, /v1/messages/count_tokens), which agents such as
Claude Code speak and llama-server and LM Studio serve. A request is translated into the OpenAI
chat body and checked by the same parse_request, so it runs on the one generation path; replies
come back as Anthropic messages (thinking, text and tool_use blocks), streamed with Anthropic's
event types, and errors in Anthropic's error shape.

Translation: system (a string or text blocks) -> the system message; text blocks -> content;
thinking blocks on assistant turns -> their reasoning (Qwen's template keeps it inside a tool
chain); tool_use blocks -> tool_calls; tool_result blocks -> tool messages; image and document
blocks refused in one line (text-only models); tools' input_schema -> parameters; tool_choice auto,
any (required), tool (named), none; stop_sequences -> stop; thinking {type, budget_tokens} as is.
"""

from __future__ import annotations

import json
import uuid
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from edge.serve.api_runtime import error_kind, events, read_body, run_to_end
from edge.chat import ChatError, Message
from edge.serve.completion import ChoiceEvent, chat_for
from edge.serve.openai_api import ChatRequest, RequestError, parse_request

MEDIA_BLOCKS = ("image", "document", "audio", "video", "file")
STOP_REASONS = {"stop": "end_turn", "length": "max_tokens", "tool_calls": "tool_use"}


def _blocks(content: Any, where: str) -> list[dict]:
    if isinstance(content, str):
        return [{"type": "text", "text": content}]
    if not isinstance(content, list) or not all(isinstance(b, dict) for b in content):
        raise RequestError(f"{where}.content must be a string or a list of content blocks", f"{where}.content")
    for j, b in enumerate(content):
        if b.get("type") in MEDIA_BLOCKS:
            raise RequestError(f"{where}.content[{j}] is an {b['type']} block: the model is text-only",
                               f"{where}.content[{j}]")
    return content


def _text_of(blocks: list[dict], where: str) -> str:
    out = []
    for j, b in enumerate(blocks):
        if b.get("type") == "text":
            if not isinstance(b.get("text"), str):
                raise RequestError(f"{where}[{j}].text must be a string", f"{where}[{j}].text")
            out.append(b["text"])
    return "".join(out)


def _messages(body: dict) -> list[dict]:
    system = body.get("system")
    out: list[dict] = []
    if system is not None:
        out.append({"role": "system", "content": system if isinstance(system, str)
                    else _text_of(_blocks(system, "system"), "system")})
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise RequestError("messages must be a non-empty list", "messages")
    for i, m in enumerate(messages):
        where = f"messages[{i}]"
        if not isinstance(m, dict) or m.get("role") not in ("user", "assistant"):
            raise RequestError(f"{where}.role must be user or assistant", f"{where}.role")
        blocks = _blocks(m.get("content"), where)
        if m["role"] == "user":
            for j, b in enumerate(blocks):
                if b.get("type") == "tool_result":
                    content = b.get("content", "")
                    text = content if isinstance(content, str) else _text_of(
                        _blocks(content, f"{where}.content[{j}]"), f"{where}.content[{j}].content")
                    out.append({"role": "tool", "tool_call_id": b.get("tool_use_id"), "content": text})
            text = _text_of(blocks, f"{where}.content")
            if text or not any(b.get("type") == "tool_result" for b in blocks):
                out.append({"role": "user", "content": text})
        else:
            calls = [{"id": b.get("id"), "type": "function",
                      "function": {"name": b.get("name"), "arguments": json.dumps(b.get("input", {}))}}
                     for b in blocks if b.get("type") == "tool_use"]
            thinking = "".join(b.get("thinking", "") for b in blocks if b.get("type") == "thinking"
                               and isinstance(b.get("thinking"), str))
            msg: dict[str, Any] = {"role": "assistant", "content": _text_of(blocks, f"{where}.content")}
            if calls:
                msg["tool_calls"] = calls
            if thinking:
                msg["reasoning_content"] = thinking
            out.append(msg)
    return out


def _tools(body: dict, out: dict) -> None:
    tools = body.get("tools")
    if tools is not None:
        if not isinstance(tools, list) or not all(isinstance(t, dict) for t in tools):
            raise RequestError("tools must be a list of tool objects", "tools")
        out["tools"] = [{"type": "function", "function": {"name": t.get("name"), "description": t.get("description", ""),
                                                          "parameters": t.get("input_schema", {"type": "object"})}}
                        for t in tools]
    choice = body.get("tool_choice")
    if choice is None:
        return
    if not isinstance(choice, dict) or choice.get("type") not in ("auto", "any", "tool", "none"):
        raise RequestError("tool_choice.type must be auto, any, tool or none", "tool_choice")
    kind = choice["type"]
    out["tool_choice"] = {"auto": "auto", "any": "required", "none": "none"}.get(kind) or \
        {"type": "function", "function": {"name": choice.get("name")}}
    if choice.get("disable_parallel_tool_use") is True:
        out["parallel_tool_calls"] = False


def parse_messages_request(body: Any) -> ChatRequest:
    """An Anthropic Messages body checked into the neutral request; RequestError names the field."""
    if not isinstance(body, dict):
        raise RequestError("the request body must be a JSON object")
    out = {k: v for k, v in body.items() if k not in ("system", "messages", "tools", "tool_choice", "stop_sequences")}
    out["messages"] = _messages(body)
    if body.get("stop_sequences") is not None:
        out["stop"] = body["stop_sequences"]
    _tools(body, out)
    return parse_request(out)


def message_id() -> str:
    return f"msg_{uuid.uuid4().hex[:24]}"


def _usage(reply) -> dict:
    return {"input_tokens": reply.prompt_tokens, "output_tokens": reply.generated_tokens,
            "cache_read_input_tokens": reply.prompt_tokens - reply.evaluated_tokens, "cache_creation_input_tokens": 0}


def message(mid: str, model: str, req: ChatRequest, choice) -> dict:
    content: list[dict] = []
    if choice.reply.thinking and not req.hide_reasoning:
        content.append({"type": "thinking", "thinking": choice.reply.thinking, "signature": ""})
    if choice.answer:
        content.append({"type": "text", "text": choice.answer})
    content += [{"type": "tool_use", "id": c.id, "name": c.name, "input": c.arguments} for c in choice.reply.tool_calls]
    return {"id": mid, "type": "message", "role": "assistant", "model": model, "content": content,
            "stop_reason": "stop_sequence" if choice.stop_string else STOP_REASONS.get(choice.finish_reason, "end_turn"),
            "stop_sequence": choice.stop_string, "usage": _usage(choice.reply)}


def error_body(message: str, kind: str = "invalid_request_error") -> dict:
    return {"type": "error", "error": {"type": kind, "message": message}}


def _error(status: int, message: str, kind: str = "invalid_request_error", headers: dict | None = None) -> JSONResponse:
    return JSONResponse(error_body(message, kind), status_code=status, headers=headers)


class EventShaper:
    """ChoiceEvents as Anthropic's stream: message_start, a content block per thinking, text or
    tool_use run (start, deltas, stop), message_delta with the stop reason, message_stop."""

    def __init__(self, mid: str, model: str, req: ChatRequest):
        self.mid, self.model, self.req = mid, model, req
        self.index, self.open = -1, None   # the current block's index and type

    @staticmethod
    def sse(event: str, data: dict) -> str:
        return f"event: {event}\ndata: {json.dumps(data, ensure_ascii=False)}\n\n"

    def start(self) -> list[str]:
        return [self.sse("message_start", {"type": "message_start", "message": {
            "id": self.mid, "type": "message", "role": "assistant", "model": self.model, "content": [],
            "stop_reason": None, "stop_sequence": None, "usage": {"input_tokens": 0, "output_tokens": 0}}})]

    def _switch(self, kind: str, block: dict) -> list[str]:
        out = self._close()
        self.index, self.open = self.index + 1, kind
        out.append(self.sse("content_block_start", {"type": "content_block_start", "index": self.index,
                                                    "content_block": block}))
        return out

    def _close(self) -> list[str]:
        if self.open is None:
            return []
        self.open = None
        return [self.sse("content_block_stop", {"type": "content_block_stop", "index": self.index})]

    def _delta(self, delta: dict) -> str:
        return self.sse("content_block_delta", {"type": "content_block_delta", "index": self.index, "delta": delta})

    def feed(self, item: ChoiceEvent) -> list[str]:
        e, out = item.event, []
        if e.kind == "thinking" and not self.req.hide_reasoning:
            if self.open != "thinking":
                out += self._switch("thinking", {"type": "thinking", "thinking": "", "signature": ""})
            out.append(self._delta({"type": "thinking_delta", "thinking": e.text}))
        elif e.kind == "answer":
            if self.open != "text":
                out += self._switch("text", {"type": "text", "text": ""})
            out.append(self._delta({"type": "text_delta", "text": e.text}))
        elif e.kind == "tool_call":
            out += self._switch("tool_use", {"type": "tool_use", "id": e.call.id, "name": e.call.name, "input": {}})
            out.append(self._delta({"type": "input_json_delta", "partial_json": e.call.arguments_json}))
            out += self._close()
        return out

    def finish(self, choices: list) -> list[str]:
        done = message(self.mid, self.model, self.req, choices[0])
        return self._close() + [
            self.sse("message_delta", {"type": "message_delta", "delta": {"stop_reason": done["stop_reason"],
                                                                           "stop_sequence": done["stop_sequence"]},
                                       "usage": done["usage"]}),
            self.sse("message_stop", {"type": "message_stop"})]


def count_tokens(engine, req: ChatRequest) -> int:
    """The prompt's tokens as the request's turn would render it."""
    chat = chat_for(engine, req)
    new = [Message("user", req.user if req.user is not None else "")] if not (
        req.user is None and req.history and req.history[-1].role == "tool") else []
    tools = req.tools if req.tool_choice != "none" else None
    text = chat.render(chat.messages(req.history + new), req.mode.value != "no_think", tools)
    return len(engine.tokenize(text))


def anthropic_routes(server, max_body_bytes: int) -> list[Route]:
    """The Anthropic endpoints on `server` (server._Server); the key may come as x-api-key."""

    def authorized(request: Request) -> bool:
        key = request.headers.get("x-api-key")
        return server.authorized(request) or (server.api_key is not None and key == server.api_key)

    async def parsed(request: Request) -> ChatRequest:
        body = await read_body(request, max_body_bytes)
        if isinstance(body, dict) and "max_tokens" not in body:
            raise RequestError("max_tokens is required", "max_tokens")
        return parse_messages_request(body)

    async def messages(request: Request) -> Response:
        if not authorized(request):
            return _error(401, "invalid or missing API key", "authentication_error")
        try:
            req = await parsed(request)
            req.n = 1
            headers = server.report_ignored(req.ignored)
            generation = server.generation(req)
        except RequestError as e:
            return _error(e.status, e.message)
        ticket = server.admit()
        if ticket is None:
            return _error(429, "the server is busy; retry later", "rate_limit_error")
        mid, model = message_id(), req.model or server.model_name
        if not req.stream:
            try:
                choices = await run_to_end(generation)
            except ChatError as e:
                status, _ = error_kind(e)
                return _error(status, str(e), "api_error" if status >= 500 else "invalid_request_error", headers)
            finally:
                ticket.release()
            server.metrics.record(choices)
            return JSONResponse(message(mid, model, req, choices[0]), headers=headers)
        shaper = EventShaper(mid, model, req)

        async def stream():
            for s in shaper.start():
                yield s
            async for item in events(generation, ticket):
                if isinstance(item, Exception):
                    yield shaper.sse("error", error_body(str(item), "api_error"))
                elif isinstance(item, ChoiceEvent):
                    for s in shaper.feed(item):
                        yield s
                else:
                    server.metrics.record(item)
                    for s in shaper.finish(item):
                        yield s
        return StreamingResponse(stream(), media_type="text/event-stream", headers=headers)

    async def tokens(request: Request) -> Response:
        if not authorized(request):
            return _error(401, "invalid or missing API key", "authentication_error")
        try:
            body = await read_body(request, max_body_bytes)
            req = parse_messages_request(body)
            return JSONResponse({"input_tokens": count_tokens(server.engine, req)})
        except ChatError as e:
            return _error(getattr(e, "status", 400), str(e))

    return [Route("/v1/messages", messages, methods=["POST"]),
            Route("/v1/messages/count_tokens", tokens, methods=["POST"])]
