"""`qwen3-edge quantize`: a Hugging Face folder or float GGUF to a GGUF of the chosen type."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress as Bar, TextColumn, TimeElapsedColumn

from quantize import DEFAULT_TYPE, QUANT_TYPES, Progress, quantize_model

from .console import err, friendly_errors, human_bytes, out


class _ProgressBars:
    """One bar per stage: Python's conversion (tensors and bytes), then llama.cpp's quantizer."""

    def __init__(self, bar: Bar):
        self.bar, self.tasks = bar, {}

    def __call__(self, p: Progress) -> None:
        if p.stage not in self.tasks:
            label = "converting" if p.stage == "convert" else "quantizing"
            self.tasks[p.stage] = self.bar.add_task(label, total=p.tensors_total, extra="")
        extra = f"{human_bytes(p.bytes_done)} / {human_bytes(p.bytes_total)}" if p.bytes_total else p.tensor
        self.bar.update(self.tasks[p.stage], completed=p.tensors_done, total=p.tensors_total, extra=extra)


def quantize(
    src: Path = typer.Argument(..., help="Hugging Face Qwen3 folder, or an F32/F16/BF16 GGUF."),
    type_: str = typer.Option(DEFAULT_TYPE, "--type", "-t", help=f"Output type: {', '.join(QUANT_TYPES)}."),
    output: Optional[Path] = typer.Option(None, "--output", "-o", help="Output GGUF (default: <name>-<type>.gguf here)."),
    threads: Optional[int] = typer.Option(None, "--threads", help="Threads for llama.cpp's quantizer (default: all cores)."),
    as_json: bool = typer.Option(False, "--json", help="Print the summary as one JSON object."),
) -> None:
    """Convert a Qwen3 model to GGUF, quantizing it on the way."""
    with friendly_errors():
        if as_json:
            result = quantize_model(src, type_, output, threads)
        else:
            columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                       TextColumn("tensors"), TextColumn("{task.fields[extra]}"), TimeElapsedColumn())
            with Bar(*columns, console=err, transient=True) as bar:
                result = quantize_model(src, type_, output, threads, progress=_ProgressBars(bar))
    if as_json:
        out.print_json(json.dumps(result.to_dict()))
        return
    out.print(f"[green]wrote[/] {result.output}  [bold]{result.type}[/]  {human_bytes(result.size_bytes)}  "
              f"{result.bits_per_weight:.2f} bits/weight  {result.parameters / 1e6:.1f}M params  {result.seconds:.1f}s",
              soft_wrap=True)
