"""Embedding throughput: texts per second over 1,000 texts of 20-200 tokens on the Qwen3-0.6B shape,
Engine.embed against llama-server `--embedding --pooling last` on the same GGUF, same threads,
same batch size, same longest input, in the same run; and each one's peak RSS.

    python benchmarks/bench_embed.py [--gguf PATH] [--type q8_0] [--texts 1000] [--threads 2]
                                     [--batch 512] [--ctx 8192] [--rounds 2] [--llama-server PATH]

Without --gguf, a random-weight Qwen3-Embedding-0.6B-shaped folder (tests/retrieval_models.py) is
built and converted once into benchmarks/.cache. Ours runs in a child process (its own peak RSS,
ru_maxrss); llama-server's peak is its VmHWM. llama-server gets every text in one /v1/embeddings
request with "<|endoftext|>" appended (Qwen's GGUF README does the same; llama-server parses
special tokens in inputs), so both read the same tokens: the usage counts are compared. Rounds
alternate ours and the reference; the best of each is kept (a shared machine is noisy).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CACHE = ROOT / "benchmarks" / ".cache"
DEFAULT_SERVER = Path("/work/wt/_llama/bin/llama-server")
WORDS = ("search notes files mail local model vector query document answer question engine small fast "
         "memory token batch index score rank meaning river mountain city music paper science history "
         "garden winter summer coffee train window light code function value table report market").split()


def make_texts(n: int, seed: int = 0) -> list[str]:
    """n texts of roughly 20 to 200 tokens (random words; about one token per word)."""
    import random
    rng = random.Random(seed)
    return [" ".join(rng.choice(WORDS) for _ in range(rng.randint(19, 199))) + "." for _ in range(n)]


def default_gguf(qtype: str) -> Path:
    from quantize import quantize_model
    from tests.model_factory import QWEN3_0_6B
    from tests.retrieval_models import build_embedding_model
    out = CACHE / f"Qwen3-Embedding-0.6B-random-{qtype}.gguf"
    if not out.is_file():
        folder = CACHE / "Qwen3-Embedding-0.6B-random"
        if not (folder / "model.safetensors").is_file():
            build_embedding_model(folder, QWEN3_0_6B, seed=0)
        quantize_model(folder, qtype, out)
    return out


def ours_worker(args) -> None:
    """Child process: load, embed every text once, print figures as JSON."""
    import resource
    from edge.runtime.embedding import Embedder
    texts = make_texts(args.texts)
    e = Embedder.open(args.gguf, "embedding", n_ctx=args.ctx, n_batch=args.batch, n_threads=args.threads)
    e.embed(texts[:8])                                     # warm-up, as the server's first request is
    started = time.perf_counter()
    _, tokens = e.embed_counted(texts)
    seconds = time.perf_counter() - started
    print(json.dumps({"seconds": seconds, "tokens": tokens,
                      "peak_rss": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024}))


def run_ours(args) -> dict:
    cmd = [sys.executable, __file__, "--worker", "--gguf", str(args.gguf), "--texts", str(args.texts),
           "--threads", str(args.threads), "--batch", str(args.batch), "--ctx", str(args.ctx)]
    out = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(ROOT)}, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def _post(port: int, body: dict) -> dict:
    req = urllib.request.Request(f"http://127.0.0.1:{port}/v1/embeddings", json.dumps(body).encode(),
                                 {"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=3600) as r:
        return json.loads(r.read())


def run_server(args) -> dict:
    from benchmarks.bench_parallel import free_port, wait_up
    port = free_port()
    cmd = [str(args.llama_server), "-m", str(args.gguf), "--embedding", "--pooling", "last", "--port", str(port),
           "-c", str(args.ctx), "-b", str(args.batch), "-ub", str(args.batch), "-t", str(args.threads),
           "-tb", str(args.threads), "-np", str(args.parallel), "--no-webui"]
    from edge.runtime.cpu_buffers import default_extra_buffers
    if not default_extra_buffers():      # as the Embedder opens models: no AMX repacking (it crashes)
        cmd.append("--no-repack")
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_up(port, proc)
        texts = [t + "<|endoftext|>" for t in make_texts(args.texts)]
        _post(port, {"input": texts[:8]})
        started = time.perf_counter()
        body = _post(port, {"input": texts})
        seconds = time.perf_counter() - started
        status = Path(f"/proc/{proc.pid}/status").read_text()
        hwm = next(int(line.split()[1]) * 1024 for line in status.splitlines() if line.startswith("VmHWM"))
        return {"seconds": seconds, "tokens": body["usage"]["prompt_tokens"], "peak_rss": hwm}
    finally:
        proc.terminate()
        proc.wait(30)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--gguf", type=Path)
    ap.add_argument("--type", default="q8_0")
    ap.add_argument("--texts", type=int, default=1000)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--batch", type=int, default=512)
    ap.add_argument("--ctx", type=int, default=8192)
    ap.add_argument("--parallel", type=int, default=8, help="llama-server -np (sequences per batch)")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--llama-server", type=Path, default=DEFAULT_SERVER)
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        return ours_worker(args)
    args.gguf = args.gguf or default_gguf(args.type)
    print(f"{args.gguf.name}: {args.texts} texts, threads {args.threads}, batch {args.batch}, ctx {args.ctx}, "
          f"llama-server -np {args.parallel}")
    ours, ref = [], []
    for _ in range(args.rounds):
        ours.append(run_ours(args))
        ref.append(run_server(args))
    o, r = min(ours, key=lambda x: x["seconds"]), min(ref, key=lambda x: x["seconds"])
    if o["tokens"] != r["tokens"]:
        print(f"warning: tokens differ: ours {o['tokens']}, llama-server {r['tokens']}")
    for name, x, runs in (("qwen3-edge", o, ours), ("llama-server", r, ref)):
        times = ", ".join(f"{y['seconds']:.1f}s" for y in runs)
        print(f"{name:13s} {args.texts / x['seconds']:8.2f} texts/s  {x['tokens'] / x['seconds']:8.1f} tokens/s  "
              f"peak RSS {x['peak_rss'] / 1e9:.2f} GB  (best of {args.rounds}: {times})")
    print(f"ratio (ours / llama-server texts/s): {r['seconds'] / o['seconds']:.3f}")


if __name__ == "__main__":
    main()
