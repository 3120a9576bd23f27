"""A fast read of a GGUF's header: key/values and tensor infos, no weights.

gguf-py's GGUFReader builds a NumPy view for every string of the 151,936-token vocabulary and
its merges, which takes seconds; `info` and the pipeline's checks need a fraction of a second.
Arrays of strings are kept as offsets and decoded only when asked for.
"""

from __future__ import annotations

import mmap
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import gguf
from gguf import GGMLQuantizationType, GGUFValueType

from .errors import QuantizeError

_SCALARS = {
    GGUFValueType.UINT8: "B", GGUFValueType.INT8: "b", GGUFValueType.UINT16: "H",
    GGUFValueType.INT16: "h", GGUFValueType.UINT32: "I", GGUFValueType.INT32: "i",
    GGUFValueType.FLOAT32: "f", GGUFValueType.BOOL: "?", GGUFValueType.UINT64: "Q",
    GGUFValueType.INT64: "q", GGUFValueType.FLOAT64: "d",
}


@dataclass
class StringArray:
    """An array of strings left in the file buffer; decoded one at a time."""
    buf: memoryview
    offsets: list[int]

    def __len__(self) -> int:
        return len(self.offsets)

    def has_duplicates(self) -> bool:
        """Whether two entries are the same bytes (llama.cpp aborts on a vocabulary like that)."""
        seen = set()
        buf, unpack = self.buf, struct.unpack_from
        for off in self.offsets:
            (n,) = unpack("<Q", buf, off)
            seen.add(bytes(buf[off + 8:off + 8 + n]))
        return len(seen) != len(self.offsets)

    def __getitem__(self, i: int) -> str:
        off = self.offsets[i]
        (n,) = struct.unpack_from("<Q", self.buf, off)
        return bytes(self.buf[off + 8:off + 8 + n]).decode("utf-8", "replace")


@dataclass(frozen=True)
class TensorInfo:
    name: str
    shape: tuple[int, ...]
    type: GGMLQuantizationType

    @property
    def n_elements(self) -> int:
        n = 1
        for d in self.shape:
            n *= d
        return n

    @property
    def n_bytes(self) -> int:
        block, type_size = gguf.GGML_QUANT_SIZES[self.type]
        return self.n_elements // block * type_size


@dataclass
class GGUFHeader:
    path: Path
    fields: dict[str, Any] = field(default_factory=dict)
    tensors: list[TensorInfo] = field(default_factory=list)

    def get(self, key: str, default: Any = None) -> Any:
        return self.fields.get(key, default)

    @property
    def n_params(self) -> int:
        return sum(t.n_elements for t in self.tensors)

    @property
    def data_bytes(self) -> int:
        return sum(t.n_bytes for t in self.tensors)


class _Cursor:
    def __init__(self, buf: memoryview):
        self.buf, self.pos = buf, 0

    def unpack(self, fmt: str) -> Any:
        vals = struct.unpack_from("<" + fmt, self.buf, self.pos)
        self.pos += struct.calcsize("<" + fmt)
        return vals[0] if len(vals) == 1 else vals

    def need(self, n: int) -> None:
        """Refuse a length that runs past the end of the file (crafted or truncated headers)."""
        if n < 0 or self.pos + n > len(self.buf):
            raise ValueError(f"a length of {n} bytes at offset {self.pos} runs past the end of the file")

    def string(self) -> str:
        n = self.unpack("Q")
        self.need(n)
        s = bytes(self.buf[self.pos:self.pos + n]).decode("utf-8")
        self.pos += n
        return s

    def value(self, vtype: GGUFValueType) -> Any:
        if vtype == GGUFValueType.STRING:
            return self.string()
        if vtype == GGUFValueType.ARRAY:
            sub, n = GGUFValueType(self.unpack("I")), self.unpack("Q")
            if sub == GGUFValueType.STRING:
                self.need(8 * n)  # every string has at least its 8-byte length
                offsets = []
                for _ in range(n):
                    offsets.append(self.pos)
                    self.pos += 8
                    self.need(struct.unpack_from("<Q", self.buf, self.pos - 8)[0])
                    self.pos += struct.unpack_from("<Q", self.buf, self.pos - 8)[0]
                return StringArray(self.buf, offsets)
            if sub in _SCALARS:
                self.need(n * struct.calcsize("<" + _SCALARS[sub]))
                fmt = f"<{n}{_SCALARS[sub]}"
                vals = list(struct.unpack_from(fmt, self.buf, self.pos))
                self.pos += struct.calcsize(fmt)
                return vals
            self.need(n)  # nested arrays: at least a byte each
            return [self.value(sub) for _ in range(n)]
        value = self.unpack(_SCALARS[vtype])
        # float32 values shown as written (1e-06), not as their binary expansion
        return float(f"{value:.7g}") if vtype == GGUFValueType.FLOAT32 else value


def read_header(path: str | Path) -> GGUFHeader:
    """Parse a GGUF's header or raise QuantizeError naming the file and the problem."""
    path = Path(path)
    if not path.is_file():
        raise QuantizeError(path, "not found")
    try:
        with open(path, "rb") as f:
            data = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
    except (OSError, ValueError) as e:
        raise QuantizeError(path, f"cannot read ({getattr(e, 'strerror', None) or e})") from None
    if data[:4] != b"GGUF":
        raise QuantizeError(path, "not a GGUF file (bad magic)")
    cur = _Cursor(memoryview(data))
    try:
        cur.pos = 4
        version, n_tensors, n_kv = cur.unpack("I"), cur.unpack("Q"), cur.unpack("Q")
        if version not in (2, 3):
            raise QuantizeError(path, f"unsupported GGUF version {version}")
        if n_tensors > len(data) // 24 or n_kv > len(data) // 12:  # smallest possible entries
            raise QuantizeError(path, f"corrupt GGUF header: {n_tensors} tensors and {n_kv} keys cannot fit in {len(data)} bytes")
        header = GGUFHeader(path)
        for _ in range(n_kv):
            key = cur.string()
            header.fields[key] = cur.value(GGUFValueType(cur.unpack("I")))
        ranges = []
        for _ in range(n_tensors):
            name = cur.string()
            n_dims = cur.unpack("I")
            if not 1 <= n_dims <= 4:
                raise ValueError(f"tensor {name!r} has {n_dims} dimensions")
            dims = [cur.unpack("Q") for _ in range(n_dims)]
            qtype = GGMLQuantizationType(cur.unpack("I"))
            if qtype not in gguf.GGML_QUANT_SIZES:
                raise ValueError(f"tensor {name!r} has unknown type {qtype!r}")
            offset = cur.unpack("Q")
            if any(d <= 0 or d > 1 << 40 for d in dims) or dims[0] % gguf.GGML_QUANT_SIZES[qtype][0]:
                raise ValueError(f"tensor {name!r} has impossible dimensions {dims} for {qtype.name}")
            info = TensorInfo(name, tuple(reversed(dims)), qtype)
            header.tensors.append(info)
            ranges.append((offset, offset + info.n_bytes, name))
    except (struct.error, ValueError, UnicodeDecodeError, OverflowError) as e:
        raise QuantizeError(path, f"corrupt or truncated GGUF header ({e})") from None
    align = header.get("general.alignment", gguf.GGUF_DEFAULT_ALIGNMENT)
    if not isinstance(align, int) or align <= 0 or align & (align - 1):
        raise QuantizeError(path, f"corrupt GGUF header: alignment {align!r} is not a power of two")
    data_start = -(-cur.pos // align) * align
    end = 0
    for start, stop, name in sorted(ranges):
        if start % align or start < end:
            raise QuantizeError(path, f"corrupt GGUF: tensor {name} at data offset {start} is misaligned or overlaps another")
        end = stop
    if ranges and data_start + end > len(data):
        raise QuantizeError(path, f"truncated GGUF: tensor data needs {data_start + end} bytes, the file has {len(data)}")
    if len({name for _, _, name in ranges}) != len(ranges):
        raise QuantizeError(path, "corrupt GGUF: a tensor name appears twice")
    return header
