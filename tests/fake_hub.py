"""A fake Hugging Face Hub on 127.0.0.1, so that `pull` is tested without the internet.

It answers exactly what huggingface_hub 2.4's `snapshot_download` asks, for local folders served as
model repos:

    GET  /api/models/{repo}/revision/{rev}   -> {"id", "sha", "siblings"}   (HfApi.repo_info)
    GET  /api/models/{repo}/tree/{sha}       -> [{"type", "path", "size", "oid", "lfs"?}]  (list_repo_tree)
    HEAD /{repo}/resolve/{sha}/{file}        -> X-Repo-Commit, ETag, Content-Length  (get_hf_file_metadata)
    GET  /{repo}/resolve/{sha}/{file}        -> the bytes; `Range: bytes=N-` gives 206  (http_get, resume)

No Xet headers or `xetHash` fields are sent, so the client always takes the plain HTTP path, and files
are served directly rather than through a CDN redirect. Errors carry the `X-Error-Code` header the
real Hub uses (RepoNotFound, RevisionNotFound, EntryNotFound), which huggingface_hub maps to its own
exception types. `drop_once` and `stall` cut or freeze a file's download part way. Every request
is recorded in `FakeHub.requests`, so a test can tell what a pull fetched.
"""

from __future__ import annotations

import hashlib
import json
import re
import socket
import sys
import threading
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote, urlsplit

LFS_SUFFIXES = (".safetensors", ".bin", ".gguf")
_RANGE = re.compile(r"^bytes=(\d+)-(\d*)$")


@dataclass(frozen=True)
class Request:
    method: str
    path: str               # unquoted, without the query string
    range: str | None = None

    @property
    def is_file(self) -> bool:
        return "/resolve/" in self.path


@dataclass(frozen=True)
class _File:
    path: Path
    size: int
    blob_id: str            # git's sha1 of the blob
    sha256: str | None      # set for files the Hub keeps in LFS

    @property
    def etag(self) -> str:
        return self.sha256 or self.blob_id


class _Repo:
    def __init__(self, repo_id: str, folder: Path):
        self.repo_id = repo_id
        self.files: dict[str, _File] = {}
        for p in sorted(q for q in Path(folder).rglob("*") if q.is_file()):
            data = p.read_bytes()
            self.files[p.relative_to(folder).as_posix()] = _File(
                p, len(data), hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest(),
                hashlib.sha256(data).hexdigest() if p.name.endswith(LFS_SUFFIXES) else None)
        commit = hashlib.sha1()
        for name, f in self.files.items():
            commit.update(f"{name}\0{f.blob_id}\n".encode())
        self.sha = commit.hexdigest()

    def resolve(self, revision: str) -> bool:
        return revision in ("main", self.sha)

    def tree(self) -> list[dict]:
        entries = []
        for name, f in self.files.items():
            entry: dict = {"type": "file", "oid": f.blob_id, "size": f.size, "path": name}
            if f.sha256:
                entry["lfs"] = {"oid": f.sha256, "size": f.size, "pointerSize": 134}
            entries.append(entry)
        return entries


class FakeHub:
    """A threaded HTTP server serving `{repo_id: folder}`; use as a context manager or call close()."""

    def __init__(self, repos: Mapping[str, str | Path]):
        self.repos = {repo_id: _Repo(repo_id, Path(folder)) for repo_id, folder in repos.items()}
        self.requests: list[Request] = []
        self._lock = threading.Lock()
        self._drops: dict[str, int] = {}
        self._stalls: dict[str, int] = {}
        self._closing = threading.Event()
        self._server = _Server(self)
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05},
                                        name="fake-hub", daemon=True)
        self._thread.start()

    def drop_once(self, filename: str, after_bytes: int) -> None:
        """Cut the connection once, `after_bytes` into the next full download of `filename`."""
        with self._lock:
            self._drops[filename] = after_bytes

    def stall(self, filename: str, after_bytes: int | None) -> None:
        """Stop sending, `after_bytes` into every full download of `filename`, and hang until closed.

        The connection stays open and silent, as for a client killed mid-download. None serves it whole again.
        """
        with self._lock:
            if after_bytes is None:
                self._stalls.pop(filename, None)
            else:
                self._stalls[filename] = after_bytes

    def file_requests(self, method: str | None = None) -> list[Request]:
        """The HEAD/GET requests for repo files (not API calls), optionally of one method."""
        with self._lock:
            return [r for r in self.requests if r.is_file and (method is None or r.method == method)]

    def close(self) -> None:
        self._closing.set()                     # release stalled handlers, so that shutdown can join them
        self._server.shutdown()
        self._server.server_close()
        self._thread.join()

    def __enter__(self) -> FakeHub:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _record(self, request: Request) -> None:
        with self._lock:
            self.requests.append(request)

    def _take_drop(self, filename: str) -> int | None:
        with self._lock:
            return self._drops.pop(filename, None)

    def _stall_at(self, filename: str) -> int | None:
        with self._lock:
            return self._stalls.get(filename)


@contextmanager
def serve_repos(repos: Mapping[str, str | Path]) -> Iterator[FakeHub]:
    """`with serve_repos({"Qwen/Qwen3-0.6B": folder}) as hub:` then point HF_ENDPOINT at hub.url."""
    hub = FakeHub(repos)
    try:
        yield hub
    finally:
        hub.close()


def free_port() -> int:
    """A port on 127.0.0.1 that nothing listens on (at the time of asking)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def closed_port_url() -> str:
    """A URL on 127.0.0.1 where nothing listens: connections are refused at once."""
    return f"http://127.0.0.1:{free_port()}"


class _Server(ThreadingHTTPServer):
    daemon_threads = False                      # server_close() waits for every handler thread

    def __init__(self, hub: FakeHub):
        super().__init__(("127.0.0.1", 0), _Handler)
        self.hub = hub

    def handle_error(self, request: object, client_address: object) -> None:
        if not isinstance(sys.exc_info()[1], ConnectionError):   # a client hanging up is not news
            super().handle_error(request, client_address)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    timeout = 30                                # never hang a handler (and close()) on a silent client
    server: _Server

    @property
    def hub(self) -> FakeHub:
        return self.server.hub

    def log_message(self, format: str, *args: object) -> None:
        pass                                    # keep test output clean

    def do_GET(self) -> None:
        self._route(body=True)

    def do_HEAD(self) -> None:
        self._route(body=False)

    def _route(self, body: bool) -> None:
        self.close_connection = True            # one request per connection: clean, quick shutdown
        path = unquote(urlsplit(self.path).path)
        self.hub._record(Request(self.command, path, self.headers.get("Range")))
        for repo_id, repo in self.hub.repos.items():
            api = f"/api/models/{repo_id}/"
            if path.startswith(api):
                return self._api(repo, path[len(api):], body)
            files = f"/{repo_id}/resolve/"
            if path.startswith(files):
                revision, _, filename = path[len(files):].partition("/")
                return self._file(repo, revision, filename, body)
        self._error(404, "RepoNotFound", f"Repository not found: {path}", body)

    def _api(self, repo: _Repo, rest: str, body: bool) -> None:
        kind, _, revision = rest.partition("/")
        revision = revision.split("/", 1)[0]
        if kind not in ("revision", "tree"):
            return self._error(404, None, f"no such endpoint: {rest}", body)
        if not repo.resolve(revision):
            return self._error(404, "RevisionNotFound", f"Invalid rev id: {revision}", body)
        if kind == "revision":
            payload: object = {"id": repo.repo_id, "modelId": repo.repo_id, "sha": repo.sha, "private": False,
                               "siblings": [{"rfilename": name} for name in repo.files]}
        else:
            payload = repo.tree()
        data = json.dumps(payload).encode()
        self._head(200, {"Content-Type": "application/json", "Content-Length": str(len(data))})
        if body:
            self.wfile.write(data)

    def _file(self, repo: _Repo, revision: str, filename: str, body: bool) -> None:
        if not repo.resolve(revision):
            return self._error(404, "RevisionNotFound", f"Invalid rev id: {revision}", body)
        f = repo.files.get(filename)
        if f is None:
            return self._error(404, "EntryNotFound", f"{filename} does not exist", body,
                               {"X-Repo-Commit": repo.sha})
        headers = {"X-Repo-Commit": repo.sha, "ETag": f'"{f.etag}"', "Accept-Ranges": "bytes",
                   "Content-Type": "application/octet-stream"}
        if f.sha256:
            headers |= {"X-Linked-Etag": f'"{f.sha256}"', "X-Linked-Size": str(f.size)}
        start, end, status = 0, f.size - 1, 200
        match = _RANGE.match(self.headers.get("Range", ""))
        if match:
            start, end, status = int(match[1]), int(match[2] or f.size - 1), 206
            if start >= f.size:
                return self._error(416, None, "range not satisfiable", body, {"Content-Range": f"bytes */{f.size}"})
            end = min(end, f.size - 1)
            headers["Content-Range"] = f"bytes {start}-{end}/{f.size}"
        headers["Content-Length"] = str(end - start + 1)
        self._head(status, headers)
        if not body:
            return
        drop = self.hub._take_drop(filename) if status == 200 else None
        stall = self.hub._stall_at(filename) if status == 200 and drop is None else None
        if stall is not None:
            drop = stall
        with f.path.open("rb") as src:
            src.seek(start)
            remaining = end - start + 1 if drop is None else min(drop, end - start + 1)
            while remaining > 0:
                chunk = src.read(min(1 << 20, remaining))
                self.wfile.write(chunk)
                remaining -= len(chunk)
        if stall is not None:
            self.wfile.flush()
            self.hub._closing.wait()             # hang, silent, until the hub closes
            return
        if drop is not None:
            self.wfile.flush()
            self.connection.shutdown(socket.SHUT_RDWR)   # the client sees a body cut short

    def _error(self, status: int, code: str | None, message: str, body: bool,
               extra: dict[str, str] | None = None) -> None:
        data = json.dumps({"error": message}).encode()
        headers = {"Content-Type": "application/json", "Content-Length": str(len(data)), "X-Error-Message": message}
        if code:
            headers["X-Error-Code"] = code
        self._head(status, headers | (extra or {}))
        if body:
            self.wfile.write(data)

    def _head(self, status: int, headers: dict[str, str]) -> None:
        self.send_response(status)
        for key, value in headers.items():
            self.send_header(key, value)
        self.send_header("Connection", "close")
        self.end_headers()
