"""`qwen3-edge embed` and `qwen3-edge rerank`: vectors and relevance scores from the shell."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Optional

import typer

from edge.runtime.engine import EngineError

from .console import err, friendly_errors, out
from .session import CTX, GPU_LAYERS, SOURCE, THREADS, load_engine

MODEL_ARG = typer.Argument(..., help="An embedding model (embed) or reranker (rerank): a GGUF, a Hugging Face "
                                     "folder, or a store name (qwen3-embedding-0.6b, qwen3-reranker-0.6b).")
INSTRUCTION = typer.Option(None, "--instruction", help="The task, in Qwen's query format (\"Instruct: ...\\nQuery:...\").")
TRUNCATE = typer.Option(False, "--truncate", help="Cut texts over --ctx tokens to fit (the start is kept) "
                                                  "instead of refusing them.")


def read_lines(data: bytes, where: str) -> list[str]:
    """The non-empty lines of UTF-8 `data` (a file or stdin): one text each. Bytes that are not
    UTF-8 are refused with the offset, never replaced."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise EngineError(f"{where}: not UTF-8 text (byte 0x{data[e.start]:02x} at offset {e.start})") from None
    return [line for line in text.removeprefix("\ufeff").splitlines() if line.strip()]


def gather_texts(texts: list[str], file: Optional[Path]) -> list[str]:
    """TEXT arguments, `-` (stdin, one text per line) and --file F (one text per line), in that order."""
    items: list[str] = []
    for t in texts:
        items.extend(read_lines(sys.stdin.buffer.read(), "stdin") if t == "-" else [t])
    if file is not None:
        try:
            data = file.read_bytes()
        except OSError as e:
            raise EngineError(f"{file}: {e.strerror or e}") from None
        items.extend(read_lines(data, str(file)))
    if not items:
        raise EngineError("no text to embed: give TEXT, - (stdin) or --file F")
    return items


def load_search_models(embedding_model: Optional[str], rerank_model: Optional[str], threads: Optional[int],
                       source: Optional[str]) -> list:
    """The Embedders `serve --embedding-model M --rerank-model R` holds beside its chat model; each
    must be the kind its option names."""
    loaded = []
    for spec, purpose, option in ((embedding_model, "embedding", "--embedding-model"),
                                  (rerank_model, "reranker", "--rerank-model")):
        if spec is None:
            continue
        model = load_engine(spec, None, threads, None, None, source=source)
        if model.purpose != purpose:
            model.close()
            names = {"chat": "a chat model", "embedding": "an embedding model", "reranker": "a reranker"}
            raise EngineError(f"{option} {spec}: this is {names[model.purpose]}, not {names[purpose]}")
        err.print(f"search: {spec} ({purpose}, {model.n_embd} dimensions, up to {model.max_tokens} tokens a text)")
        loaded.append(model)
    return loaded


def embed(model: str = MODEL_ARG,
          texts: list[str] = typer.Argument(None, help="Texts to embed; - reads stdin, one text per line."),
          file: Optional[Path] = typer.Option(None, "--file", "-f", help="A UTF-8 file, one text per line."),
          instruction: Optional[str] = INSTRUCTION,
          dimensions: Optional[int] = typer.Option(None, "--dimensions", help="Keep the first N dimensions "
                                                   "(Matryoshka, 32 up to the model's size), then normalise."),
          normalize: bool = typer.Option(True, "--normalize/--no-normalize", help="Unit-length vectors."),
          output: Optional[Path] = typer.Option(None, "--output", "-o", help="Write a .npy array (n, dims) "
                                                "instead of JSON lines on stdout."),
          truncate: bool = TRUNCATE, ctx: Optional[int] = CTX, threads: Optional[int] = THREADS,
          gpu_layers: Optional[int] = GPU_LAYERS, source: Optional[str] = SOURCE) -> None:
    """Embed texts with a Qwen3-Embedding model: one JSON line per text ({"index", "embedding"}), or a .npy."""
    import numpy as np
    with friendly_errors():
        items = gather_texts(texts or [], file)
        if output is not None and output.suffix != ".npy":
            raise EngineError(f"{output}: --output writes NumPy's .npy format; name it *.npy")
        with load_engine(model, ctx, threads, gpu_layers, None, source=source) as engine:
            vectors = engine.embed(items, instruction=instruction, dimensions=dimensions, normalize=normalize,
                                   truncate=truncate)
        if output is not None:
            try:
                np.save(output, vectors)
            except OSError as e:
                raise EngineError(f"{output}: {e.strerror or e}") from None
            err.print(f"wrote {output} ({vectors.shape[0]} x {vectors.shape[1]} float32)")
            return
    for i, v in enumerate(vectors):
        sys.stdout.write(json.dumps({"index": i, "embedding": v.tolist()}) + "\n")


def rerank(model: str = MODEL_ARG,
           query: str = typer.Argument(..., help="The query."),
           documents: list[str] = typer.Argument(..., help="Documents to score; - reads stdin, one per line."),
           instruction: Optional[str] = INSTRUCTION,
           as_json: bool = typer.Option(False, "--json", help="Print one JSON array, best first."),
           truncate: bool = TRUNCATE, ctx: Optional[int] = CTX, threads: Optional[int] = THREADS,
           gpu_layers: Optional[int] = GPU_LAYERS, source: Optional[str] = SOURCE) -> None:
    """Score documents against a query with a Qwen3-Reranker model (P("yes"), 0 to 1), best first."""
    with friendly_errors():
        docs = gather_texts(documents, None)
        with load_engine(model, ctx, threads, gpu_layers, None, source=source) as engine:
            scores = engine.rerank(query, docs, instruction=instruction, truncate=truncate)
    ranked = sorted(range(len(docs)), key=lambda i: -scores[i])
    if as_json:
        out.print_json(json.dumps([{"index": i, "relevance_score": float(scores[i]), "document": docs[i]}
                                   for i in ranked]))
        return
    for i in ranked:
        sys.stdout.write(f"{scores[i]:.4f}\t{i}\t{docs[i]}\n")
