"""The one error type the pipeline raises for bad input: it names the file and what is wrong."""

from __future__ import annotations

import os


class QuantizeError(Exception):
    """Bad input or an unusable output location, told in one line: ``<file>: <what is wrong>``."""

    def __init__(self, path: str | os.PathLike[str] | None, message: str):
        self.path = None if path is None else os.fspath(path)
        self.message = message
        super().__init__(f"{self.path}: {message}" if self.path else message)
