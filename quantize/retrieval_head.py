"""Is a Qwen3 folder an embedding model or a reranker, and what llama.cpp's converter writes for it.

The rules are those of the converter in the llama.cpp that llama-cpp-python 0.3.36 vendors
(conversion/qwen.py `Qwen3Model`, conversion/base.py `_try_set_pooling_type`):

- **Embedding** (Qwen3-Embedding): a sentence-transformers folder. modules.json names a Pooling
  module; its config.json says the mode (`pooling_mode_lasttoken: true` for Qwen3-Embedding, or
  mean / cls), written as `qwen3.pooling_type` (LAST = 3). Its tensors are saved without the
  `model.` prefix (`embed_tokens.weight`, `layers.0...`, `norm.weight`), which gguf-py's
  TensorNameMap lists as "qwen3-embedding"; the runtime maps them back to the usual names.
- **Reranker** (Qwen3-Reranker): README.md has a `# Qwen3-Reranker` heading, or the folder name,
  `_name_or_path`, `model_type` or architecture holds "qwen3-reranker", or the architecture is a
  SequenceClassification one. It gets `qwen3.pooling_type` RANK (4),
  `qwen3.classifier.output_labels` ["yes", "no"], a named chat template `rerank`, and a
  classification head `cls.output.weight` made of the lm_head rows of the tokens "yes" and "no"
  (in that order), so llama.cpp's RANK pooling gives softmax(yes, no): P(yes) first, which is
  Qwen's score. A tied reranker keeps token_embd; an untied one's lm_head becomes only the head.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from enum import IntEnum
from pathlib import Path
from typing import Any

from .errors import QuantizeError


class Pooling(IntEnum):
    """llama.cpp's enum llama_pooling_type (gguf.PoolingType), as written in `{arch}.pooling_type`."""
    NONE = 0
    MEAN = 1
    CLS = 2
    LAST = 3
    RANK = 4


RERANK_LABELS = ("yes", "no")
# The template llama.cpp's converter stores as tokenizer.chat_template.rerank (conversion/qwen.py).
RERANK_TEMPLATE = (
    "<|im_start|>system\nJudge whether the Document meets the requirements based on the Query and the Instruct "
    "provided. Note that the answer can only be \"yes\" or \"no\".<|im_end|>\n"
    "<|im_start|>user\n<Instruct>: Given a web search query, retrieve relevant passages that answer the query\n"
    "<Query>: {query}\n<Document>: {document}<|im_end|>\n"
    "<|im_start|>assistant\n<think>\n\n</think>\n\n")
CLS_OUT = "cls.output.weight"

_MODES = {"mean": Pooling.MEAN, "cls": Pooling.CLS, "lasttoken": Pooling.LAST}


@dataclass(frozen=True)
class RetrievalHead:
    """What makes a folder an embedding model or a reranker: the pooling, and for a reranker the
    ids of "yes" and "no" (the rows of the classification head)."""
    pooling: Pooling
    yes_id: int | None = None
    no_id: int | None = None

    @property
    def is_reranker(self) -> bool:
        return self.pooling == Pooling.RANK


def _json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise QuantizeError(path, f"not valid JSON ({e})") from None


def sentence_transformers_pooling(folder: Path) -> Pooling | None:
    """The pooling a sentence-transformers folder declares (modules.json -> its Pooling module's
    config.json), or None when there is no modules.json or no Pooling module in it."""
    modules_path = folder / "modules.json"
    if not modules_path.is_file():
        return None
    modules = _json(modules_path)
    if not isinstance(modules, list):
        raise QuantizeError(modules_path, "not a JSON list of modules")
    pooling_dir = next((m.get("path") for m in modules
                        if isinstance(m, dict) and str(m.get("type", "")).endswith("Pooling")), None)
    if pooling_dir is None:
        return None
    config_path = folder / str(pooling_dir) / "config.json"
    if not config_path.is_file():
        raise QuantizeError(config_path, "not found: modules.json names a Pooling module without its config.json")
    cfg = _json(config_path)
    if not isinstance(cfg, dict):
        raise QuantizeError(config_path, "not a JSON object")
    if cfg.get("pooling_mode_mean_tokens"):
        return Pooling.MEAN
    if cfg.get("pooling_mode_cls_token"):
        return Pooling.CLS
    if cfg.get("pooling_mode_lasttoken"):
        return Pooling.LAST
    if cfg.get("pooling_mode") in _MODES:
        return _MODES[cfg["pooling_mode"]]
    raise QuantizeError(config_path, "pooling mode is not mean, cls or lasttoken (the ones llama.cpp runs)")


def is_qwen3_reranker(folder: Path, config: dict[str, Any]) -> bool:
    """llama.cpp's `_is_qwen3_reranker`: README heading, name hints, or a classification architecture."""
    readme = folder / "README.md"
    text = readme.read_text(encoding="utf-8", errors="replace").lower() if readme.is_file() else ""
    if "# qwen3-reranker" in text or "# qwen3-vl-reranker" in text:
        return True
    archs = config.get("architectures") or [None]
    arch = str(archs[0] or "") if isinstance(archs, list) else ""
    hints = [folder.resolve().name, str(config.get("_name_or_path", "")), str(config.get("model_type", "")), arch]
    if any("qwen3-reranker" in h.lower() or "qwen3-vl-reranker" in h.lower() for h in hints if h):
        return True
    return "sequenceclassification" in arch.lower()


def token_id(tokens: list[str], text: str, where: Path) -> int:
    """The id of the vocabulary token spelled exactly `text` (the tokenizer's convert_tokens_to_ids)."""
    try:
        return tokens.index(text)
    except ValueError:
        raise QuantizeError(where, f"the tokenizer has no token {text!r}, which a Qwen3 reranker scores") from None


def detect_retrieval_head(folder: Path, config: dict[str, Any], tokens: list[str]) -> RetrievalHead | None:
    """The folder's retrieval head, or None for a chat model. A reranker wins over a Pooling
    module, as in llama.cpp's converter (RANK is written after the sentence-transformers pooling)."""
    if is_qwen3_reranker(folder, config):
        return RetrievalHead(Pooling.RANK, token_id(tokens, "yes", folder), token_id(tokens, "no", folder))
    pooling = sentence_transformers_pooling(folder)
    return RetrievalHead(pooling) if pooling is not None and pooling != Pooling.NONE else None


def add_head_metadata(writer: Any, arch: str, head: RetrievalHead) -> None:
    """The keys llama.cpp's converter writes for the head (GGUFWriter `writer`)."""
    writer.add_uint32(f"{arch}.pooling_type", int(head.pooling))
    if head.is_reranker:
        writer.add_array(f"{arch}.classifier.output_labels", list(RERANK_LABELS))
        writer.add_string("tokenizer.chat_template.rerank", RERANK_TEMPLATE)
        writer.add_array("tokenizer.chat_templates", ["rerank"])


def unprefixed_names(names: list[str]) -> bool:
    """Whether a checkpoint's tensors are saved as Qwen3Model's (Qwen3-Embedding: no `model.`)."""
    return "embed_tokens.weight" in names and "model.embed_tokens.weight" not in names


def with_model_prefix(name: str) -> str:
    """`layers.0.mlp.up_proj.weight` -> `model.layers.0.mlp.up_proj.weight` (lm_head stays)."""
    return name if name.startswith(("model.", "lm_head.")) else "model." + name
