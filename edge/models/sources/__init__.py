"""Where `pull` downloads from: one module per hub behind the Source interface (base.py).

`--source NAME` or QWEN3_EDGE_SOURCE picks the hub; Hugging Face when neither says. A third hub is
a module with the same four calls and a line in SOURCES.
"""

from __future__ import annotations

import importlib
import os

from edge.models.sources.base import Fetched, Listing, PullCallback, PullError, PullProgress, RemoteFile, Source, ignore_progress

SOURCE_ENV = "QWEN3_EDGE_SOURCE"
DEFAULT_SOURCE = "hf"
# name -> (module, class); aliases map other spellings onto a name.
SOURCES = {"hf": ("huggingface", "HuggingFace"), "modelscope": ("modelscope", "ModelScope")}
ALIASES = {"huggingface": "hf", "hugging-face": "hf", "ms": "modelscope"}

__all__ = ["DEFAULT_SOURCE", "SOURCES", "SOURCE_ENV", "Fetched", "Listing", "PullCallback", "PullError",
           "PullProgress", "RemoteFile", "Source", "choose_source", "get_source", "ignore_progress",
           "other_sources", "source_for_host"]


def get_source(name: str) -> Source:
    """The source called `name` (or an alias of it); PullError names the known ones."""
    key = ALIASES.get(name.strip().lower(), name.strip().lower())
    if key not in SOURCES:
        raise PullError(f"unknown source {name!r}; choose one of {', '.join(SOURCES)}")
    module, cls = SOURCES[key]
    return getattr(importlib.import_module(f"{__name__}.{module}"), cls)()


def choose_source(name: str | None = None) -> tuple[Source, bool]:
    """(source, whether the user named it): `name`, else QWEN3_EDGE_SOURCE, else Hugging Face."""
    named = name or os.environ.get(SOURCE_ENV) or None
    return get_source(named or DEFAULT_SOURCE), named is not None


def other_sources(source: Source) -> list[str]:
    return [name for name in SOURCES if name != source.name]


def source_for_host(host: str) -> Source | None:
    """The source whose model references start with `host` (hf.co, modelscope.cn), if any."""
    for name in SOURCES:
        source = get_source(name)
        if host.lower() in source.hosts:
            return source
    return None
