"""The pure rules of search: Qwen's input formats, Matryoshka truncation, batching, refusals, and
which Hugging Face folders are embedding models or rerankers (as llama.cpp's converter decides)."""

from __future__ import annotations

import base64
import json

import numpy as np
import pytest

from edge.protocol.retrieval_format import (DEFAULT_INSTRUCTION, MAX_INPUTS, InputError, base64_floats, check_dimensions,
                                   check_texts, finish_vectors, pack_batches, query_text, rerank_body, truncated)
from quantize.errors import QuantizeError
from quantize.retrieval_head import (Pooling, detect_retrieval_head, is_qwen3_reranker, sentence_transformers_pooling,
                                     unprefixed_names, with_model_prefix)
from tests.retrieval_models import MODULES, QUERY_PROMPT, pooling_config


def test_query_format_is_qwens_get_detailed_instruct():
    # the model card: f'Instruct: {task_description}\nQuery:{query}' (no space after "Query:")
    assert query_text("how tall is Everest", "Find facts") == "Instruct: Find facts\nQuery:how tall is Everest"
    assert query_text("a document", None) == "a document"
    # sentence-transformers' query prompt is the same text with Qwen's default task
    assert query_text("q", DEFAULT_INSTRUCTION) == QUERY_PROMPT + "q"


def test_rerank_body_is_qwens_format_instruction():
    assert rerank_body("Q?", "Doc.", None) == f"<Instruct>: {DEFAULT_INSTRUCTION}\n<Query>: Q?\n<Document>: Doc."
    assert rerank_body("Q?", "Doc.", "Judge code") == "<Instruct>: Judge code\n<Query>: Q?\n<Document>: Doc."


def test_matryoshka_truncates_then_renormalises():
    rng = np.random.default_rng(0)
    pooled = rng.standard_normal((3, 64)).astype(np.float32)
    out = finish_vectors(pooled, 32, True)
    assert out.shape == (3, 32) and out.dtype == np.float32
    want = pooled[:, :32] / np.linalg.norm(pooled[:, :32], axis=1, keepdims=True)
    np.testing.assert_allclose(out, want, rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(np.linalg.norm(out, axis=1), 1.0, rtol=1e-6)
    np.testing.assert_array_equal(finish_vectors(pooled, None, False), pooled)   # raw pooled output


def test_pack_batches_keeps_order_and_limits():
    lengths = [5, 7, 3, 20, 2, 9, 1, 1, 1]
    batches = pack_batches(lengths, n_batch=10, n_seq_max=3)
    assert [i for b in batches for i in b] == list(range(len(lengths)))   # every text once, in order
    for b in batches:
        assert len(b) <= 3
        assert sum(lengths[i] for i in b) <= 10 or len(b) == 1            # only a long text exceeds, alone
    assert [3] in batches                                                  # 20 > n_batch: alone


@pytest.mark.parametrize("bad, words", [
    ("", "empty string"), ([], "empty list"), (["ok", ""], r"input\[1\] is an empty string"),
    ([1, 2], "string or a list of strings"), (["a\ud800"], "surrogate"), (["a\x00b"], "NUL"),
    (["x"] * (MAX_INPUTS + 1), f"at most {MAX_INPUTS}")])
def test_bad_texts_are_refused_in_one_line(bad, words):
    with pytest.raises(InputError, match=words):
        check_texts(bad)


def test_dimensions_range():
    assert check_dimensions(32, 1024) == 32 and check_dimensions(1024, 1024) == 1024
    for bad in (31, 1025, 0, -1, True, 32.0, "64", None):
        with pytest.raises(InputError, match="from 32 to 1024"):
            check_dimensions(bad, 1024)
    assert check_dimensions(16, 16) == 16       # a model smaller than Qwen's smallest MRL size


def test_long_input_refused_or_truncated_keeping_closing_tokens():
    body, eot = list(range(100)), [151643]
    with pytest.raises(InputError, match="101 tokens, over this model's limit of 50"):
        truncated(body, eot, 50, False, "input[0]")
    cut = truncated(body, eot, 50, True, "input[0]")
    assert cut == list(range(49)) + eot                        # the start kept, the end-of-text token appended
    head = [7, 7]
    assert truncated(body, eot, 50, True, "d", head=head) == head + list(range(47)) + eot
    assert truncated([1, 2], eot, 50, False, "x") == [1, 2, 151643]


def test_base64_is_little_endian_float32():
    v = np.array([1.0, -2.5, 0.125], dtype=np.float32)
    assert np.frombuffer(base64.b64decode(base64_floats(v)), dtype="<f4").tolist() == [1.0, -2.5, 0.125]


# ---- which folder is which (quantize/retrieval_head.py, after llama.cpp's converter) --------------------

def _st_folder(tmp_path, pooling: dict):
    (tmp_path / "modules.json").write_text(json.dumps(MODULES))
    (tmp_path / "1_Pooling").mkdir()
    (tmp_path / "1_Pooling" / "config.json").write_text(json.dumps(pooling))
    return tmp_path


def test_sentence_transformers_pooling(tmp_path):
    assert sentence_transformers_pooling(tmp_path) is None                         # no modules.json: chat
    folder = _st_folder(tmp_path, pooling_config(64))
    assert sentence_transformers_pooling(folder) == Pooling.LAST
    (folder / "1_Pooling" / "config.json").write_text(json.dumps({"pooling_mode_mean_tokens": True}))
    assert sentence_transformers_pooling(folder) == Pooling.MEAN
    (folder / "1_Pooling" / "config.json").write_text(json.dumps({"pooling_mode_max_tokens": True}))
    with pytest.raises(QuantizeError, match="mean, cls or lasttoken"):
        sentence_transformers_pooling(folder)


def test_reranker_detection_follows_llama_cpp(tmp_path):
    plain = tmp_path / "plain"
    plain.mkdir()
    assert not is_qwen3_reranker(plain, {"architectures": ["Qwen3ForCausalLM"]})
    assert is_qwen3_reranker(plain, {"_name_or_path": "Qwen/Qwen3-Reranker-0.6B"})
    assert is_qwen3_reranker(plain, {"architectures": ["Qwen3ForSequenceClassification"]})
    (plain / "README.md").write_text("---\nlicense: apache-2.0\n---\n# Qwen3-Reranker-4B\n")
    assert is_qwen3_reranker(plain, {})
    named = tmp_path / "my-qwen3-reranker-copy"
    named.mkdir()
    assert is_qwen3_reranker(named, {})


def test_reranker_wins_over_pooling_and_finds_yes_no(tmp_path):
    folder = _st_folder(tmp_path, pooling_config(64))
    tokens = ["a", "no", "yes", "b"]
    assert detect_retrieval_head(folder, {}, tokens).pooling == Pooling.LAST
    head = detect_retrieval_head(folder, {"_name_or_path": "qwen3-reranker"}, tokens)
    assert (head.pooling, head.yes_id, head.no_id) == (Pooling.RANK, 2, 1)
    with pytest.raises(QuantizeError, match="no token 'yes'"):
        detect_retrieval_head(folder, {"_name_or_path": "qwen3-reranker"}, ["no"])


def test_qwen3_model_names_get_the_model_prefix():
    names = ["embed_tokens.weight", "layers.0.mlp.up_proj.weight", "norm.weight"]
    assert unprefixed_names(names) and not unprefixed_names(["model." + n for n in names])
    assert [with_model_prefix(n) for n in names + ["lm_head.weight"]] == [
        "model.embed_tokens.weight", "model.layers.0.mlp.up_proj.weight", "model.norm.weight", "lm_head.weight"]
