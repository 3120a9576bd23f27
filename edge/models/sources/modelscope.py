"""ModelScope as a download source, through modelscope-hub (the client the `modelscope` package's
own hub code delegates to) and its cache.

Its settings work as its users know them: MODELSCOPE_ENDPOINT (or the older MODELSCOPE_DOMAIN) for
the hub or a mirror, MODELSCOPE_CACHE for the cache, MODELSCOPE_API_TOKEN or a saved login. They
are read when a pull starts (a fresh HubConfig), not when the package was imported. The client
resumes a download from `<file>.incomplete` with a Range request, after a dropped connection and
after a killed process alike, and checks every file against the listing's size and SHA-256.
ModelScope has no offline switch of its own: QWEN3_EDGE_OFFLINE=1 serves its cache alone.
"""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from edge.models.sources.base import Fetched, Listing, PullCallback, PullError, PullProgress, RemoteFile, ignore_progress

OFFLINE_ENV = "QWEN3_EDGE_OFFLINE"
DEFAULT_REVISION = "master"   # ModelScope's default branch
_TRUE = {"1", "ON", "YES", "TRUE"}


class ModelScope:
    """modelscope.cn (or the endpoint in MODELSCOPE_ENDPOINT / MODELSCOPE_DOMAIN)."""

    name = "modelscope"
    title = "ModelScope"
    hosts = ("modelscope.cn", "modelscope.ai", "www.modelscope.cn")

    def offline(self) -> bool:
        return (os.environ.get(OFFLINE_ENV) or "").upper() in _TRUE

    def list_files(self, repo_id: str, revision: str | None = None) -> Listing:
        revision = revision or DEFAULT_REVISION
        if self.offline():
            folder = self.snapshot(repo_id, ["*"], revision=revision).path
            return Listing(revision, [RemoteFile(p.relative_to(folder).as_posix(), p.stat().st_size)
                                      for p in sorted(folder.rglob("*")) if p.is_file()])
        api = _api()
        with _errors(repo_id, api):
            return Listing(revision, [RemoteFile(f.path, f.size) for f in _blobs(api, repo_id, revision)])

    def download_file(self, repo_id: str, filename: str, *, revision: str | None = None,
                      progress: PullCallback | None = None) -> Fetched:
        revision = revision or DEFAULT_REVISION
        api = _api()
        with _errors(repo_id, api):
            if self.offline():
                path = api.download_file(repo_id, "model", filename, revision=revision, local_files_only=True)
                return Fetched(Path(path), revision)
        fetched = self.snapshot(repo_id, [filename], revision=revision, progress=progress, exact=True)
        path = fetched.path / filename
        if not path.is_file():
            raise PullError(f"cannot download {repo_id}: no file {filename} at {revision} on {api.endpoint}")
        return Fetched(path, revision)

    def snapshot(self, repo_id: str, patterns: Sequence[str], *, revision: str | None = None,
                 progress: PullCallback | None = None, exact: bool = False) -> Fetched:
        revision = revision or DEFAULT_REVISION
        api = _api()
        with _errors(repo_id, api):
            if self.offline():
                folder = api.download_repo(repo_id, "model", revision=revision, local_files_only=True)
                return Fetched(Path(folder), revision)
            files = [f for f in _blobs(api, repo_id, revision)
                     if (f.path in patterns if exact else _matches(f.path, patterns))]
            meter = _Meter(progress or ignore_progress, sum(f.size for f in files), len(files))
            listing = [{"Path": f.path, "Size": f.size, "Sha256": f.sha256, "Type": "blob"} for f in files]
            folder = api.download_repo(repo_id, "model", revision=revision, file_list=listing, max_workers=2,
                                       progress_callbacks=[meter.callback()])
        return Fetched(Path(folder), revision)


def _api() -> Any:
    """A client configured from the environment as it is now (endpoint, cache, token)."""
    import warnings

    from modelscope_hub import HubApi, HubConfig

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)   # MODELSCOPE_DOMAIN still works; it only warns
        return _Api(HubApi(config=HubConfig()))


class _Api:
    """HubApi with its endpoint at hand, for messages."""

    def __init__(self, api: Any):
        self._api = api
        self.endpoint = api._config.endpoint

    def __getattr__(self, name: str) -> Any:
        return getattr(self._api, name)


def _blobs(api: Any, repo_id: str, revision: str) -> list[Any]:
    return [f for f in api.list_repo_files(repo_id, "model", revision=revision) if f.type != "tree"]


def _matches(path: str, patterns: Sequence[str]) -> bool:
    from fnmatch import fnmatch

    return any(fnmatch(path, p) for p in patterns)


@contextlib.contextmanager
def _errors(repo_id: str, api: Any) -> Iterator[None]:
    """modelscope-hub's errors as one PullError line."""
    from modelscope_hub import FileDownloadError, HubError

    try:
        with _quiet():
            yield
    except PullError:
        raise
    except FileDownloadError as e:
        first = next(iter(e.failed_files.values()), e) if getattr(e, "failed_files", None) else e
        raise _error(repo_id, first, api.endpoint) from e
    except (HubError, OSError, ValueError) as e:
        raise _error(repo_id, e, api.endpoint) from e


def _error(repo_id: str, e: BaseException, endpoint: str) -> PullError:
    from modelscope_hub import CacheNotFound, NetworkError, NotExistError, RequestTimeoutError

    if isinstance(e, CacheNotFound):
        return PullError(f"cannot download {repo_id}: offline mode is on ({OFFLINE_ENV}) and the ModelScope "
                         f"cache lacks its files")
    if isinstance(e, RequestTimeoutError):
        return PullError(f"cannot download {repo_id}: {endpoint} did not answer in time", unreachable=True)
    if isinstance(e, NetworkError):
        return PullError(f"cannot download {repo_id}: cannot reach {endpoint} ({_network_reason(e)})", unreachable=True)
    if isinstance(e, NotExistError):
        return PullError(f"cannot download {repo_id}: no such repository or revision on {endpoint}")
    status = getattr(e, "status_code", None)
    if status:
        return PullError(f"cannot download {repo_id}: {endpoint} answered HTTP {status}")
    return PullError(f"cannot download {repo_id}: {_one_line(e)}")


def _network_reason(error: BaseException) -> str:
    """requests' long chain of wrappers, as the few words that matter."""
    text = str(error).lower()
    for needle, words in (("refused", "connection refused"), ("name or service not known", "unknown host"),
                          ("nameresolution", "unknown host"), ("timed out", "timed out"), ("reset", "connection reset")):
        if needle in text:
            return words
    return _one_line(error)[:120]


def _one_line(error: BaseException) -> str:
    text = " ".join(str(getattr(error, "message", None) or error).split())
    return text[:300] or type(error).__name__


_QUIET = threading.RLock()


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """Keep modelscope-hub's own tqdm bars and log lines off the terminal: progress goes to our callback.

    The client takes no bar class, so its module's `tqdm` is swapped for a disabled one during the
    call (if a later version moves it, the bars simply show).
    """
    try:
        from modelscope_hub import _download
        from tqdm import tqdm
    except ImportError:
        yield
        return

    class Silent(tqdm):  # type: ignore[misc,valid-type]
        def __init__(self, *args: Any, **kwargs: Any):
            super().__init__(*args, **(kwargs | {"disable": True}))

    import logging

    log = logging.getLogger("modelscope_hub")
    with _QUIET:
        original, level = getattr(_download, "tqdm", None), log.level
        if original is not None:
            _download.tqdm = Silent
        log.setLevel(logging.ERROR)     # its retries and "Downloading N files" lines; our error says the rest
        try:
            yield
        finally:
            log.setLevel(level)
            if original is not None:
                _download.tqdm = original


class _Meter:
    """Sums the per-file byte callbacks into PullProgress events."""

    def __init__(self, report: PullCallback, total: int, files: int = 1):
        self.report, self.total, self.files = report, total, files
        self.done = 0
        self.finished = 0
        self.lock = threading.Lock()

    def callback(self) -> type:
        from modelscope_hub import ProgressCallback

        meter = self

        class Callback(ProgressCallback):  # type: ignore[misc,valid-type]
            def update(self, size: int) -> None:
                with meter.lock:
                    meter.done += size
                    meter.emit()

            def end(self) -> None:
                with meter.lock:
                    meter.finished += 1
                    meter.emit()

        return Callback

    def emit(self) -> None:
        done = min(self.done, self.total) if self.total else self.done
        self.report(PullProgress("download", done, self.total, f"{min(self.finished, self.files)}/{self.files} files"))
