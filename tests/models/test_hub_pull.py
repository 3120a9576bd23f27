"""`pull` against a fake Hub on 127.0.0.1: download into huggingface_hub's cache, convert into the store."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from edge.models.hub import HINT, PullError, PullProgress, pull
from edge.models.store import OFFICIAL_MODELS, ModelStore
from quantize import describe_gguf
from tests.fake_hub import FakeHub, closed_port_url, serve_repos
from tests.model_factory import TINY_TIED, build_model

REPO = "Qwen/Qwen3-0.6B"
SNAPSHOTS = "hub/models--Qwen--Qwen3-0.6B/snapshots"


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    return build_model(tmp_path_factory.mktemp("hub-src") / "Qwen3-0.6B", TINY_TIED, seed=7)


@pytest.fixture(autouse=True)
def hermetic(monkeypatch, tmp_path):
    """Fresh HF cache and store per test, and no way to reach anything but 127.0.0.1.

    huggingface_hub reads HF_HUB_OFFLINE and HF_HUB_DISABLE_TELEMETRY once, at import; the ones that
    `pull` reads itself (endpoint, cache, offline) are set through the environment, as a user would.
    With telemetry on, huggingface_hub 2.4 fetches {import-time endpoint}/api/agent-harnesses once per
    process, which would be huggingface.co; the socket guard below makes any such attempt fail loudly.
    """
    import huggingface_hub.constants as hf_constants

    for var in ("HF_ENDPOINT", "HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE", "HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("HF_TOKEN", "hf_test_token_for_the_fake_hub")
    monkeypatch.setenv("QWEN3_EDGE_HOME", str(tmp_path / "store"))
    monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(hf_constants, "HF_HUB_DISABLE_TELEMETRY", True)

    blocked: list[str] = []
    real_getaddrinfo = socket.getaddrinfo

    def local_only(host, *args, **kwargs):
        if host not in ("127.0.0.1", "localhost"):
            blocked.append(str(host))
            raise socket.gaierror(f"tests may not reach {host}")
        return real_getaddrinfo(host, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", local_only)
    yield
    assert not blocked, f"tried to reach {blocked}"


@pytest.fixture
def hub(checkpoint, monkeypatch):
    with serve_repos({REPO: checkpoint}) as server:
        monkeypatch.setenv("HF_ENDPOINT", server.url)
        yield server


def store() -> ModelStore:
    return ModelStore()   # QWEN3_EDGE_HOME, as the CLI would


def assert_cached_as_served(hub: FakeHub, hf_home: Path, filename: str) -> None:
    """The snapshot's file is the blob named by the Hub's ETag (for LFS files, the sha256 of the
    content), and its bytes hash to that ETag and equal the bytes the hub serves."""
    served = hub.repos[REPO].files[filename]
    (snapshot,) = (hf_home / SNAPSHOTS).iterdir()
    blob = (snapshot / filename).resolve()
    data = blob.read_bytes()
    assert blob.name == served.etag
    assert hashlib.sha256(data).hexdigest() == served.etag
    assert data == served.path.read_bytes()


def test_pull_downloads_then_converts_into_the_store(hub: FakeHub, tmp_path, capfd):
    events: list[PullProgress] = []
    path = pull("qwen3-0.6b:q8_0", store(), progress=events.append)

    assert path == tmp_path / "store" / "models" / "qwen3-0.6b" / "q8_0.gguf"
    assert describe_gguf(path)["architecture"] == "qwen3"
    # The files went to huggingface_hub's cache under HF_HOME, read when pull was called.
    (snapshot,) = (tmp_path / "hf" / SNAPSHOTS).iterdir()
    assert {p.name for p in snapshot.iterdir()} >= {"config.json", "model.safetensors", "tokenizer.json"}

    downloads = [e for e in events if e.stage == "download"]
    total = sum(p.stat().st_size for p in snapshot.iterdir())
    assert downloads[-1] == PullProgress("download", total, total, "7/7 files")
    assert all(a.done <= b.done for a, b in zip(downloads, downloads[1:]))
    converts = [e for e in events if e.stage == "convert"]
    assert converts and converts[-1].done == converts[-1].total > 0
    assert events.index(downloads[-1]) < events.index(converts[0])
    # Progress went to the callback; huggingface_hub drew no bars of its own.
    err = capfd.readouterr().err
    assert "Fetching" not in err and "Downloading" not in err and "%|" not in err

    # Every file was fetched once, by plain HTTP (no Xet), in full.
    gets = hub.file_requests("GET")
    assert sorted(r.path.rsplit("/", 1)[1] for r in gets) == sorted(p.name for p in snapshot.iterdir())
    assert all(r.range is None for r in gets)


def test_second_type_comes_from_the_hf_cache(hub: FakeHub):
    pull("qwen3-0.6b:q8_0", store())
    before = len(hub.requests)
    events: list[PullProgress] = []

    path = pull("qwen3-0.6b:q4_0", store(), progress=events.append)

    assert describe_gguf(path)["architecture"] == "qwen3"
    new = hub.requests[before:]
    assert [r.method for r in new] == ["GET"]                 # only "what is main now?"
    assert new[0].path == f"/api/models/{REPO}/revision/main"
    assert {e.stage for e in events} == {"download", "convert", "quantize"}


def test_pulling_what_the_store_has_returns_at_once(hub: FakeHub):
    first = pull("qwen3-0.6b:q8_0", store())
    before = len(hub.requests)
    events: list[PullProgress] = []

    assert pull("qwen3-0.6b:q8_0", store(), progress=events.append) == first

    assert hub.requests[before:] == [] and events == []


def test_offline_with_a_filled_cache_converts_without_the_network(hub: FakeHub, monkeypatch):
    pull("qwen3-0.6b:q8_0", store())
    before = len(hub.requests)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")

    path = pull("qwen3-0.6b:f16", store())

    assert describe_gguf(path)["architecture"] == "qwen3"
    assert hub.requests[before:] == []


def test_offline_with_an_empty_cache_says_so(hub: FakeHub, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")

    with pytest.raises(PullError) as info:
        pull("qwen3-0.6b:q8_0", store())

    message = str(info.value)
    assert message.startswith(f"cannot download {REPO}: offline mode is on (HF_HUB_OFFLINE)")
    assert message.endswith(HINT) and "\n" not in message
    assert hub.requests == []
    assert store().entries() == []


def test_server_down_gives_one_line_with_the_hint(monkeypatch):
    url = closed_port_url()
    monkeypatch.setenv("HF_ENDPOINT", url)

    with pytest.raises(PullError) as info:
        pull("qwen3-0.6b", store())

    message = str(info.value)
    assert message.startswith(f"cannot download {REPO}: cannot reach {url} (")
    assert "qwen3-edge chat ./model.gguf" in message and "\n" not in message
    assert store().entries() == []


def test_missing_repository_is_named(checkpoint, monkeypatch):
    with serve_repos({"Someone/Else": checkpoint}) as server:
        monkeypatch.setenv("HF_ENDPOINT", server.url)
        with pytest.raises(PullError, match=f"cannot download {REPO}: no such repository on {server.url};"):
            pull("qwen3-0.6b", store())


def test_unknown_name_lists_the_known_ones(hub: FakeHub):
    with pytest.raises(PullError) as info:
        pull("qwen3-70b:q8_0", store())

    assert all(name in str(info.value) for name in OFFICIAL_MODELS)
    assert hub.requests == []


def test_bad_reference_is_a_pull_error():
    with pytest.raises(PullError, match="q9_9"):
        pull("qwen3-0.6b:q9_9", store())


def test_download_cut_short_resumes_with_a_range_request(hub: FakeHub, tmp_path):
    hub.drop_once("model.safetensors", 12_000_000)   # past the client's first 10 MiB chunk

    path = pull("qwen3-0.6b:q8_0", store())

    assert describe_gguf(path)["architecture"] == "qwen3"
    weights = [r for r in hub.file_requests("GET") if r.path.endswith("/model.safetensors")]
    assert [r.range is None for r in weights] == [True, False]
    assert weights[1].range.startswith("bytes=") and not weights[1].range.startswith("bytes=0-")
    assert_cached_as_served(hub, tmp_path / "hf", "model.safetensors")


def test_a_checkpoint_that_does_not_convert_is_a_pull_error(checkpoint, tmp_path, monkeypatch):
    broken = tmp_path / "broken"
    broken.mkdir()
    for f in checkpoint.iterdir():
        (broken / f.name).write_bytes(f.read_bytes())
    config = json.loads((broken / "config.json").read_text())
    (broken / "config.json").write_text(json.dumps(config | {"architectures": ["LlamaForCausalLM"]}))

    with serve_repos({REPO: broken}) as server:
        monkeypatch.setenv("HF_ENDPOINT", server.url)
        with pytest.raises(PullError, match=f"^cannot convert {REPO}: "):
            pull("qwen3-0.6b:q8_0", store())
    assert store().entries() == [] and not (tmp_path / "store" / "models" / "qwen3-0.6b").exists()


def test_pull_killed_mid_download_resumes_in_the_next_pull(hub: FakeHub, tmp_path, monkeypatch):
    hub.stall("model.safetensors", 12_000_000)   # past the client's first 10 MiB chunk, then silence
    blobs = tmp_path / "hf" / "hub" / "models--Qwen--Qwen3-0.6B" / "blobs"
    full = (hub.repos[REPO].files["model.safetensors"]).size
    env = dict(os.environ, HF_HUB_DISABLE_TELEMETRY="1")
    code = "from edge.models.hub import pull; from edge.models.store import ModelStore; pull('qwen3-0.6b:q8_0', ModelStore())"
    child = subprocess.Popen([sys.executable, "-c", code],
                             cwd=Path(__file__).resolve().parents[2], env=env,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 60
        partial: list[Path] = []
        while time.monotonic() < deadline and child.poll() is None:
            partial = list(blobs.glob("*.qwen3-edge-partial")) if blobs.is_dir() else []
            if partial and partial[0].stat().st_size > 0:
                break
            time.sleep(0.05)
        assert child.poll() is None, "the child pull ended before it was killed"
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait()

    (part,) = partial
    size = part.stat().st_size
    assert 0 < size < full
    assert store().entries() == []
    assert not (blobs / part.name.removesuffix(".qwen3-edge-partial")).exists()

    hub.stall("model.safetensors", None)
    before = len(hub.requests)
    events: list[PullProgress] = []
    path = pull("qwen3-0.6b:q8_0", store(), progress=events.append)

    assert describe_gguf(path)["architecture"] == "qwen3"
    weights = [r for r in hub.requests[before:] if r.method == "GET" and r.path.endswith("/model.safetensors")]
    assert [r.range for r in weights] == [f"bytes={size}-"]
    assert not part.exists()
    assert_cached_as_served(hub, tmp_path / "hf", "model.safetensors")
    downloads = [e for e in events if e.stage == "download"]
    assert downloads[0].done >= size                 # the bytes already there count as done
    assert downloads[-1].done == downloads[-1].total
