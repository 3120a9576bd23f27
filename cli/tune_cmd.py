"""`qwen3-edge tune`: calibrate this machine's defaults for a model (edge/runtime/tune.py) and show them."""

from __future__ import annotations

import json
from typing import Optional

import typer
from rich.table import Table

import edge
from edge.models.resolve import resolve_model
from edge.models.store import ModelStore
from edge.runtime.tune import tune_model

from .console import friendly_errors, out
from .progress_view import stage_bars
from .session import GPU_LAYERS, MODEL_HELP


def tuning_line(engine) -> str | None:
    """The start-up line's word on the calibration: what it chose and whether it ran just now."""
    tuned = getattr(engine, "tuned", None)
    if tuned is None:
        return None
    how = f"measured now in {tuned.seconds:.1f}s" if engine.tuned_now else "cached"
    plan = getattr(engine, "plan", None)
    said = tuned.describe_applied(plan.threads, plan.threads_batch, plan.flash_attn) if plan else tuned.describe()
    return (f"{said} ({how}; `qwen3-edge tune` measures again, --threads, --flash-attn or QWEN3_EDGE_TUNE=off to set); "
            f"llama.cpp's workers wait: {edge.WORKERS_WAIT}")


def tune(model: Optional[str] = typer.Argument(None, help=MODEL_HELP), gpu_layers: Optional[int] = GPU_LAYERS,
         as_json: bool = typer.Option(False, "--json", help="Print one JSON object.")) -> None:
    """Measure flash attention and thread counts on this machine for MODEL's shape, and keep the
    fastest as the defaults of chat, run and serve (explicit options still win)."""
    with friendly_errors():
        with stage_bars() as bars:
            path = resolve_model(model, ModelStore(), progress=bars)
        tuned, measured, backend = tune_model(path, n_gpu_layers=gpu_layers)
    if as_json:
        out.print_json(json.dumps({"backend": backend, **tuned.to_dict(),
                                   "measured": [{"flash_attn": m.setting.flash_attn, "threads": m.setting.threads,
                                                 "tg0": m.tg0, "tg_depth": m.tg_depth, "pp": m.pp} for m in measured]}))
        return
    table = Table("flash attention", "threads", "tg depth 0", "tg depth 512", "pp", title=f"{path} · {backend}",
                  caption="tokens/s; - : not measured (too slow at depth 0, or no time left)")
    for m in measured:
        table.add_row("on" if m.setting.flash_attn else "off", str(m.setting.threads), f"{m.tg0:.1f}",
                      f"{m.tg_depth:.1f}" if m.tg_depth else "-", f"{m.pp:.1f}" if m.pp else "-")
    out.print(table)
    out.print(f"{tuned.describe()} · {tuned.seconds:.1f}s", soft_wrap=True)
