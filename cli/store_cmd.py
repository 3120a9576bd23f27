"""`qwen3-edge pull`, `list` and `rm`: the model store."""

from __future__ import annotations

import json
from typing import Optional

import typer
from rich.table import Table

from edge.store import ModelStore

from .console import friendly_errors, human_bytes, out
from .progress_view import stage_bars


def pull(name: str = typer.Argument(..., help="qwen3-0.6b, qwen3-1.7b, qwen3-4b, qwen3-4b-instruct-2507 or qwen3-4b-thinking-2507, optionally :type (qwen3-4b:q8_0)."),
         type_: Optional[str] = typer.Option(None, "--type", "-t", help="Quant type (default q4_k_m)."),
         threads: Optional[int] = typer.Option(None, "--threads", help="Threads for the quantizer.")) -> None:
    """Download an official Qwen3 model from the Hugging Face hub and quantize it into the store."""
    from edge.hub import pull as pull_model
    ref = f"{name.split(':')[0]}:{type_}" if type_ else name
    with friendly_errors(), stage_bars() as bars:
        path = pull_model(ref, ModelStore(), progress=bars, threads=threads)
    out.print(f"[green]ready[/] {path} ({human_bytes(path.stat().st_size)})", soft_wrap=True)


def list_models(as_json: bool = typer.Option(False, "--json", help="Print a JSON list.")) -> None:
    """Show the models in the store."""
    store = ModelStore()
    entries = store.entries()
    if as_json:
        out.print_json(json.dumps([{"name": e.name, "type": e.type, "size_bytes": e.size_bytes, "path": str(e.path)}
                                   for e in entries]))
        return
    if not entries:
        out.print(f"no models in {store.models_dir}; try: qwen3-edge pull qwen3-0.6b", soft_wrap=True)
        return
    table = Table("name", "type", "size", "path", box=None)
    for e in entries:
        table.add_row(e.name, e.type, human_bytes(e.size_bytes), str(e.path))
    out.print(table)


def rm(name: str = typer.Argument(..., help="name:type removes one file; name alone removes every type.")) -> None:
    """Remove a model from the store."""
    with friendly_errors():
        removed = ModelStore().remove(name)
    for path in removed:
        out.print(f"removed {path}", soft_wrap=True)
