"""`qwen3-edge info`: what a GGUF holds, as a table or JSON."""

from __future__ import annotations

import json
from pathlib import Path

import typer
from rich.table import Table

from quantize import describe_gguf

from .console import friendly_errors, human_bytes, out


def info(
    path: Path = typer.Argument(..., help="A GGUF file."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object."),
) -> None:
    """Show a GGUF's architecture, shapes, quant types, tokenizer, template and size."""
    with friendly_errors():
        d = describe_gguf(path)
    if as_json:
        out.print_json(json.dumps(d))
        return
    t = Table(show_header=False, box=None, pad_edge=False)
    t.add_column(style="bold")
    t.add_column()
    t.add_row("file", f"{d['path']} ({human_bytes(d['size_bytes'])})")
    t.add_row("model", f"{d['name']} · {d['architecture']} · {d['size_label']} · {d['parameters']:,} parameters")
    t.add_row("type", f"{d['file_type']} · {d['bits_per_weight']} bits/weight")
    types = ", ".join(f"{k} ×{v}" for k, v in d["tensors"]["types"].items())
    t.add_row("tensors", f"{d['tensors']['count']} ({types})")
    for k, v in d["hyperparameters"].items():
        t.add_row(k, str(v))
    tok = d["tokenizer"]
    t.add_row("tokenizer", f"{tok['model']}/{tok['pre']} · {tok['tokens']:,} tokens · {tok['merges']:,} merges · add_bos {tok['add_bos']}")
    for k in ("bos", "eos", "pad"):
        if tok[k]:
            t.add_row(f"{k} token", f"{tok[k]['text']} ({tok[k]['id']})")
    tpl = d["chat_template"]
    t.add_row("chat template", "none" if tpl is None else
              f"{tpl['chars']:,} chars · sha256 {tpl['sha256']} · thinking {'yes' if tpl['thinking'] else 'no'}")
    out.print(t)
