"""edge/runtime/embedding.py's rules without a model (test_embeddings builds and loads five and
takes half a minute a run): what Embedder.open asks llama.cpp for, and the checks and defaults of
embed / rerank on an Embedder whose tokenizer and pooled output are stand-ins (one token per
byte; the pooled rows given)."""

from __future__ import annotations

from pathlib import Path

import llama_cpp
import numpy as np
import pytest

import edge.runtime.embedding as embedding
from edge.runtime.embedding import DEFAULT_BATCH, EmbedError, Embedder, purpose_of, wrong_model
from edge.runtime.engine import POOLING_KEY, EngineError
from edge.protocol.retrieval_format import InputError


class Recorder:
    """TunedLlama's stand-in: records the arguments, then fails as a bad file does."""

    def __init__(self):
        self.kwargs = None

    def __call__(self, path, **kwargs):
        self.kwargs = kwargs
        raise ValueError("stand-in")


@pytest.fixture
def opened(monkeypatch):
    rec = Recorder()
    monkeypatch.setattr(embedding, "TunedLlama", rec)
    monkeypatch.setattr(embedding, "local_offload_targets", lambda: [])
    monkeypatch.setattr(embedding, "default_extra_buffers", lambda: True)

    def open_(purpose="embedding", **kwargs):
        with pytest.raises(EngineError, match="llama.cpp could not load the model"):
            Embedder.open(Path("/m.gguf"), purpose, **kwargs)
        return rec.kwargs
    return open_


def test_open_defaults_to_qwens_8192_tokens_in_batches_of_512(opened):
    assert DEFAULT_BATCH == 512
    k = opened(n_threads=3)
    assert (k["n_ctx"], k["n_batch"], k["n_ubatch"], k["n_threads"], k["n_threads_batch"]) == (8192, 512, 512, 3, 3)
    assert k["embedding"] is True and k["flash_attn"] is True and k["pooling_type"] == llama_cpp.LLAMA_POOLING_TYPE_LAST
    assert k["model_overrides"] == {"use_extra_bufts": True} and k["n_gpu_layers"] == 0


def test_open_follows_a_shorter_trained_context_and_the_callers_sizes(opened):
    k = opened("reranker", n_ctx_train=2048, n_batch=4096, extra_buffers=False, n_gpu_layers=5)
    assert (k["n_ctx"], k["n_batch"], k["pooling_type"]) == (2048, 2048, llama_cpp.LLAMA_POOLING_TYPE_RANK)
    assert k["model_overrides"] == {"use_extra_bufts": False} and k["n_gpu_layers"] == 5
    k = opened(n_ctx=8, n_batch=64)
    assert (k["n_ctx"], k["n_batch"]) == (8, 8)


def test_open_offloads_every_layer_where_a_gpu_is_there(opened, monkeypatch):
    monkeypatch.setattr(embedding, "local_offload_targets", lambda: ["gpu0"])
    assert opened()["n_gpu_layers"] == -1


def test_open_refuses_a_context_under_8_tokens(monkeypatch):
    monkeypatch.setattr(embedding, "TunedLlama", Recorder())
    with pytest.raises(EngineError, match="--ctx 7 is too short"):
        Embedder.open(Path("/m.gguf"), "embedding", n_ctx=7)


class FakeLlama:
    def tokenize(self, data: bytes, add_bos: bool = False, special: bool = False) -> list[int]:
        return list(data)


def stand_in(purpose: str, pooled_row, max_tokens: int = 64, n_embd: int = 64) -> Embedder:
    """An Embedder without llama.cpp: bytes as tokens, every pooled row `pooled_row`."""
    e = Embedder.__new__(Embedder)
    e.llama, e.path, e.purpose, e.max_tokens, e.n_embd = FakeLlama(), Path("/m.gguf"), purpose, max_tokens, n_embd
    e._eot, e._prefix, e._suffix = 0, [1, 2], [3]
    e.pooled_inputs = []

    def pooled(tokens):
        e.pooled_inputs.append(tokens)
        return np.array([pooled_row] * len(tokens), dtype=np.float32)
    e._pooled = pooled
    return e


def test_embed_counted_normalizes_unless_told_and_counts_every_token_read():
    e = stand_in("embedding", [3.0, 4.0] + [0.0] * 62)
    vectors, n = e.embed_counted(["ab", "c"])
    assert n == 3 + 2                                    # each text and its end-of-text token
    np.testing.assert_allclose(vectors[:, :2], [[0.6, 0.8], [0.6, 0.8]], rtol=1e-6)
    raw, _ = e.embed_counted("ab", normalize=False, dimensions=32)
    assert raw.shape == (1, 32) and raw[0, :2].tolist() == [3.0, 4.0]


@pytest.mark.parametrize("kwargs", [{"dimensions": 65}, {"dimensions": 16}, {"instruction": ""}])
def test_embed_refuses_bad_dimensions_and_an_empty_instruction_before_decoding(kwargs):
    e = stand_in("embedding", [1.0] * 64)
    with pytest.raises(EmbedError):
        e.embed_counted("a", **kwargs)
    assert e.pooled_inputs == []


@pytest.mark.parametrize("query, documents, kwargs, said", [
    ("", ["d"], {}, "query is an empty string"), ("q", [""], {}, r"documents\[0\] is an empty string"),
    ("q", [], {}, "documents is an empty list"), ("q", ["d"], {"instruction": ""}, "instruction is an empty string")])
def test_rerank_refuses_an_empty_query_document_list_or_instruction(query, documents, kwargs, said):
    """Each empty part is refused by its own check, before decoding (a limit that lets the pair
    through otherwise: with a short one every pair is refused for its length instead)."""
    e = stand_in("reranker", [0.25, 0.75], max_tokens=512)
    with pytest.raises(EmbedError, match=said):
        e.rerank_counted(query, documents, **kwargs)
    assert e.pooled_inputs == []


def test_rerank_scores_are_the_first_column_as_float64_with_whole_prompts_counted():
    e = stand_in("reranker", [0.25, 0.75], max_tokens=512)
    scores, n = e.rerank_counted("q", ["d1", "d2"])
    assert scores.dtype == np.float64 and scores.tolist() == [0.25, 0.25]
    assert n == sum(map(len, e.pooled_inputs[0])) and e.pooled_inputs[0][0][:2] == [1, 2]
    assert e.pooled_inputs[0][0][-1] == 3


def test_input_ids_and_pair_ids_refuse_long_input_unless_asked_to_truncate():
    e = stand_in("embedding", [1.0] * 64, max_tokens=10)
    with pytest.raises(InputError, match=r"input\[0\] is 21 tokens"):
        e.input_ids(["x" * 20])
    assert e.input_ids(["x" * 20], truncate=True) == [[ord("x")] * 9 + [0]]
    with pytest.raises(InputError, match=r"documents\[0\]"):
        e.pair_ids("q", ["x" * 20])
    assert len(e.pair_ids("q", ["x" * 20], truncate=True)[0]) == 10


def test_each_model_refuses_the_other_job_in_one_line():
    with pytest.raises(EmbedError, match="cannot embed: this is a reranker"):
        stand_in("reranker", [0.0, 1.0]).embed_counted("a")
    with pytest.raises(EmbedError, match="cannot rerank: this is an embedding model"):
        stand_in("embedding", [0.0] * 64).rerank_counted("q", ["d"])
    assert wrong_model("chat", "embed").startswith("cannot embed: this is a chat model: chat with it")
    assert [purpose_of({}), purpose_of({POOLING_KEY: 3}), purpose_of({POOLING_KEY: 4})] == ["chat", "embedding", "reranker"]
