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
import contextlib
import hmac
import json
import threading
import time
from collections.abc import AsyncIterator
from typing import Any

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from .chat import BackendError, Chat, ChatError, Event
from .engine import Engine
from .openai_api import (ChatRequest, RequestError, StopFilter, chunk, completion, completion_id, decode_body,
                         error_body, finish_reason, parse_request, tool_call_deltas, usage)

MAX_BODY_BYTES = 1 << 20
DEFAULT_QUEUE = 16    # requests that may wait for a slot
RETRY_AFTER_S = 1


class _Generation:
    """One request's generation, run on a worker thread (one slot of the model, or its lock)."""

    def __init__(self, server: "_Server", req: ChatRequest):
        self.server, self.req = server, req
        self.cancelled = threading.Event()
        self.stopped_by_string = False
        self.chat = Chat(server.engine, system=req.system, mode=req.mode, budget=req.budget,
                         max_tokens=req.max_tokens, presence_penalty=req.presence_penalty, seed=req.seed,
                         sampling=req.sampling)
        self.chat.history = list(req.history)

    def cancel(self) -> None:
        self.cancelled.set()
        self.chat.cancel()

    def run(self, emit) -> None:
        """Stream events to `emit(event)`; a stop string cuts the answer and ends the generation."""
        with self.server.lock or contextlib.nullcontext():
            if self.cancelled.is_set():  # the client left while the request was queued
                return
            stops = StopFilter(self.req.stop)
            for event in self.chat.stream(self.req.user, **self.req.turn_options()):
                if self.cancelled.is_set():
                    self.chat.cancel()
                if event.kind == "answer" and self.req.stop:
                    text = stops.feed(event.text)
                    if stops.stopped:
                        self.stopped_by_string = True
                        self.chat.cancel()
                    if text:
                        emit(Event("answer", text))
                    continue
                if event.kind == "done" and (tail := stops.flush()):
                    emit(Event("answer", tail))
                emit(event)


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
    def __init__(self, engine: Engine, api_key: str | None, model_name: str, queue: int):
        self.engine, self.api_key, self.model_name = engine, api_key, model_name
        self.slots = getattr(engine, "parallel", 1)
        # one generation at a time on a single-slot engine; parallel slots wait in the scheduler
        self.lock = threading.Lock() if self.slots == 1 else None
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

    def authorized(self, request: Request) -> bool:
        if not self.api_key:
            return True
        given = request.headers.get("authorization", "")
        return hmac.compare_digest(given.encode(), f"Bearer {self.api_key}".encode())


def _error(status: int, message: str, param: str | None = None, kind: str = "invalid_request_error") -> JSONResponse:
    return JSONResponse(error_body(message, param, kind), status_code=status)


def create_app(engine: Engine, *, api_key: str | None = None, model_name: str | None = None,
               max_body_bytes: int = MAX_BODY_BYTES, queue: int = DEFAULT_QUEUE, embedders: list | None = None) -> Starlette:
    """The ASGI app serving `engine`: /v1/chat/completions, /v1/models, /health. `queue`:
    requests that may wait while every slot is busy. `embedders`: an embedding model and/or a
    reranker (embedding.Embedder) served beside it (api_embeddings.py)."""
    server = _Server(engine, api_key, model_name or engine.info.path.stem, queue)

    async def health(_: Request) -> Response:
        return JSONResponse({"status": "ok", "model": server.model_name, "busy": server.active})

    async def models(request: Request) -> Response:
        if not server.authorized(request):
            return _error(401, "invalid or missing API key", kind="authentication_error")
        return JSONResponse({"object": "list", "data": [{"id": server.model_name, "object": "model",
                                                         "created": int(time.time()), "owned_by": "qwen3-edge"}]})

    async def chat_completions(request: Request) -> Response:
        if not server.authorized(request):
            return _error(401, "invalid or missing API key", kind="authentication_error")
        body = b""
        async for part in request.stream():
            body += part
            if len(body) > max_body_bytes:
                return _error(413, f"request body over {max_body_bytes} bytes")
        try:
            req = parse_request(decode_body(body), engine.n_ctx)
        except RequestError as e:
            return _error(e.status, e.message, e.param)
        ticket = server.admit()
        if ticket is None:
            return JSONResponse(error_body(f"the server is busy: {server.slots} slot(s) running and "
                                           f"{server.capacity - server.slots} request(s) waiting; retry later",
                                           kind="rate_limit_exceeded", code="server_busy"),
                                status_code=429, headers={"Retry-After": str(RETRY_AFTER_S)})
        generation = _Generation(server, req)
        cid, model = completion_id(), server.model_name
        if req.stream:
            return StreamingResponse(_sse(generation, cid, model, ticket), media_type="text/event-stream")
        events: list[Event] = []
        try:
            await run_in_threadpool(generation.run, events.append)
        except BackendError as e:
            return _error(503, str(e), kind="server_error")
        except ChatError as e:
            return _error(400, str(e))
        finally:
            ticket.release()
        reply = events[-1].reply
        answer = "".join(e.text for e in events if e.kind == "answer")
        reason = "stop" if generation.stopped_by_string else finish_reason(reply.stop_reason)
        return JSONResponse(completion(cid, model, reply, answer, reason))

    return Starlette(routes=[
        Route("/health", health), Route("/v1/models", models),
        Route("/v1/chat/completions", chat_completions, methods=["POST"]),
        *_search_routes(embedders, server, max_body_bytes, queue),
    ], exception_handlers={HTTPException: _http_error, Exception: _server_error})


def _search_routes(embedders: list | None, server: _Server, max_body_bytes: int, queue: int) -> list:
    """/v1/embeddings, /v1/rerank and /api/embed over the embedders (api_embeddings.py)."""
    from .api_embeddings import embedding_routes
    return embedding_routes(embedders or [], authorized=server.authorized, max_body_bytes=max_body_bytes, queue=queue)


async def _http_error(_: Request, exc: HTTPException) -> Response:
    """404, 405 and the like as OpenAI error objects, not Starlette's plain text."""
    return JSONResponse(error_body(exc.detail, kind="invalid_request_error"), status_code=exc.status_code,
                        headers=exc.headers)


async def _server_error(_: Request, exc: Exception) -> Response:
    """A bug is still a 500, but one an OpenAI client can read."""
    return JSONResponse(error_body(f"internal error: {type(exc).__name__}", kind="server_error"), status_code=500)


async def _sse(generation: _Generation, cid: str, model: str, ticket: _Ticket) -> AsyncIterator[str]:
    """Server-sent events: role, reasoning_content / content deltas, finish, usage, [DONE]."""
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[Any] = asyncio.Queue()
    def emit(event: Event) -> None:
        loop.call_soon_threadsafe(queue.put_nowait, event)

    def work() -> None:
        try:
            generation.run(emit)
        except Exception as e:  # delivered to the client as an error event
            loop.call_soon_threadsafe(queue.put_nowait, e)
        finally:
            ticket.release()  # the slot is free only once the worker has stopped
            loop.call_soon_threadsafe(queue.put_nowait, None)

    worker = threading.Thread(target=work, daemon=True)
    worker.start()

    def data(obj: dict) -> str:
        return f"data: {json.dumps(obj, ensure_ascii=False)}\n\n"

    calls = 0
    try:
        yield data(chunk(cid, model, {"role": "assistant", "content": ""}))
        while (item := await queue.get()) is not None:
            if isinstance(item, Exception):
                yield data(error_body(str(item), kind="invalid_request_error" if isinstance(item, ChatError) and not isinstance(item, BackendError) else "server_error"))
                continue
            if item.kind == "thinking":
                yield data(chunk(cid, model, {"reasoning_content": item.text}))
            elif item.kind == "answer":
                yield data(chunk(cid, model, {"content": item.text}))
            elif item.kind == "tool_call":
                for delta in tool_call_deltas(calls, item.call):
                    yield data(chunk(cid, model, delta))
                calls += 1
            elif item.kind == "done":
                reason = "stop" if generation.stopped_by_string else finish_reason(item.reply.stop_reason)
                yield data(chunk(cid, model, {"notices": list(item.reply.notices)} if item.reply.notices else {}, reason))
                if generation.req.include_usage:
                    yield data(chunk(cid, model, {}, usage_=usage(item.reply)))
        yield "data: [DONE]\n\n"
    finally:
        generation.cancel()  # a client that went away stops its generation
