"""The model store: GGUFs that `pull` and `chat` keep for the user, one folder per model.

Layout: <root>/models/<name>/<type>.gguf, e.g. models/qwen3-0.6b/q4_k_m.gguf. The root is the
user's data folder (platformdirs), or QWEN3_EDGE_HOME when set. A reference names a model as
`name` or `name:type` (`qwen3-4b:q8_0`); the type defaults to q4_k_m (q4_0 on ARM boards).
A ready-made GGUF from a hub, `hf.co/{owner}/{repo}:{quant}` or `modelscope.cn/{owner}/{repo}:{quant}`
(Ollama's spelling), is kept as models/{owner}--{repo}/{quant}.gguf, lower case. Beside each GGUF,
<type>.origin.json says where it came from (source, repo, revision, file), for `list`.
"""

from __future__ import annotations

import json
import os
import platform
import re
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import platformdirs

from quantize import DEFAULT_TYPE, QuantizeError, quant_type
from quantize.atomic import publish_mode

HOME_ENV = "QWEN3_EDGE_HOME"
DEFAULT_MODEL = "qwen3-0.6b"
# Store names of the official checkpoints and their Hugging Face repositories: the hybrid models
# of April 2025, and the 4B's July 2025 ("2507") pair, non-thinking-only and thinking-only.
OFFICIAL_MODELS = {"qwen3-0.6b": "Qwen/Qwen3-0.6B", "qwen3-1.7b": "Qwen/Qwen3-1.7B", "qwen3-4b": "Qwen/Qwen3-4B",
                   "qwen3-4b-instruct-2507": "Qwen/Qwen3-4B-Instruct-2507",
                   "qwen3-4b-thinking-2507": "Qwen/Qwen3-4B-Thinking-2507",
                   # search: vectors and relevance scores (edge/runtime/embedding.py), not chat
                   "qwen3-embedding-0.6b": "Qwen/Qwen3-Embedding-0.6B", "qwen3-reranker-0.6b": "Qwen/Qwen3-Reranker-0.6B"}
_NAME = re.compile(r"^[a-z0-9][a-z0-9._-]*$")
_TYPE = re.compile(r"^[a-z0-9][a-z0-9._-]*$")   # a ready GGUF's quant may be any llama.cpp type (iq4_xs...)
_READY = re.compile(r"^(?:https?://)?(?P<host>[A-Za-z0-9.-]+)/(?P<owner>[A-Za-z0-9][\w.-]*)/(?P<repo>[A-Za-z0-9][\w.-]*)"
                    r"(?::(?P<quant>[A-Za-z0-9][\w.-]*))?/?$")
ORIGIN_SUFFIX = ".origin.json"


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
    origin: dict = field(default_factory=dict)   # source, repo, revision, file; empty when unknown


@dataclass(frozen=True)
class ReadyRef:
    """`hf.co/Qwen/Qwen3-4B-GGUF:Q4_K_M`: a GGUF file to take as it is from a hub's repo."""
    source: str           # "hf", "modelscope"
    repo_id: str          # as the hub spells it: Qwen/Qwen3-4B-GGUF
    quant: str            # as asked, matched case-insensitively: Q4_K_M

    @property
    def ref(self) -> ModelRef:
        """Where the store keeps it: qwen--qwen3-4b-gguf:q4_k_m."""
        return ModelRef(self.repo_id.lower().replace("/", "--"), self.quant.lower())


def parse_ready_ref(spec: str) -> ReadyRef | None:
    """A ReadyRef when `spec` names a hub the sources know (hf.co, modelscope.cn...), else None."""
    from edge.models.sources import source_for_host   # the hosts belong to the sources

    m = _READY.match(spec.strip())
    if m is None:
        return None
    source = source_for_host(m["host"])
    if source is None:
        return None
    return ReadyRef(source.name, f"{m['owner']}/{m['repo']}", m["quant"] or machine_default_type())


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
        return [StoreEntry(p.parent.name, p.stem, p.stat().st_size, p, read_origin(p))
                for p in sorted(self.models_dir.glob("*/*.gguf"))]

    def remove(self, ref_text: str) -> list[Path]:
        """Remove `name:type`, or every type of `name` when no type is given; return what went.

        A ready GGUF goes by its store name or by the reference it was pulled with."""
        ready = parse_ready_ref(ref_text)
        if ready is not None:
            ref, has_type = ready.ref, True
        else:
            has_type = ":" in ref_text
            name, _, qtype = ref_text.strip().lower().partition(":")
            if has_type and _NAME.match(name) and _TYPE.match(qtype) and (self.models_dir / name / f"{qtype}.gguf").is_file():
                ref = ModelRef(name, qtype)     # a ready GGUF's type that the quantizer does not make
            else:
                ref = parse_ref(ref_text)
        paths = [self.path_for(ref)] if has_type else sorted((self.models_dir / ref.name).glob("*.gguf"))
        paths = [p for p in paths if p.is_file()]
        if not paths:
            raise StoreError(f"{ref_text}: not in the store ({self.models_dir})")
        for p in paths:
            p.unlink()
            origin_path(p).unlink(missing_ok=True)
        folder = self.models_dir / ref.name
        if folder.is_dir() and not any(folder.iterdir()):
            folder.rmdir()
        return paths

    def prepare(self, ref: ModelRef) -> Path:
        """The path to write `ref` to, its folder created."""
        path = self.path_for(ref)
        path.parent.mkdir(parents=True, exist_ok=True)
        return path


def origin_path(gguf: Path) -> Path:
    return gguf.with_name(gguf.stem + ORIGIN_SUFFIX)


def read_origin(gguf: Path) -> dict:
    """What write_origin recorded for `gguf`; {} when nothing was (or it cannot be read)."""
    try:
        data = json.loads(origin_path(gguf).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return {k: str(v) for k, v in data.items()} if isinstance(data, dict) else {}


def write_origin(gguf: Path, **origin: str) -> None:
    """Record where `gguf` came from, atomically: a reader sees the old record or the new, never half."""
    fd, tmp = tempfile.mkstemp(prefix=f".{gguf.stem}.", suffix=".tmp", dir=gguf.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(origin, f, indent=1)
            f.flush()
            os.fsync(f.fileno())
        publish_mode(Path(tmp))  # readable as the GGUF beside it is
        os.replace(tmp, origin_path(gguf))
    finally:
        Path(tmp).unlink(missing_ok=True)
