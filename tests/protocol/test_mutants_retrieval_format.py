"""Claims of edge/protocol/retrieval_format.py that its mutants showed untested (docs/MUTATION.md,
issue 21): the constants Qwen's model cards fix, the exact limits of the refusals and of truncation,
zero vectors under normalisation, and the exact batches pack_batches makes. Pure and fast."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from tokenizers import Tokenizer

from edge.protocol.retrieval_format import (EOT, MAX_INPUTS, MAX_TOKENS, RERANK_PREFIX, RERANK_SUFFIX, InputError,
                                            check_texts, finish_vectors, pack_batches, rerank_body, truncated)
from quantize.retrieval_head import RERANK_TEMPLATE

TOKENIZER = Path(__file__).resolve().parent.parent / "fixtures" / "qwen3-tokenizer" / "tokenizer.json"


def test_end_of_text_is_qwens_single_special_token():
    """The token appended to every embedding input is `<|endoftext|>`, one token of Qwen3's vocabulary (151643)."""
    tok = Tokenizer.from_file(str(TOKENIZER))
    assert EOT == "<|endoftext|>"
    assert tok.token_to_id(EOT) == 151643


def test_the_input_limit_is_qwens_max_length():
    """Both model cards give max_length 8192: the limit an Embedder takes when the model says nothing smaller."""
    assert MAX_TOKENS == 8192


def test_reranker_prompt_is_the_template_llama_cpps_converter_stores():
    """prefix + body + suffix with the default instruction is exactly the `rerank` chat template the
    converter writes into the GGUF (quantize/retrieval_head.py): the runtime and the file agree."""
    for query, doc in (("Q?", "Doc."), ("what is a llama", "an animal\nof the Andes")):
        assert RERANK_PREFIX + rerank_body(query, doc, None) + RERANK_SUFFIX == RERANK_TEMPLATE.format(
            query=query, document=doc)


def test_at_most_2048_texts_per_call_and_2048_are_accepted():
    """OpenAI's limit per embeddings request: 2048 texts pass, 2049 are refused."""
    assert MAX_INPUTS == 2048
    assert len(check_texts(["x"] * 2048)) == 2048
    with pytest.raises(InputError, match="2049 texts; at most 2048"):
        check_texts(["x"] * 2049)


def test_check_texts_returns_a_list_of_the_texts():
    """A string becomes a one-text list, a tuple a list; the texts come back as given, in order."""
    assert check_texts("hello") == ["hello"]
    assert check_texts(("a", "b")) == ["a", "b"]
    assert type(check_texts(("a", "b"))) is list


def test_an_input_of_exactly_the_limit_is_kept_whole():
    """head + body + tail of exactly `limit` tokens is not too long: kept whole, even without truncation."""
    assert truncated([1, 2, 3], [9], 4, False, "x") == [1, 2, 3, 9]
    assert truncated([1, 2, 3], [9], 5, False, "x", head=[7]) == [7, 1, 2, 3, 9]


def test_truncation_keeps_one_body_token_when_only_one_fits():
    """Room for a single body token after head and tail is enough to truncate; room for none is refused."""
    assert truncated([1, 2, 3], [9], 3, True, "x", head=[7]) == [7, 1, 9]
    with pytest.raises(InputError, match="over this model's limit of 2"):
        truncated([1, 2, 3], [9], 2, True, "x", head=[7])


def test_normalising_leaves_a_zero_vector_zero_and_scales_short_ones_up():
    """A zero row stays zero (no NaN from 0/0); a row shorter than unit length is scaled to 1 too."""
    pooled = np.array([[0.0, 0.0, 0.0], [0.3, 0.0, 0.4]], dtype=np.float32)   # norms 0 and 0.5
    out = finish_vectors(pooled, None, True)
    assert np.all(np.isfinite(out))
    np.testing.assert_array_equal(out[0], [0.0, 0.0, 0.0])
    np.testing.assert_allclose(out[1], [0.6, 0.0, 0.8], rtol=1e-6)


def test_pack_batches_fills_a_batch_to_exactly_n_batch_tokens():
    """Texts that sum to exactly n_batch share one batch; one token more starts the next."""
    assert pack_batches([5, 5], n_batch=10, n_seq_max=4) == [[0, 1]]
    assert pack_batches([5, 6], n_batch=10, n_seq_max=4) == [[0], [1]]


def test_pack_batches_counts_from_zero_after_each_batch():
    """After a batch closes (full, or split by the next text) the new one starts empty."""
    assert pack_batches([10, 5, 5], n_batch=10, n_seq_max=4) == [[0], [1, 2]]      # closed full
    assert pack_batches([5, 6, 4], n_batch=10, n_seq_max=4) == [[0], [1, 2]]       # split by the next text


def test_pack_batches_holds_n_seq_max_sequences_at_most():
    """n_seq_max texts fill a batch's sequences: the next text goes into a new batch."""
    assert pack_batches([1, 1, 1, 1, 1], n_batch=100, n_seq_max=2) == [[0, 1], [2, 3], [4]]


def test_pack_batches_makes_no_empty_batch():
    """A text longer than n_batch first, or after a full batch, goes alone, with no empty batch before it."""
    assert pack_batches([20, 1], n_batch=10, n_seq_max=4) == [[0], [1]]
    assert pack_batches([10, 20], n_batch=10, n_seq_max=4) == [[0], [1]]
