"""Ollama's API (/api/chat, /api/generate, /api/tags, /api/show, /api/version), because many
desktop tools speak only it. A request is translated into the OpenAI chat body (messages, tools,
think, format, options) and checked by the same parse_request, so it runs on the one generation
path; replies come back in Ollama's shapes, streamed as NDJSON (Ollama's default) or not.

Translation: `think` true/false -> enable_thinking, "low"/"medium"/"high" -> reasoning_effort;
`format` "json" -> response_format json_object, a schema -> json_schema; options temperature,
top_k, top_p, min_p, seed, repeat_penalty, presence_penalty, frequency_penalty, stop, num_predict
(-1 and -2: no cap) honoured, others (num_ctx, num_thread, ...) ignored and named in
X-Ignored-Fields; tool calls carry no ids in Ollama, so ids are given and tool results matched to
the calls in order."""

from __future__ import annotations

import hashlib
import json
import time
from datetime import datetime, timezone
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from edge.serve.api_runtime import error_kind, events, read_body, run_to_end
from edge.chat import ChatError
from edge.serve.completion import ChoiceEvent
from edge.serve.openai_api import ChatRequest, RequestError, parse_request

OLLAMA_VERSION = "0.12.6"   # the API version this follows (clients may check it)
OPTIONS = {"temperature": "temperature", "top_k": "top_k", "top_p": "top_p", "min_p": "min_p", "seed": "seed",
           "repeat_penalty": "repeat_penalty", "presence_penalty": "presence_penalty",
           "frequency_penalty": "frequency_penalty", "stop": "stop"}
THINK_LEVELS = {"low", "medium", "high"}


def now() -> str:
    return datetime.now(timezone.utc).isoformat().replace("+00:00", "Z")


def _options(body: dict, out: dict, ignored: list[str]) -> None:
    options = body.get("options")
    if options is None:
        return
    if not isinstance(options, dict):
        raise RequestError("options must be an object", "options")
    for key, value in options.items():
        if key in OPTIONS:
            out[OPTIONS[key]] = value
        elif key == "num_predict":
            if isinstance(value, bool) or not isinstance(value, int):
                raise RequestError("options.num_predict must be an integer", "options.num_predict")
            if value > 0:
                out["max_tokens"] = value   # -1 (no cap) and -2 (fill the context) leave it open
        else:
            ignored.append(f"options.{key}")


def _think(body: dict, out: dict) -> None:
    think = body.get("think")
    if think is None:
        return
    if isinstance(think, bool):
        out["enable_thinking"] = think
    elif isinstance(think, str) and think in THINK_LEVELS:
        out["reasoning_effort"] = think
    else:
        raise RequestError("think must be true, false, low, medium or high", "think")


def _format(body: dict, out: dict) -> None:
    fmt = body.get("format")
    if fmt in (None, ""):
        return
    if fmt == "json":
        out["response_format"] = {"type": "json_object"}
    elif isinstance(fmt, dict):
        out["response_format"] = {"type": "json_schema", "json_schema": {"name": "format", "schema": fmt}}
    else:
        raise RequestError('format must be "json" or a JSON schema', "format")


def _messages(messages: Any) -> list:
    """Ollama's messages as OpenAI's: thinking -> reasoning, tool calls given ids, tool results
    (tool_name, no id) matched to them in order; images refused (text-only models)."""
    if not isinstance(messages, list):
        raise RequestError("messages must be a list", "messages")
    out, pending = [], []
    for i, m in enumerate(messages):
        if not isinstance(m, dict):
            raise RequestError(f"messages[{i}] must be an object", f"messages[{i}]")
        m = dict(m)
        if m.pop("images", None):
            raise RequestError(f"messages[{i}].images: the model is text-only", f"messages[{i}].images")
        if "thinking" in m:
            m["reasoning"] = m.pop("thinking")
        if m.get("role") == "assistant" and m.get("tool_calls"):
            calls = m["tool_calls"]
            if not isinstance(calls, list):
                raise RequestError(f"messages[{i}].tool_calls must be a list", f"messages[{i}].tool_calls")
            m["tool_calls"], pending = [], []
            for j, c in enumerate(calls):
                fn = c.get("function") if isinstance(c, dict) else None
                if not isinstance(fn, dict):
                    raise RequestError(f"messages[{i}].tool_calls[{j}] must have a function", f"messages[{i}].tool_calls[{j}]")
                args = fn.get("arguments", {})
                call_id = c.get("id") if isinstance(c.get("id"), str) else f"call_{i}_{j}"
                m["tool_calls"].append({"id": call_id, "type": "function", "function": {
                    "name": fn.get("name"), "arguments": args if isinstance(args, str) else json.dumps(args)}})
                pending.append((call_id, fn.get("name")))
        elif m.get("role") == "tool" and "tool_call_id" not in m:
            name = m.pop("tool_name", None) or m.pop("name", None)
            match = next((p for p in pending if p[1] == name), pending[0] if pending else None)
            if match is not None:
                pending.remove(match)
                m["tool_call_id"] = match[0]
        m.pop("tool_name", None)
        out.append(m)
    return out


def chat_body(body: dict) -> tuple[dict, list[str]]:
    """An Ollama /api/chat body as an OpenAI chat body, and what was ignored on the way."""
    ignored: list[str] = []
    out = {k: v for k, v in body.items() if k not in ("messages", "options", "think", "format", "keep_alive",
                                                       "stream")}
    out["messages"] = _messages(body.get("messages"))
    out["stream"] = body.get("stream", True)
    _options(body, out, ignored)
    _think(body, out)
    _format(body, out)
    return out, ignored


def parse_chat(body: Any) -> ChatRequest:
    if not isinstance(body, dict):
        raise RequestError("the request body must be a JSON object")
    out, ignored = chat_body(body)
    req = parse_request(out)
    req.ignored = ignored + req.ignored
    return req


def parse_generate(body: Any) -> ChatRequest:
    """/api/generate: a prompt (and system) as one user turn, or with raw the prompt as is."""
    if not isinstance(body, dict):
        raise RequestError("the request body must be a JSON object")
    prompt, system, raw = body.get("prompt"), body.get("system"), body.get("raw", False)
    if not isinstance(prompt, str):
        raise RequestError("prompt must be a string", "prompt")
    if system is not None and not isinstance(system, str):
        raise RequestError("system must be a string", "system")
    if body.get("images"):
        raise RequestError("images: the model is text-only", "images")
    rest = {k: v for k, v in body.items() if k not in ("prompt", "system", "raw", "suffix", "images", "template",
                                                       "context")}
    messages = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": prompt}]
    req = parse_chat({**rest, "messages": messages})
    req.ignored += [k for k in ("suffix", "template", "context") if body.get(k)]
    if raw is True:
        req.user, req.history, req.system, req.raw_prompt = None, [], None, prompt
    return req


def _stats(reply) -> dict:
    ns = lambda s: int(s * 1e9)  # noqa: E731
    return {"total_duration": ns(reply.seconds), "load_duration": 0, "prompt_eval_count": reply.prompt_tokens,
            "prompt_eval_duration": ns(reply.ttft_s), "eval_count": reply.generated_tokens,
            "eval_duration": ns(max(reply.seconds - reply.ttft_s, 0))}


def _calls(calls) -> list[dict]:
    return [{"function": {"name": c.name, "arguments": c.arguments}} for c in calls]


def _done_reason(choice) -> str:
    return "length" if choice.finish_reason == "length" else "stop"


def chat_reply(model: str, req: ChatRequest, choice) -> dict:
    message: dict[str, Any] = {"role": "assistant", "content": choice.answer}
    if choice.reply.thinking and not req.hide_reasoning:
        message["thinking"] = choice.reply.thinking
    if choice.reply.tool_calls:
        message["tool_calls"] = _calls(choice.reply.tool_calls)
    return {"model": model, "created_at": now(), "message": message, "done_reason": _done_reason(choice),
            "done": True, **_stats(choice.reply)}


def generate_reply(model: str, req: ChatRequest, choice) -> dict:
    out = {"model": model, "created_at": now(), "response": choice.answer, "done": True,
           "done_reason": _done_reason(choice), **_stats(choice.reply)}
    if choice.reply.thinking and not req.hide_reasoning:
        out["thinking"] = choice.reply.thinking
    return out


def _error(status: int, message: str, headers: dict | None = None) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status, headers=headers)


def ollama_routes(server, max_body_bytes: int) -> list[Route]:
    """The Ollama endpoints on `server` (server._Server)."""

    def model_details() -> dict:
        info = server.engine.info
        return {"parent_model": "", "format": "gguf", "family": "qwen3", "families": ["qwen3"],
                "parameter_size": info.size_label or "", "quantization_level": info.path.stem.upper()}

    async def run(request: Request, parse, reply, stream_piece) -> Response:
        if not server.authorized(request):
            return _error(401, "invalid or missing API key")
        try:
            body = await read_body(request, max_body_bytes)
            if isinstance(body, dict) and not body.get("messages", body.get("prompt", "x")):
                # an empty request loads the model (Ollama's way to warm it): it is loaded
                return JSONResponse({"model": body.get("model") or server.model_name, "created_at": now(),
                                     "done": True, "done_reason": "load",
                                     **({"message": {"role": "assistant", "content": ""}} if "messages" in body
                                        else {"response": ""})})
            req = parse(body)
            req.n = 1
            headers = server.report_ignored(req.ignored)
            generation = server.generation(req)
        except RequestError as e:
            return _error(e.status, e.message)
        model = req.model or server.model_name
        ticket = server.admit()
        if ticket is None:
            return _error(429, "the server is busy; retry later")
        if not req.stream:
            try:
                choices = await run_to_end(generation)
            except ChatError as e:
                return _error(error_kind(e)[0], str(e), headers)
            finally:
                ticket.release()
            server.metrics.record(choices)
            return JSONResponse(reply(model, req, choices[0]), headers=headers)

        async def lines():
            async for item in events(generation, ticket):
                if isinstance(item, Exception):
                    yield json.dumps({"error": str(item)}) + "\n"
                elif isinstance(item, ChoiceEvent):
                    piece = stream_piece(model, req, item.event)
                    if piece is not None:
                        yield json.dumps(piece) + "\n"   # ASCII: no U+2028/U+0085 for a line splitter to cut at
                else:
                    server.metrics.record(item)
                    done = reply(model, req, item[0])
                    done.update({"message": {"role": "assistant", "content": ""}} if "message" in done
                                else {"response": ""})
                    done.pop("thinking", None)
                    yield json.dumps(done) + "\n"
        return StreamingResponse(lines(), media_type="application/x-ndjson", headers=headers)

    def chat_piece(model, req, event) -> dict | None:
        message: dict[str, Any] = {"role": "assistant", "content": ""}
        if event.kind == "thinking" and not req.hide_reasoning:
            message["thinking"] = event.text
        elif event.kind == "answer":
            message["content"] = event.text
        elif event.kind == "tool_call":
            message["tool_calls"] = _calls([event.call])
        else:
            return None
        return {"model": model, "created_at": now(), "message": message, "done": False}

    def generate_piece(model, req, event) -> dict | None:
        if event.kind == "thinking" and not req.hide_reasoning:
            return {"model": model, "created_at": now(), "response": "", "thinking": event.text, "done": False}
        if event.kind == "answer":
            return {"model": model, "created_at": now(), "response": event.text, "done": False}
        return None

    async def chat(request: Request) -> Response:
        return await run(request, parse_chat, chat_reply, chat_piece)

    async def generate(request: Request) -> Response:
        return await run(request, parse_generate, generate_reply, generate_piece)

    def entry(name: str) -> dict:
        path = server.engine.info.path
        return {"name": name, "model": name, "size": server.engine.info.size_bytes,
                "modified_at": datetime.fromtimestamp(path.stat().st_mtime, timezone.utc).isoformat(),
                "digest": hashlib.sha256(str(path).encode()).hexdigest(), "details": model_details()}

    async def tags(_: Request) -> Response:
        return JSONResponse({"models": [entry(n) for n in server.model_names]})

    async def show(request: Request) -> Response:
        try:
            await read_body(request, max_body_bytes)
        except RequestError as e:
            return _error(e.status, e.message)
        engine = server.engine
        return JSONResponse({"modelfile": "", "parameters": "", "template": engine.info.chat_template or "",
                             "details": model_details(), "capabilities": ["completion", "tools", "thinking"],
                             "model_info": {"general.architecture": "qwen3", "qwen3.context_length": engine.n_ctx},
                             "modified_at": entry(server.model_name)["modified_at"]})

    async def version(_: Request) -> Response:
        return JSONResponse({"version": OLLAMA_VERSION})

    async def ps(_: Request) -> Response:
        return JSONResponse({"models": [{**entry(n), "expires_at": "2100-01-01T00:00:00Z", "size_vram": 0}
                                        for n in server.model_names]})

    return [Route("/api/chat", chat, methods=["POST"]), Route("/api/generate", generate, methods=["POST"]),
            Route("/api/tags", tags), Route("/api/show", show, methods=["POST"]), Route("/api/version", version),
            Route("/api/ps", ps)]
