"""Issue 20's store things, through the real pull and conversion (a fake Hub on 127.0.0.1): a local
Hugging Face folder is kept as local--NAME with its origin, so `pull` of the official name still
downloads it; files the store keeps follow the umask; `info` takes a store name or a folder."""

from __future__ import annotations

import json
import os
import shutil
import stat

import pytest
from typer.testing import CliRunner

from cli.main import app
from edge.models.hub import PullError, pull
from edge.models.resolve import resolve_model
from edge.models.store import ModelRef, ModelStore, machine_default_type, origin_path, read_origin, write_origin
from tests.models.test_hub_pull import checkpoint, hermetic, hub  # noqa: F401  (fixtures)

runner = CliRunner(env={"COLUMNS": "200"})


def mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


@pytest.fixture
def umask_022():
    old = os.umask(0o022)
    yield
    os.umask(old)


def test_local_folder_does_not_pass_for_the_official_model(hub, checkpoint, tmp_path, umask_022):
    assert checkpoint.name == "Qwen3-0.6B"          # the folder's name is the official store name
    qtype = machine_default_type()
    local = resolve_model(str(checkpoint), ModelStore())
    assert local == tmp_path / "store" / "models" / "local--qwen3-0.6b" / f"{qtype}.gguf"
    assert read_origin(local) == {"source": "local", "repo": str(checkpoint.resolve()), "revision": "", "file": "",
                                  "made": "converted here"}
    assert mode(local) == mode(origin_path(local)) == 0o644          # not mkstemp's 0600
    assert resolve_model(str(checkpoint), ModelStore()) == local      # found again, not converted twice

    official = pull("qwen3-0.6b", ModelStore())                       # the same type: it still downloads
    assert official == tmp_path / "store" / "models" / "qwen3-0.6b" / f"{qtype}.gguf"
    assert hub.file_requests("GET") and read_origin(official)["repo"] == "Qwen/Qwen3-0.6B"
    assert mode(official) == 0o644

    listed = {e["name"]: e for e in json.loads(runner.invoke(app, ["list", "--json"]).stdout)}
    assert listed["local--qwen3-0.6b"]["source"] == "local" and listed["qwen3-0.6b"]["source"] == "hf"
    table = runner.invoke(app, ["list"]).stdout
    assert f"local {checkpoint.resolve()}" in table

    for spec, path in (("qwen3-0.6b", official), (str(checkpoint), local)):   # what chat takes
        r = runner.invoke(app, ["info", spec, "--json"])
        assert r.exit_code == 0, r.output
        assert json.loads(r.stdout)["path"] == str(path)


def test_info_never_converts_or_downloads(checkpoint, tmp_path):
    r = runner.invoke(app, ["info", str(checkpoint)])
    assert r.exit_code == 1 and "not converted yet" in r.stderr and len(r.stderr.strip().splitlines()) == 1
    r = runner.invoke(app, ["info", "qwen3-1.7b"])
    assert r.exit_code == 1 and "not in the store" in r.stderr
    assert not (tmp_path / "store" / "models").exists()


def test_pull_refuses_a_local_conversion_under_the_official_name(hub, checkpoint, tmp_path):
    """A store from before local--NAME: the folder's GGUF sits under qwen3-0.6b, recorded as local."""
    ref = ModelRef("qwen3-0.6b", machine_default_type())
    local = resolve_model(str(checkpoint), ModelStore())
    target = ModelStore().prepare(ref)
    shutil.copyfile(local, target)
    write_origin(target, source="local", repo=str(checkpoint), revision="", file="", made="converted here")
    with pytest.raises(PullError, match=r"is not Qwen/Qwen3-0.6B: it was converted from the local folder .* "
                                        r"remove it \(qwen3-edge rm qwen3-0.6b:"):
        pull("qwen3-0.6b", ModelStore())
    assert not hub.file_requests("GET")
