"""What Qwen3-Embedding and Qwen3-Reranker are given, and what comes back: pure rules, no llama.cpp.

Sources (read for this module):
- Qwen3-Embedding-0.6B model card (huggingface.co/Qwen/Qwen3-Embedding-0.6B, "Transformers Usage"):
  a query is `get_detailed_instruct(task, query)` = f"Instruct: {task}\\nQuery:{query}" (no space
  after "Query:"), documents go in as they are; each input is tokenized, truncated to
  max_length - 2 (max_length 8192) and the end-of-text token `<|endoftext|>` is appended;
  `last_token_pool` takes the last token's final hidden state; `F.normalize(p=2)` makes the vectors
  unit length. The card's MRL note: output dimensions from 32 to 1024 ("user-defined output
  dimensions"). Its sentence-transformers configuration (config_sentence_transformers.json) has
  the prompt "Instruct: Given a web search query, retrieve relevant passages that answer the
  query\\nQuery:" for queries and "" for documents, modules Transformer -> Pooling
  (pooling_mode_lasttoken) -> Normalize, and `truncate_dim` cuts the vector to its first
  dimensions, which are then renormalised (Matryoshka: the leading dimensions carry the meaning).
- Qwen3-Reranker-0.6B model card: tokens = prefix + tokens of
  f"<Instruct>: {instruction}\\n<Query>: {query}\\n<Document>: {doc}" + suffix, with the prefix
  "<|im_start|>system\\nJudge whether the Document meets the requirements based on the Query and the
  Instruct provided. Note that the answer can only be \\"yes\\" or \\"no\\".<|im_end|>\\n<|im_start|>user\\n"
  and the suffix "<|im_end|>\\n<|im_start|>assistant\\n<think>\\n\\n</think>\\n\\n", each tokenized on
  its own; the default instruction "Given a web search query, retrieve relevant passages that
  answer the query"; the score is softmax(no, yes)[yes] of the last position's logits.
"""

from __future__ import annotations

import base64
from collections.abc import Sequence

import numpy as np

from edge.protocol.text_check import text_problem

DEFAULT_INSTRUCTION = "Given a web search query, retrieve relevant passages that answer the query"
EOT = "<|endoftext|>"
MAX_TOKENS = 8192          # Qwen's max_length for both models (model cards)
MIN_DIMENSIONS = 32        # the smallest Matryoshka size Qwen trained (model card)
MAX_INPUTS = 2048          # texts per call: OpenAI's limit per embeddings request, and bounded memory
RERANK_PREFIX = ("<|im_start|>system\nJudge whether the Document meets the requirements based on the Query and "
                 "the Instruct provided. Note that the answer can only be \"yes\" or \"no\".<|im_end|>\n"
                 "<|im_start|>user\n")
RERANK_SUFFIX = "<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\n"


class InputError(ValueError):
    """Input that is refused, in one line (the Engine turns it into EngineError, the server a 400)."""


def query_text(text: str, instruction: str | None) -> str:
    """What the embedding model reads for `text`: Qwen's instruction format when an instruction is
    given (queries), the text unchanged otherwise (documents)."""
    return text if instruction is None else f"Instruct: {instruction}\nQuery:{text}"


def rerank_body(query: str, document: str, instruction: str | None) -> str:
    """The middle of the reranker's prompt (between RERANK_PREFIX and RERANK_SUFFIX)."""
    return f"<Instruct>: {instruction or DEFAULT_INSTRUCTION}\n<Query>: {query}\n<Document>: {document}"


def check_texts(texts: object, what: str = "input") -> list[str]:
    """A str or a non-empty list of str, each non-empty and text (text_check), at most MAX_INPUTS."""
    items = [texts] if isinstance(texts, str) else texts
    if not isinstance(items, (list, tuple)) or not all(isinstance(t, str) for t in items):
        raise InputError(f"{what} must be a string or a list of strings")
    if not items:
        raise InputError(f"{what} is an empty list: give at least one text")
    if len(items) > MAX_INPUTS:
        raise InputError(f"{what} has {len(items)} texts; at most {MAX_INPUTS} per call")
    for i, t in enumerate(items):
        where = what if isinstance(texts, str) else f"{what}[{i}]"
        if not t:
            raise InputError(f"{where} is an empty string: there is nothing to embed")
        if (problem := text_problem(t)) is not None:
            raise InputError(f"{where} {problem}")
    return list(items)


def check_dimensions(dimensions: object, n_embd: int) -> int:
    """`dimensions` as an int in [min(MIN_DIMENSIONS, n_embd), n_embd], or InputError."""
    low = min(MIN_DIMENSIONS, n_embd)
    if not isinstance(dimensions, int) or isinstance(dimensions, bool) or not low <= dimensions <= n_embd:
        raise InputError(f"dimensions must be an integer from {low} to {n_embd} (this model's size), "
                         f"not {dimensions!r}")
    return dimensions


def truncated(body: list[int], tail: list[int], limit: int, truncate: bool, where: str,
              head: Sequence[int] = ()) -> list[int]:
    """head + body + tail within `limit` tokens: body is cut from its end when truncate (Qwen's
    rule: truncate the text, then append the closing tokens), else too long is refused."""
    total = len(head) + len(body) + len(tail)
    if total <= limit:
        return [*head, *body, *tail]
    room = limit - len(head) - len(tail)
    if not truncate or room < 1:
        raise InputError(f"{where} is {total} tokens, over this model's limit of {limit} "
                         f"(shorten it, or ask for truncation)")
    return [*head, *body[:room], *tail]


def finish_vectors(pooled: np.ndarray, dimensions: int | None, normalize: bool) -> np.ndarray:
    """Matryoshka truncation, then L2 normalisation (sentence-transformers' truncate_dim and Normalize):
    rows of `pooled` (n, n_embd) cut to their first `dimensions`, each scaled to unit length."""
    out = np.asarray(pooled, dtype=np.float32)
    if dimensions is not None:
        out = out[:, :dimensions]
    if normalize:
        norms = np.linalg.norm(out.astype(np.float64), axis=1, keepdims=True)
        out = (out / np.where(norms > 0, norms, 1.0)).astype(np.float32)
    return np.ascontiguousarray(out)


def pack_batches(lengths: Sequence[int], n_batch: int, n_seq_max: int) -> list[list[int]]:
    """Indices of texts grouped into llama.cpp batches, in input order: each batch holds at most
    n_batch tokens and n_seq_max sequences; a text longer than n_batch goes alone (it is decoded
    in n_batch-token chunks, its KV cache carried between them)."""
    batches: list[list[int]] = []
    current: list[int] = []
    used = 0
    for i, n in enumerate(lengths):
        if current and (used + n > n_batch or len(current) >= n_seq_max):
            batches.append(current)
            current, used = [], 0
        current.append(i)
        used += n
        if used >= n_batch:
            batches.append(current)
            current, used = [], 0
    if current:
        batches.append(current)
    return batches


def base64_floats(vector: np.ndarray) -> str:
    """OpenAI's encoding_format "base64": the little-endian float32 bytes, base64-encoded."""
    return base64.b64encode(np.asarray(vector, dtype="<f4").tobytes()).decode("ascii")

