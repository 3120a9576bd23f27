"""Qwen3-Embedding and Qwen3-Reranker end to end through llama.cpp, against the float64 reference.

Random-weight models in Qwen's published layouts (tests/retrieval_models.py) are converted by
quantize_model; token ids for the reference come from Hugging Face's tokenizer (the `tokenizers`
package), not from llama.cpp, so the instruction format, the appended <|endoftext|> and the
reranker's prompt are checked independently of the runtime's own tokenization.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from tokenizers import Tokenizer

from edge.chat import Chat, ChatError
from edge.runtime.embedding import Embedder
from edge.runtime.engine import Engine, EngineError
from edge.protocol.retrieval_format import DEFAULT_INSTRUCTION, RERANK_PREFIX, RERANK_SUFFIX
from quantize import quantize_model
from quantize.gguf_header import read_header
from quantize.retrieval_head import RERANK_TEMPLATE
from tests.model_factory import FIXTURES, TINY_TIED, TINY_UNTIED_SHARDED
from tests.reference_qwen3 import ReferenceQwen3
from tests.retrieval_models import build_embedding_model, build_reranker_model

EOT_ID = 151643
# tied as Qwen3-Embedding-0.6B is, saved in two shards with an index (Qwen3Model's unprefixed names)
EMBED_SHAPE = TINY_TIED.with_(shards=2)
TEXTS = ["Hello world", "The quick brown fox jumps over the lazy dog. " * 6, "x",
         "Qwen3 is a family of language models; 它支持多种语言。", "def f(x):\n    return x * 2\n"]
HF = Tokenizer.from_file(str(FIXTURES / "tokenizer.json"))


def hf_ids(text: str) -> list[int]:
    return HF.encode(text, add_special_tokens=False).ids


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    return float(a @ b / np.linalg.norm(a) / np.linalg.norm(b))


@pytest.fixture(scope="module")
def folders(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("search")
    return {"embedding": build_embedding_model(root / "Qwen3-Embedding-tiny", EMBED_SHAPE, seed=11),
            "reranker": build_reranker_model(root / "rr-tied", TINY_TIED, seed=12),
            "reranker-untied": build_reranker_model(root / "rr-untied", TINY_UNTIED_SHARDED, seed=13)}


@pytest.fixture(scope="module")
def gguf(folders, tmp_path_factory):
    out, cache = tmp_path_factory.mktemp("search-gguf"), {}

    def get(name: str, qtype: str) -> Path:
        if (name, qtype) not in cache:
            cache[name, qtype] = Path(quantize_model(folders[name], qtype, out / f"{name}-{qtype}.gguf").output)
        return cache[name, qtype]
    return get


class _References(dict):
    """The float64 reference of each model, loaded when first asked for."""

    def __init__(self, folders: dict[str, Path]):
        super().__init__()
        self.folders = folders

    def __missing__(self, name: str) -> ReferenceQwen3:
        self[name] = ReferenceQwen3(self.folders[name])
        return self[name]


@pytest.fixture(scope="module")
def reference(folders):
    return _References(folders)


# ---- conversion, as llama.cpp's converter writes it -------------------------------------------------

def test_embedding_gguf_has_last_pooling_and_no_head(gguf):
    h = read_header(gguf("embedding", "f16"))
    assert h.get("qwen3.pooling_type") == 3                 # LLAMA_POOLING_TYPE_LAST, from 1_Pooling/config.json
    names = {t.name for t in h.tensors}
    assert "cls.output.weight" not in names and "output.weight" not in names and "token_embd.weight" in names


@pytest.mark.parametrize("name", ["reranker", "reranker-untied"])
def test_reranker_gguf_has_rank_pooling_and_a_two_row_head(name, gguf):
    path = gguf(name, "f16")
    h = read_header(path)
    assert h.get("qwen3.pooling_type") == 4                 # RANK
    assert list(h.get("qwen3.classifier.output_labels")) == ["yes", "no"]
    assert h.get("tokenizer.chat_template.rerank") == RERANK_TEMPLATE
    assert list(h.get("tokenizer.chat_templates")) == ["rerank"]
    shapes = {t.name: t.shape for t in h.tensors}
    assert "output.weight" not in shapes                     # untied: lm_head became only the head
    assert shapes["cls.output.weight"] == (2, shapes["token_embd.weight"][1])
    # its rows are "yes" then "no": the scores below equal the reference's P(yes) only then


# ---- embeddings against the reference ---------------------------------------------------------------

@pytest.fixture(scope="module")
def embedders(gguf):
    opened = {q: Engine.load(gguf("embedding", q), n_threads=2) for q in ("f16", "q8_0")}
    yield opened
    for e in opened.values():
        e.close()


@pytest.mark.parametrize("qtype, floor", [("f16", 0.9999), ("q8_0", 0.999)])
def test_embeddings_match_reference_singly_and_batched(qtype, floor, embedders, reference):
    e = embedders[qtype]
    assert isinstance(e, Embedder) and e.purpose == "embedding" and e.n_embd == EMBED_SHAPE.hidden
    batch = e.embed(TEXTS, normalize=False)
    assert batch.shape == (len(TEXTS), EMBED_SHAPE.hidden) and batch.dtype == np.float32
    for i, text in enumerate(TEXTS):
        ref = reference["embedding"].embedding(hf_ids(text) + [EOT_ID])
        single = e.embed(text, normalize=False)[0]
        assert cosine(single, ref) >= floor, (i, cosine(single, ref))
        assert cosine(batch[i], ref) >= floor, (i, cosine(batch[i], ref))
        # a batch changes no row beyond llama.cpp's own noise: with flash attention (on, as in
        # llama-server) its CPU kernel rounds to F16, about 1.5e-3 of the largest value here;
        # a row mixed with another text's sequence moves by tens of percent
        assert np.abs(batch[i] - single).max() <= 5e-3 * np.abs(single).max()
        assert cosine(batch[i], single) >= 0.99999


def test_instruction_format_and_end_of_text(embedders, reference):
    e = embedders["f16"]
    task = "Given a question, retrieve passages that answer it"
    got = e.embed(["what is rope scaling?"], instruction=task)[0]
    ids = hf_ids(f"Instruct: {task}\nQuery:what is rope scaling?") + [EOT_ID]
    ref = reference["embedding"].embedding(ids)
    assert cosine(got, ref) >= 0.9999
    assert abs(np.linalg.norm(got) - 1) < 1e-5
    # the negative control: without the end-of-text token it is another vector
    assert cosine(got, reference["embedding"].embedding(ids[:-1])) < 0.99
    # token for token what Hugging Face's tokenizer makes of Qwen's format (no space after "Query:")
    texts = ["what is rope scaling?", "  spaces  ", "多语言"]
    for text, got_ids in zip(texts, e.input_ids(texts, task)):
        assert got_ids == hf_ids(f"Instruct: {task}\nQuery:{text}") + [EOT_ID]
    assert e.input_ids(texts) == [hf_ids(t) + [EOT_ID] for t in texts]      # documents: as they are
    # a "<|endoftext|>" typed in a document is text: it cannot end the document early
    typed = e.input_ids(["a <|endoftext|> b"])[0]
    assert typed.count(EOT_ID) == 1 and typed[-1] == EOT_ID


def test_dimensions_truncate_then_renormalise(embedders):
    e = embedders["f16"]
    raw = e.embed(TEXTS[:2], normalize=False)
    cut = e.embed(TEXTS[:2], dimensions=32)
    assert cut.shape == (2, 32)
    want = raw[:, :32] / np.linalg.norm(raw[:, :32], axis=1, keepdims=True)
    np.testing.assert_allclose(cut, want, atol=1e-5)


def test_long_input_refused_or_truncated(gguf, reference):
    with Engine.load(gguf("embedding", "f16"), n_ctx=32, n_threads=2) as e:
        long_text = "word " * 100
        with pytest.raises(EngineError, match=r"input\[1\] is \d+ tokens, over this model's limit of 32"):
            e.embed(["short", long_text])
        got = e.embed(long_text, truncate=True, normalize=False)[0]
        ref = reference["embedding"].embedding(hf_ids(long_text)[:31] + [EOT_ID])   # Qwen's rule: cut, then EOT
        assert cosine(got, ref) >= 0.9999


def test_long_text_over_a_batch_is_decoded_in_chunks(gguf, reference):
    """A text longer than one llama.cpp batch goes alone, its KV cache carried across chunks."""
    with Engine.load(gguf("embedding", "f16"), n_threads=2) as e:
        e_small = Embedder.open(e.path, "embedding", n_ctx=256, n_batch=16, n_threads=2)
        try:
            text = "The quick brown fox jumps over the lazy dog. " * 5
            got = e_small.embed([text, "x"], normalize=False)
        finally:
            e_small.close()
    ref = reference["embedding"].embedding(hf_ids(text) + [EOT_ID])
    assert cosine(got[0], ref) >= 0.9999


# ---- reranker -----------------------------------------------------------------------------------------

@pytest.mark.parametrize("name, qtype, tol", [("reranker", "f16", 2e-3), ("reranker-untied", "f16", 2e-3),
                                              ("reranker", "q8_0", 1e-2)])
def test_rerank_scores_are_reference_yes_probability(name, qtype, tol, gguf, reference):
    query = "What is the capital of France?"
    docs = ["Paris is the capital of France.", "Bananas are yellow.", "La capitale de la France est Paris. " * 3]
    with Engine.load(gguf(name, qtype), n_threads=2) as r:
        scores = r.rerank(query, docs)
        task_scores = r.rerank(query, docs[:1], instruction="Judge relevance to geography")
        pair_ids = r.pair_ids(query, docs[:1], "Judge relevance to geography")[0]
    yes, no = hf_ids("yes")[0], hf_ids("no")[0]
    for i, d in enumerate(docs):
        ids = hf_ids(RERANK_PREFIX) + hf_ids(f"<Instruct>: {DEFAULT_INSTRUCTION}\n<Query>: {query}\n<Document>: {d}") \
            + hf_ids(RERANK_SUFFIX)
        want = reference[name].yes_probability(ids, yes, no)
        assert abs(scores[i] - want) <= tol, (i, scores[i], want)
    ids = hf_ids(RERANK_PREFIX) + hf_ids(f"<Instruct>: Judge relevance to geography\n<Query>: {query}\n"
                                         f"<Document>: {docs[0]}") + hf_ids(RERANK_SUFFIX)
    assert abs(task_scores[0] - reference[name].yes_probability(ids, yes, no)) <= tol
    assert pair_ids == ids                                   # token for token the model card's prompt


# ---- each model does its own job, and says so -----------------------------------------------------------

def test_models_refuse_the_other_jobs(gguf, scripted_gguf, embedders):
    e = embedders["f16"]
    with pytest.raises(ChatError, match="cannot chat: this is an embedding model"):
        Chat(e)
    with pytest.raises(EngineError, match="cannot rerank: this is an embedding model"):
        e.rerank("q", ["d"])
    with Engine.load(gguf("reranker", "f16"), n_threads=2) as r:
        with pytest.raises(EngineError, match="cannot embed: this is a reranker"):
            r.embed("x")
        with pytest.raises(ChatError, match="cannot chat: this is a reranker"):
            Chat(r)
    with Engine.load(scripted_gguf, n_ctx=512) as chat_engine:
        with pytest.raises(EngineError, match="cannot embed: this is a chat model"):
            chat_engine.embed(["x"])


def test_bad_input_is_one_line_and_the_model_goes_on(embedders):
    e = embedders["f16"]
    for bad, words in (([""], "empty string"), (["a", "b\ud800"], "surrogate"), (["x"] * 100_000, "at most 2048"),
                       ("x", None)):
        if words is None:
            with pytest.raises(EngineError, match="dimensions must be an integer from 32 to 64"):
                e.embed(bad, dimensions=65)
            continue
        with pytest.raises(EngineError, match=words):
            e.embed(bad)
    assert e.embed("still works").shape == (1, EMBED_SHAPE.hidden)
