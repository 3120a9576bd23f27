"""Random-weight Qwen3-Embedding and Qwen3-Reranker folders, laid out as Qwen publishes them.

Qwen3-Embedding-0.6B is a sentence-transformers folder: Qwen3Model tensor names (no `model.`
prefix), modules.json (Transformer -> Pooling -> Normalize), 1_Pooling/config.json with
pooling_mode_lasttoken, and config_sentence_transformers.json with the query prompt.
Qwen3-Reranker-0.6B is a plain Qwen3ForCausalLM folder whose README starts "# Qwen3-Reranker".
"""

from __future__ import annotations

import json
from pathlib import Path

from .model_factory import Shape, build_model

MODULES = [{"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
           {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
           {"idx": 2, "name": "2", "path": "2_Normalize", "type": "sentence_transformers.models.Normalize"}]
QUERY_PROMPT = "Instruct: Given a web search query, retrieve relevant passages that answer the query\nQuery:"


def pooling_config(hidden: int) -> dict:
    return {"word_embedding_dimension": hidden, "pooling_mode_cls_token": False, "pooling_mode_mean_tokens": False,
            "pooling_mode_max_tokens": False, "pooling_mode_mean_sqrt_len_tokens": False,
            "pooling_mode_weightedmean_tokens": False, "pooling_mode_lasttoken": True, "include_prompt": True}


def build_embedding_model(folder: Path, shape: Shape, seed: int = 0) -> Path:
    build_model(folder, shape.with_(tensor_prefix=""), seed=seed)
    (folder / "modules.json").write_text(json.dumps(MODULES, indent=2))
    (folder / "1_Pooling").mkdir(exist_ok=True)
    (folder / "1_Pooling" / "config.json").write_text(json.dumps(pooling_config(shape.hidden), indent=2))
    (folder / "2_Normalize").mkdir(exist_ok=True)
    (folder / "config_sentence_transformers.json").write_text(json.dumps(
        {"prompts": {"query": QUERY_PROMPT, "document": ""}, "default_prompt_name": None,
         "similarity_fn_name": "cosine"}, indent=2))
    (folder / "README.md").write_text("# Qwen3-Embedding-0.6B\n\nRandom weights for tests.\n")
    return folder


def build_reranker_model(folder: Path, shape: Shape, seed: int = 0) -> Path:
    build_model(folder, shape, seed=seed)
    (folder / "README.md").write_text("---\nlicense: apache-2.0\n---\n# Qwen3-Reranker-0.6B\n\nRandom weights for tests.\n")
    return folder
