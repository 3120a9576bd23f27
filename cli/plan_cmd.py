"""`qwen3-edge plan MODEL`: what would load where and why, without loading (or downloading) anything."""

from __future__ import annotations

import json
import re
from pathlib import Path

import typer

from edge.runtime.engine import EngineError, probe_machine, read_model_info
from edge.runtime.load_plan import LoadRefused, LoadRequest, MachineFacts, offload, plan_load
from edge.models.model_shapes import OFFICIAL_SHAPES, estimated_model_info
from edge.models.store import ModelStore, StoreError, parse_ref

from .console import err, friendly_errors, out

_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgt]?)i?b?\s*$", re.IGNORECASE)


def parse_size(text: str) -> int:
    """"4G", "3.5GiB", "512M", "8000000000" -> bytes."""
    m = _SIZE.match(text)
    if not m:
        raise typer.BadParameter(f"{text!r} is not a size (e.g. 4G, 3.5GiB, 512M)")
    return int(float(m.group(1)) * (1 << (10 * " KMGT".index((m.group(2) or " ").upper()))))


def model_facts(model: str):
    """The header facts: a GGUF file's own, a stored model's, or an official model's estimated."""
    path = Path(model).expanduser()
    if path.is_file():
        return read_model_info(path)
    ref = parse_ref(model)
    if (found := ModelStore().find(ref)) is not None:
        return read_model_info(found)
    if ref.name in OFFICIAL_SHAPES:
        return estimated_model_info(ref.name, ref.type)
    raise StoreError(f"{model}: not a GGUF file, a stored model or an official model name "
                     f"({', '.join(OFFICIAL_SHAPES)})")


def with_cached_tuning(info, asked: LoadRequest, machine: MachineFacts) -> MachineFacts:
    """The machine with this model shape's calibration, when one is cached (never measured here:
    `plan` loads nothing), so the plan shows the threads and flash attention a load would use."""
    import dataclasses
    import os
    from edge.runtime.tune import cached, key_for
    from edge.runtime.tune_rules import tuning_enabled
    if machine.workers is not None or not tuning_enabled(os.environ):
        return machine
    try:
        _, backend = offload(asked, machine)
    except LoadRefused:
        return machine
    found = cached(key_for(info, backend, [d.description for d in machine.targets]))
    return dataclasses.replace(machine, tuned=found)


def plan(
    model: str = typer.Argument(..., help="A GGUF path, a store name, or an official name not downloaded yet."),
    ctx: int = typer.Option(None, "--ctx", help="Context tokens (default: chosen to fit)."),
    parallel: int = typer.Option(1, "--parallel", help="Slots (0: as many as fit, at most 4)."),
    gpu_layers: int = typer.Option(None, "--gpu-layers", help="Layers to offload (default: all when a GPU is seen)."),
    kv_cache: str = typer.Option(None, "--kv-cache", help="f16, q8_0 or q4_0 (default: chosen to fit)."),
    threads: int = typer.Option(None, "--threads", help="Threads (default: physical cores)."),
    mmap: bool = typer.Option(None, "--mmap/--no-mmap", help="Memory-map the weights (default: chosen)."),
    ram: str = typer.Option(None, "--ram", help="Plan for this much available memory (e.g. 4G) instead of this machine's."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object."),
) -> None:
    """Show what would load where and why (context, KV cache, flash attention, RoPE, devices, slots,
    memory), or what does not fit and the largest that would, before any download or load."""
    with friendly_errors():
        info = model_facts(model)
        available = parse_size(ram) if ram is not None else None
        asked = LoadRequest(n_ctx=ctx, n_threads=threads, n_gpu_layers=gpu_layers, kv_cache_type=kv_cache,
                            use_mmap=mmap, parallel=None if parallel == 0 else parallel)
        try:
            result = plan_load(info, asked, with_cached_tuning(info, asked, probe_machine(available)))
        except LoadRefused as e:
            if as_json:
                out.print_json(json.dumps({"model": str(info.path), "fits": False, "refusal": e.message}))
            else:
                err.print(f"[bold red]does not fit:[/] {e.message}", soft_wrap=True)
            raise typer.Exit(1) from None
    if as_json:
        out.print_json(json.dumps({"model": str(info.path), "fits": True, "plan": result.to_json()}))
        return
    out.print(f"[bold]{info.path}[/]", soft_wrap=True)
    for line in result.describe().splitlines():
        out.print(line, soft_wrap=True, markup=False, highlight=False)


__all__ = ["plan", "parse_size", "EngineError"]
