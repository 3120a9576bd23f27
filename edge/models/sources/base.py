"""What every download source offers `pull`: the same few calls, so a new hub is a new module.

A source lists a repo's files at a revision, downloads one file, and downloads the files a
conversion needs, each into that hub's own cache (resumable, and served from the cache when the
source is offline). Failures are PullErrors with one line; `unreachable` marks the ones where the
hub could not be reached at all, so that `pull` can name the other source.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol


class PullError(Exception):
    """Why a pull failed, in one line fit for the terminal."""

    def __init__(self, message: str, *, unreachable: bool = False):
        super().__init__(message)
        self.unreachable = unreachable


@dataclass(frozen=True)
class PullProgress:
    stage: str         # "download", then "convert" and, for llama.cpp's types, "quantize"
    done: int          # bytes (download) or tensors (convert, quantize)
    total: int         # 0 while unknown, or when everything came from the cache
    detail: str = ""   # "3/7 files" (download) or the tensor just written


PullCallback = Callable[[PullProgress], None]


def ignore_progress(_: PullProgress) -> None:
    """The default callback: library users who want no progress get none."""


@dataclass(frozen=True)
class RemoteFile:
    path: str          # inside the repo, "/"-separated
    size: int


@dataclass(frozen=True)
class Listing:
    revision: str      # what the revision asked for resolved to (a commit where the hub says one)
    files: list[RemoteFile]


@dataclass(frozen=True)
class Fetched:
    path: Path         # the file, or the snapshot folder
    revision: str


class Source(Protocol):
    name: str          # what --source and QWEN3_EDGE_SOURCE take: "hf", "modelscope"
    title: str         # for messages: "Hugging Face", "ModelScope"
    hosts: tuple[str, ...]   # model references that name this hub: "hf.co/owner/repo:quant"

    def offline(self) -> bool:
        """Whether the user asked this hub's client to stay off the network (then only its cache serves)."""

    def list_files(self, repo_id: str, revision: str | None = None) -> Listing:
        """The repo's files at `revision` (the hub's default branch when None)."""

    def download_file(self, repo_id: str, filename: str, *, revision: str | None = None,
                      progress: PullCallback | None = None) -> Fetched:
        """One file in the hub's cache, fetched (resuming a partial download) when missing."""

    def snapshot(self, repo_id: str, patterns: Sequence[str], *, revision: str | None = None,
                 progress: PullCallback | None = None) -> Fetched:
        """A folder with the repo's files that match `patterns`, fetched when missing."""
