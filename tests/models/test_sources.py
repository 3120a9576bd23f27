"""Download sources (edge/sources): ModelScope beside Hugging Face, ready GGUFs by hf.co/... and
modelscope.cn/... references, --prebuilt, where each stored model came from. Fake hubs on 127.0.0.1
in each hub's URL layout (tests/fake_hub.py, tests/fake_modelscope.py); nothing else is reached."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from cli.main import app
from edge.models.hub import HINT, PullError, pull
from edge.models.resolve import resolve_model
from edge.models.store import ModelStore, read_origin
from quantize import describe_gguf
from tests.fake_hub import closed_port_url, serve_repos
from tests.fake_modelscope import serve_modelscope
from tests.models.test_hub_pull import checkpoint, hermetic  # noqa: F401  (fixtures: tiny checkpoint; fresh caches, 127.0.0.1 only)
from tests.tiny_gguf import write_foreign_gguf, write_tiny_qwen3

runner = CliRunner(env={"COLUMNS": "250"})
GGUF_REPO = "Qwen/Qwen3-4B-GGUF"


@pytest.fixture(autouse=True)
def modelscope_env(hermetic, monkeypatch, tmp_path):  # noqa: F811
    for var in ("MODELSCOPE_ENDPOINT", "MODELSCOPE_DOMAIN", "QWEN3_EDGE_SOURCE", "QWEN3_EDGE_OFFLINE",
                "MODELSCOPE_API_TOKEN"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("MODELSCOPE_CACHE", str(tmp_path / "ms-cache"))
    monkeypatch.setenv("MODELSCOPE_HOME", str(tmp_path / "ms-home"))


@pytest.fixture(scope="module")
def gguf_repo(tmp_path_factory) -> Path:
    """Like Qwen/Qwen3-4B-GGUF: one file per quant (tiny Qwen3 GGUFs, each a little different)."""
    folder = tmp_path_factory.mktemp("gguf-repo")
    for seed, quant in enumerate(["Q4_K_M", "Q5_K_M", "Q6_K", "Q8_0"]):
        write_tiny_qwen3(folder / f"Qwen3-4B-{quant}.gguf", seed=seed)
    (folder / "README.md").write_text("tiny\n")
    return folder


def stored(tmp_path: Path, name: str, qtype: str) -> Path:
    return tmp_path / "store" / "models" / name / f"{qtype}.gguf"


def test_pull_by_store_name_from_modelscope_then_offline_from_its_cache(checkpoint, monkeypatch, tmp_path):  # noqa: F811
    with serve_modelscope({"Qwen/Qwen3-0.6B": checkpoint}) as ms:
        monkeypatch.setenv("MODELSCOPE_ENDPOINT", ms.url)
        monkeypatch.setenv("HF_ENDPOINT", closed_port_url())        # Hugging Face is not used at all
        path = pull("qwen3-0.6b:q8_0", ModelStore(), source="modelscope")
        assert describe_gguf(path)["architecture"] == "qwen3"
        assert {r.file for r in ms.downloads()} >= {"config.json", "model.safetensors", "tokenizer.json"}
        assert read_origin(path) == {"source": "modelscope", "repo": "Qwen/Qwen3-0.6B", "revision": "master",
                                     "file": "", "made": "converted here"}
        # the files sit in ModelScope's cache under MODELSCOPE_CACHE, as its client lays them out
        assert (tmp_path / "ms-cache" / "models" / "Qwen--Qwen3-0.6B" / "snapshots" / "master" / "model.safetensors").is_file()

        before = len(ms.requests)
        monkeypatch.setenv("QWEN3_EDGE_OFFLINE", "1")
        monkeypatch.setenv("QWEN3_EDGE_SOURCE", "modelscope")           # the environment picks the source too
        second = pull("qwen3-0.6b:f16", ModelStore())
        assert describe_gguf(second)["architecture"] == "qwen3"
        assert ms.requests[before:] == []


def test_modelscope_offline_with_an_empty_cache_says_so(monkeypatch):
    monkeypatch.setenv("QWEN3_EDGE_OFFLINE", "1")
    monkeypatch.setenv("MODELSCOPE_ENDPOINT", closed_port_url())
    with pytest.raises(PullError) as info:
        pull("qwen3-0.6b:q8_0", ModelStore(), source="modelscope")
    assert str(info.value).startswith("cannot download Qwen/Qwen3-0.6B: offline mode is on (QWEN3_EDGE_OFFLINE)")
    assert ModelStore().entries() == []


def test_hub_down_names_the_other_source_in_one_line(monkeypatch):
    url = closed_port_url()
    monkeypatch.setenv("HF_ENDPOINT", url)
    with pytest.raises(PullError) as info:
        pull("qwen3-0.6b", ModelStore())
    message = str(info.value)
    assert message.startswith(f"cannot download Qwen/Qwen3-0.6B: cannot reach {url} (")
    assert "--source modelscope or QWEN3_EDGE_SOURCE=modelscope" in message
    assert message.endswith(HINT) and "\n" not in message

    # a source the user named is not second-guessed
    with pytest.raises(PullError) as named:
        pull("qwen3-0.6b", ModelStore(), source="hf")
    assert "modelscope" not in str(named.value)

    r = runner.invoke(app, ["pull", "qwen3-0.6b"])
    lines = [line for line in r.stderr.splitlines() if line.strip()]
    assert r.exit_code == 1 and len(lines) == 1 and "--source modelscope" in lines[0], r.stderr


def test_ready_gguf_by_hf_reference_only_that_file(gguf_repo, monkeypatch, tmp_path):
    with serve_repos({GGUF_REPO: gguf_repo}) as hub:
        monkeypatch.setenv("HF_ENDPOINT", hub.url)
        r = runner.invoke(app, ["pull", f"hf.co/{GGUF_REPO}:Q4_K_M"])
        assert r.exit_code == 0, r.output
        fetched = {r.path.rsplit("/", 1)[1] for r in hub.file_requests("GET")}
    path = stored(tmp_path, "qwen--qwen3-4b-gguf", "q4_k_m")
    assert fetched == {"Qwen3-4B-Q4_K_M.gguf"}
    assert path.read_bytes() == (gguf_repo / "Qwen3-4B-Q4_K_M.gguf").read_bytes()
    origin = read_origin(path)
    assert (origin["source"], origin["repo"], origin["file"]) == ("hf", GGUF_REPO, "Qwen3-4B-Q4_K_M.gguf")
    assert origin["revision"] == hub.repos[GGUF_REPO].sha

    listing = json.loads(runner.invoke(app, ["list", "--json"]).stdout)
    assert [(e["name"], e["type"], e["source"], e["repo"], e["revision"]) for e in listing] == \
        [("qwen--qwen3-4b-gguf", "q4_k_m", "hf", GGUF_REPO, hub.repos[GGUF_REPO].sha)]
    assert f"hf {GGUF_REPO}@{hub.repos[GGUF_REPO].sha[:8]}" in runner.invoke(app, ["list"]).stdout
    # the same reference now resolves from the store, without a hub
    monkeypatch.setenv("HF_ENDPOINT", closed_port_url())
    assert resolve_model(f"hf.co/{GGUF_REPO}:q4_k_m", ModelStore()) == path
    r = runner.invoke(app, ["rm", f"hf.co/{GGUF_REPO}:Q4_K_M"])
    assert r.exit_code == 0, r.output
    assert not path.exists() and not path.with_name("q4_k_m.origin.json").exists()


def test_ready_gguf_from_modelscope_resumes_a_dropped_download(gguf_repo, monkeypatch, tmp_path):
    with serve_modelscope({GGUF_REPO: gguf_repo}) as ms:
        monkeypatch.setenv("MODELSCOPE_ENDPOINT", ms.url)
        ms.drop_once("Qwen3-4B-Q8_0.gguf", 30_000)
        path = pull(f"modelscope.cn/{GGUF_REPO}:q8_0", ModelStore())
        gets = ms.downloads()
    assert [r.file for r in gets] == ["Qwen3-4B-Q8_0.gguf"] * 2
    assert gets[0].range is None and gets[1].range == "bytes=30000-"
    assert path == stored(tmp_path, "qwen--qwen3-4b-gguf", "q8_0")
    assert path.read_bytes() == (gguf_repo / "Qwen3-4B-Q8_0.gguf").read_bytes()
    assert read_origin(path)["source"] == "modelscope"


def test_ready_gguf_offline_comes_from_each_hubs_cache(gguf_repo, monkeypatch, tmp_path):
    with serve_repos({GGUF_REPO: gguf_repo}) as hub, serve_modelscope({GGUF_REPO: gguf_repo}) as ms:
        monkeypatch.setenv("HF_ENDPOINT", hub.url)
        monkeypatch.setenv("MODELSCOPE_ENDPOINT", ms.url)
        for ref in (f"hf.co/{GGUF_REPO}:Q6_K", f"modelscope.cn/{GGUF_REPO}:Q5_K_M"):
            pull(ref, ModelStore())
            ModelStore().remove(ref)                  # gone from the store, still in the hub's cache
        before_hf, before_ms = len(hub.requests), len(ms.requests)
        monkeypatch.setenv("HF_HUB_OFFLINE", "1")
        monkeypatch.setenv("QWEN3_EDGE_OFFLINE", "1")
        a = pull(f"hf.co/{GGUF_REPO}:Q6_K", ModelStore())
        b = pull(f"modelscope.cn/{GGUF_REPO}:Q5_K_M", ModelStore())
        assert hub.requests[before_hf:] == [] and ms.requests[before_ms:] == []
    assert a.read_bytes() == (gguf_repo / "Qwen3-4B-Q6_K.gguf").read_bytes()
    assert b.read_bytes() == (gguf_repo / "Qwen3-4B-Q5_K_M.gguf").read_bytes()


def test_missing_quant_lists_what_the_repo_has(gguf_repo, monkeypatch):
    with serve_repos({GGUF_REPO: gguf_repo}) as hub:
        monkeypatch.setenv("HF_ENDPOINT", hub.url)
        with pytest.raises(PullError) as info:
            pull(f"hf.co/{GGUF_REPO}:IQ4_XS", ModelStore())
        assert hub.file_requests("GET") == []
    assert str(info.value) == f"{GGUF_REPO} on Hugging Face has no IQ4_XS GGUF; it has: Q4_K_M, Q5_K_M, Q6_K, Q8_0"
    assert ModelStore().entries() == []


@pytest.mark.parametrize("hub_name", ["hf", "modelscope"])
def test_gguf_of_another_architecture_is_refused_and_not_kept(hub_name, tmp_path, monkeypatch):
    repo = tmp_path / "foreign"
    repo.mkdir()
    write_foreign_gguf(repo / "Llama-3-8B-Q4_K_M.gguf")
    serve, host, var = ((serve_repos, "hf.co", "HF_ENDPOINT") if hub_name == "hf"
                        else (serve_modelscope, "modelscope.cn", "MODELSCOPE_ENDPOINT"))
    with serve({"someone/Llama-3-8B-GGUF": repo}) as server:
        monkeypatch.setenv(var, server.url)
        with pytest.raises(PullError) as info:
            pull(f"{host}/someone/Llama-3-8B-GGUF:Q4_K_M", ModelStore())
    assert str(info.value) == ("refused someone/Llama-3-8B-GGUF/Llama-3-8B-Q4_K_M.gguf: architecture 'llama' "
                               "is not qwen3; qwen3-edge runs Qwen3 models only")
    assert ModelStore().entries() == [] and not (tmp_path / "store" / "models").exists()


def test_truncated_gguf_is_refused(gguf_repo, tmp_path, monkeypatch):
    repo = tmp_path / "broken"
    repo.mkdir()
    data = (gguf_repo / "Qwen3-4B-Q8_0.gguf").read_bytes()
    (repo / "Qwen3-4B-Q8_0.gguf").write_bytes(data[: len(data) // 2])
    with serve_repos({GGUF_REPO: repo}) as hub:
        monkeypatch.setenv("HF_ENDPOINT", hub.url)
        with pytest.raises(PullError, match=rf"^refused {GGUF_REPO}/Qwen3-4B-Q8_0.gguf: "):
            pull(f"hf.co/{GGUF_REPO}:Q8_0", ModelStore())
    assert ModelStore().entries() == []


def test_multi_part_gguf_is_refused_not_loaded_in_part(gguf_repo, tmp_path, monkeypatch):
    repo = tmp_path / "split"
    repo.mkdir()
    for i in (1, 2, 3):
        (repo / f"Qwen3-4B-Q8_0-0000{i}-of-00003.gguf").write_bytes((gguf_repo / "Qwen3-4B-Q8_0.gguf").read_bytes())
    with serve_repos({GGUF_REPO: repo}) as hub:
        monkeypatch.setenv("HF_ENDPOINT", hub.url)
        with pytest.raises(PullError, match="comes in 3 parts .* single-file GGUFs") as info:
            pull(f"hf.co/{GGUF_REPO}:Q8_0", ModelStore())
        assert hub.file_requests("GET") == []
    assert "\n" not in str(info.value) and ModelStore().entries() == []


def test_prebuilt_takes_qwens_gguf_when_it_has_the_type(gguf_repo, checkpoint, monkeypatch, tmp_path):  # noqa: F811
    with serve_repos({GGUF_REPO: gguf_repo, "Qwen/Qwen3-4B": checkpoint}) as hub:
        monkeypatch.setenv("HF_ENDPOINT", hub.url)
        r = runner.invoke(app, ["pull", "qwen3-4b", "--type", "q5_k_m", "--prebuilt"])
        assert r.exit_code == 0, r.output
        fetched = {r.path.split("/resolve/")[0] + "/" + r.path.rsplit("/", 1)[1] for r in hub.file_requests("GET")}
    path = stored(tmp_path, "qwen3-4b", "q5_k_m")
    assert fetched == {f"/{GGUF_REPO}/Qwen3-4B-Q5_K_M.gguf"}
    assert path.read_bytes() == (gguf_repo / "Qwen3-4B-Q5_K_M.gguf").read_bytes()
    assert read_origin(path)["repo"] == GGUF_REPO


def test_prebuilt_without_that_type_quantizes_as_before(checkpoint, tmp_path, monkeypatch):  # noqa: F811
    only_q8 = tmp_path / "only-q8"
    only_q8.mkdir()
    write_tiny_qwen3(only_q8 / "Qwen3-0.6B-Q8_0.gguf")
    with serve_repos({"Qwen/Qwen3-0.6B-GGUF": only_q8, "Qwen/Qwen3-0.6B": checkpoint}) as hub:
        monkeypatch.setenv("HF_ENDPOINT", hub.url)
        path = pull("qwen3-0.6b:f16", ModelStore(), prebuilt=True)
        fetched = {r.path.split("/resolve/")[0] for r in hub.file_requests("GET")}
    assert fetched == {"/Qwen/Qwen3-0.6B"}
    assert describe_gguf(path)["architecture"] == "qwen3"
    assert read_origin(path)["made"] == "converted here"


def test_unknown_source_is_named():
    with pytest.raises(PullError, match="unknown source 'gitee'; choose one of hf, modelscope"):
        pull("qwen3-0.6b", ModelStore(), source="gitee")
