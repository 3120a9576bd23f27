"""Claims of quantize/retrieval_head.py that its mutants showed untested (docs/MUTATION.md, issue 21):
the pooling numbers llama.cpp reads, each way a sentence-transformers Pooling config names its mode,
a chat folder has no head, the keys written for each head, and names already prefixed. Pure and fast."""

from __future__ import annotations

import json

import gguf
import pytest

from quantize.retrieval_head import (RERANK_TEMPLATE, Pooling, RetrievalHead, add_head_metadata, detect_retrieval_head,
                                     sentence_transformers_pooling, with_model_prefix)
from tests.retrieval_models import MODULES


def _folder(tmp_path, pooling: dict):
    (tmp_path / "modules.json").write_text(json.dumps(MODULES))
    (tmp_path / "1_Pooling").mkdir(exist_ok=True)
    (tmp_path / "1_Pooling" / "config.json").write_text(json.dumps(pooling))
    return tmp_path


class _Writer:
    """The GGUFWriter calls add_head_metadata makes, recorded."""

    def __init__(self):
        self.keys: dict[str, object] = {}

    def add_uint32(self, key, value):
        self.keys[key] = value

    def add_array(self, key, value):
        self.keys[key] = list(value)

    def add_string(self, key, value):
        self.keys[key] = value


def test_pooling_numbers_are_llama_cpps():
    """`{arch}.pooling_type` holds llama.cpp's enum llama_pooling_type, as gguf-py spells it."""
    assert {p.name: int(p) for p in Pooling} == {p.name: int(p) for p in gguf.PoolingType}


@pytest.mark.parametrize("config, want", [
    ({"pooling_mode_cls_token": True}, Pooling.CLS),
    ({"pooling_mode_lasttoken": True}, Pooling.LAST),
    ({"pooling_mode": "cls"}, Pooling.CLS),
    ({"pooling_mode": "mean"}, Pooling.MEAN),
    ({"pooling_mode": "lasttoken"}, Pooling.LAST),
])
def test_each_way_of_naming_the_pooling_mode(tmp_path, config, want):
    """A Pooling config names its mode by a pooling_mode_* flag or by the `pooling_mode` string."""
    assert sentence_transformers_pooling(_folder(tmp_path, config)) == want


def test_a_folder_without_a_pooling_module_has_no_head(tmp_path):
    """A chat model's folder (no modules.json, not a reranker) has no retrieval head: None."""
    assert detect_retrieval_head(tmp_path, {"architectures": ["Qwen3ForCausalLM"]}, ["yes", "no"]) is None


def test_an_embedding_head_writes_only_its_pooling():
    """An embedding model gets `{arch}.pooling_type` and nothing of the reranker's."""
    w = _Writer()
    add_head_metadata(w, "qwen3", RetrievalHead(Pooling.LAST))
    assert w.keys == {"qwen3.pooling_type": 3}


def test_a_reranker_head_writes_labels_and_the_rerank_template():
    """A reranker gets RANK, the labels yes/no, and the named chat template `rerank` (llama.cpp's keys)."""
    w = _Writer()
    add_head_metadata(w, "qwen3", RetrievalHead(Pooling.RANK, 2, 1))
    assert w.keys == {"qwen3.pooling_type": 4, "qwen3.classifier.output_labels": ["yes", "no"],
                      "tokenizer.chat_template.rerank": RERANK_TEMPLATE, "tokenizer.chat_templates": ["rerank"]}


def test_names_already_prefixed_are_left_alone():
    """`model.` and `lm_head.` names are the usual ones already: unchanged."""
    assert with_model_prefix("model.norm.weight") == "model.norm.weight"
    assert with_model_prefix("lm_head.weight") == "lm_head.weight"
