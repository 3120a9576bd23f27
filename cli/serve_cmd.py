"""`qwen3-edge serve`: the OpenAI-compatible server on loopback (uvicorn over edge.server)."""

from __future__ import annotations

import ipaddress
from typing import Optional

import typer

from .tune_cmd import tuning_line
from .console import err, friendly_errors, where
from .session import CTX, GPU_LAYERS, KV_CACHE, MMAP, MODEL_HELP, RPC, SOURCE, THREADS, load_engine


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


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
          source: Optional[str] = SOURCE, rpc: Optional[str] = RPC) -> None:
    """Serve a model over an OpenAI-compatible API (/v1/chat/completions, /v1/models, /health)."""
    import uvicorn

    from edge.server import create_app

    if not _is_loopback(host) and not api_key:
        err.print(f"[yellow]warning:[/] serving on {host} without --api-key: anyone who can reach it can use it")
    with friendly_errors():
        engine = load_engine(model, ctx, threads, gpu_layers, kv_cache, mmap, source=source, rpc=rpc,
                             parallel=parallel if rpc is None else (parallel or 1))  # one slot over workers
    err.print(f"serving {engine.info.path.name} on http://{host}:{port}/v1 ({where(engine)}, ctx {engine.n_ctx}, "
              f"{engine.parallel} parallel slot(s), queue {queue}; memory plan "
              f"{engine.memory_plan.total_bytes / (1 << 30):.2f} GiB)", soft_wrap=True)
    err.print(f"[dim]{engine.footprint.describe()}[/]", soft_wrap=True)
    if line := tuning_line(engine):
        err.print(f"[dim]{line}[/]", soft_wrap=True)
    with engine:
        uvicorn.run(create_app(engine, api_key=api_key, queue=queue), host=host, port=port, log_level="warning")
