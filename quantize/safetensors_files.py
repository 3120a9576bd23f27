"""The safetensors shards of a Hugging Face folder: found, checked, and read a few rows at a time.

Headers are parsed with gguf-py's SafetensorsLocal, which gives file ranges instead of loading
tensors; data is then read with plain file reads in row chunks, so memory stays at one chunk
(plus the output tensor) however large the model is.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from pathlib import Path

import numpy as np
from gguf.utility import LocalTensor, SafetensorsLocal

from .errors import QuantizeError

INDEX_NAME = "model.safetensors.index.json"
# safetensors dtype -> (numpy storage dtype, bytes per element)
DTYPES = {"BF16": (np.uint16, 2), "F16": (np.float16, 2), "F32": (np.float32, 4)}
CHUNK_BYTES = 16 << 20


def find_shards(folder: Path) -> list[Path]:
    """The shard files: those named by the index when there is one, else every *.safetensors."""
    index = folder / INDEX_NAME
    if index.is_file():
        try:
            weight_map = json.loads(index.read_text(encoding="utf-8"))["weight_map"]
            names = sorted(set(weight_map.values()))
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
            raise QuantizeError(index, f"not a valid safetensors index ({e})") from None
        shards = [folder / n for n in names]
        for shard in shards:
            if not shard.is_file():
                raise QuantizeError(shard, f"missing: {INDEX_NAME} names it but it is not in the folder")
        return shards
    shards = sorted(folder.glob("*.safetensors"))
    if not shards:
        raise QuantizeError(folder, "no *.safetensors weights in this folder")
    return shards


def _open_shard(shard: Path) -> dict[str, LocalTensor]:
    size = shard.stat().st_size
    if size < 8:
        raise QuantizeError(shard, f"truncated safetensors file ({size} bytes, no header)")
    try:
        tensors = SafetensorsLocal(shard).tensors
    except (ValueError, UnicodeDecodeError, KeyError, TypeError, IndexError, AttributeError) as e:
        raise QuantizeError(shard, f"corrupt safetensors header ({e})") from None
    for name, t in tensors.items():
        if t.dtype not in DTYPES:
            raise QuantizeError(shard, f"tensor {name} has dtype {t.dtype}; only BF16, F16 and F32 are supported")
        want = math.prod(t.shape) * DTYPES[t.dtype][1]
        if t.data_range.size != want:
            raise QuantizeError(shard, f"tensor {name}: header gives {t.data_range.size} bytes for shape {list(t.shape)} {t.dtype}, expected {want}")
        end = t.data_range.offset + t.data_range.size
        if end > size:
            raise QuantizeError(shard, f"truncated safetensors file: tensor {name} ends at byte {end} but the file has {size}")
    last_end, last_name = 0, None
    for name, t in sorted(tensors.items(), key=lambda kv: kv[1].data_range.offset):
        if t.data_range.offset < last_end:
            raise QuantizeError(shard, f"corrupt safetensors header: tensors {last_name} and {name} overlap")
        last_end, last_name = t.data_range.offset + t.data_range.size, name
    return tensors


def open_tensors(folder: Path) -> dict[str, LocalTensor]:
    """All tensors of all shards by name, every header checked against its file."""
    found: dict[str, LocalTensor] = {}
    for shard in find_shards(folder):
        for name, t in _open_shard(shard).items():
            if name in found:
                raise QuantizeError(shard, f"tensor {name} also appears in {found[name].data_range.filename.name}")
            found[name] = t
    return found


def _read_exact(f, offset: int, nbytes: int, path: Path) -> bytes:
    f.seek(offset)
    data = f.read(nbytes)
    if len(data) != nbytes:
        raise QuantizeError(path, "truncated safetensors file: data ends early")
    return data


def iter_raw_chunks(t: LocalTensor, name: str) -> Iterator[tuple[int, np.ndarray]]:
    """Yield (first row, rows in the file's own dtype: uint16 bits for BF16), CHUNK_BYTES at a time.

    Non-finite values are refused: they mean a corrupt file, and would poison every output.
    """
    path = Path(t.data_range.filename)
    rows = t.shape[0] if t.shape else 1
    row_shape = tuple(t.shape[1:])
    row_bytes = math.prod(row_shape) * DTYPES[t.dtype][1]
    step = max(1, CHUNK_BYTES // max(row_bytes, 1))
    with open(path, "rb") as f:
        for start in range(0, rows, step):
            stop = min(rows, start + step)
            raw = _read_exact(f, t.data_range.offset + start * row_bytes, (stop - start) * row_bytes, path)
            chunk = np.frombuffer(raw, dtype=DTYPES[t.dtype][0]).reshape((stop - start, *row_shape) if t.shape else ())
            if not np.isfinite(_as_f32(chunk, t.dtype)).all():
                raise QuantizeError(path, f"tensor {name} holds NaN or infinite values (corrupt weights)")
            yield start, chunk


def _as_f32(storage: np.ndarray, dtype: str) -> np.ndarray:
    if dtype == "BF16":
        return (storage.astype(np.uint32) << 16).view(np.float32)
    return storage.astype(np.float32, copy=False)


def iter_row_chunks(t: LocalTensor, name: str) -> Iterator[tuple[int, np.ndarray]]:
    """Yield (first row, float32 rows) for a tensor, CHUNK_BYTES of source at a time."""
    for start, chunk in iter_raw_chunks(t, name):
        yield start, _as_f32(chunk, t.dtype)


def same_data(a: LocalTensor, b: LocalTensor) -> bool:
    """True when two tensors hold identical bytes (a tied lm_head saved beside its embedding)."""
    if a.dtype != b.dtype or a.shape != b.shape:
        return False
    with open(a.data_range.filename, "rb") as fa, open(b.data_range.filename, "rb") as fb:
        for off in range(0, a.data_range.size, CHUNK_BYTES):
            n = min(CHUNK_BYTES, a.data_range.size - off)
            if _read_exact(fa, a.data_range.offset + off, n, Path(a.data_range.filename)) != \
               _read_exact(fb, b.data_range.offset + off, n, Path(b.data_range.filename)):
                return False
    return True
