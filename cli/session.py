"""What `chat`, `run` and `bench` share: resolving MODEL, loading the Engine, building the Chat."""

from __future__ import annotations

import functools
import warnings
from pathlib import Path
from typing import Optional

import typer

from edge.chat import Chat, ChatError
from edge.runtime.engine import Engine, EngineError
from edge.protocol.modes import Mode
from edge.runtime.prompt_cache import PromptCacheWarning
from edge.cluster.rpc import RpcError, parse_endpoints
from edge.models.resolve import resolve_model
from edge.models.store import ModelStore

from .chat_commands import CommandError, parse_budget
from .console import err
from .progress_view import stage_bars

MODEL_HELP = ("A GGUF file, a Hugging Face Qwen3 folder (quantized into the store once), or a store name "
              "such as qwen3-0.6b or qwen3-4b:q8_0 (pulled on first use). Default: qwen3-0.6b:q4_k_m.")

# Typer options shared by the commands that run a model.
CTX = typer.Option(None, "--ctx", help="Context length in tokens (default: what fits 3/4 of the free memory, up to "
                                        "32768; it starts at 2048 and grows as the chat needs); YaRN beyond the "
                                        "model's native context (32768, or 262144 for the 2507 models), up to 4 times it.")
SOURCE = typer.Option(None, "--source", help="Hub to download a store name from: hf or modelscope "
                                             "(default: $QWEN3_EDGE_SOURCE, else hf).")
THREADS = typer.Option(None, "--threads", help="CPU threads (default: physical cores).")
GPU_LAYERS = typer.Option(None, "--gpu-layers", help="Layers to offload (default: all when llama.cpp lists a GPU device; 0 = CPU).")
KV_CACHE = typer.Option(None, "--kv-cache", help="KV cache type: f16, q8_0 or q4_0 (default: f16, quantized only "
                                                 "when memory is short).")
RPC = typer.Option(None, "--rpc", help="Split the model across `qwen3-edge worker`s: HOST:PORT[,HOST:PORT...] "
                                        "(llama.cpp's RPC backend; the protocol has no authentication).")
PROMPT_CACHE = typer.Option(True, "--prompt-cache/--no-prompt-cache",
                            help="Keep the KV state of a long system prompt (256 tokens or more) on disk, so the "
                                 "next start does not evaluate it again (<store>/cache/prompts, 2 GiB at most).")
DRAFT = typer.Option(None, "--draft", help="Speculative decoding: a smaller Qwen3 with the same tokenizer drafts, the "
                                            "model verifies (a GGUF, folder or store name; 'auto': the smallest Qwen3 "
                                            "in the store; 'lookup': n-grams of the prompt, no draft model).")
FLASH_ATTN = typer.Option(None, "--flash-attn/--no-flash-attn",
                          help="llama.cpp's flash attention (default: this machine's calibration; on where the KV "
                               "cache is quantized or layers are on a GPU).")
MMAP = typer.Option(None, "--mmap/--no-mmap", help="Memory-map the weights (fastest load) or read them in (one copy "
                                                  "where llama.cpp repacks quantized weights; the default there).")


def load_engine(model: Optional[str], ctx: Optional[int], threads: Optional[int], gpu_layers: Optional[int],
                kv_cache: Optional[str], mmap: Optional[bool] = None, parallel: int | None = 1, source: str | None = None,
                rpc: str | None = None, prompt_cache: bool = True,
                draft: str | None = None, flash_attn: bool | None = None) -> Engine:
    """Resolve MODEL (pulling or quantizing with progress bars) and open it; warnings go to stderr.
    `draft` (--draft) is resolved like MODEL, or is 'auto' or 'lookup' (draft_model.py)."""
    try:
        rpc_servers = [str(e) for e in parse_endpoints(rpc)] if rpc is not None else None
    except RpcError as e:
        raise EngineError(str(e)) from None  # before any download
    with stage_bars() as bars:
        path = resolve_model(model, ModelStore(), progress=bars, source=source)
        draft_path = resolve_draft(draft, Path(path), ModelStore(), bars, source) if draft is not None else None
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        engine = Engine.load(Path(path), n_ctx=ctx, n_threads=threads, n_gpu_layers=gpu_layers,
                             kv_cache_type=kv_cache, use_mmap=mmap, parallel=parallel, rpc_servers=rpc_servers,
                             flash_attn=flash_attn,
                             grow=True,  # one local stream: the context grows up to --ctx as the chat needs
                             prompt_cache=None if prompt_cache else False,
                             draft=draft_path)  # None: on unless QWEN3_EDGE_PROMPT_CACHE=0
    for w in caught:
        err.print(f"[yellow]warning:[/] {w.message}", soft_wrap=True)
    warnings.showwarning = functools.partial(_show_warning, warnings.showwarning)  # during the chat too
    return engine


def _show_warning(previous, message, category, *args, **kwargs) -> None:
    """A prompt cache that cannot be used (edge/runtime/prompt_cache.py) is said in one line, like the
    warnings of the load; any other warning as before."""
    if issubclass(category, PromptCacheWarning):
        err.print(f"[yellow]warning:[/] {message}", soft_wrap=True)
    else:
        previous(message, category, *args, **kwargs)


def resolve_draft(draft: str, target: Path, store: ModelStore, progress, source: str | None) -> str | Path:
    """--draft's model: 'lookup' as it is, 'auto' the smallest Qwen3 in the store that shares the
    target's tokenizer (none: an error saying what to pull), else resolved like MODEL."""
    from edge.runtime.draft_model import AUTO, LOOKUP, pick_auto
    if draft == LOOKUP:
        return draft
    if draft == AUTO:
        found = pick_auto(target, [(e.path, e.size_bytes) for e in store.entries()])
        if found is None:
            raise EngineError(f"--draft auto: no Qwen3 in the store is smaller than {target.name} with its "
                              f"tokenizer (pull one: qwen3-edge pull qwen3-0.6b)")
        return found
    return resolve_model(draft, store, progress=progress, source=source)


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
