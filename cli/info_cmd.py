"""`qwen3-edge info`: what a GGUF holds, as a table or JSON."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import typer
from rich.table import Table

from edge.protocol.chat_template import QWEN3_CHAT_TEMPLATE, TemplateError, compile_template
from edge.runtime.context_plan import model_rope_from_metadata
from edge.runtime.devices import describe_devices, list_devices
from edge.runtime.engine import POOLING_KEY, PURPOSES, detect_backend, local_offload_targets
from edge.protocol.model_kind import detect_kind
from edge.models.resolve import resolve_model
from edge.models.store import ModelStore
from quantize import describe_gguf
from quantize.gguf_header import read_header

from .console import friendly_errors, human_bytes, out


def runtime_view(path: Path) -> dict[str, Any]:
    """What the runtime makes of the GGUF: its kind, read from the chat template it carries (Qwen's
    when it carries none, as Engine.load does), and its native context and longest context, read
    from its rope metadata. None, with the reason, where the runtime would refuse the file."""
    h = read_header(path)
    view: dict[str, Any] = {"kind": None, "native_context": None, "max_context": None,
                            "purpose": PURPOSES.get(h.get(POOLING_KEY), "chat")}  # chat, embedding, reranker
    try:
        view["kind"] = detect_kind(compile_template(h.get("tokenizer.chat_template") or QWEN3_CHAT_TEMPLATE)).value
    except TemplateError as e:
        view["kind_error"] = str(e)
    try:
        rope = model_rope_from_metadata(h.fields, h.get("general.architecture") or "qwen3")
        view["native_context"], view["max_context"] = rope.native_ctx, rope.max_ctx
    except ValueError as e:
        view["native_context_error"] = str(e)
    view.update(placement_view())
    return view


def placement_view() -> dict[str, Any]:
    """Where Engine.load would put the model by default, from ggml's device registry: the backend,
    the device (the first llama.cpp offloads to, else the CPU) and every device this build sees."""
    devices, targets = list_devices(), local_offload_targets()
    cpu = next((d for d in devices if d.type == "cpu"), None)
    first = targets[0] if targets else cpu
    return {"backend": detect_backend(-1, targets), "device": first.label if first else "CPU",
            "devices": [dataclasses.asdict(d) for d in devices]}


def _sampling_text(sampling: dict[str, Any]) -> str:
    if not sampling:
        return "none (Qwen's presets apply)"
    return " · ".join(f"{k} {v:g}" if isinstance(v, float) else f"{k} {v}" for k, v in sampling.items())


def info(
    model: str = typer.Argument(..., help="What chat takes: a GGUF file, a store name (qwen3-0.6b, qwen3-4b:q8_0) "
                                          "or a Hugging Face folder already converted into the store."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object."),
) -> None:
    """Show a GGUF's architecture, kind, native context, sampling preset, shapes, quant types,
    tokenizer, template and size. Nothing is downloaded or converted."""
    with friendly_errors():
        path = resolve_model(model, ModelStore(), create=False)
        d = describe_gguf(path)
        d.update(runtime_view(path))
    if as_json:
        out.print_json(json.dumps(d))
        return
    t = Table(show_header=False, box=None, pad_edge=False)
    t.add_column(style="bold")
    t.add_column()
    t.add_row("file", f"{d['path']} ({human_bytes(d['size_bytes'])})")
    t.add_row("model", f"{d['name']} · {d['architecture']} · {d['size_label']} · {d['parameters']:,} parameters")
    t.add_row("type", f"{d['file_type']} · {d['bits_per_weight']} bits/weight")
    t.add_row("for", {"chat": "chat", "embedding": "embeddings (qwen3-edge embed); not chat",
                      "reranker": "reranking (qwen3-edge rerank); not chat"}[d["purpose"]])
    t.add_row("kind", d["kind"] or f"unknown ({d['kind_error']})")
    t.add_row("native context", f"{d['native_context']:,} tokens (YaRN up to {d['max_context']:,})"
              if d["native_context"] else f"refused ({d['native_context_error']})")
    t.add_row("sampling", _sampling_text(d["sampling"]))
    t.add_row("runs on", f"{d['backend']} on {d['device']} (by default)")
    for line in describe_devices(list_devices()):
        t.add_row("device", line)
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
              f"{tpl['chars']:,} chars · sha256 {tpl['sha256']} · enable_thinking {'yes' if tpl['thinking'] else 'no'}")
    out.print(t)
