"""A persistent prefix cache: the KV state of a long system prompt, kept on disk across restarts.

An app that starts every morning with a 2,000-token system prompt (instructions, tool
descriptions) would evaluate it again on every launch: seconds on two cores. The first process
evaluates the system block (everything up to the first `<|im_end|>\\n`, the tools included, as
Qwen's template renders them), copies that sequence's KV state out of llama.cpp
(llama_state_seq_get_data) and writes it to `<store>/cache/prompts/`; a later process with the same
prefix reads it back (llama_state_seq_set_data) instead of evaluating it.

A file is used only when it is exactly what this process would have computed. Its name is the
key: a hash of the model file's identity (resolved path, size, mtime), every context setting that
shapes the K and V bytes (KV types, flash attention, which transposes V, RoPE/YaRN settings,
offload, repacked weights), the bindings' version, and the exact prefix tokens. Its header repeats
the key and the tokens, and a CRC-32 covers every byte after it, so a file from another model or
setting, a truncated file or a flipped bit is ignored with a warning (and replaced), never handed
to llama.cpp. The context size is not in the key: without YaRN the cached K and V do not depend on
it, and with YaRN its factor and original context are (the RoPE settings are keyed).

Writes go to a temporary file renamed into place (a reader sees the old file or the new, never
half; a file cut short by a crash fails its length check). The folder is bounded: after a write
the least recently used files go until the total is under the cap (a hit refreshes a file's
mtime). A folder that cannot be written (read-only, full) gets one warning and the reply goes on.

Pure functions decide (key, file name, which prefix, which files to evict, header layout);
PromptCache executes them against llama.cpp and the disk.
"""

from __future__ import annotations

import ctypes
import hashlib
import json
import os
import struct
import tempfile
import time
import warnings
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import llama_cpp
import numpy as np

FORMAT_VERSION = 1
MAGIC = b"Q3EKVC\r\n"                     # 8 bytes; \r\n catches a text-mode copy
SUFFIX = ".kvcache"
DEFAULT_MAX_BYTES = 2 * 1024 ** 3        # the folder's cap: about nine 2,000-token prefixes of the 0.6B (f16 KV)
MIN_PREFIX_TOKENS = 256                  # shorter system blocks evaluate about as fast as a file loads
STALE_TMP_S = 3600                       # a temporary file this old was left by a killed process
ENV = "QWEN3_EDGE_PROMPT_CACHE"          # "0"/"off"/"false"/"no": the default (prompt_cache=None) is off
SEQ = 0                                  # the Llama's own context holds one sequence

# magic, version, key (32 bytes), n_tokens, payload bytes, CRC-32 of tokens + payload, CRC-32 of the fields before
_HEADER = struct.Struct("<8sI32sIQI")
_HEADER_SIZE = _HEADER.size + 4


class PromptCacheWarning(UserWarning):
    """The prompt cache could not be used or written; the reply is unaffected."""


class CacheFileError(ValueError):
    """A cache file that must not be loaded, with the reason in words."""


# ---- pure decisions ---------------------------------------------------------------------------------
def cache_key(identity: dict[str, Any], tokens: Sequence[int]) -> bytes:
    """SHA-256 over the model/settings identity (canonical JSON) and the exact prefix tokens."""
    h = hashlib.sha256()
    h.update(json.dumps(identity, sort_keys=True, separators=(",", ":")).encode())
    h.update(b"\0")
    h.update(np.asarray(tokens, dtype="<i4").tobytes())
    return h.digest()


def file_name(key: bytes) -> str:
    """The file a key lives in (128 bits of it: collisions are caught by the full key in the header)."""
    return key[:16].hex() + SUFFIX


def system_prefix_length(tokens: Sequence[int], im_start: int, system: int, im_end: int, newline: int) -> int:
    """Tokens of the prompt's system block, `<|im_start|>system ... <|im_end|>\\n` (tools included,
    as Qwen's template puts them there); 0 when the prompt does not open with one, or when nothing
    follows it (a prompt that is all prefix leaves nothing to start the reply from)."""
    if len(tokens) < 2 or tokens[0] != im_start or tokens[1] != system:
        return 0
    try:
        end = list(tokens).index(im_end, 2) + 1
    except ValueError:
        return 0
    if end < len(tokens) and tokens[end] == newline:
        end += 1
    return end if end < len(tokens) else 0


@dataclass(frozen=True)
class CacheEntry:
    name: str
    size: int
    used: float  # mtime: written or last loaded


def choose_evictions(entries: Sequence[CacheEntry], max_bytes: int, keep: str | None = None) -> list[str]:
    """Least recently used first, until the total fits `max_bytes`; never `keep` (the file just written)."""
    total = sum(e.size for e in entries)
    out = []
    for e in sorted(entries, key=lambda e: (e.used, e.name)):
        if total <= max_bytes:
            break
        if e.name == keep:
            continue
        out.append(e.name)
        total -= e.size
    return out


def encode_header(key: bytes, tokens: Sequence[int], payload_bytes: int, crc: int) -> bytes:
    """The fixed header (with its own CRC) followed by the tokens as little-endian int32."""
    fields = _HEADER.pack(MAGIC, FORMAT_VERSION, key, len(tokens), payload_bytes, crc)
    return fields + struct.pack("<I", zlib.crc32(fields)) + np.asarray(tokens, dtype="<i4").tobytes()


def check_file(blob: bytes | bytearray | memoryview, key: bytes, tokens: Sequence[int]) -> tuple[int, int]:
    """(offset, length) of the llama.cpp state in a cache file's bytes, after every check; else
    CacheFileError saying why: not a cache file, another format version, made for another model or
    settings (key), other tokens, cut short or too long, or corrupt (CRC)."""
    view = memoryview(blob)
    if len(view) < _HEADER_SIZE or bytes(view[:8]) != MAGIC:
        raise CacheFileError("not a qwen3-edge prompt cache file (cut short or overwritten)")
    fields = bytes(view[: _HEADER.size])
    (stored_header_crc,) = struct.unpack_from("<I", view, _HEADER.size)
    if zlib.crc32(fields) != stored_header_crc:
        raise CacheFileError("corrupt header (checksum mismatch)")
    _, version, file_key, n_tokens, payload_bytes, crc = _HEADER.unpack(fields)
    if version != FORMAT_VERSION:
        raise CacheFileError(f"format version {version}, this runtime reads {FORMAT_VERSION}")
    if file_key != key:
        raise CacheFileError("made for another model, context setting or prompt")
    start = _HEADER_SIZE + 4 * n_tokens
    if len(view) != start + payload_bytes:
        raise CacheFileError(f"{len(view)} bytes where the header promises {start + payload_bytes} (cut short or extended)")
    if zlib.crc32(view[_HEADER_SIZE:]) != crc:
        raise CacheFileError("corrupt (checksum mismatch)")
    if np.frombuffer(view[_HEADER_SIZE:start], dtype="<i4").tolist() != list(tokens):
        raise CacheFileError("made for other prompt tokens")
    return start, payload_bytes


def disabled_by_env(environ: dict[str, str] | None = None) -> bool:
    value = (os.environ if environ is None else environ).get(ENV, "")
    return value.strip().lower() in ("0", "off", "false", "no")


# ---- the executor -------------------------------------------------------------------------------------
class PromptCache:
    """The on-disk prefix cache of one Engine. `Engine.load(prompt_cache=PromptCache(folder,
    max_bytes=..., min_tokens=...))` sets the folder, the cap and the shortest prefix worth a file.

    Counters (`hits`, `misses`, `saves`) and `warnings` (the texts warned) say what happened."""

    def __init__(self, folder: str | os.PathLike[str], *, max_bytes: int = DEFAULT_MAX_BYTES,
                 min_tokens: int = MIN_PREFIX_TOKENS):
        if max_bytes < 0 or min_tokens < 1:
            raise ValueError("prompt cache: max_bytes must be >= 0 and min_tokens >= 1")
        self.folder = Path(folder)
        self.max_bytes, self.min_tokens = max_bytes, min_tokens
        self.identity: dict[str, Any] = {}
        self.markers: tuple[int, int, int, int] | None = None   # <|im_start|>, system, <|im_end|>, \n
        self.hits = self.misses = self.saves = 0
        self.warnings: list[str] = []
        self._unwritable = False

    def attach(self, engine) -> "PromptCache":
        """A copy of this cache keyed to `engine` (its model file, context settings and marker
        tokens): one PromptCache may configure several Engines without mixing their keys."""
        bound = PromptCache(self.folder, max_bytes=self.max_bytes, min_tokens=self.min_tokens)
        bound.identity = engine_identity(engine)
        ids = [engine.tokenize(t) for t in ("<|im_start|>", "system", "<|im_end|>", "\n")]
        bound.markers = tuple(i[0] for i in ids) if all(len(i) == 1 for i in ids) else None
        return bound

    def prefix_length(self, prompt: Sequence[int]) -> int:
        """The system block's length when it is worth a file, else 0."""
        n = system_prefix_length(prompt, *self.markers) if self.markers else 0
        return n if n >= self.min_tokens else 0

    def prefill(self, llama: llama_cpp.Llama, prompt: list[int], keep: int) -> int:
        """The single stream (sequence.LlamaSequence): make the Llama's KV cache hold at least the
        prompt's system block, from the file when there is a good one, else by evaluating it (and
        writing the file). `llama` holds `keep` tokens of the prompt (llama.n_tokens) and has room
        for all of it; afterwards llama.n_tokens says how many it holds. Returns how many came from
        the file (0 on a miss)."""
        n = self.prefix_length(prompt)
        if n == 0 or keep >= n:
            return 0
        prefix = prompt[:n]
        key = cache_key(self.identity, prefix)
        found = self.read(key, prefix)
        if found is not None:
            if apply_state(llama._ctx.ctx, SEQ, *found):
                llama.input_ids[:n] = prefix
                llama.n_tokens = n
                self.hits += 1
                return n - keep
            llama.n_tokens = 0  # llama.cpp emptied the sequence when it refused the state
            self.refused(key)
        self.misses += 1
        llama.eval(prefix[llama.n_tokens:])
        self.write(key, prefix, snapshot_state(llama._ctx.ctx, SEQ))
        return 0

    def prefill_slot(self, seq, prompt: list[int], keep: int) -> tuple[int, int]:
        """The same for a parallel slot (scheduler.BatchSequence holding `keep` tokens of the prompt):
        llama.cpp's calls run on the scheduler thread (Scheduler.call), the file is read, checked
        and written on this one, and the prefix is evaluated through the batch like any prompt.
        Returns (prompt tokens the slot holds now, how many came from the file)."""
        n = self.prefix_length(prompt)
        if n == 0 or keep >= n:
            return keep, 0
        prefix, scheduler, slot = prompt[:n], seq.scheduler, seq.slot
        key = cache_key(self.identity, prefix)
        found = self.read(key, prefix)
        if found is not None:
            def load(ctx) -> bool:
                ok = apply_state(ctx, slot.seq_id, *found)
                slot.tokens = list(prefix) if ok else []  # a refused state leaves the sequence empty
                return ok
            if scheduler.call(load):
                self.hits += 1
                return n, n - keep
            self.refused(key)
            keep = 0
        self.misses += 1
        seq._run(prefix[keep:], keep)
        self.write(key, prefix, scheduler.call(lambda ctx: snapshot_state(ctx, slot.seq_id)))
        return n, 0

    def read(self, key: bytes, prefix: list[int]) -> tuple[bytearray, int, int] | None:
        """The file's bytes and where its state lies in them, when it is there and passes every
        check (else None, with a warning when a file was there but not usable)."""
        path = self.folder / file_name(key)
        try:
            with open(path, "rb") as f:
                size = os.fstat(f.fileno()).st_size
                blob = bytearray(size)
                if f.readinto(blob) != size:
                    raise CacheFileError("changed while being read")
        except (FileNotFoundError, NotADirectoryError):  # no file for this key (yet): a quiet miss
            return None
        except (OSError, MemoryError, CacheFileError) as e:
            self._warn(f"prompt cache {path} cannot be read ({_reason(e)}); the prompt is evaluated instead")
            return None
        try:
            offset, length = check_file(blob, key, prefix)
        except CacheFileError as e:
            self._warn(f"prompt cache {path} ignored: {e}; the prompt is evaluated instead")
            return None
        try:
            os.utime(path)  # least recently used goes first
        except OSError:
            pass
        return blob, offset, length

    def refused(self, key: bytes) -> None:
        self._warn(f"prompt cache {self.folder / file_name(key)} ignored: llama.cpp refused the state; "
                   f"the prompt is evaluated instead")

    def write(self, key: bytes, prefix: list[int], state) -> None:
        """Write a snapshot_state() as the file of `key`: atomically, within the cap (evicting the
        least recently used), warning once if the folder cannot be written."""
        if self._unwritable or state is None:
            return
        payload = memoryview(state).cast("B")
        total = _HEADER_SIZE + 4 * len(prefix) + len(payload)
        if total > self.max_bytes:
            self._warn(f"prompt cache: a {len(prefix)}-token prefix needs {total / 1e6:.0f} MB, over the "
                       f"cache's cap of {self.max_bytes / 1e6:.0f} MB; not saved")
            return
        crc = zlib.crc32(payload, zlib.crc32(np.asarray(prefix, dtype="<i4").tobytes()))
        target = self.folder / file_name(key)
        tmp = None
        try:
            self.folder.mkdir(parents=True, exist_ok=True, mode=0o700)
            fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=self.folder)  # mode 0600
            with os.fdopen(fd, "wb") as f:
                f.write(encode_header(key, prefix, len(payload), crc))
                f.write(payload)
            os.replace(tmp, target)
            tmp = None
        except OSError as e:
            self._unwritable = True
            self._warn(f"prompt cache folder {self.folder} cannot be written ({_reason(e)}); "
                       f"prompts will be evaluated at each start")
            return
        finally:
            if tmp is not None:
                Path(tmp).unlink(missing_ok=True)
        self.saves += 1
        self._evict(keep=target.name)

    def _evict(self, keep: str) -> None:
        entries, now = [], time.time()
        try:
            for p in self.folder.iterdir():
                st = p.stat()
                if p.name.endswith(SUFFIX):
                    entries.append(CacheEntry(p.name, st.st_size, st.st_mtime))
                elif p.name.endswith(".tmp") and now - st.st_mtime > STALE_TMP_S:
                    p.unlink(missing_ok=True)
            for name in choose_evictions(entries, self.max_bytes, keep):
                (self.folder / name).unlink(missing_ok=True)
        except OSError:
            pass  # another process evicting at the same time, or a folder turned read-only: next write tries again

    def _warn(self, text: str) -> None:
        self.warnings.append(text)
        warnings.warn(text, PromptCacheWarning, stacklevel=4)


def apply_state(ctx, seq_id: int, blob: bytearray, offset: int, length: int) -> bool:
    """Hand a checked state to llama.cpp for `seq_id`; False if it refused it (the sequence is
    then empty). Runs on the thread that owns the context."""
    state = (ctypes.c_uint8 * length).from_buffer(blob, offset)
    return llama_cpp.llama_state_seq_set_data(ctx, state, length, seq_id) == length


def snapshot_state(ctx, seq_id: int):
    """A copy of `seq_id`'s KV state (a ctypes byte array), or None if llama.cpp would not give
    it. Runs on the thread that owns the context; writing it to disk can happen elsewhere."""
    size = llama_cpp.llama_state_seq_get_size(ctx, seq_id)
    state = (ctypes.c_uint8 * max(size, 1))()
    written = llama_cpp.llama_state_seq_get_data(ctx, state, size, seq_id)
    return state if size and written == size else None


def engine_identity(engine) -> dict[str, Any]:
    """Everything that shapes the cached K and V bytes for this engine, as plain values."""
    path = Path(engine.info.path).resolve()
    st = path.stat()
    p = engine.llama.context_params
    context = {name: getattr(p, name) for name in (
        "type_k", "type_v", "flash_attn_type", "rope_scaling_type", "rope_freq_base", "rope_freq_scale",
        "yarn_ext_factor", "yarn_attn_factor", "yarn_beta_fast", "yarn_beta_slow", "yarn_orig_ctx",
        "offload_kqv", "swa_full")}
    return {
        "format": FORMAT_VERSION, "bindings": llama_cpp.__version__,
        "model": {"path": str(path), "size": st.st_size, "mtime_ns": st.st_mtime_ns},
        "context": {k: (round(v, 9) if isinstance(v, float) else int(v)) for k, v in context.items()},
        "n_gpu_layers": int(engine.llama.model_params.n_gpu_layers), "backend": engine.backend,
        "device": engine.device, "extra_buffers": bool(getattr(engine, "extra_buffers", False)),
    }


def default_folder() -> Path:
    """`<store>/cache/prompts` (QWEN3_EDGE_HOME or the user's data folder)."""
    from edge.models.store import store_root
    return store_root() / "cache" / "prompts"


def open_prompt_cache(setting) -> PromptCache | None:
    """Engine.load's prompt_cache: None (on, unless QWEN3_EDGE_PROMPT_CACHE=0), True, False, a
    folder, or a PromptCache."""
    if isinstance(setting, PromptCache):
        return setting
    if setting is False or (setting is None and disabled_by_env()):
        return None
    if setting is None or setting is True:
        return PromptCache(default_folder())
    if isinstance(setting, (str, os.PathLike)):
        return PromptCache(setting)
    raise ValueError(f"prompt_cache takes True, False, a folder or a PromptCache, not {setting!r}")


def _reason(e: BaseException) -> str:
    return getattr(e, "strerror", None) or str(e) or type(e).__name__
