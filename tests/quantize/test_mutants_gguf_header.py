"""Claims about quantize/gguf_header.py that benchmarks/mutation.py found untested (see
docs/MUTATION.md): what the fast reader returns, checked against gguf-py's own GGUFReader, and
the edges of what it accepts (a header that ends exactly at the end of its file, version 2,
four dimensions, a custom alignment) and refuses (one byte short, zero dimensions, a misaligned
tensor that overlaps nothing, a bad alignment, an empty file)."""

from __future__ import annotations

import struct
from pathlib import Path

import gguf
import numpy as np
import pytest
from gguf import GGMLQuantizationType as Q
from gguf import GGUFValueType as V

from quantize import QuantizeError
from quantize.gguf_header import StringArray, read_header

SCALARS = {  # key -> (type, value): every scalar type, at values that need its full width
    "t.u8": (V.UINT8, 200), "t.i8": (V.INT8, -100), "t.u16": (V.UINT16, 60000), "t.i16": (V.INT16, -30000),
    "t.u32": (V.UINT32, 4_000_000_000), "t.i32": (V.INT32, -2_000_000_000), "t.f32": (V.FLOAT32, 1e-6),
    "t.bool": (V.BOOL, True), "t.u64": (V.UINT64, 2**63 + 5), "t.i64": (V.INT64, -(2**62) - 3),
    "t.f64": (V.FLOAT64, 0.1), "t.str": (V.STRING, "héllo"), "t.empty": (V.STRING, ""),
}
ARRAYS = {f"{k}.arr": (t, [v, v] if t != V.BOOL else [True, False]) for k, (t, v) in SCALARS.items()}
NESTED = [[1, 2], [3]]


def write(path: Path, *, tensors=(), kvs=None, alignment: int | None = None) -> Path:
    w = gguf.GGUFWriter(path, "qwen3")
    if alignment is not None:
        w.add_custom_alignment(alignment)
    for key, (vtype, value) in (kvs or {}).items():
        if vtype is None:                       # let gguf-py choose (nested arrays)
            w.add_array(key, value)
        elif isinstance(value, list):
            w.add_key_value(key, value, V.ARRAY, sub_type=vtype)
        else:
            w.add_key_value(key, value, vtype)
    for name, array, raw_dtype, raw_shape in tensors:
        w.add_tensor(name, array, raw_shape=raw_shape, raw_dtype=raw_dtype)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def q8_0(rows: int, cols: int):
    """Raw bytes of a Q8_0 tensor (34 bytes per 32 values)."""
    return np.zeros((rows, cols // 32 * 34), dtype=np.uint8), Q.Q8_0, None


TENSORS = [
    ("norm", np.ones(3, dtype=np.float32), None, None),                       # ne0 = 3: any width for F32
    ("emb", np.zeros((5, 64), dtype=np.float16), None, None),
    ("proj", *q8_0(4, 64)),
    ("four_d", np.zeros((2, 1, 3, 4), dtype=np.float32), None, None),          # 4 dims, one of them 1
]


def decoded(value):
    return [value[i] for i in range(len(value))] if isinstance(value, StringArray) else value


def test_every_value_type_and_tensor_reads_as_gguf_py_reads_it(tmp_path):
    kvs = {**SCALARS, **ARRAYS, "t.words": (V.STRING, ["a", "", "ü", "a"])}
    path = write(tmp_path / "all.gguf", tensors=TENSORS, kvs=kvs)
    header = read_header(path)
    reference = gguf.GGUFReader(path)
    for name, field in reference.fields.items():
        if name.startswith("GGUF."):
            continue
        ours, theirs = decoded(header.get(name)), field.contents()
        if name == "t.f32":      # a float32 shown as written, not as its binary expansion
            assert ours == 1e-6 and theirs == pytest.approx(1e-6, rel=1e-7)
        else:
            assert ours == theirs and type(ours) is type(theirs), name
    assert header.get("no.such.key", "default") == "default"
    assert [(t.name, t.shape, t.type, t.n_elements, t.n_bytes) for t in header.tensors] == [
        (t.name, tuple(int(d) for d in reversed(t.shape)), t.tensor_type, int(t.n_elements), int(t.n_bytes))
        for t in reference.tensors]
    assert header.n_params == sum(int(t.n_elements) for t in reference.tensors)
    assert header.data_bytes == sum(int(t.n_bytes) for t in reference.tensors)


def test_nested_arrays_keep_their_shape(tmp_path):
    """(gguf-py's reader flattens them, so the reference here is what was written.)"""
    path = write(tmp_path / "nested.gguf", kvs={"t.nested": (None, NESTED)})
    assert read_header(path).get("t.nested") == NESTED


def vocab(tmp_path: Path, words: list[str]) -> StringArray:
    return read_header(write(tmp_path / "v.gguf", kvs={"tokenizer.ggml.tokens": (V.STRING, words)})).get(
        "tokenizer.ggml.tokens")


@pytest.mark.parametrize("words, duplicated", [
    (["a", "b", "a"], True), (["xa", "ya"], False), (["a", "b", "ab"], False), (["", "x", ""], True),
])
def test_duplicate_vocabulary_entries_are_found(tmp_path, words, duplicated):
    assert vocab(tmp_path, words).has_duplicates() is duplicated


def raw_gguf(kvs: list[tuple[str, int, bytes]], version: int = 3) -> bytes:
    """A GGUF with no tensors, byte for byte: the last value ends the file."""
    out = b"GGUF" + struct.pack("<IQQ", version, 0, len(kvs))
    for key, vtype, payload in kvs:
        out += struct.pack("<Q", len(key)) + key.encode() + struct.pack("<I", vtype) + payload
    return out


def s(text: bytes) -> bytes:
    return struct.pack("<Q", len(text)) + text


LAST_VALUES = {  # a value that ends exactly at the end of the file
    "string": (V.STRING, s(b"hello")),
    "empty string": (V.STRING, s(b"")),
    "string array": (V.ARRAY, struct.pack("<IQ", V.STRING, 2) + s(b"ab") + s(b"cde")),
    "empty strings": (V.ARRAY, struct.pack("<IQ", V.STRING, 3) + s(b"") * 3),
    "uint32 array": (V.ARRAY, struct.pack("<IQ3I", V.UINT32, 3, 1, 2, 3)),
}


@pytest.mark.parametrize("what", LAST_VALUES)
def test_header_that_ends_exactly_at_the_end_of_the_file_is_read_and_one_byte_less_is_refused(tmp_path, what):
    vtype, payload = LAST_VALUES[what]
    blob = raw_gguf([("general.architecture", V.STRING, s(b"qwen3")), ("t.last", vtype, payload)])
    whole, cut = tmp_path / "whole.gguf", tmp_path / "cut.gguf"
    whole.write_bytes(blob)
    cut.write_bytes(blob[:-1])
    assert decoded(read_header(whole).get("t.last")) == decoded(gguf.GGUFReader(whole).fields["t.last"].contents())
    with pytest.raises(QuantizeError, match="truncated"):
        read_header(cut)


def test_vocabulary_entries_that_are_not_utf8_read_with_replacement(tmp_path):
    path = tmp_path / "bytes.gguf"
    path.write_bytes(raw_gguf([("tokenizer.ggml.tokens", V.ARRAY, struct.pack("<IQ", V.STRING, 2) + s(b"ok") + s(b"\xff\xfe"))]))
    tokens = read_header(path).get("tokenizer.ggml.tokens")
    assert (tokens[0], tokens[1]) == ("ok", "\ufffd\ufffd")


@pytest.mark.parametrize("version, ok", [(1, False), (2, True), (3, True), (4, False)])
def test_gguf_versions_2_and_3_only(tmp_path, version, ok):
    path = tmp_path / "v.gguf"
    path.write_bytes(raw_gguf([("general.architecture", V.STRING, s(b"qwen3"))], version=version))
    if ok:
        assert read_header(path).get("general.architecture") == "qwen3"
    else:
        with pytest.raises(QuantizeError, match=f"unsupported GGUF version {version}"):
            read_header(path)


def tensor_info_at(blob: bytes, name: str) -> int:
    """Offset of the n_dims field of a tensor's info."""
    return blob.index(struct.pack("<Q", len(name)) + name.encode()) + 8 + len(name)


@pytest.mark.parametrize("n_dims", [0, 5])
def test_tensor_with_no_or_five_dimensions_is_refused(tmp_path, n_dims):
    blob = bytearray(write(tmp_path / "ok.gguf", tensors=TENSORS).read_bytes())
    at = tensor_info_at(blob, "four_d")
    blob[at:at + 4] = struct.pack("<I", n_dims)
    (tmp_path / "bad.gguf").write_bytes(blob)
    with pytest.raises(QuantizeError, match=f"has {n_dims} dimensions"):   # refused for that, not later
        read_header(tmp_path / "bad.gguf")


@pytest.mark.parametrize("name, dim, fragment", [("four_d", 0, "impossible dimensions"),
                                                 ("proj", 48, "impossible dimensions")])
def test_impossible_dimensions_are_refused(tmp_path, name, dim, fragment):
    """A zero dimension, or a row of a quantized type that is not whole blocks (48 values of Q8_0)."""
    blob = bytearray(write(tmp_path / "ok.gguf", tensors=TENSORS).read_bytes())
    at = tensor_info_at(blob, name) + 4
    blob[at:at + 8] = struct.pack("<Q", dim)
    (tmp_path / "bad.gguf").write_bytes(blob)
    with pytest.raises(QuantizeError, match=fragment):
        read_header(tmp_path / "bad.gguf")


def test_misaligned_tensor_is_refused_even_when_it_overlaps_nothing(tmp_path):
    tensors = [("a", np.ones(1, dtype=np.float32), None, None), ("b", np.ones(1, dtype=np.float32), None, None)]
    blob = bytearray(write(tmp_path / "ok.gguf", tensors=tensors).read_bytes())
    at = tensor_info_at(blob, "b") + 4 + 8 + 4        # n_dims, one dim, type: then the offset
    assert struct.unpack_from("<Q", blob, at)[0] == 32
    blob[at:at + 8] = struct.pack("<Q", 33)              # still inside the file, after "a"
    (tmp_path / "bad.gguf").write_bytes(blob)
    with pytest.raises(QuantizeError, match="misaligned"):
        read_header(tmp_path / "bad.gguf")


@pytest.mark.parametrize("alignment", [1, 64])
def test_custom_alignment_is_honoured(tmp_path, alignment):
    """Tensor data starts at the header rounded up to general.alignment: one byte less is truncated."""
    path = write(tmp_path / "a.gguf", tensors=TENSORS, alignment=alignment)
    reference = gguf.GGUFReader(path)
    end = max(int(t.data_offset) + int(t.n_bytes) for t in reference.tensors)
    assert read_header(path).get("general.alignment") == alignment
    (tmp_path / "cut.gguf").write_bytes(path.read_bytes()[:end - 1])
    with pytest.raises(QuantizeError, match=f"needs {end} bytes"):
        read_header(tmp_path / "cut.gguf")


@pytest.mark.parametrize("vtype, value", [(V.UINT32, 0), (V.UINT32, 48), (V.STRING, "32")])
def test_bad_alignment_is_refused(tmp_path, vtype, value):
    path = write(tmp_path / "a.gguf", tensors=TENSORS, kvs={"general.alignment": (vtype, value)})
    with pytest.raises(QuantizeError, match="alignment"):
        read_header(path)


def test_empty_file_is_refused_saying_why(tmp_path):
    path = tmp_path / "empty.gguf"
    path.write_bytes(b"")
    with pytest.raises(QuantizeError, match="cannot read.*empty"):
        read_header(path)
