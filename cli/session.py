"""What `chat`, `run` and `bench` share: resolving MODEL, loading the Engine, building the Chat."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Optional

import typer

from edge.chat import Chat, ChatError
from edge.engine import DEFAULT_CTX, Engine
from edge.modes import Mode
from edge.resolve import resolve_model
from edge.store import ModelStore

from .chat_commands import CommandError, parse_budget
from .console import err
from .progress_view import stage_bars

MODEL_HELP = ("A GGUF file, a Hugging Face Qwen3 folder (quantized into the store once), or a store name "
              "such as qwen3-0.6b or qwen3-4b:q8_0 (pulled on first use). Default: qwen3-0.6b:q4_k_m.")

# Typer options shared by the commands that run a model.
CTX = typer.Option(DEFAULT_CTX, "--ctx", help="Context length in tokens; YaRN beyond the model's native context "
                                               "(32768, or 262144 for the 2507 models), up to 4 times it.")
SOURCE = typer.Option(None, "--source", help="Hub to download a store name from: hf or modelscope "
                                             "(default: $QWEN3_EDGE_SOURCE, else hf).")
THREADS = typer.Option(None, "--threads", help="CPU threads (default: physical cores).")
GPU_LAYERS = typer.Option(None, "--gpu-layers", help="Layers to offload (default: all when the bindings have a GPU backend; 0 = CPU).")
KV_CACHE = typer.Option("f16", "--kv-cache", help="KV cache type: f16, q8_0 or q4_0.")
MMAP = typer.Option(True, "--mmap/--no-mmap", help="Memory-map the weights (fastest load) or read them in (smallest footprint with Q4 weights).")


def load_engine(model: Optional[str], ctx: int, threads: Optional[int], gpu_layers: Optional[int],
                kv_cache: str, mmap: bool = True, parallel: int | None = 1, source: str | None = None) -> Engine:
    """Resolve MODEL (pulling or quantizing with progress bars) and open it; warnings go to stderr."""
    with stage_bars() as bars:
        path = resolve_model(model, ModelStore(), progress=bars, source=source)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        engine = Engine.load(Path(path), n_ctx=ctx, n_threads=threads, n_gpu_layers=gpu_layers,
                             kv_cache_type=kv_cache, use_mmap=mmap, parallel=parallel)
    for w in caught:
        err.print(f"[yellow]warning:[/] {w.message}", soft_wrap=True)
    return engine


def make_chat(engine: Engine, *, think: Optional[bool], auto: bool, budget: Optional[str], system: Optional[str],
              seed: Optional[int], temperature: Optional[float], top_p: Optional[float], top_k: Optional[int],
              min_p: Optional[float], presence_penalty: float, max_tokens: Optional[int],
              think_time: Optional[float] = None) -> Chat:
    mode = Mode.AUTO if auto else (Mode.NO_THINK if think is False else Mode.THINK)
    overrides = {k: v for k, v in dict(temperature=temperature, top_p=top_p, top_k=top_k, min_p=min_p).items()
                 if v is not None}
    if think_time is not None and think_time <= 0:
        raise ChatError("--think-time takes a number of seconds above 0")
    try:
        tokens = parse_budget(str(budget)) if budget is not None else None
    except CommandError as e:
        raise ChatError(str(e).replace("/budget", "--budget")) from None
    return Chat(engine, system=system, mode=mode, budget=tokens, think_time=think_time, seed=seed, sampling=overrides,
                presence_penalty=presence_penalty, max_tokens=max_tokens)
