"""What `chat MODEL`, `run MODEL` and `bench MODEL` mean by MODEL: a GGUF path, a Hugging Face
Qwen3 folder (quantized into the store once), a store name (`qwen3-0.6b`, `qwen3-4b:q8_0`),
pulled on first use when it is an official model, as `ollama run` does, or a ready GGUF on a hub
(`hf.co/{owner}/{repo}:{quant}`, `modelscope.cn/...`), downloaded into the store on first use."""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

from quantize import quantize_model

from edge.models.store import (DEFAULT_MODEL, OFFICIAL_MODELS, ModelRef, ModelStore, StoreError, machine_default_type,
                    parse_ready_ref, parse_ref, write_origin)


LOCAL_PREFIX = "local--"   # a folder converted here: never mistaken for an official store name


def folder_ref(folder: Path) -> ModelRef:
    """Where a local Hugging Face folder is kept: `local--<folder name>`, so `./Qwen3-0.6B` does not
    take the place of the official qwen3-0.6b (which `pull` would then report as ready)."""
    name = re.sub(r"[^a-z0-9._-]+", "-", folder.resolve().name.lower()).strip("-.") or "model"
    return ModelRef(LOCAL_PREFIX + name, machine_default_type())


def resolve_model(spec: str | None, store: ModelStore, *, pull_missing: bool = True,
                  progress: Callable | None = None, source: str | None = None, create: bool = True) -> Path:
    """The GGUF to load for `spec` (None: the default model). Raises StoreError, PullError or
    QuantizeError with a one-line message. `source` picks the hub for a pull ("hf", "modelscope").
    With create=False (`info`) nothing is downloaded or converted: what is not there yet is an error."""
    spec = spec or DEFAULT_MODEL
    pull_missing = pull_missing and create
    path = Path(spec).expanduser()
    if path.is_file():
        return path
    if path.is_dir():
        ref = folder_ref(path)
        if (found := store.find(ref)) is not None:
            return found
        if not create:
            raise StoreError(f"{spec}: not converted yet; `qwen3-edge chat {spec}` converts it into the store "
                             f"(as {ref}), or `qwen3-edge quantize {spec}` writes a GGUF here")
        kwargs = {"progress": progress} if progress else {}
        out = Path(quantize_model(path, ref.type, store.prepare(ref), **kwargs).output)
        write_origin(out, source="local", repo=str(path.resolve()), revision="", file="", made="converted here")
        return out
    if (ready := parse_ready_ref(spec)) is not None:
        if (found := store.find(ready.ref)) is not None:
            return found
        if pull_missing:
            from edge.models.hub import pull
            return pull(spec, store, progress=progress)
        raise StoreError(f"{spec}: not in the store; pull it (qwen3-edge pull {spec})")
    if "/" in spec or spec.endswith(".gguf"):
        raise StoreError(f"{spec}: no such file or folder")
    ref = parse_ref(spec)
    if (found := store.find(ref)) is not None:
        return found
    if ref.name in OFFICIAL_MODELS and pull_missing:
        from edge.models.hub import pull  # huggingface_hub is imported only when a download is needed
        return pull(str(ref), store, progress=progress, source=source)
    raise StoreError(f"{spec}: not in the store; pull it (qwen3-edge pull {ref}) or pass a GGUF path "
                     f"or a Hugging Face folder")



