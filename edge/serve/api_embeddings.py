"""The search endpoints: OpenAI's /v1/embeddings, the Jina/Cohere /v1/rerank that llama-server
serves, and Ollama's /api/embed, over an Embedder (embedding.py) held beside the chat Engine.

Bodies are read as strictly as the chat endpoint's (openai_api.decode_body: UTF-8, strict JSON,
text only) and every field is accounted for: an unknown one is a 400 naming it. The work runs on a
worker thread, one request at a time on the Embedder (its lock), so a chat on the same server keeps
streaming; past `queue` waiting requests a 429 answers. Shapes:

- /v1/embeddings: {"input": str | [str], "model", "dimensions", "encoding_format": "float" |
  "base64", "user"} (+ "instruction": Qwen's query task, and "truncate") -> {"object": "list",
  "data": [{"object": "embedding", "index", "embedding"}], "model", "usage"}. Token arrays as input
  are refused (the vocabulary is the server's business).
- /v1/rerank: {"query", "documents": [str | {"text"}], "top_n", "return_documents", "model"}
  (+ "instruction") -> {"object": "list", "model", "results": [{"index", "relevance_score",
  "document": {"text"}?}], "usage"}, best first (llama-server's and Jina's shape).
- /api/embed: Ollama's {"model", "input", "truncate" (Ollama's default: true), "dimensions",
  "keep_alive", "options"} -> {"model", "embeddings", "total_duration", "load_duration",
  "prompt_eval_count"}; its errors are Ollama's {"error": "..."}.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from edge.runtime.embedding import EmbedError, Embedder
from edge.runtime.openmp import release_thread_pool
from edge.serve.openai_api import RequestError, error_body
from edge.protocol.retrieval_format import InputError, base64_floats, check_dimensions, check_texts

EMBEDDINGS_FIELDS = {"input", "model", "dimensions", "encoding_format", "user", "instruction", "truncate"}
RERANK_FIELDS = {"query", "documents", "top_n", "return_documents", "model", "instruction", "truncate"}
OLLAMA_FIELDS = {"model", "input", "truncate", "dimensions", "keep_alive", "options"}


class _Admission:
    """At most `capacity` search requests in (running or waiting for the Embedder)."""

    def __init__(self, capacity: int):
        self.capacity, self.active, self._lock = capacity, 0, threading.Lock()

    def enter(self) -> bool:
        with self._lock:
            if self.active >= self.capacity:
                return False
            self.active += 1
            return True

    def leave(self) -> None:
        with self._lock:
            self.active -= 1


def _fields(body: Any, allowed: set[str], required: tuple[str, ...]) -> dict:
    if not isinstance(body, dict):
        raise RequestError("the body must be a JSON object")
    for key in body:
        if key not in allowed:
            raise RequestError(f"unrecognized request argument: {key}", key)
    for key in required:
        if body.get(key) is None:
            raise RequestError(f"missing required field: {key}", key)
    return body


def _optional(body: dict, key: str, kind: type, default: Any = None) -> Any:
    value = body.get(key)
    if value is None:
        return default
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise RequestError(f"{key} must be {'an integer' if kind is int else 'a boolean' if kind is bool else 'a string'}", key)
    return value


def _texts(value: Any, key: str) -> list[str]:
    if isinstance(value, list) and value and all(isinstance(v, int) and not isinstance(v, bool) for v in value) \
            or isinstance(value, list) and any(isinstance(v, list) for v in value):
        raise RequestError(f"{key} as token ids is not supported: send text", key)
    try:
        return check_texts(value, key)
    except InputError as e:
        raise RequestError(str(e), key) from None


def parse_embeddings(body: Any, n_embd: int) -> dict:
    """An OpenAI embeddings request, checked: Embedder.embed's arguments and encoding_format."""
    b = _fields(body, EMBEDDINGS_FIELDS, ("input",))
    fmt = _optional(b, "encoding_format", str, "float")
    if fmt not in ("float", "base64"):
        raise RequestError(f"encoding_format must be \"float\" or \"base64\", not {fmt!r}", "encoding_format")
    return {"texts": _texts(b["input"], "input"), "dimensions": _dimensions(b, n_embd),
            "instruction": _instruction(b), "truncate": _optional(b, "truncate", bool, False), "format": fmt,
            "single": isinstance(b["input"], str)}


def parse_rerank(body: Any) -> dict:
    """A Jina/Cohere rerank request, checked."""
    b = _fields(body, RERANK_FIELDS, ("query", "documents"))
    if not isinstance(b["query"], str):
        raise RequestError("query must be a string", "query")
    docs = b["documents"]
    if isinstance(docs, list):
        docs = [d["text"] if isinstance(d, dict) and set(d) == {"text"} else d for d in docs]
    top_n = _optional(b, "top_n", int)
    if top_n is not None and top_n < 1:
        raise RequestError("top_n must be at least 1", "top_n")
    try:
        check_texts(b["query"], "query")
    except InputError as e:
        raise RequestError(str(e), "query") from None
    return {"query": b["query"], "documents": _texts(docs, "documents"), "top_n": top_n,
            "return_documents": _optional(b, "return_documents", bool, False), "instruction": _instruction(b),
            "truncate": _optional(b, "truncate", bool, False)}


def _dimensions(b: dict, n_embd: int) -> int | None:
    if b.get("dimensions") is None:
        return None
    try:
        return check_dimensions(b["dimensions"], n_embd)
    except InputError as e:
        raise RequestError(str(e), "dimensions") from None


def _instruction(b: dict) -> str | None:
    value = _optional(b, "instruction", str)
    if value is not None:
        try:
            check_texts(value, "instruction")
        except InputError as e:
            raise RequestError(str(e), "instruction") from None
    return value


def embedding_routes(embedders: list[Embedder], *, authorized: Callable[[Request], bool], max_body_bytes: int,
                     queue: int = 16) -> list[Route]:
    """The search routes over `embedders` (an embedding model, a reranker, or both): /v1/embeddings and
    /api/embed go to the embedding model, /v1/rerank to the reranker; a path whose model is not
    loaded answers 400 saying which `serve` option loads one."""
    admission = _Admission(1 + queue)
    by_purpose = {e.purpose: e for e in embedders}
    names = {e.purpose: e.path.stem for e in embedders}

    def model_for(purpose: str) -> Embedder:
        if purpose not in by_purpose:
            option = "--embedding-model" if purpose == "embedding" else "--rerank-model"
            raise RequestError(f"this server has no {purpose} model loaded (start `qwen3-edge serve` with {option} M)",
                               "model")
        return by_purpose[purpose]

    async def read(request: Request) -> Any:
        from edge.serve.api_runtime import read_body   # one bounded reader for every endpoint
        return await read_body(request, max_body_bytes)

    async def handle(request: Request, purpose: str, parse, work, ollama: bool = False) -> Response:
        def fail(status: int, message: str, param: str | None = None, kind: str = "invalid_request_error",
                 headers: dict | None = None) -> Response:
            body = {"error": message} if ollama else error_body(message, param, kind)
            return JSONResponse(body, status_code=status, headers=headers)
        if not authorized(request):
            return fail(401, "invalid or missing API key", kind="authentication_error")
        try:
            model = model_for(purpose)
            req = parse(await read(request), model)
        except RequestError as e:
            return fail(e.status, e.message, e.param)
        if not admission.enter():
            return fail(429, "the server is busy with other search requests; retry later", kind="rate_limit_exceeded",
                        headers={"Retry-After": "1"})
        try:
            return JSONResponse(await run_in_threadpool(released(work), model, req))
        except EmbedError as e:
            return fail(400, str(e), "input")
        finally:
            admission.leave()

    def do_embeddings(embedder: Embedder, req: dict) -> dict:
        vectors, n = embedder.embed_counted(req["texts"], instruction=req["instruction"], dimensions=req["dimensions"],
                                            truncate=req["truncate"])
        encode = base64_floats if req["format"] == "base64" else (lambda v: v.tolist())
        return {"object": "list", "model": names["embedding"],
                "data": [{"object": "embedding", "index": i, "embedding": encode(v)} for i, v in enumerate(vectors)],
                "usage": {"prompt_tokens": n, "total_tokens": n}}

    def do_rerank(embedder: Embedder, req: dict) -> dict:
        scores, n = embedder.rerank_counted(req["query"], req["documents"], instruction=req["instruction"],
                                            truncate=req["truncate"])
        order = sorted(range(len(scores)), key=lambda i: -scores[i])[:req["top_n"] or len(scores)]
        results = [{"index": i, "relevance_score": float(scores[i]),
                    **({"document": {"text": req["documents"][i]}} if req["return_documents"] else {})} for i in order]
        return {"object": "list", "model": names["reranker"], "results": results,
                "usage": {"prompt_tokens": n, "total_tokens": n}}

    def do_ollama(embedder: Embedder, req: dict) -> dict:
        started = time.perf_counter_ns()
        vectors, n = embedder.embed_counted(req["texts"], dimensions=req["dimensions"], truncate=req["truncate"])
        return {"model": names["embedding"], "embeddings": vectors.tolist(), "total_duration": time.perf_counter_ns() - started,
                "load_duration": 0, "prompt_eval_count": n}

    def parse_ollama(body: Any, embedder: Embedder) -> dict:
        b = _fields(body, OLLAMA_FIELDS, ("input",))
        return {"texts": _texts(b["input"], "input"), "dimensions": _dimensions(b, embedder.n_embd),
                "truncate": _optional(b, "truncate", bool, True)}

    async def embeddings(request: Request) -> Response:
        return await handle(request, "embedding", lambda b, e: parse_embeddings(b, e.n_embd), do_embeddings)

    async def rerank(request: Request) -> Response:
        return await handle(request, "reranker", lambda b, e: parse_rerank(b), do_rerank)

    async def ollama_embed(request: Request) -> Response:
        return await handle(request, "embedding", parse_ollama, do_ollama, ollama=True)

    return [Route("/v1/embeddings", embeddings, methods=["POST"]), Route("/v1/rerank", rerank, methods=["POST"]),
            Route("/api/embed", ollama_embed, methods=["POST"])]


def released(work):
    """`work` run on a pooled worker thread, which then gives its OpenMP pool back (openmp.py):
    a search kept in one of starlette's long-lived threads would slow the chat's decoding."""
    def run(*args):
        try:
            return work(*args)
        finally:
            release_thread_pool()
    return run
