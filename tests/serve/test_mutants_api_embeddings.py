"""edge/serve/api_embeddings.py's routes over a stand-in Embedder (no model: the end-to-end tests in
test_api_embeddings load three and take seconds a run): the response shapes of /v1/embeddings,
/v1/rerank and Ollama's /api/embed, Ollama's defaults, the 400 naming the `serve` option of a model
not loaded, the 429 past the queue, and the worker thread giving its OpenMP pool back."""

from __future__ import annotations

import base64
from pathlib import Path

import numpy as np
import pytest
from starlette.applications import Starlette
from starlette.testclient import TestClient

import edge.serve.api_embeddings as api
from edge.runtime.embedding import EmbedError


class FakeEmbedder:
    """Embedder's interface: rows [i, i + 1, ...] per text, scores given, 7 tokens per text."""

    def __init__(self, purpose: str, name: str, scores=(0.2, 0.9, 0.5), n_embd: int = 64, fail: str | None = None):
        self.purpose, self.path, self.n_embd = purpose, Path(f"/models/{name}.gguf"), n_embd
        self.scores, self.fail, self.calls = np.array(scores), fail, []

    def embed_counted(self, texts, **kwargs):
        self.calls.append(kwargs)
        if self.fail:
            raise EmbedError(self.fail)
        width = kwargs.get("dimensions") or self.n_embd
        return np.array([[i + j for j in range(width)] for i in range(len(texts))], dtype=np.float32), 7 * len(texts)

    def rerank_counted(self, query, documents, **kwargs):
        self.calls.append(kwargs)
        return self.scores[:len(documents)], 7 * len(documents)


def client(*embedders, queue: int = 16) -> TestClient:
    routes = api.embedding_routes(list(embedders), authorized=lambda r: True, max_body_bytes=1 << 20, queue=queue)
    return TestClient(Starlette(routes=routes))


def test_embeddings_answer_openais_list_shape_float_and_base64():
    emb = FakeEmbedder("embedding", "emb-model")
    r = client(emb).post("/v1/embeddings", json={"input": ["a", "b"]})
    assert r.status_code == 200
    body = r.json()
    assert (body["object"], body["model"], body["usage"]) == ("list", "emb-model", {"prompt_tokens": 14, "total_tokens": 14})
    assert [(d["object"], d["index"]) for d in body["data"]] == [("embedding", 0), ("embedding", 1)]
    assert body["data"][1]["embedding"][:3] == [1.0, 2.0, 3.0]
    b64 = client(emb).post("/v1/embeddings", json={"input": "a", "encoding_format": "base64", "dimensions": 32}).json()
    got = np.frombuffer(base64.b64decode(b64["data"][0]["embedding"]), dtype="<f4")
    assert got.tolist() == list(range(32)) and emb.calls[-1]["dimensions"] == 32


def test_rerank_answers_best_first_with_top_n_and_documents_only_when_asked():
    rr = FakeEmbedder("reranker", "rr-model")
    c = client(rr)
    body = c.post("/v1/rerank", json={"query": "q", "documents": ["x", "y", "z"]}).json()
    assert (body["object"], body["model"], body["usage"]) == ("list", "rr-model", {"prompt_tokens": 21, "total_tokens": 21})
    assert body["results"] == [{"index": 1, "relevance_score": 0.9}, {"index": 2, "relevance_score": 0.5},
                               {"index": 0, "relevance_score": 0.2}]
    top = c.post("/v1/rerank", json={"query": "q", "documents": ["x", {"text": "y"}, "z"], "top_n": 1,
                                     "return_documents": True}).json()
    assert top["results"] == [{"index": 1, "relevance_score": 0.9, "document": {"text": "y"}}]


def test_ollama_embed_truncates_by_default_and_answers_ollamas_fields():
    """Ollama's /api/embed truncates unless told not to (its default: true), takes `dimensions`,
    and answers with load_duration 0 (the model is already loaded)."""
    emb = FakeEmbedder("embedding", "emb-model")
    c = client(emb)
    body = c.post("/api/embed", json={"model": "x", "input": ["a", "b"], "dimensions": 32}).json()
    assert emb.calls[-1] == {"dimensions": 32, "truncate": True}
    assert (body["model"], body["load_duration"], body["prompt_eval_count"]) == ("emb-model", 0, 14)
    assert isinstance(body["total_duration"], int) and body["total_duration"] >= 0
    assert np.array(body["embeddings"]).shape == (2, 32)
    c.post("/api/embed", json={"input": "a", "truncate": False})
    assert emb.calls[-1] == {"dimensions": None, "truncate": False}


def test_openai_embeddings_and_rerank_do_not_truncate_unless_asked():
    emb, rr = FakeEmbedder("embedding", "e"), FakeEmbedder("reranker", "r")
    c = client(emb, rr)
    c.post("/v1/embeddings", json={"input": "a"})
    c.post("/v1/rerank", json={"query": "q", "documents": ["x"], "instruction": "Judge it"})
    assert emb.calls[-1] == {"instruction": None, "dimensions": None, "truncate": False}
    assert rr.calls[-1] == {"instruction": "Judge it", "truncate": False}


@pytest.mark.parametrize("path, option", [("/v1/embeddings", "--embedding-model"), ("/api/embed", "--embedding-model"),
                                          ("/v1/rerank", "--rerank-model")])
def test_a_model_not_loaded_is_a_400_naming_the_serve_option_that_loads_it(path, option):
    loaded = FakeEmbedder("reranker", "r") if option == "--embedding-model" else FakeEmbedder("embedding", "e")
    r = client(loaded).post(path, json={"query": "q", "documents": ["x"]} if "rerank" in path else {"input": "a"})
    assert r.status_code == 400
    message = r.json()["error"] if path == "/api/embed" else r.json()["error"]["message"]
    assert f"with {option} M" in message


def test_past_the_queue_a_search_is_a_429_with_retry_after():
    r = client(FakeEmbedder("embedding", "e"), queue=-1).post("/v1/embeddings", json={"input": "a"})
    assert r.status_code == 429 and r.headers["retry-after"] == "1"
    assert r.json()["error"] == {"message": "the server is busy with other search requests; retry later",
                                 "type": "rate_limit_exceeded", "param": None, "code": None}


def test_admission_counts_what_is_in():
    a = api._Admission(2)
    assert [a.enter(), a.enter(), a.enter()] == [True, True, False]
    a.leave()
    assert a.enter() is True and a.active == 2


def test_an_embed_error_is_a_400_on_input_in_each_shape():
    c = client(FakeEmbedder("embedding", "e", fail="input[0] is too long"))
    r = c.post("/v1/embeddings", json={"input": "a"})
    assert r.status_code == 400 and r.json()["error"]["param"] == "input" and "too long" in r.json()["error"]["message"]
    r = c.post("/api/embed", json={"input": "a"})
    assert r.status_code == 400 and r.json() == {"error": "input[0] is too long"}


def test_the_worker_thread_gives_its_openmp_pool_back(monkeypatch):
    released = []
    monkeypatch.setattr(api, "release_thread_pool", lambda: released.append(True))
    assert client(FakeEmbedder("embedding", "e")).post("/v1/embeddings", json={"input": "a"}).status_code == 200
    assert released == [True]
