"""`pull`: put a Qwen3 model into the store, from the hub the user can reach.

Two ways in: an official checkpoint by store name (`qwen3-4b:q4_k_m`), downloaded and quantized
here, or with `prebuilt` taken from Qwen's own GGUF repo when it has that type; and a ready GGUF by
reference (`hf.co/{owner}/{repo}:{quant}`, `modelscope.cn/...`), where only the one file of that
quant is downloaded. The hub is a Source (edge/sources): Hugging Face unless `source` or
QWEN3_EDGE_SOURCE says ModelScope. Every GGUF that comes from a hub passes the header and Qwen3
checks before it is kept. Beside each stored GGUF a small record says where it came from.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
from pathlib import Path

from quantize import Progress, QuantizeError, quantize_model
from quantize.atomic import atomic_path
from quantize.gguf_check import check_qwen3
from quantize.gguf_header import read_header

from edge.models.sources import SOURCE_ENV, Listing, Source, choose_source, get_source, other_sources
from edge.models.sources.base import PullCallback, PullError, PullProgress, ignore_progress
from edge.models.store import (OFFICIAL_MODELS, ModelRef, ModelStore, ReadyRef, StoreError, parse_ready_ref, parse_ref, read_origin,
                    write_origin)

__all__ = ["ALLOW_PATTERNS", "HINT", "PREBUILT", "PullCallback", "PullError", "PullProgress", "download", "pull"]

# What a Qwen3 checkpoint needs for conversion, and its license; never the PyTorch .bin or ONNX copies.
ALLOW_PATTERNS = ["config.json", "generation_config.json", "*.safetensors", "model.safetensors.index.json",
                  "tokenizer.json", "tokenizer_config.json", "vocab.json", "merges.txt", "LICENSE", "README.md",
                  # sentence-transformers' pooling (Qwen3-Embedding), which the converter writes as the pooling type
                  "modules.json", "1_Pooling/config.json", "config_sentence_transformers.json"]
HINT = ("to run a model you already have, pass its GGUF path or Hugging Face folder: "
        "qwen3-edge chat ./model.gguf")
# Qwen's official GGUF repos (the same names on ModelScope): 4B has Q4_K_M, Q5_K_M, Q6_K, Q8_0; 0.6B, 1.7B Q8_0.
PREBUILT = {"qwen3-0.6b": "Qwen/Qwen3-0.6B-GGUF", "qwen3-1.7b": "Qwen/Qwen3-1.7B-GGUF", "qwen3-4b": "Qwen/Qwen3-4B-GGUF"}
_SPLIT = re.compile(r"-(\d{5})-of-(\d{5})\.gguf$", re.IGNORECASE)


def pull(name_or_ref: str, store: ModelStore, *, progress: PullCallback | None = None,
         revision: str | None = None, threads: int | None = None, source: str | None = None,
         prebuilt: bool = False) -> Path:
    """Make sure the model is in the store and return its GGUF; download (and convert) when it is not.

    `source` names the hub ("hf", "modelscope"); None reads QWEN3_EDGE_SOURCE, then Hugging Face."""
    report = progress or ignore_progress
    ready = parse_ready_ref(name_or_ref)
    if ready is not None:
        existing = store.find(ready.ref)
        if existing is not None:
            return existing
        hub = get_source(ready.source)
        return _with_hint(lambda: _pull_ready(hub, ready.repo_id, ready.quant, ready.ref, store, revision, report),
                          hub, named=True)
    try:
        ref = parse_ref(name_or_ref)
    except StoreError as e:
        raise PullError(str(e)) from None
    existing = store.find(ref)
    if existing is not None:
        if (problem := not_official(ref, read_origin(existing))) is not None:
            raise PullError(problem)
        return existing
    repo_id = OFFICIAL_MODELS.get(ref.name)
    if repo_id is None:
        raise PullError(f"unknown model {ref.name!r}; pull knows {', '.join(OFFICIAL_MODELS)}")
    hub, named = choose_source(source)

    def fetch() -> Path:
        if prebuilt and ref.name in PREBUILT:
            listing = hub.list_files(PREBUILT[ref.name])
            if _quant_files(listing, ref.type):
                return _pull_ready(hub, PREBUILT[ref.name], ref.type, ref, store, None, report, listing)
        return _convert(hub, repo_id, ref, store, revision, threads, report)

    return _with_hint(fetch, hub, named)


def not_official(ref: ModelRef, origin: dict) -> str | None:
    """Why the store's file under an official name is not that official model (its origin record
    names a local folder or another repo), else None. A file with no record (stores older than the
    record) cannot be told apart and passes."""
    official = {OFFICIAL_MODELS.get(ref.name), PREBUILT.get(ref.name)} - {None}
    if not official or not origin or (origin.get("repo") in official and origin.get("source") != "local"):
        return None
    what = (f"converted from the local folder {origin.get('repo')}" if origin.get("source") == "local"
            else f"from {origin.get('source', '?')} {origin.get('repo') or 'an unknown repo'}")
    return (f"{ref} in the store is not {OFFICIAL_MODELS[ref.name]}: it was {what}; remove it "
            f"(qwen3-edge rm {ref}) to pull the official model")


def download(repo_id: str, *, revision: str | None = None, progress: PullCallback | None = None,
             source: str | None = None) -> Path:
    """The repo's conversion files in the source's cache, fetched when missing; raises PullError."""
    hub, named = choose_source(source)
    return _with_hint(lambda: hub.snapshot(repo_id, ALLOW_PATTERNS, revision=revision, progress=progress).path,
                      hub, named)


def _with_hint(fetch, hub: Source, named: bool):
    """Run `fetch`; a download error gets the way out appended: the other hub when this one cannot be
    reached and the user did not choose it, and always how to run a model already at hand."""
    try:
        return fetch()
    except PullError as e:
        message = str(e)
        if e.unreachable and not named:
            others = other_sources(hub)
            message += "; " + "; ".join(f"{get_source(o).title} may be reachable: --source {o} or {SOURCE_ENV}={o}"
                                        for o in others)
        if message.startswith("cannot download"):
            message += f"; {HINT}"
        raise PullError(message, unreachable=e.unreachable) from e


def _convert(hub: Source, repo_id: str, ref: ModelRef, store: ModelStore, revision: str | None,
             threads: int | None, report: PullCallback) -> Path:
    fetched = hub.snapshot(repo_id, ALLOW_PATTERNS, revision=revision, progress=report)

    def forward(p: Progress) -> None:
        report(PullProgress(p.stage, p.tensors_done, p.tensors_total, p.tensor))

    out = store.prepare(ref)
    try:
        result = quantize_model(fetched.path, ref.type, out, threads=threads, progress=forward)
    except QuantizeError as e:
        with contextlib.suppress(OSError):
            out.parent.rmdir()          # the model's folder, when this pull made it and left it empty
        raise PullError(f"cannot convert {repo_id}: {e}") from e
    path = Path(result.output)
    write_origin(path, source=hub.name, repo=repo_id, revision=fetched.revision, file="", made="converted here")
    return path


def quant_of(filename: str) -> str:
    """The quant a GGUF's name states: Qwen3-4B-Q4_K_M.gguf -> Q4_K_M (its last '-' or '.' field)."""
    stem = _SPLIT.sub("", Path(filename).name)
    stem = re.sub(r"\.gguf$", "", stem, flags=re.IGNORECASE)
    return re.split(r"[-.]", stem)[-1]


def _is_model_gguf(path: str) -> bool:
    return path.lower().endswith(".gguf") and "mmproj" not in Path(path).name.lower()


def _quant_files(listing: Listing, quant: str) -> list[str]:
    """The repo's GGUF files whose name carries `quant` as a whole field (case-insensitive)."""
    pattern = re.compile(rf"(?<![a-z0-9_]){re.escape(quant.lower())}(?![a-z0-9_])")
    return sorted(f.path for f in listing.files if _is_model_gguf(f.path) and pattern.search(_SPLIT.sub(".gguf", Path(f.path).name.lower())))


def _pull_ready(hub: Source, repo_id: str, quant: str, ref: ModelRef, store: ModelStore, revision: str | None,
                report: PullCallback, listing: Listing | None = None) -> Path:
    """Download the one GGUF of `quant` from `repo_id`, check it is a whole Qwen3 model, keep it as `ref`."""
    listing = listing or hub.list_files(repo_id, revision)
    matches = _quant_files(listing, quant)
    if not matches:
        have = sorted({quant_of(f.path) for f in listing.files if _is_model_gguf(f.path)}, key=str.lower)
        where = f"{repo_id} on {hub.title}"
        raise PullError(f"{where} has no {quant} GGUF; it has: {', '.join(have)}" if have
                        else f"{where} holds no GGUF file")
    parts = [m for m in matches if _SPLIT.search(m)]
    if parts:
        count = int(_SPLIT.search(parts[0])[2])
        raise PullError(f"{repo_id}: the {quant} GGUF comes in {count} parts ({Path(parts[0]).name}, ...); "
                        f"qwen3-edge loads single-file GGUFs: merge them with llama-gguf-split --merge and pass the file")
    filename = min(matches, key=lambda m: (m.count("/"), len(m)))
    fetched = hub.download_file(repo_id, filename, revision=revision, progress=report)  # by name: the hub's cache
    # then records the branch (refs/main), which its offline mode needs to find the file again
    try:
        check_qwen3(read_header(fetched.path))
    except QuantizeError as e:
        raise PullError(f"refused {repo_id}/{filename}: {_after_path(str(e), fetched.path)}") from None
    out = store.prepare(ref)
    try:
        with atomic_path(out) as tmp:
            _link_or_copy(fetched.path, tmp)
    except QuantizeError as e:
        with contextlib.suppress(OSError):
            out.parent.rmdir()
        raise PullError(f"cannot store {repo_id}/{filename}: {e}") from e
    write_origin(out, source=hub.name, repo=repo_id, revision=fetched.revision, file=filename, made="ready GGUF")
    return out


def _after_path(message: str, path: Path) -> str:
    """QuantizeError says '<cache path>: problem'; the cache path means nothing to the user here."""
    for prefix in (f"{path}: ", f"{path.resolve()}: "):
        if message.startswith(prefix):
            return message[len(prefix):]
    return message


def _link_or_copy(src: Path, dst: Path) -> None:
    """A hard link when the cache and the store share a disk (no second copy of gigabytes), else a copy."""
    src = src.resolve()
    dst.unlink(missing_ok=True)
    try:
        os.link(src, dst)
    except OSError:
        shutil.copyfile(src, dst)
