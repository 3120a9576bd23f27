"""The Hugging Face hub as a download source, through huggingface_hub and its own cache.

Downloads go through huggingface_hub's cache rather than ours, so its settings work as users
know them (HF_HOME, HF_HUB_CACHE, HF_ENDPOINT for mirrors, HF_HUB_OFFLINE, HF_TOKEN), interrupted
files resume (the weights even after the process was killed, see _prefetch), and pulling a second
type of a model converts the cached files without downloading them again. huggingface_hub reads
those variables once, when it is imported; this module reads the ones that matter (endpoint, cache
folder, offline) at call time and passes them as arguments, so a process that sets them after
import is honoured too. Nothing here sets environment variables or other global state.

huggingface_hub 2.4's public calls resume a dropped connection within one download (http_get's
Range retries) but not across processes: each download writes a temporary unique to the process.
_prefetch keeps the one piece of internals that cross-process resume needs (a partial file of a
fixed name beside the blob); everything else is hf_hub_download / snapshot_download / HfApi.
"""

from __future__ import annotations

import os
import sys
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from edge.models.sources.base import Fetched, Listing, PullCallback, PullError, PullProgress, RemoteFile, ignore_progress

_TRUE = {"1", "ON", "YES", "TRUE"}   # huggingface_hub's spelling of a true environment variable
WEIGHTS = (".safetensors", ".gguf")  # the files worth resuming across processes


class HuggingFace:
    """The Hugging Face hub (or a mirror through HF_ENDPOINT)."""

    name = "hf"
    title = "Hugging Face"
    hosts = ("hf.co", "huggingface.co")

    def offline(self) -> bool:
        return _hub_settings(os.environ)[2]

    def list_files(self, repo_id: str, revision: str | None = None) -> Listing:
        from huggingface_hub import HfApi
        from huggingface_hub.hf_api import RepoFile

        endpoint, cache_dir, offline = _hub_settings(os.environ)
        if offline:
            folder = self.snapshot(repo_id, ["*"], revision=revision).path
            return Listing(folder.name, [RemoteFile(p.relative_to(folder).as_posix(), p.stat().st_size)
                                         for p in sorted(folder.rglob("*")) if p.is_file()])
        api = HfApi(endpoint=endpoint, library_name="qwen3-edge")
        try:
            commit = api.repo_info(repo_id, revision=revision or "main").sha or revision or "main"
            files = [RemoteFile(f.path, f.size or 0) for f in api.list_repo_tree(repo_id, recursive=True, revision=commit)
                     if isinstance(f, RepoFile)]
        except _download_errors() as e:
            raise _error(repo_id, e, endpoint, offline) from e
        return Listing(commit, files)

    def download_file(self, repo_id: str, filename: str, *, revision: str | None = None,
                      progress: PullCallback | None = None) -> Fetched:
        from huggingface_hub import hf_hub_download

        endpoint, cache_dir, offline = _hub_settings(os.environ)
        meter = _DownloadMeter(progress or ignore_progress)
        try:
            if not offline:
                _prefetch(repo_id, revision, cache_dir, endpoint, meter, lambda f: f == filename)
            path = Path(hf_hub_download(repo_id, filename, revision=revision, cache_dir=cache_dir, endpoint=endpoint,
                                        local_files_only=offline, library_name="qwen3-edge",
                                        tqdm_class=meter.bar_class()))  # type: ignore[arg-type]
        except _download_errors() as e:
            raise _error(repo_id, e, endpoint, offline) from e
        return Fetched(path, path.parents[filename.count("/")].name)    # snapshots/<commit>/<filename>

    def snapshot(self, repo_id: str, patterns: Sequence[str], *, revision: str | None = None,
                 progress: PullCallback | None = None) -> Fetched:
        from huggingface_hub import snapshot_download

        endpoint, cache_dir, offline = _hub_settings(os.environ)
        meter = _DownloadMeter(progress or ignore_progress)
        try:
            if not offline:   # offline, there is nothing to fetch: snapshot_download serves the cache alone
                revision = _prefetch(repo_id, revision, cache_dir, endpoint, meter,
                                     lambda f: f.endswith(WEIGHTS)) or revision
            folder = snapshot_download(repo_id, revision=revision, allow_patterns=list(patterns), cache_dir=cache_dir,
                                       endpoint=endpoint, local_files_only=offline, library_name="qwen3-edge",
                                       tqdm_class=meter.bar_class())  # type: ignore[arg-type]
        except _download_errors() as e:
            raise _error(repo_id, e, endpoint, offline) from e
        return Fetched(Path(folder), Path(folder).name)


def _error(repo_id: str, e: BaseException, endpoint: str | None, offline: bool) -> PullError:
    reason = _reason(e, endpoint, offline)
    unreachable = reason.startswith("cannot reach") or reason.endswith("did not answer in time")
    return PullError(f"cannot download {repo_id}: {reason}", unreachable=unreachable)


PARTIAL_SUFFIX = ".qwen3-edge-partial"


def _prefetch(repo_id: str, revision: str | None, cache_dir: str | None, endpoint: str | None,
              meter: _DownloadMeter, wanted: Callable[[str], bool]) -> Any:
    """Put the repo's `wanted` blobs (weights: *.safetensors, *.gguf) into huggingface_hub's cache,
    resuming what a killed pull left.

    huggingface_hub 2.4 downloads every file into a temporary unique to the process, so the bytes a killed
    process fetched are never reused. Here each missing weights blob is fetched into a partial file of a
    fixed name next to it, `<cache>/models--<org>--<name>/blobs/<etag>.qwen3-edge-partial`, which the next
    pull continues with a Range request (huggingface_hub's own `http_get`, with its retries), and is renamed
    onto the blob's path once complete. snapshot_download then finds the blob and only links it into the
    snapshot, as hf_hub_download does for any blob already cached.

    Returns the revision resolved to its commit (a ResolvedRevision, so snapshot_download asks the Hub no
    second time), or None when the Hub could not say what to fetch: then snapshot_download runs as it
    always did, falling back on the cache or raising the error users know. Errors while fetching bytes
    propagate (the partial file stays for the next pull).
    """
    try:  # internals of huggingface_hub 2.x; another version simply skips this step
        from huggingface_hub import HfApi, constants
        from huggingface_hub.errors import HfHubHTTPError, RevisionResolutionError
        from huggingface_hub.file_download import (
            get_hf_file_metadata,
            hf_hub_url,
            http_get,
            repo_folder_name,
        )
        from huggingface_hub.utils import WeakFileLock, build_hf_headers
        from huggingface_hub.utils._runtime import is_xet_available
    except ImportError:
        return None

    cache = Path(cache_dir or constants.HF_HUB_CACHE).expanduser().resolve()   # as snapshot_download does
    folder = cache / repo_folder_name(repo_id=repo_id, repo_type="model")
    api = HfApi(endpoint=endpoint, library_name="qwen3-edge")
    metadata_errors = (OSError, HfHubHTTPError, RevisionResolutionError, *_http_errors())
    try:
        resolved = api.resolve_revision(repo_id, revision=revision or constants.DEFAULT_REVISION, cache_dir=cache)
        commit = resolved.resolved
        weights = [f for f in _repo_files(api, repo_id, commit, folder) if wanted(f)]
    except metadata_errors:
        return None
    for filename in weights:
        if (folder / "snapshots" / commit / filename).exists():
            continue                                 # already in the snapshot: nothing to do
        url = hf_hub_url(repo_id, filename, revision=commit, endpoint=endpoint)
        headers = build_hf_headers(library_name="qwen3-edge")
        try:
            meta = get_hf_file_metadata(url, headers=headers, endpoint=endpoint)
        except metadata_errors:
            return None
        if meta.etag is None or meta.commit_hash is None or (meta.xet_file_data is not None and is_xet_available()):
            continue                                 # leave the odd cases (and Xet transfers) to hf_hub_download
        location = meta.location
        if location != url and urlsplit(location).netloc != urlsplit(url).netloc:
            headers.pop("authorization", None)       # a signed CDN URL: never send the token there
        blob = folder / "blobs" / meta.etag
        lock = cache / ".locks" / repo_folder_name(repo_id=repo_id, repo_type="model") / f"{meta.etag}.lock"
        blob.parent.mkdir(parents=True, exist_ok=True)
        lock.parent.mkdir(parents=True, exist_ok=True)
        with WeakFileLock(str(lock)):                # the lock hf_hub_download takes for this blob
            if blob.exists():
                continue
            _fetch_resumably(http_get, location, blob, headers, meta.size, meter.bar_class(prefetch=True))
    return resolved


def _repo_files(api: Any, repo_id: str, commit: str, folder: Path) -> list[str]:
    """The repo's file names at `commit`, from the tree listing snapshot_download caches, else from the Hub."""
    from huggingface_hub.hf_api import RepoFile

    try:
        from huggingface_hub._tree_cache import read_tree_cache
        cached = read_tree_cache(str(folder), commit)
    except ImportError:
        cached = None
    if cached is not None:
        return list(cached)
    return [f.path for f in api.list_repo_tree(repo_id, recursive=True, revision=commit) if isinstance(f, RepoFile)]


def _fetch_resumably(http_get: Callable[..., None], url: str, blob: Path, headers: dict[str, str],
                     size: int | None, bar: type[_Bar]) -> None:
    """Download `url` into `blob` through `<blob>.qwen3-edge-partial`, continuing the bytes already there."""
    partial = blob.with_name(blob.name + PARTIAL_SUFFIX)
    have = partial.stat().st_size if partial.exists() else 0
    if size is not None and have > size:
        have = 0                                     # not ours to continue: start over
    with partial.open("r+b" if have else "wb") as f:
        f.truncate(have)
        f.seek(have)
        http_get(url, f, resume_size=have, headers=headers, expected_size=size, tqdm_class=bar)
        f.flush()
        os.fsync(f.fileno())
        got = f.tell()
    if size is not None and got != size:
        raise OSError(f"{blob.name}: got {got} bytes of {size}")
    os.replace(partial, blob)


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
    return (*errors, *_http_errors())


def _http_errors() -> tuple[type[BaseException], ...]:
    """huggingface_hub 2.x uses httpx2, 1.x httpx, 0.x requests (whose errors are OSErrors already)."""
    return tuple(sys.modules[client].HTTPError for client in ("httpx2", "httpx") if client in sys.modules)


def _reason(error: BaseException, endpoint: str | None, offline: bool) -> str:
    """The cause of a failed download in a few words, from the innermost error that says something."""
    from huggingface_hub import constants
    from huggingface_hub.errors import (
        GatedRepoError,
        HfHubHTTPError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

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

    def bar_class(self, *, prefetch: bool = False) -> type[_Bar]:
        """A tqdm stand-in bound to this meter; a class per download, so no state is shared.

        `prefetch` bars count one weights file each (see _prefetch) and add up; snapshot_download's
        byte bars each count all of its files, so the largest of them is its share.
        """
        return type("_MeteredBar", (_Bar,), {"meter": self, "prefetch": prefetch})

    def changed(self) -> None:
        """Called with the lock held, after any bar moved."""
        own = [b for b in self.bars if b.prefetch]
        byte_bars = [b for b in self.bars if b.unit == "B" and not b.prefetch]
        file_bars = [b for b in self.bars if b.unit != "B" and not b.prefetch]
        done = max((b.n for b in byte_bars), default=0) + sum(b.n for b in own)
        total = max((b.total or 0 for b in byte_bars), default=0) + sum(b.total or 0 for b in own)
        detail = f"{file_bars[0].n}/{file_bars[0].total or 0} files" if file_bars else ""
        event = PullProgress("download", min(done, total) if total else done, total, detail)
        if event != self.last:
            self.last = event
            self.report(event)


class _Bar:
    """Just enough of tqdm for snapshot_download: counts and reports, never draws."""

    meter: _DownloadMeter
    prefetch: bool = False

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
