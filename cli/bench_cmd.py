"""`qwen3-edge bench`: prompt processing and generation speed, like llama-bench, through the Engine."""

from __future__ import annotations

import json
from typing import Optional

import typer

from edge.runtime.bench import run_bench
from edge.models.resolve import resolve_model
from edge.models.store import ModelStore

from .console import friendly_errors, human_bytes, out
from .progress_view import stage_bars
from .session import GPU_LAYERS, MODEL_HELP, RPC, THREADS


def bench(model: Optional[str] = typer.Argument(None, help=MODEL_HELP),
          n_prompt: int = typer.Option(512, "--prompt", "-p", help="Prompt tokens (pp)."),
          n_gen: int = typer.Option(128, "--gen", "-n", help="Generated tokens (tg)."),
          repetitions: int = typer.Option(1, "--repetitions", "-r", help="Runs; the best is reported."),
          threads: Optional[int] = THREADS, gpu_layers: Optional[int] = GPU_LAYERS,
          as_json: bool = typer.Option(False, "--json", help="Print one JSON object."),
          rpc: Optional[str] = RPC) -> None:
    """Measure pp and tg tokens/s, time to first token, load time and peak memory."""
    with friendly_errors():
        with stage_bars() as bars:
            path = resolve_model(model, ModelStore(), progress=bars)
        result = run_bench(path, n_prompt=n_prompt, n_gen=n_gen, repetitions=repetitions,
                           n_threads=threads, n_gpu_layers=gpu_layers, rpc_servers=rpc)
    if as_json:
        out.print_json(json.dumps(result.to_dict()))
        return
    fa = "flash attention on" if result.flash_attn else "flash attention off"
    out.print(f"{result.model} · {result.backend} · {result.device} · {result.threads} threads · {fa}", soft_wrap=True)
    out.print(f"pp{n_prompt} {result.pp_tokens_per_s:.1f} tok/s · tg{n_gen} {result.tg_tokens_per_s:.1f} tok/s · "
              f"ttft {result.ttft_s * 1000:.0f} ms · load {result.load_s:.2f}s · peak {human_bytes(result.peak_rss_bytes)}")
