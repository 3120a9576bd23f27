"""An OpenAI-compatible HTTP server over one Engine (Starlette; run it with uvicorn).

`create_app(engine)` returns the ASGI app, so a Python desktop app can mount it. An engine loaded
with parallel slots runs that many generations at once (scheduler.py: each request's Chat waits
for a free slot, which keeps its conversation's KV prefix); a single-slot engine runs one at a
time under a lock. Past the slots, at most `queue` requests wait; beyond that a request gets a 429
with Retry-After. A streaming client that disconnects cancels its generation; each request is a
Chat built from its messages, so the KV cache prefix carries over between requests of the same
conversation.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import re
import sys
import threading
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, PlainTextResponse, Response, StreamingResponse
from starlette.routing import Route

from edge.chat import BackendError, ChatError
from edge.serve.api_anthropic import anthropic_routes
from edge.serve.api_anthropic import error_body as anthropic_error
from edge.serve.api_completions import TextChunkShaper, parse_completion_request, text_completion
from edge.serve.api_completions import completion_id as text_completion_id
from edge.serve.api_ollama import ollama_routes
from edge.serve.api_runtime import error_kind, events, read_body, run_to_end
from edge.serve.completion import ChoiceEvent, Generation, engine_lock
from edge.runtime.engine import Engine
from edge.serve.metrics import CountRequests, Metrics
from edge.serve.openai_api import (ChatRequest, ChunkShaper, RequestError, completion_id, completion_response, decode_body,
                         error_body, parse_request)

MAX_BODY_BYTES = 1 << 20
DEFAULT_QUEUE = 16    # requests that may wait for a slot
RETRY_AFTER_S = 1
IGNORED_HEADER = "X-Ignored-Fields"


class _Ticket:
    """A request's place among those running or waiting; given back once, at the latest when
    dropped (a stream whose client left before it started is never iterated)."""

    def __init__(self, server: "_Server"):
        self.server, self.held = server, True

    def release(self) -> None:
        with self.server._count_lock:
            if self.held:
                self.held = False
                self.server.active -= 1

    def __del__(self) -> None:
        self.release()


class _Server:
    def __init__(self, engine: Engine, api_key: str | None, model_names: list[str], queue: int):
        self.engine, self.api_key, self.model_names = engine, api_key, model_names
        self.model_name = model_names[0]
        self.ignored_seen: set[str] = set()   # fields already reported on the console
        self.metrics = Metrics()
        self.slots = getattr(engine, "parallel", 1)
        # one generation at a time on a single-slot engine; parallel slots wait in the scheduler
        self.lock = engine_lock(engine) if self.slots == 1 else None   # shared with edge.complete()
        self.capacity = self.slots + queue
        self._count_lock = threading.RLock()  # reentrant: a ticket may be collected while it is held
        self.active = 0                   # generations running or queued

    def admit(self) -> _Ticket | None:
        """A ticket while fewer than slots + queue requests are in; None when full."""
        with self._count_lock:
            if self.active >= self.capacity:
                return None
            self.active += 1
        return _Ticket(self)

    def report_ignored(self, fields: list[str]) -> dict[str, str]:
        """The response header naming what a request had that was ignored; each distinct field is
        said once on the console (messages[3].id and messages[0].id are one field, messages[].id)."""
        if not fields:
            return {}
        for name in {_generic(f) for f in fields} - self.ignored_seen:
            self.ignored_seen.add(name)
            print(f"qwen3-edge serve: ignoring request field {ascii(name)} (not used by this server)", file=sys.stderr)
        names = (f.encode("unicode_escape").decode("ascii") for f in dict.fromkeys(fields))  # a header is ASCII, one line
        return {IGNORED_HEADER: ", ".join(names)[:2000]}

    def busy(self) -> Response:
        return JSONResponse(error_body(f"the server is busy: {self.slots} slot(s) running and "
                                       f"{self.capacity - self.slots} request(s) waiting; retry later",
                                       kind="rate_limit_exceeded", code="server_busy"),
                            status_code=429, headers={"Retry-After": str(RETRY_AFTER_S)})

    def generation(self, req: ChatRequest) -> Generation:
        """The one generation path every endpoint uses (completion.py)."""
        return Generation(self.engine, req, self.lock)

    def authorized(self, request: Request) -> bool:
        if not self.api_key:
            return True
        given = request.headers.get("authorization", "")
        return hmac.compare_digest(given.encode(), f"Bearer {self.api_key}".encode())


def _error(status: int, message: str, param: str | None = None, kind: str = "invalid_request_error",
           headers: dict | None = None) -> JSONResponse:
    return JSONResponse(error_body(message, param, kind), status_code=status, headers=headers)


def _generic(field: str) -> str:
    """messages[3].id -> messages[].id: the field, not where it was."""
    return re.sub(r"\[\d+\]", "[]", field)


def create_app(engine: Engine, *, api_key: str | None = None, model_name: str | list[str] | None = None,
               max_body_bytes: int = MAX_BODY_BYTES, queue: int = DEFAULT_QUEUE, embedders: list | None = None) -> Starlette:
    """The ASGI app serving `engine`: /v1/chat/completions, /v1/models, /health. `model_name`: the
    name (or names: aliases) /v1/models shows; `queue`: requests that may wait while every slot
    is busy; `embedders`: an embedding model and/or a reranker (embedding.Embedder) served beside
    it (api_embeddings.py)."""
    names = [model_name] if isinstance(model_name, str) else list(model_name or []) or [engine.info.path.stem]
    server = _Server(engine, api_key, names, queue)

    async def health(_: Request) -> Response:
        return JSONResponse({"status": "ok", "model": server.model_name, "busy": server.active,
                             "backend": getattr(engine, "backend", None), "device": getattr(engine, "device", None)})

    page = (Path(__file__).with_name("chat_page.html")).read_text(encoding="utf-8")

    async def chat_page(_: Request) -> Response:
        return HTMLResponse(page)

    async def models(request: Request) -> Response:
        if not server.authorized(request):
            return _error(401, "invalid or missing API key", kind="authentication_error")
        return JSONResponse({"object": "list", "data": [{"id": name, "object": "model", "created": int(time.time()),
                                                         "owned_by": "qwen3-edge"} for name in server.model_names]})

    async def run_openai(request: Request, parse, respond, shaper_for) -> Response:
        """An OpenAI-style endpoint: parse(body) -> (ChatRequest, extra); the generation streamed
        through shaper_for(cid, req, extra) or answered with respond(cid, req, extra, choices)."""
        if not server.authorized(request):
            return _error(401, "invalid or missing API key", kind="authentication_error")
        try:
            req, extra = parse(await read_body(request, max_body_bytes))
            headers = server.report_ignored(req.ignored)
            generation = server.generation(req)
        except RequestError as e:
            return _error(e.status, e.message, e.param)
        ticket = server.admit()
        if ticket is None:
            return server.busy()
        cid = completion_id() if respond is chat_response else text_completion_id()
        if req.stream:
            return StreamingResponse(_sse(server, generation, shaper_for(cid, req, extra), ticket),
                                     media_type="text/event-stream", headers=headers)
        try:
            choices = await run_to_end(generation)
        except RequestError as e:
            return _error(e.status, e.message, e.param, headers=headers)
        except ChatError as e:
            status, kind = error_kind(e)
            return _error(status, str(e), kind=kind, headers=headers)
        finally:
            ticket.release()
        server.metrics.record(choices)
        return JSONResponse(respond(cid, req, extra, choices), headers=headers)

    def chat_response(cid, req, _, choices):
        return completion_response(cid, server.model_name, req, choices)

    async def chat_completions(request: Request) -> Response:
        return await run_openai(request, lambda body: (parse_request(body), None), chat_response,
                                lambda cid, req, _: ChunkShaper(cid, server.model_name, req))

    async def completions(request: Request) -> Response:
        return await run_openai(request, parse_completion_request,
                                lambda cid, req, echo, choices: text_completion(cid, server.model_name, req, choices,
                                                                                echo),
                                lambda cid, req, echo: TextChunkShaper(cid, server.model_name, req, echo))

    async def metrics(_: Request) -> Response:
        return PlainTextResponse(server.metrics.render(server.slots, server.active),
                                 media_type="text/plain; version=0.0.4")

    app = Starlette(routes=[
        Route("/", chat_page), Route("/health", health), Route("/v1/models", models), Route("/metrics", metrics),
        Route("/v1/chat/completions", chat_completions, methods=["POST"]),
        Route("/v1/completions", completions, methods=["POST"]),
        *ollama_routes(server, max_body_bytes), *anthropic_routes(server, max_body_bytes),
        *_search_routes(embedders, server, max_body_bytes, queue),
    ], exception_handlers={HTTPException: _http_error, Exception: _server_error})
    app.state.qwen3_edge = server  # dialect modules and tests reach the server's state here
    app.add_middleware(CountRequests, metrics=server.metrics)
    return app


def _search_routes(embedders: list | None, server: _Server, max_body_bytes: int, queue: int) -> list:
    """/v1/embeddings, /v1/rerank and /api/embed over the embedders (api_embeddings.py)."""
    from edge.serve.api_embeddings import embedding_routes
    return embedding_routes(embedders or [], authorized=server.authorized, max_body_bytes=max_body_bytes, queue=queue)


async def _http_error(request: Request, exc: HTTPException) -> Response:
    """404, 405 and the like in the caller's API's error shape (Ollama's under /api/, else
    OpenAI's), not Starlette's plain text."""
    if request.url.path.startswith("/api/"):
        return JSONResponse({"error": exc.detail}, status_code=exc.status_code, headers=exc.headers)
    if request.url.path.startswith("/v1/messages"):
        return JSONResponse(anthropic_error(exc.detail, "not_found_error" if exc.status_code == 404 else
                                            "invalid_request_error"), status_code=exc.status_code, headers=exc.headers)
    return JSONResponse(error_body(exc.detail, kind="invalid_request_error"), status_code=exc.status_code,
                        headers=exc.headers)


async def _server_error(_: Request, exc: Exception) -> Response:
    """A bug is still a 500, but one an OpenAI client can read."""
    return JSONResponse(error_body(f"internal error: {type(exc).__name__}", kind="server_error"), status_code=500)


async def _sse(server: _Server, generation: Generation, shaper, ticket: _Ticket) -> AsyncIterator[str]:
    """Server-sent events: role, reasoning_content / content deltas, finish, usage, [DONE]."""
    def data(obj: dict) -> str:
        return f"data: {json.dumps(obj, ensure_ascii=False)}\n\n"

    for c in shaper.start():
        yield data(c)
    async for item in events(generation, ticket):
        if isinstance(item, Exception):
            _, kind = error_kind(item)
            yield data(error_body(str(item), kind=kind))
        elif isinstance(item, ChoiceEvent):
            for c in shaper.feed(item):
                yield data(c)
        else:
            server.metrics.record(item)
            for c in shaper.finish(item):
                yield data(c)
    yield "data: [DONE]\n\n"
