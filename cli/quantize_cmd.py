"""`qwen3-edge quantize`: a Hugging Face folder or float GGUF to a GGUF of the chosen type."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer

from quantize import DEFAULT_TYPE, QUANT_TYPES, quantize_model

from .console import friendly_errors, human_bytes, out, terminate_as_interrupt
from .progress_view import stage_bars


def quantize(
    src: Path = typer.Argument(..., help="Hugging Face Qwen3 folder, or an F32/F16/BF16 GGUF."),
    type_: str = typer.Option(DEFAULT_TYPE, "--type", "-t", help=f"Output type: {', '.join(QUANT_TYPES)}."),
    output: Optional[Path] = typer.Option(None, "--output", "-o", help="Output GGUF (default: <name>-<type>.gguf here)."),
    threads: Optional[int] = typer.Option(None, "--threads", help="Threads for llama.cpp's quantizer (default: all cores)."),
    as_json: bool = typer.Option(False, "--json", help="Print the summary as one JSON object."),
) -> None:
    """Convert a Qwen3 model to GGUF, quantizing it on the way."""
    with friendly_errors(), terminate_as_interrupt():
        if as_json:
            result = quantize_model(src, type_, output, threads)
        else:
            with stage_bars() as bars:
                result = quantize_model(src, type_, output, threads, progress=bars)
    if as_json:
        out.print_json(json.dumps(result.to_dict()))
        return
    out.print(f"[green]wrote[/] {result.output}  [bold]{result.type}[/]  {human_bytes(result.size_bytes)}  "
              f"{result.bits_per_weight:.2f} bits/weight  {result.parameters / 1e6:.1f}M params  {result.seconds:.1f}s",
              soft_wrap=True)
