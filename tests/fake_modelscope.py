"""A fake ModelScope hub on 127.0.0.1, in the URL layout modelscope-hub's client calls.

    GET /api/v1/models/{owner}/{name}/repo/files?Revision=&Recursive=   -> {"Code": 200, "Data": {"Files": [...]}}
    GET /api/v1/models/{owner}/{name}/repo?Revision=&FilePath=          -> the bytes; `Range: bytes=N-` gives 206
    GET /api/v1/models/{owner}/{name}                                   -> repo info
    anything else (internalAccelerationInfo, ...)                       -> 404

Each file entry carries what the real listing does (Path, Name, Size, Sha256, Type, Revision,
IsLFS), so the client checks sizes and hashes as it would against modelscope.cn. Revisions:
"master" or the repo's commit id. `drop_once` cuts a file's download part way. Every request is
recorded in `requests`. Point MODELSCOPE_ENDPOINT at `url`.
"""

from __future__ import annotations

import hashlib
import json
import re
import socket
import threading
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlsplit

_RANGE = re.compile(r"^bytes=(\d+)-(\d*)$")
_PREFIX = "/api/v1/models/"


@dataclass(frozen=True)
class Request:
    method: str
    path: str
    query: dict
    range: str | None = None

    @property
    def file(self) -> str | None:
        """The FilePath of a file download, else None."""
        return self.query.get("FilePath") if self.path.endswith("/repo") else None


class _Repo:
    def __init__(self, repo_id: str, folder: Path):
        self.repo_id = repo_id
        self.files: dict[str, tuple[Path, int, str]] = {}
        for p in sorted(q for q in Path(folder).rglob("*") if q.is_file()):
            data = p.read_bytes()
            self.files[p.relative_to(folder).as_posix()] = (p, len(data), hashlib.sha256(data).hexdigest())
        commit = hashlib.sha1()
        for name, (_, _, sha) in self.files.items():
            commit.update(f"{name}\0{sha}\n".encode())
        self.commit = commit.hexdigest()

    def listing(self) -> list[dict]:
        return [{"Path": name, "Name": name.rsplit("/", 1)[-1], "Size": size, "Sha256": sha, "Type": "blob",
                 "Revision": self.commit, "IsLFS": name.endswith((".safetensors", ".gguf")), "Mode": "33188"}
                for name, (_, size, sha) in self.files.items()]


class FakeModelScope:
    def __init__(self, repos: Mapping[str, str | Path]):
        self.repos = {repo_id: _Repo(repo_id, Path(folder)) for repo_id, folder in repos.items()}
        self.requests: list[Request] = []
        self._lock = threading.Lock()
        self._drops: dict[str, int] = {}
        self._server = _Server(self)
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05},
                                        name="fake-modelscope", daemon=True)
        self._thread.start()

    def drop_once(self, filename: str, after_bytes: int) -> None:
        with self._lock:
            self._drops[filename] = after_bytes

    def downloads(self, filename: str | None = None) -> list[Request]:
        """The file downloads made, optionally of one file."""
        with self._lock:
            return [r for r in self.requests if r.file is not None and (filename is None or r.file == filename)]

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join()

    def _record(self, r: Request) -> None:
        with self._lock:
            self.requests.append(r)

    def _take_drop(self, filename: str) -> int | None:
        with self._lock:
            return self._drops.pop(filename, None)


@contextmanager
def serve_modelscope(repos: Mapping[str, str | Path]) -> Iterator[FakeModelScope]:
    hub = FakeModelScope(repos)
    try:
        yield hub
    finally:
        hub.close()


class _Server(ThreadingHTTPServer):
    daemon_threads = False

    def __init__(self, hub: FakeModelScope):
        super().__init__(("127.0.0.1", 0), _Handler)
        self.hub = hub

    def handle_error(self, request: object, client_address: object) -> None:
        pass                                    # a client hanging up is not news


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    timeout = 30
    server: _Server

    def log_message(self, format: str, *args: object) -> None:
        pass

    def do_GET(self) -> None:
        self.close_connection = True
        url = urlsplit(self.path)
        path = unquote(url.path)
        query = {k: v[0] for k, v in parse_qs(url.query).items()}
        hub = self.server.hub
        hub._record(Request("GET", path, query, self.headers.get("Range")))
        if path.startswith(_PREFIX):
            rest = path[len(_PREFIX):]
            for repo_id, repo in hub.repos.items():
                if rest == repo_id:
                    return self._json(200, {"Code": 200, "Data": {"Path": repo_id.split("/")[0],
                                                                  "Name": repo_id.split("/")[1]}, "Success": True})
                if rest.startswith(repo_id + "/"):
                    return self._repo(repo, rest[len(repo_id) + 1:], query)
        self._json(404, {"Code": 10010205001, "Message": f"model {path} not exists", "Success": False})

    def _repo(self, repo: _Repo, endpoint: str, query: dict) -> None:
        revision = query.get("Revision", "master")
        if revision not in ("master", repo.commit):
            return self._json(404, {"Code": 10010205001, "Message": f"revision {revision} not exists", "Success": False})
        if endpoint == "repo/files":
            return self._json(200, {"Code": 200, "Data": {"Files": repo.listing()}, "Message": "success",
                                    "Success": True})
        if endpoint != "repo" or query.get("FilePath") not in repo.files:
            return self._json(404, {"Code": 10010205001, "Message": "file not exists", "Success": False})
        filename = query["FilePath"]
        source, size, sha = repo.files[filename]
        start, end, status = 0, size - 1, 200
        headers = {"Content-Type": "application/octet-stream", "Accept-Ranges": "bytes"}
        match = _RANGE.match(self.headers.get("Range", ""))
        if match:
            start, end, status = int(match[1]), min(int(match[2] or size - 1), size - 1), 206
            if start >= size:
                return self._json(416, {"Code": 416, "Message": "range not satisfiable", "Success": False})
            headers["Content-Range"] = f"bytes {start}-{end}/{size}"
        headers["Content-Length"] = str(end - start + 1)
        self._head(status, headers)
        drop = self.server.hub._take_drop(filename) if status == 200 else None
        with source.open("rb") as f:
            f.seek(start)
            remaining = end - start + 1 if drop is None else min(drop, end - start + 1)
            while remaining > 0:
                chunk = f.read(min(1 << 20, remaining))
                self.wfile.write(chunk)
                remaining -= len(chunk)
        if drop is not None:
            self.wfile.flush()
            self.connection.shutdown(socket.SHUT_RDWR)

    def _json(self, status: int, payload: object) -> None:
        data = json.dumps(payload).encode()
        self._head(status, {"Content-Type": "application/json", "Content-Length": str(len(data))})
        self.wfile.write(data)

    def _head(self, status: int, headers: dict[str, str]) -> None:
        self.send_response(status)
        for k, v in headers.items():
            self.send_header(k, v)
        self.send_header("Connection", "close")
        self.end_headers()
