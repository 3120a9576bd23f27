"""The model store: GGUFs that `pull` and `chat` keep for the user, one folder per model.

Layout: <root>/models/<name>/<type>.gguf, e.g. models/qwen3-0.6b/q4_k_m.gguf. The root is the
user's data folder (platformdirs), or QWEN3_EDGE_HOME when set. A reference names a model as
`name` or `name:type` (`qwen3-4b:q8_0`); the type defaults to q4_k_m (q4_0 on ARM boards).
"""

from __future__ import annotations

import os
import platform
import re
from dataclasses import dataclass
from pathlib import Path

import platformdirs

from quantize import DEFAULT_TYPE, QuantizeError, quant_type

HOME_ENV = "QWEN3_EDGE_HOME"
DEFAULT_MODEL = "qwen3-0.6b"
# Store names of the official checkpoints and their Hugging Face repositories: the hybrid models
# of April 2025, and the 4B's July 2025 ("2507") pair, non-thinking-only and thinking-only.
OFFICIAL_MODELS = {"qwen3-0.6b": "Qwen/Qwen3-0.6B", "qwen3-1.7b": "Qwen/Qwen3-1.7B", "qwen3-4b": "Qwen/Qwen3-4B",
                   "qwen3-4b-instruct-2507": "Qwen/Qwen3-4B-Instruct-2507",
                   "qwen3-4b-thinking-2507": "Qwen/Qwen3-4B-Thinking-2507"}
_NAME = re.compile(r"^[a-z0-9][a-z0-9._-]*$")


def machine_default_type(machine: str | None = None) -> str:
    """q4_0 on ARM, where llama.cpp repacks Q4_0 at load for its fastest kernels; q4_k_m elsewhere."""
    machine = (machine or platform.machine()).lower()
    return "q4_0" if machine in ("arm64", "aarch64", "armv8l") or machine.startswith("arm") else DEFAULT_TYPE


class StoreError(Exception):
    """A bad or unknown model reference, told in one line."""


@dataclass(frozen=True)
class ModelRef:
    name: str
    type: str

    def __str__(self) -> str:
        return f"{self.name}:{self.type}"


@dataclass(frozen=True)
class StoreEntry:
    name: str
    type: str
    size_bytes: int
    path: Path


def parse_ref(ref: str) -> ModelRef:
    """`qwen3-4b:q8_0` -> ModelRef("qwen3-4b", "q8_0"); the type defaults to the machine's."""
    name, _, qtype = ref.strip().lower().partition(":")
    if not _NAME.match(name):
        raise StoreError(f"{ref!r} is not a model name (letters, digits, '.', '-', '_')")
    try:
        qtype = quant_type(qtype or machine_default_type()).name
    except QuantizeError as e:
        raise StoreError(f"{ref}: {e}") from None
    return ModelRef(name, qtype)


def store_root() -> Path:
    return Path(os.environ.get(HOME_ENV) or platformdirs.user_data_dir("qwen3-edge", appauthor=False))


class ModelStore:
    def __init__(self, root: Path | None = None):
        self.root = Path(root) if root is not None else store_root()

    @property
    def models_dir(self) -> Path:
        return self.root / "models"

    def path_for(self, ref: ModelRef) -> Path:
        return self.models_dir / ref.name / f"{ref.type}.gguf"

    def find(self, ref: ModelRef) -> Path | None:
        path = self.path_for(ref)
        return path if path.is_file() else None

    def entries(self) -> list[StoreEntry]:
        if not self.models_dir.is_dir():
            return []
        return [StoreEntry(p.parent.name, p.stem, p.stat().st_size, p)
                for p in sorted(self.models_dir.glob("*/*.gguf"))]

    def remove(self, ref_text: str) -> list[Path]:
        """Remove `name:type`, or every type of `name` when no type is given; return what went."""
        has_type = ":" in ref_text
        ref = parse_ref(ref_text)
        paths = [self.path_for(ref)] if has_type else sorted((self.models_dir / ref.name).glob("*.gguf"))
        paths = [p for p in paths if p.is_file()]
        if not paths:
            raise StoreError(f"{ref_text}: not in the store ({self.models_dir})")
        for p in paths:
            p.unlink()
        folder = self.models_dir / ref.name
        if folder.is_dir() and not any(folder.iterdir()):
            folder.rmdir()
        return paths

    def prepare(self, ref: ModelRef) -> Path:
        """The path to write `ref` to, its folder created."""
        path = self.path_for(ref)
        path.parent.mkdir(parents=True, exist_ok=True)
        return path
