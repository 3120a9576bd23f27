"""`qwen3-edge pull`, `list` and `rm`: the model store."""

from __future__ import annotations

import json
from typing import Optional

import typer
from rich.table import Table

from edge.models.store import ModelStore

from .console import friendly_errors, human_bytes, out
from .progress_view import stage_bars


def pull(name: str = typer.Argument(..., help="qwen3-0.6b, qwen3-1.7b, qwen3-4b, qwen3-4b-instruct-2507 or qwen3-4b-thinking-2507, optionally :type (qwen3-4b:q8_0); or a ready GGUF: hf.co/OWNER/REPO:QUANT, modelscope.cn/OWNER/REPO:QUANT."),
         type_: Optional[str] = typer.Option(None, "--type", "-t", help="Quant type (default q4_k_m)."),
         threads: Optional[int] = typer.Option(None, "--threads", help="Threads for the quantizer."),
         source: Optional[str] = typer.Option(None, "--source", help="Hub to download from: hf or modelscope (default: $QWEN3_EDGE_SOURCE, else hf)."),
         prebuilt: bool = typer.Option(False, "--prebuilt", help="Take Qwen's official GGUF when it has this type (qwen3-4b: q4_k_m, q5_k_m, q6_k, q8_0; 0.6b, 1.7b: q8_0); else quantize.")) -> None:
    """Download a Qwen3 model into the store: an official checkpoint, quantized here, or a ready GGUF."""
    from edge.models.hub import pull as pull_model
    from edge.models.store import parse_ready_ref
    ref = f"{name.rsplit(':', 1)[0] if parse_ready_ref(name) else name.split(':')[0]}:{type_}" if type_ else name
    with friendly_errors(), stage_bars() as bars:
        path = pull_model(ref, ModelStore(), progress=bars, threads=threads, source=source, prebuilt=prebuilt)
    out.print(f"[green]ready[/] {path} ({human_bytes(path.stat().st_size)})", soft_wrap=True)


def list_models(as_json: bool = typer.Option(False, "--json", help="Print a JSON list.")) -> None:
    """Show the models in the store."""
    store = ModelStore()
    entries = store.entries()
    if as_json:
        out.print_json(json.dumps([{"name": e.name, "type": e.type, "size_bytes": e.size_bytes, "path": str(e.path),
                                    "source": e.origin.get("source", ""), "repo": e.origin.get("repo", ""),
                                    "revision": e.origin.get("revision", ""), "file": e.origin.get("file", "")}
                                   for e in entries]))
        return
    if not entries:
        out.print(f"no models in {store.models_dir}; try: qwen3-edge pull qwen3-0.6b", soft_wrap=True)
        return
    table = Table("name", "type", "size", "from", "path", box=None)
    for e in entries:
        table.add_row(e.name, e.type, human_bytes(e.size_bytes), _origin(e.origin), str(e.path))
    out.print(table)


def rm(name: str = typer.Argument(..., help="name:type removes one file; name alone removes every type.")) -> None:
    """Remove a model from the store."""
    with friendly_errors():
        removed = ModelStore().remove(name)
    for path in removed:
        out.print(f"removed {path}", soft_wrap=True)


def _origin(origin: dict) -> str:
    """hf Qwen/Qwen3-4B-GGUF@3f2a1c9d (the revision cut to 8 characters); '-' when not recorded."""
    if not origin.get("repo"):
        return "-"
    revision = origin.get("revision", "")
    return f"{origin.get('source', '?')} {origin['repo']}" + (f"@{revision[:8]}" if revision else "")
