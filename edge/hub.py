"""`pull`: fetch an official Qwen3 checkpoint from Hugging Face and quantize it into the store.

Downloads go through huggingface_hub's own cache rather than ours, so its settings work as users
know them (HF_HOME, HF_HUB_CACHE, HF_ENDPOINT, HF_HUB_OFFLINE, HF_TOKEN), interrupted files resume,
and pulling a second type of a model converts the cached files without downloading them again.
huggingface_hub reads those variables once, when it is imported; `pull` reads the ones that matter
(endpoint, cache folder, offline) at call time and passes them as arguments, so a process that sets
them after import is honoured too. Nothing here sets environment variables or other global state.
"""

from __future__ import annotations

import contextlib
import os
import sys
import threading
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from quantize import Progress, QuantizeError, quantize_model

from .store import OFFICIAL_MODELS, ModelStore, StoreError, parse_ref

# What a Qwen3 checkpoint needs for conversion, and its license; never the PyTorch .bin or ONNX copies.
ALLOW_PATTERNS = ["config.json", "generation_config.json", "*.safetensors", "model.safetensors.index.json",
                  "tokenizer.json", "tokenizer_config.json", "vocab.json", "merges.txt", "LICENSE", "README.md"]
HINT = ("to run a model you already have, pass its GGUF path or Hugging Face folder: "
        "qwen3-edge chat ./model.gguf")
_TRUE = {"1", "ON", "YES", "TRUE"}   # huggingface_hub's spelling of a true environment variable


class PullError(Exception):
    """Why a pull failed, in one line fit for the terminal."""


@dataclass(frozen=True)
class PullProgress:
    stage: str         # "download", then "convert" and, for llama.cpp's types, "quantize"
    done: int          # bytes (download) or tensors (convert, quantize)
    total: int         # 0 while unknown, or when everything came from the cache
    detail: str = ""   # "3/7 files" (download) or the tensor just written


PullCallback = Callable[[PullProgress], None]


def pull(name_or_ref: str, store: ModelStore, *, progress: PullCallback | None = None,
         revision: str | None = None, threads: int | None = None) -> Path:
    """Make sure `name:type` is in the store and return its GGUF; download and convert when it is not."""
    try:
        ref = parse_ref(name_or_ref)
    except StoreError as e:
        raise PullError(str(e)) from None
    existing = store.find(ref)
    if existing is not None:
        return existing
    repo_id = OFFICIAL_MODELS.get(ref.name)
    if repo_id is None:
        raise PullError(f"unknown model {ref.name!r}; pull knows {', '.join(OFFICIAL_MODELS)}")
    report = progress or _ignore
    folder = download(repo_id, revision=revision, progress=report)

    def forward(p: Progress) -> None:
        report(PullProgress(p.stage, p.tensors_done, p.tensors_total, p.tensor))

    out = store.prepare(ref)
    try:
        result = quantize_model(folder, ref.type, out, threads=threads, progress=forward)
    except QuantizeError as e:
        with contextlib.suppress(OSError):
            out.parent.rmdir()          # the model's folder, when this pull made it and left it empty
        raise PullError(f"cannot convert {repo_id}: {e}") from e
    return Path(result.output)


def download(repo_id: str, *, revision: str | None = None, progress: PullCallback | None = None) -> Path:
    """The repo's conversion files in huggingface_hub's cache, fetched when missing; raises PullError."""
    from huggingface_hub import snapshot_download

    endpoint, cache_dir, offline = _hub_settings(os.environ)
    meter = _DownloadMeter(progress or _ignore)
    try:
        folder = snapshot_download(repo_id, revision=revision, allow_patterns=ALLOW_PATTERNS, cache_dir=cache_dir,
                                   endpoint=endpoint, local_files_only=offline, library_name="qwen3-edge",
                                   tqdm_class=meter.bar_class())  # type: ignore[arg-type]
    except _download_errors() as e:
        raise PullError(f"cannot download {repo_id}: {_reason(e, endpoint, offline)}; {HINT}") from e
    return Path(folder)


def _ignore(_: PullProgress) -> None:
    """The default callback: library users who want no progress get none."""


def _hub_settings(env: Mapping[str, str]) -> tuple[str | None, str | None, bool]:
    """(endpoint, cache folder, offline) as huggingface_hub would read them from `env` now; None = its default."""
    endpoint = (env.get("HF_ENDPOINT") or "").rstrip("/") or None
    cache = env.get("HF_HUB_CACHE") or env.get("HUGGINGFACE_HUB_CACHE")
    if not cache and env.get("HF_HOME"):
        cache = os.path.join(env["HF_HOME"], "hub")
    cache = os.path.expandvars(os.path.expanduser(cache)) if cache else None
    offline = (env.get("HF_HUB_OFFLINE") or env.get("TRANSFORMERS_OFFLINE") or "").upper() in _TRUE
    return endpoint, cache, offline


def _download_errors() -> tuple[type[BaseException], ...]:
    """What a failed download raises: huggingface_hub's errors are OSErrors, its HTTP client's are not."""
    from huggingface_hub.errors import HfHubHTTPError

    errors: list[type[BaseException]] = [OSError, HfHubHTTPError]
    try:
        from huggingface_hub.errors import XetDownloadError
        errors.append(XetDownloadError)
    except ImportError:
        pass
    # huggingface_hub 2.x uses httpx2, 1.x httpx, 0.x requests (whose errors are OSErrors already).
    for client in ("httpx2", "httpx"):
        if client in sys.modules:
            errors.append(sys.modules[client].HTTPError)
    return tuple(errors)


def _reason(error: BaseException, endpoint: str | None, offline: bool) -> str:
    """The cause of a failed download in a few words, from the innermost error that says something."""
    from huggingface_hub import constants
    from huggingface_hub.errors import GatedRepoError, HfHubHTTPError, RepositoryNotFoundError, RevisionNotFoundError

    host = endpoint or constants.ENDPOINT
    chain = list(_causes(error))
    names = {cls.__name__ for e in chain for cls in type(e).__mro__}
    if offline or "OfflineModeIsEnabled" in names:
        return "offline mode is on (HF_HUB_OFFLINE) and the Hugging Face cache lacks its files"
    for e in chain:
        if isinstance(e, GatedRepoError):
            return f"the repository is gated on {host}; accept its terms there and log in with `hf auth login`"
        if isinstance(e, RepositoryNotFoundError):
            return f"no such repository on {host}"
        if isinstance(e, RevisionNotFoundError):
            return f"no such revision on {host}"
    for e in chain:
        names = {cls.__name__ for cls in type(e).__mro__}
        if names & {"TimeoutException", "Timeout", "TimeoutError"}:
            return f"{host} did not answer in time"
        if names & {"ConnectError", "ConnectionError"}:
            return f"cannot reach {host} ({_one_line(e)})"
        if isinstance(e, HfHubHTTPError) and getattr(e, "response", None) is not None:
            return f"{host} answered HTTP {e.response.status_code}"
    return _one_line(chain[-1])


def _causes(error: BaseException) -> Iterator[BaseException]:
    """`error`, then what caused it, and so on; huggingface_hub wraps the network error in its own."""
    seen: set[int] = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        yield current
        current = current.__cause__ or (None if current.__suppress_context__ else current.__context__)


def _one_line(error: BaseException) -> str:
    text = " ".join(str(error).split())
    return text or type(error).__name__


class _DownloadMeter:
    """Turns snapshot_download's progress bars into PullProgress events instead of terminal output.

    snapshot_download makes its bars from `tqdm_class`: one counting files, and byte bars that every
    file's download feeds (from several threads at once). The meter sums them up under a lock.
    """

    def __init__(self, report: PullCallback):
        self.report = report
        self.lock = threading.Lock()
        self.bars: list[_Bar] = []
        self.last: PullProgress | None = None

    def bar_class(self) -> type[_Bar]:
        """A tqdm stand-in bound to this meter; a class per download, so no state is shared."""
        return type("_MeteredBar", (_Bar,), {"meter": self})

    def changed(self) -> None:
        """Called with the lock held, after any bar moved."""
        byte_bars = [b for b in self.bars if b.unit == "B"]
        file_bars = [b for b in self.bars if b.unit != "B"]
        done = max((b.n for b in byte_bars), default=0)
        total = max((b.total or 0 for b in byte_bars), default=0)
        detail = f"{file_bars[0].n}/{file_bars[0].total or 0} files" if file_bars else ""
        event = PullProgress("download", min(done, total) if total else done, total, detail)
        if event != self.last:
            self.last = event
            self.report(event)


class _Bar:
    """Just enough of tqdm for snapshot_download: counts and reports, never draws."""

    meter: _DownloadMeter

    def __init__(self, *args: Any, total: float | None = None, initial: float = 0, unit: str = "it",
                 desc: str | None = None, **kwargs: Any):
        self.n = int(initial or 0)
        self._total = int(total or 0)
        self.unit = unit
        self.desc = desc or ""
        with self.meter.lock:
            self.meter.bars.append(self)

    @property
    def total(self) -> int:
        return self._total

    @total.setter
    def total(self, value: float | None) -> None:
        with self.meter.lock:
            self._total = int(value or 0)
            self.meter.changed()

    @property
    def format_dict(self) -> dict[str, Any]:
        return {"n": self.n, "total": self._total, "rate": None, "unit": self.unit}

    def update(self, n: float | None = 1) -> None:
        with self.meter.lock:
            self.n += int(n or 0)
            self.meter.changed()

    def set_description(self, desc: str | None = None, refresh: bool = True) -> None:
        self.desc = desc or ""

    set_description_str = set_description

    def set_postfix(self, *args: Any, **kwargs: Any) -> None:
        pass

    def set_postfix_str(self, s: str = "", refresh: bool = True) -> None:
        pass

    def refresh(self, *args: Any, **kwargs: Any) -> None:
        pass

    def clear(self, *args: Any, **kwargs: Any) -> None:
        pass

    def close(self) -> None:
        pass

    def __enter__(self) -> _Bar:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
