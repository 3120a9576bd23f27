"""The Embedder: a Qwen3-Embedding or Qwen3-Reranker GGUF on llama.cpp, many texts per batch.

`Engine.load` opens a GGUF whose `qwen3.pooling_type` says LAST (an embedding model) or RANK (a
reranker, quantize/retrieval_head.py) as an Embedder rather than a chat Engine. What the models
read and how vectors are finished is in retrieval_format.py (with the model cards it follows);
this module tokenizes, packs texts into llama.cpp batches as separate sequences (one KV cache,
cleared between batches, so no text sees another), and reads llama.cpp's pooled outputs:
the last token's final hidden state for LAST, softmax over the ("yes", "no") head for RANK,
whose first value is Qwen's score, P(yes).
"""

from __future__ import annotations

import ctypes
import threading
from pathlib import Path

import llama_cpp
import numpy as np

from edge.runtime.context_plan import physical_cores
from edge.runtime.cpu_buffers import TunedLlama, default_extra_buffers
from edge.runtime.engine import POOLING_KEY, PURPOSES, EngineError, local_offload_targets
from edge.protocol.retrieval_format import (EOT, MAX_TOKENS, RERANK_PREFIX, RERANK_SUFFIX, InputError, check_dimensions,
                               check_texts, finish_vectors, pack_batches, query_text, rerank_body, truncated)

DEFAULT_BATCH = 512


class EmbedError(EngineError):
    """Refused input, or a model asked for what it does not do, in one line."""


def purpose_of(fields: dict) -> str:
    """"chat", "embedding" or "reranker", from the GGUF's pooling type (retrieval_head.py):
    llama.cpp's LLAMA_POOLING_TYPE_LAST (3) and _RANK (4)."""
    return PURPOSES.get(fields.get(POOLING_KEY), "chat")


def wrong_model(purpose: str, wanted: str) -> str:
    """The one line for a model asked to do what it is not for."""
    does = {"chat": "a chat model: chat with it (`qwen3-edge chat`), or embed with an embedding model "
                    "such as qwen3-embedding-0.6b",
            "embedding": "an embedding model: it makes vectors (`qwen3-edge embed`, Engine.embed, /v1/embeddings), "
                         "it does not chat or rerank",
            "reranker": "a reranker: it scores documents against a query (`qwen3-edge rerank`, Engine.rerank, "
                        "/v1/rerank), it does not chat or embed"}[purpose]
    return f"cannot {wanted}: this is {does}"


class Embedder:
    """One loaded embedding model or reranker. Thread-safe: calls take turns on the one context.

    `purpose` is "embedding" or "reranker"; `n_embd` the vector size; `max_tokens` the longest
    input (instruction, text and closing tokens together) it takes."""

    def __init__(self, llama: llama_cpp.Llama, path: Path, purpose: str, max_tokens: int, n_batch: int,
                 n_threads: int):
        self.llama, self.path, self.purpose = llama, path, purpose
        self.max_tokens, self.n_batch, self.n_threads = max_tokens, n_batch, n_threads
        self.kind = purpose                    # what `info`, the CLI and the server say
        self.n_embd = llama.n_embd()
        self.n_seq_max = llama.context_params.n_seq_max
        self._lock = threading.Lock()
        self._eot = self._token_id(EOT)
        self._batch = llama_cpp.llama_batch_init(n_batch, 0, 1)
        self._n_out = self.n_embd
        if purpose == "reranker":
            model = llama.model
            self._n_out = llama_cpp.llama_model_n_cls_out(model)
            labels = [llama_cpp.llama_model_cls_label(model, i) for i in range(self._n_out)]
            if self._n_out != 2 or labels[0] != b"yes":
                raise EmbedError(f"{path}: a reranker's head must score ['yes', 'no'], this one has {labels}")
            self._prefix = self._tokens(RERANK_PREFIX, special=True)
            self._suffix = self._tokens(RERANK_SUFFIX, special=True)

    @classmethod
    def open(cls, path: Path, purpose: str, *, n_ctx: int | None = None, n_batch: int | None = None,
             n_threads: int | None = None, n_gpu_layers: int | None = None, verbose: bool = False,
             extra_buffers: bool | None = None, n_ctx_train: int | None = None,
             flash_attn: bool = True) -> "Embedder":
        """Open `path` for embeddings or reranking. n_ctx is the longest input in tokens (default
        Qwen's max_length, 8192, or the model's trained context if shorter); n_batch the tokens
        decoded per llama.cpp batch (several texts, each its own sequence). Flash attention is on, as
        llama-server's default (auto) has it wherever the backend offers it: an embedding is one
        prompt batch, where it is faster (0.93x llama-server without it, benchmarks/RESULTS.md)."""
        max_tokens = n_ctx or min(MAX_TOKENS, n_ctx_train or MAX_TOKENS)
        if max_tokens < 8:
            raise EngineError(f"--ctx {max_tokens} is too short for an embedding model (at least 8 tokens)")
        batch = min(n_batch or DEFAULT_BATCH, max_tokens)
        threads = n_threads or physical_cores()
        gpu = (-1 if local_offload_targets() else 0) if n_gpu_layers is None else n_gpu_layers
        buffers = default_extra_buffers() if extra_buffers is None else extra_buffers
        pooling = llama_cpp.LLAMA_POOLING_TYPE_LAST if purpose == "embedding" else llama_cpp.LLAMA_POOLING_TYPE_RANK
        try:
            llama = TunedLlama(str(path), embedding=True, pooling_type=pooling, n_ctx=max(max_tokens, batch),
                               n_batch=batch, n_ubatch=batch, n_threads=threads, n_threads_batch=threads,
                               n_gpu_layers=gpu, flash_attn=flash_attn, verbose=verbose, model_overrides={"use_extra_bufts": buffers})
        except (ValueError, RuntimeError) as e:
            raise EngineError(f"{path}: llama.cpp could not load the model ({e})") from None
        try:
            return cls(llama, Path(path), purpose, max_tokens, batch, threads)
        except EmbedError:
            llama.close()
            raise

    # ---- the two jobs ---------------------------------------------------------------------------------

    def embed(self, texts: str | list[str], *, instruction: str | None = None, dimensions: int | None = None,
              normalize: bool = True, truncate: bool = False) -> np.ndarray:
        """Vectors of `texts` as a float32 array (n, dimensions or n_embd); one text gives one row.

        With `instruction` every text is a query in Qwen's format ("Instruct: {instruction}\\nQuery:{text}");
        without, texts are embedded as they are (documents). `<|endoftext|>` is appended, as
        Qwen's reference does. `dimensions` keeps the first dimensions (Matryoshka, 32 up to n_embd),
        then `normalize` scales each row to unit length. A text over `max_tokens` is refused
        (InputError naming it), unless `truncate`, which keeps its start (Qwen's rule)."""
        return self.embed_counted(texts, instruction=instruction, dimensions=dimensions, normalize=normalize,
                                  truncate=truncate)[0]

    def embed_counted(self, texts: str | list[str], *, instruction: str | None = None, dimensions: int | None = None,
                      normalize: bool = True, truncate: bool = False) -> tuple[np.ndarray, int]:
        """embed(), and the tokens read (instruction and end-of-text token included): the API's usage."""
        if self.purpose != "embedding":
            raise EmbedError(wrong_model(self.purpose, "embed"))
        try:
            return self._embed(texts, instruction, dimensions, normalize, truncate)
        except InputError as e:
            raise EmbedError(str(e)) from None

    def _embed(self, texts, instruction, dimensions, normalize, truncate) -> tuple[np.ndarray, int]:
        items = check_texts(texts)
        if dimensions is not None:
            check_dimensions(dimensions, self.n_embd)
        if instruction is not None:
            check_texts(instruction, "instruction")
        tokens = self.input_ids(items, instruction, truncate, single=isinstance(texts, str))
        return finish_vectors(self._pooled(tokens), dimensions, normalize), sum(map(len, tokens))

    def rerank(self, query: str, documents: list[str], *, instruction: str | None = None,
               truncate: bool = False) -> np.ndarray:
        """Qwen's relevance score of each document for `query`: P("yes"), in [0, 1], float64 (n,).

        Each pair is read in the reranker's prompt (retrieval_format.RERANK_PREFIX, the body with
        `instruction` or Qwen's default, RERANK_SUFFIX). A pair over `max_tokens` is refused,
        unless `truncate`, which cuts the end of the body (the document first)."""
        return self.rerank_counted(query, documents, instruction=instruction, truncate=truncate)[0]

    def rerank_counted(self, query: str, documents: list[str], *, instruction: str | None = None,
                       truncate: bool = False) -> tuple[np.ndarray, int]:
        """rerank(), and the tokens read (whole prompts): the API's usage."""
        if self.purpose != "reranker":
            raise EmbedError(wrong_model(self.purpose, "rerank"))
        try:
            return self._rerank(query, documents, instruction, truncate)
        except InputError as e:
            raise EmbedError(str(e)) from None

    def _rerank(self, query, documents, instruction, truncate) -> tuple[np.ndarray, int]:
        check_texts(query, "query")
        docs = check_texts(documents, "documents")
        if instruction is not None:
            check_texts(instruction, "instruction")
        tokens = self.pair_ids(query, docs, instruction, truncate)
        return self._pooled(tokens)[:, 0].astype(np.float64), sum(map(len, tokens))

    def input_ids(self, texts: list[str], instruction: str | None = None, truncate: bool = False,
                  single: bool = False) -> list[list[int]]:
        """The tokens the embedding model reads for each text: Qwen's format, then <|endoftext|>."""
        where = (lambda i: "input") if single else (lambda i: f"input[{i}]")
        return [truncated(self._tokens(query_text(t, instruction)), [self._eot], self.max_tokens, truncate, where(i))
                for i, t in enumerate(texts)]

    def pair_ids(self, query: str, documents: list[str], instruction: str | None = None,
                 truncate: bool = False) -> list[list[int]]:
        """The tokens the reranker reads for each (query, document): prefix, body, suffix."""
        return [truncated(self._tokens(rerank_body(query, d, instruction)), self._suffix, self.max_tokens,
                          truncate, f"documents[{i}]", head=self._prefix) for i, d in enumerate(documents)]

    # ---- llama.cpp ------------------------------------------------------------------------------------

    def _token_id(self, text: str) -> int:
        ids = self._tokens(text, special=True)
        if len(ids) != 1:
            raise EmbedError(f"{self.path}: the vocabulary has no single token {text!r}")
        return ids[0]

    def _tokens(self, text: str, special: bool = False) -> list[int]:
        """User text is tokenized with special tokens as plain text: a "<|endoftext|>" typed in a
        document cannot end it early."""
        try:
            data = text.encode("utf-8")
        except UnicodeEncodeError as e:
            raise InputError(f"text holds a lone UTF-16 surrogate at character {e.start}") from None
        return self.llama.tokenize(data, add_bos=False, special=special)

    def _pooled(self, tokens: list[list[int]]) -> np.ndarray:
        """llama.cpp's pooled output of each token list, (n, n_out) float32, in order."""
        out = np.empty((len(tokens), self._n_out), dtype=np.float32)
        with self._lock:
            for group in pack_batches([len(t) for t in tokens], self.n_batch, self.n_seq_max):
                self._clear()
                if len(tokens[group[0]]) > self.n_batch:          # a long text alone, in chunks
                    seq = tokens[group[0]]
                    for start in range(0, len(seq), self.n_batch):
                        self._decode([(0, seq[start:start + self.n_batch], start)])
                else:
                    self._decode([(s, tokens[i], 0) for s, i in enumerate(group)])
                for s, i in enumerate(group):
                    ptr = llama_cpp.llama_get_embeddings_seq(self.llama.ctx, s)
                    if not ptr:
                        raise EmbedError("llama.cpp returned no pooled output")
                    out[i] = np.ctypeslib.as_array(ptr, shape=(self._n_out,))
            self._clear()
        return out

    def _clear(self) -> None:
        mem = llama_cpp.llama_get_memory(self.llama.ctx)
        if mem:
            llama_cpp.llama_memory_clear(mem, True)

    def _decode(self, seqs: list[tuple[int, list[int], int]]) -> None:
        """One llama_decode of (sequence id, tokens, first position) parts, every token an output
        (llama.cpp's pooling needs them all)."""
        b = self._batch
        n = sum(len(t) for _, t, _ in seqs)
        token = np.ctypeslib.as_array(b.token, shape=(self.n_batch,))
        pos = np.ctypeslib.as_array(b.pos, shape=(self.n_batch,))
        n_seq = np.ctypeslib.as_array(b.n_seq_id, shape=(self.n_batch,))
        logits = np.ctypeslib.as_array(ctypes.cast(b.logits, ctypes.POINTER(ctypes.c_int8)), shape=(self.n_batch,))
        at = 0
        for seq_id, toks, first in seqs:
            k = len(toks)
            token[at:at + k] = toks
            pos[at:at + k] = np.arange(first, first + k, dtype=np.int32)
            for j in range(at, at + k):
                b.seq_id[j][0] = seq_id
            at += k
        n_seq[:n] = 1
        logits[:n] = 1
        b.n_tokens = n
        rc = llama_cpp.llama_decode(self.llama.ctx, b)
        if rc != 0:
            raise EmbedError(f"llama.cpp could not decode the batch (llama_decode returned {rc})")

    def close(self) -> None:
        if self._batch is not None:
            llama_cpp.llama_batch_free(self._batch)
            self._batch = None
        self.llama.close()

    def __enter__(self) -> "Embedder":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
