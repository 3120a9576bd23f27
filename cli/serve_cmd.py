"""`qwen3-edge serve`: the OpenAI-compatible server on loopback (uvicorn over edge.serve.server)."""

from __future__ import annotations

import ipaddress
from pathlib import Path
from typing import List, Optional

import typer

from .tune_cmd import tuning_line
from .console import err, friendly_errors, where
from edge.runtime.embedding import wrong_model
from edge.runtime.engine import EngineError

from .embed_cmd import load_search_models
from .session import CTX, FLASH_ATTN, GPU_LAYERS, KV_CACHE, MMAP, MODEL_HELP, PROMPT_CACHE, DRAFT, RPC, SOURCE, THREADS, load_engine


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def served_names(path: Path, models_dir: Path, aliases: list[str] | None) -> list[str]:
    """What /v1/models shows: the --alias names, else the store's name for a stored model
    (qwen3-0.6b:q4_k_m, the name clients will send back) or the file's stem for a path."""
    if aliases:
        return list(dict.fromkeys(aliases))
    try:
        path.resolve().relative_to(models_dir.resolve())
    except ValueError:
        return [path.stem]
    return [f"{path.parent.name}:{path.stem}"]


def serve(model: Optional[str] = typer.Argument(None, help=MODEL_HELP),
          host: str = typer.Option("127.0.0.1", "--host", help="Address to bind (loopback by default)."),
          port: int = typer.Option(8080, "--port", help="Port."),
          api_key: Optional[str] = typer.Option(None, "--api-key", envvar="QWEN3_EDGE_API_KEY",
                                                help="Require 'Authorization: Bearer KEY'."),
          ctx: int = CTX, threads: Optional[int] = THREADS, gpu_layers: Optional[int] = GPU_LAYERS,
          kv_cache: str = KV_CACHE, mmap: bool = MMAP,
          parallel: Optional[int] = typer.Option(None, "--parallel", min=1,
                                                 help="Requests served at once, each with the whole --ctx (default: as "
                                                      "many as the memory plan fits, at most 4)."),
          queue: int = typer.Option(16, "--queue", min=0,
                                    help="Requests that may wait for a slot; more get a 429 with Retry-After."),
          alias: Optional[List[str]] = typer.Option(None, "--alias", help="The model's name in /v1/models "
                                                    "(repeatable; default: the store name, or the file's stem)."),
          source: Optional[str] = SOURCE, rpc: Optional[str] = RPC, prompt_cache: bool = PROMPT_CACHE,
          draft: Optional[str] = DRAFT, flash_attn: Optional[bool] = FLASH_ATTN,
          embedding_model: Optional[str] = typer.Option(None, "--embedding-model", help="Also serve this embedding "
                                                        "model (/v1/embeddings, /api/embed), e.g. qwen3-embedding-0.6b."),
          rerank_model: Optional[str] = typer.Option(None, "--rerank-model", help="Also serve this reranker "
                                                     "(/v1/rerank), e.g. qwen3-reranker-0.6b.")) -> None:
    """Serve a model over an OpenAI-compatible API (/v1/chat/completions, /v1/models, /health), with
    search models beside it (/v1/embeddings, /v1/rerank, /api/embed)."""
    import uvicorn

    from edge.serve.server import create_app
    from edge.models.store import ModelStore

    if not _is_loopback(host) and not api_key:
        err.print(f"[yellow]warning:[/] serving on {host} without --api-key: anyone who can reach it can use it")
    with friendly_errors():
        engine = load_engine(model, ctx, threads, gpu_layers, kv_cache, mmap, source=source, rpc=rpc,
                             parallel=parallel if rpc is None and draft is None else (parallel or 1),  # one slot over
                             prompt_cache=prompt_cache, draft=draft, flash_attn=flash_attn)  # workers, and with a draft (one stream)
        if engine.purpose != "chat":
            raise EngineError(wrong_model(engine.purpose, "serve it as the chat model") +
                              f"; pass it with --{'embedding' if engine.purpose == 'embedding' else 'rerank'}-model")
        embedders = load_search_models(embedding_model, rerank_model, threads, source)
    err.print(f"serving {engine.info.path.name} on http://{host}:{port}/v1 ({where(engine)}, ctx {engine.n_ctx}, "
              f"{engine.parallel} parallel slot(s), queue {queue}; memory plan "
              f"{engine.memory_plan.total_bytes / (1 << 30):.2f} GiB)", soft_wrap=True)
    err.print(f"[dim]{engine.footprint.describe()}[/]", soft_wrap=True)
    names = served_names(engine.info.path, ModelStore().models_dir, alias)
    err.print(f"model name: {', '.join(names)}", soft_wrap=True)
    if line := tuning_line(engine):
        err.print(f"[dim]{line}[/]", soft_wrap=True)
    with engine:
        uvicorn.run(create_app(engine, api_key=api_key, queue=queue, embedders=embedders,
                               model_name=names), host=host, port=port,
                    log_level="warning")
