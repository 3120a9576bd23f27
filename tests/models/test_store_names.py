"""Store names of the 2507 models: the name maps to Qwen's repository, and `pull` of that name
fetches it from a fake Hub (tests/fake_hub.py) into the store as a GGUF that brings its own
kind, native context and sampling preset."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from edge.protocol.chat_template import compile_template
from edge.runtime.engine import read_model_info
from edge.models.hub import PullError, pull
from edge.protocol.model_kind import ModelKind, detect_kind
from edge.models.resolve import resolve_model
from edge.models.store import OFFICIAL_MODELS, ModelStore, parse_ref
from tests.fake_hub import serve_repos
from tests.model_factory import QWEN3_2507, TINY_TIED, build_model, make_2507
from tests.models.test_hub_pull import hermetic  # noqa: F401  (autouse: fresh HF cache and store, 127.0.0.1 only)

NAMES = {"qwen3-4b-instruct-2507": ("Qwen/Qwen3-4B-Instruct-2507", "instruct-2507", ModelKind.NON_THINKING),
         "qwen3-4b-thinking-2507": ("Qwen/Qwen3-4B-Thinking-2507", "thinking-2507", ModelKind.THINKING)}


def test_names_map_to_qwens_repositories():
    for name, (repo, _, _) in NAMES.items():
        assert OFFICIAL_MODELS[name] == repo
    assert {"qwen3-0.6b", "qwen3-1.7b", "qwen3-4b"} <= set(OFFICIAL_MODELS)
    ref = parse_ref("Qwen3-4B-Thinking-2507:Q8_0")
    assert (ref.name, ref.type) == ("qwen3-4b-thinking-2507", "q8_0")


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("hub-2507")
    base = build_model(root / "base", TINY_TIED, seed=11)
    return {repo: make_2507(Path(shutil.copytree(base, root / repo.split("/")[1])), variant)
            for repo, variant, _ in NAMES.values()}


@pytest.mark.parametrize("name", sorted(NAMES))
def test_pull_by_store_name(checkpoints, monkeypatch, tmp_path, name):
    repo, variant, kind = NAMES[name]
    with serve_repos(checkpoints) as hub:
        monkeypatch.setenv("HF_ENDPOINT", hub.url)
        path = pull(f"{name}:q8_0", ModelStore())
        fetched = {r.path.split("/")[1] + "/" + r.path.split("/")[2] for r in hub.file_requests("GET")}
    assert path == tmp_path / "store" / "models" / name / "q8_0.gguf"
    assert fetched == {repo}
    info = read_model_info(path)
    assert info.native_ctx == 262144 and info.sampling_defaults == QWEN3_2507[variant]["sampling"]
    assert detect_kind(compile_template(info.chat_template)) is kind


def test_resolve_pulls_a_2507_name_on_first_use(checkpoints, monkeypatch, tmp_path):
    with serve_repos(checkpoints) as hub:
        monkeypatch.setenv("HF_ENDPOINT", hub.url)
        path = resolve_model("qwen3-4b-instruct-2507:q8_0", ModelStore())
        assert resolve_model("qwen3-4b-instruct-2507:q8_0", ModelStore()) == path     # now from the store
    assert path.parent.name == "qwen3-4b-instruct-2507"


def test_unknown_name_lists_the_2507_models():
    with pytest.raises(PullError, match="qwen3-4b-thinking-2507") as err:
        pull("qwen3-4b-2507", ModelStore())
    assert "qwen3-4b-instruct-2507" in str(err.value)
