"""Bad input: one clear line naming the file and the problem, exit 1, and nothing left behind
that looks like a finished GGUF (an earlier good output survives untouched)."""

from __future__ import annotations

import json
import os
import shutil
import struct
import subprocess
from pathlib import Path

import pytest
from typer.testing import CliRunner

from cli.main import app
from quantize import QuantizeError, quantize_model
from tests.model_factory import TINY_TIED, build_model

runner = CliRunner()


@pytest.fixture
def model(tmp_path, models) -> Path:
    """A private copy of the tiny tied model that a test may damage."""
    return Path(shutil.copytree(models["tied"], tmp_path / "model"))


def run_cli(*args: str):
    return runner.invoke(app, ["quantize", *args])


def assert_one_line_error(result, *fragments: str) -> None:
    assert result.exit_code == 1, result.output
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: ")
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


def outputs_in(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.is_file())


def rewrite_shard(path: Path, drop: str | None = None, reshape: tuple[str, list[int]] | None = None) -> None:
    """Rewrite a safetensors file without one tensor, or with a tensor's header shape changed."""
    raw = path.read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    header, data = json.loads(raw[8:8 + n]), raw[8 + n:]
    parts, offset, blob = {}, 0, b""
    for name, meta in header.items():
        if name == "__metadata__" or name == drop:
            continue
        a, b = meta["data_offsets"]
        chunk = data[a:b]
        if reshape and name == reshape[0]:
            meta["shape"] = reshape[1]
        parts[name] = {**meta, "data_offsets": [offset, offset + len(chunk)]}
        blob, offset = blob + chunk, offset + len(chunk)
    head = json.dumps(parts).encode()
    path.write_bytes(struct.pack("<Q", len(head)) + head + blob)


def test_missing_config(model, tmp_path):
    (model / "config.json").unlink()
    r = run_cli(str(model), "-t", "f16", "-o", str(tmp_path / "out.gguf"))
    assert_one_line_error(r, "config.json", "not found")
    assert "out.gguf" not in outputs_in(tmp_path)


def test_not_qwen3(model, tmp_path):
    cfg = json.loads((model / "config.json").read_text())
    cfg["architectures"] = ["LlamaForCausalLM"]
    (model / "config.json").write_text(json.dumps(cfg))
    assert_one_line_error(run_cli(str(model), "-o", str(tmp_path / "o.gguf")),
                          "config.json", "LlamaForCausalLM is not Qwen3ForCausalLM")


def test_truncated_safetensors(model, tmp_path):
    shard = model / "model.safetensors"
    shard.write_bytes(shard.read_bytes()[: shard.stat().st_size // 2])
    assert_one_line_error(run_cli(str(model), "-t", "q8_0", "-o", str(tmp_path / "o.gguf")),
                          "model.safetensors", "truncated")
    assert "o.gguf" not in outputs_in(tmp_path)


def test_corrupt_safetensors_header(model, tmp_path):
    shard = model / "model.safetensors"
    raw = bytearray(shard.read_bytes())
    raw[8:40] = b"\xff" * 32
    shard.write_bytes(bytes(raw))
    assert_one_line_error(run_cli(str(model), "-o", str(tmp_path / "o.gguf")), "model.safetensors", "corrupt")


def test_nan_weights(model, tmp_path):
    shard = model / "model.safetensors"
    raw = bytearray(shard.read_bytes())
    raw[-2:] = b"\xc0\x7f"  # a BF16 NaN in the last tensor
    shard.write_bytes(bytes(raw))
    assert_one_line_error(run_cli(str(model), "-t", "f16", "-o", str(tmp_path / "o.gguf")), "NaN")
    assert "o.gguf" not in outputs_in(tmp_path)


def test_missing_tensor(model, tmp_path):
    rewrite_shard(model / "model.safetensors", drop="model.layers.1.mlp.up_proj.weight")
    assert_one_line_error(run_cli(str(model), "-o", str(tmp_path / "o.gguf")),
                          "missing tensor model.layers.1.mlp.up_proj.weight")


def test_shape_disagrees_with_config(model, tmp_path):
    rewrite_shard(model / "model.safetensors", reshape=("model.norm.weight", [32, 2]))
    assert_one_line_error(run_cli(str(model), "-o", str(tmp_path / "o.gguf")),
                          "model.safetensors", "model.norm.weight", "[32, 2]", "[64]")


def test_index_names_missing_shard(tmp_path, models):
    model = Path(shutil.copytree(models["untied"], tmp_path / "sharded"))
    (model / "model-00002-of-00002.safetensors").unlink()
    assert_one_line_error(run_cli(str(model), "-o", str(tmp_path / "o.gguf")),
                          "model-00002-of-00002.safetensors", "missing")


def test_missing_tokenizer(model, tmp_path):
    for name in ("tokenizer.json", "vocab.json", "merges.txt"):
        (model / name).unlink()
    assert_one_line_error(run_cli(str(model), "-o", str(tmp_path / "o.gguf")), "no tokenizer")


def test_unknown_type(model, tmp_path):
    assert_one_line_error(run_cli(str(model), "-t", "q3_xyz", "-o", str(tmp_path / "o.gguf")),
                          "unknown --type 'q3_xyz'", "q4_k_m")


def test_output_folder_missing(model, tmp_path):
    assert_one_line_error(run_cli(str(model), "-o", str(tmp_path / "nope" / "o.gguf")), "nope", "does not exist")


def test_output_is_input(converted, tmp_path):
    src = Path(shutil.copy(converted("tied", "f16"), tmp_path / "m.gguf"))
    assert_one_line_error(run_cli(str(src), "-t", "q4_0", "-o", str(src)), "overwrite the input")


def test_already_quantized_gguf(converted, tmp_path):
    assert_one_line_error(run_cli(str(converted("tied", "q4_k_m")), "-t", "q4_0", "-o", str(tmp_path / "o.gguf")),
                          "q4_k_m is already quantized")


def test_truncated_gguf_input(converted, tmp_path):
    src = tmp_path / "cut.gguf"
    data = converted("tied", "f16").read_bytes()
    src.write_bytes(data[: len(data) - 1000])
    assert_one_line_error(run_cli(str(src), "-t", "q4_0", "-o", str(tmp_path / "o.gguf")), "cut.gguf", "truncated GGUF")


def test_not_a_gguf(tmp_path):
    src = tmp_path / "notes.gguf"
    src.write_text("hello")
    assert_one_line_error(run_cli(str(src), "-o", str(tmp_path / "o.gguf")), "notes.gguf", "not a GGUF")


def as_root(*command: str) -> list[str]:
    """The command as is for root, else through sudo without a password prompt (CI runners)."""
    return list(command) if os.geteuid() == 0 or shutil.which("sudo") is None else ["sudo", "-n", *command]


@pytest.fixture
def tiny_disk(tmp_path):
    """A real 4 MB filesystem, to fill up. Skipped where tmpfs cannot be mounted, except in CI
    (CI=true, set by .ci/run): there it fails."""
    mnt = tmp_path / "disk"
    mnt.mkdir()
    try:
        mounted = subprocess.run(as_root("mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(mnt)),
                                 capture_output=True, text=True)
        why = mounted.stderr.strip() if mounted.returncode else None
    except FileNotFoundError as e:
        why = str(e)
    if why is not None:
        (pytest.fail if os.environ.get("CI") == "true" else pytest.skip)(f"cannot mount a tmpfs here: {why}")
    yield mnt
    subprocess.run(as_root("umount", str(mnt)), check=True)


def test_full_disk_leaves_nothing(model, tiny_disk):
    r = run_cli(str(model), "-t", "f32", "-o", str(tiny_disk / "o.gguf"))
    assert_one_line_error(r, "o.gguf", "no space left")
    assert outputs_in(tiny_disk) == []


def test_failure_keeps_earlier_good_output(model, tmp_path):
    out = tmp_path / "o.gguf"
    out.write_bytes(b"an earlier good file")
    (model / "model.safetensors").write_bytes(b"\x00" * 4)
    assert run_cli(str(model), "-o", str(out)).exit_code == 1
    assert out.read_bytes() == b"an earlier good file"
    assert outputs_in(tmp_path) == ["o.gguf"]


@pytest.mark.parametrize("qtype, stage", [("f16", "convert"), ("q4_k_m", "convert"), ("q4_k_m", "quantize")])
def test_interrupt_leaves_nothing(model, tmp_path, qtype, stage):
    """A KeyboardInterrupt from the progress callback, in Python's writer or in llama.cpp's quantizer."""
    def interrupt(progress):
        if progress.stage == stage and progress.tensors_done == 3:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        quantize_model(model, qtype, tmp_path / "o.gguf", progress=interrupt)
    assert outputs_in(tmp_path) == []


def test_library_error_names_file(tmp_path):
    folder = build_model(tmp_path / "m", TINY_TIED, seed=5, tokenizer=False)
    with pytest.raises(QuantizeError) as e:
        quantize_model(folder, "f16", tmp_path / "o.gguf")
    assert e.value.path == str(folder) and "no tokenizer" in e.value.message


def test_requantize_refuses_a_broken_float_gguf(converted, tmp_path):
    """llama.cpp's quantizer only gets files that pass the runtime's Qwen3 check."""
    from tests.tiny_gguf import write_foreign_gguf
    foreign = write_foreign_gguf(tmp_path / "llama.gguf")
    assert_one_line_error(run_cli(str(foreign), "-t", "q4_0", "-o", str(tmp_path / "o.gguf")), "'llama' is not qwen3")
    data = bytearray(converted("tied", "f16").read_bytes())
    idx = data.find(b"blk.1.ffn_down.weight")
    data[idx:idx + 5] = b"blk.9"  # a tensor the metadata does not have
    bad = tmp_path / "renamed.gguf"
    bad.write_bytes(bytes(data))
    assert_one_line_error(run_cli(str(bad), "-t", "q4_0", "-o", str(tmp_path / "o.gguf")), "renamed.gguf", "blk.1.ffn_down.weight")
    assert not (tmp_path / "o.gguf").exists()
