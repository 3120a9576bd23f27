"""`qwen3-edge embed`, `rerank`, `info` and `chat` on search models, as a user runs them."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from cli.main import app
from edge.runtime.engine import Engine
from quantize import quantize_model
from tests.model_factory import TINY_TIED
from tests.retrieval_models import build_embedding_model, build_reranker_model

runner = CliRunner(env={"COLUMNS": "200"})


@pytest.fixture(scope="module")
def search_ggufs(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("cli-search")
    return {"embedding": Path(quantize_model(build_embedding_model(root / "emb", TINY_TIED, seed=31), "f16",
                                             root / "emb.gguf").output),
            "reranker": Path(quantize_model(build_reranker_model(root / "rr", TINY_TIED, seed=32), "f16",
                                            root / "rr.gguf").output)}


def test_embed_json_lines_stdin_file_and_npy(search_ggufs, tmp_path):
    emb = str(search_ggufs["embedding"])
    with Engine.load(emb, n_threads=2) as e:
        want = e.embed(["alpha", "beta", "gamma"], instruction="Find it")
    (tmp_path / "texts.txt").write_text("beta\n\ngamma\n")
    r = runner.invoke(app, ["embed", emb, "-", "--file", str(tmp_path / "texts.txt"), "--instruction", "Find it"],
                      input="alpha\n")
    assert r.exit_code == 0, r.output
    rows = [json.loads(line) for line in r.stdout.splitlines()]
    assert [row["index"] for row in rows] == [0, 1, 2]
    np.testing.assert_allclose(np.array([row["embedding"] for row in rows]), want, atol=1e-6)
    out = tmp_path / "v.npy"
    r = runner.invoke(app, ["embed", emb, "alpha", "beta", "--dimensions", "32", "-o", str(out)])
    assert r.exit_code == 0, r.output
    v = np.load(out)
    assert v.shape == (2, 32) and np.allclose(np.linalg.norm(v, axis=1), 1, atol=1e-5)


def test_rerank_prints_best_first(search_ggufs):
    rr = str(search_ggufs["reranker"])
    docs = ["Paris is in France.", "Bananas are yellow.", "Rivers flow to the sea."]
    with Engine.load(rr, n_threads=2) as r:
        scores = r.rerank("Where is Paris?", docs)
    res = runner.invoke(app, ["rerank", rr, "Where is Paris?", *docs, "--json"])
    assert res.exit_code == 0, res.output
    got = json.loads(res.stdout)
    assert [x["index"] for x in got] == sorted(range(3), key=lambda i: -scores[i])
    assert [x["document"] for x in got] == [docs[x["index"]] for x in got]


@pytest.mark.parametrize("args, words", [
    (["run", "{embedding}", "hi"], "cannot chat: this is an embedding model"),
    (["rerank", "{embedding}", "q", "d"], "cannot rerank: this is an embedding model"),
    (["embed", "{reranker}", "x"], "cannot embed: this is a reranker"),
    (["embed", "{embedding}", "x", "--dimensions", "5"], "dimensions must be an integer from 32 to 64"),
    (["embed", "{embedding}", ""], "empty string"),
    (["embed", "{embedding}", "--file", "{binary}"], "not UTF-8 text (byte 0xff at offset 2)"),
    (["embed", "{embedding}", "x", "-o", "out.json"], "name it *.npy"),
    (["serve", "{embedding}"], "cannot serve it as the chat model: this is an embedding model"),
])
def test_wrong_model_or_input_is_one_line_exit_1(search_ggufs, tmp_path, args, words):
    binary = tmp_path / "b.bin"
    binary.write_bytes(b"ok\xff\x00")
    argv = [a.format(binary=binary, **{k: str(v) for k, v in search_ggufs.items()}) for a in args]
    r = runner.invoke(app, argv)
    assert r.exit_code == 1, r.output
    lines = [line for line in r.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and words in lines[0], r.stderr


def test_serve_takes_search_models_of_their_kind(search_ggufs, scripted_gguf):
    r = runner.invoke(app, ["serve", str(scripted_gguf), "--embedding-model", str(search_ggufs["reranker"])])
    assert r.exit_code == 1
    assert "--embedding-model" in r.stderr and "this is a reranker, not an embedding model" in r.stderr


def test_info_says_what_the_model_is_for(search_ggufs):
    for purpose, path in search_ggufs.items():
        r = runner.invoke(app, ["info", str(path), "--json"])
        assert r.exit_code == 0 and json.loads(r.stdout)["purpose"] == purpose
    r = runner.invoke(app, ["info", str(search_ggufs["reranker"])])
    assert "reranking (qwen3-edge rerank); not chat" in r.stdout
