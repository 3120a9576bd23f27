"""Speculative decoding benchmark: the 4B shape drafted by the 0.6B shape, against plain decoding
and llama-server --model-draft on the same pair, in the same run.

    python benchmarks/bench_speculative.py [--target 4b] [--draft 0.6b] [--tokens 128] [--rounds 3]
        [--llama-server PATH] [--cache DIR] [--build-only]

Random weights babble, and two random models never agree, so the pair is scripted (the layout
of tests/scripted_model.py at full size: every layer computes as in a real model but adds
nothing, o_proj and down_proj being zero, and the untied embeddings/lm_head form a bigram
table). The target cycles through CYCLE distinct tokens; the draft "agree80" follows the same
table except on every fifth transition (so it agrees on 80% of tokens), "never" on none. Both
quantized Q4_K_M by the project. Decode speed is the chat loop's tokens/s (reply.tokens_per_s:
the first token excluded) for `--tokens` tokens after a short prompt; llama-server's is its
timings.predicted_per_second for the same prompt tokens and count, with greedy sampling on both.
Rounds alternate between the configurations; the median is reported.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from quantize import quantize_model  # noqa: E402
from tests.model_factory import (FIXTURES, SHAPES, TOKENIZER_FILES, config_dict, tensor_specs,  # noqa: E402
                                 write_safetensors)

CYCLE_START = 1000          # the cycle's tokens: CYCLE_START .. CYCLE_START + CYCLE - 1 (plain text pieces)
CYCLE = 256
OFF_CYCLE = 20000           # where a disagreeing draft sends a transition instead
PROMPT_LAST = 271           # "\n\n": the last token of the non-thinking prompt leads into the cycle
TARGET_LOGIT = 40.0


def cycle_table() -> dict[int, int]:
    ids = list(range(CYCLE_START, CYCLE_START + CYCLE))
    table = {a: b for a, b in zip(ids, ids[1:] + ids[:1])}
    table[PROMPT_LAST] = ids[0]
    return table


def disagreeing(table: dict[int, int], every: int) -> dict[int, int]:
    """The same table with every `every`-th transition sent elsewhere (every=1: all of them)."""
    return {src: (OFF_CYCLE + i if i % every == every - 1 else dst) for i, (src, dst) in enumerate(table.items())}


def build_scripted(folder: Path, shape, table: dict[int, int], seed: int = 0) -> Path:
    """A full-size scripted checkpoint written tensor by tensor (never the whole model in memory)."""
    shape = shape.with_(tied=False)
    if len(table) > shape.hidden:
        raise ValueError("the script needs hidden >= its length")
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps(config_dict(shape), indent=2))
    for name in TOKENIZER_FILES:
        shutil.copy(FIXTURES / name, folder / name)
    rng = np.random.default_rng(seed)
    weight = max(5.0, TARGET_LOGIT / math.sqrt(shape.hidden))
    specs = list(tensor_specs(shape))
    shapes = {n: (s, k) for n, s, k in specs}

    def make(name: str) -> np.ndarray:
        shp, kind = shapes[name]
        if kind == "norm":
            return np.ones(shp, dtype=np.float32)
        if name.endswith(("o_proj.weight", "down_proj.weight")):
            return np.zeros(shp, dtype=np.float32)
        if name == "model.embed_tokens.weight":
            out = np.zeros(shp, dtype=np.float32)
            for dim, src in enumerate(table):
                out[src, dim] = 1.0
            return out
        if name == "lm_head.weight":
            out = np.zeros(shp, dtype=np.float32)
            for dim, dst in enumerate(table.values()):
                out[dst, dim] = weight
            return out
        return rng.standard_normal(shp, dtype=np.float32) * np.float32(0.02)

    write_safetensors(folder / "model.safetensors", [(n, s, None) for n, s, _ in specs], make)
    return folder


def ensure(cache: Path, name: str, shape, table: dict[int, int]) -> Path:
    out = cache / f"{name}-q4_k_m.gguf"
    if not out.exists():
        folder = build_scripted(cache / name, shape, table)
        print(f"quantizing {name} ...", flush=True)
        quantize_model(folder, "q4_k_m", out)
        shutil.rmtree(folder)
    return out


def build_models(cache: Path, target: str, draft: str) -> dict[str, Path]:
    cache.mkdir(parents=True, exist_ok=True)
    table = cycle_table()
    return {"target": ensure(cache, f"spec-target-{target}", SHAPES[target], table),
            "agree80": ensure(cache, f"spec-draft-{draft}-agree80", SHAPES[draft], disagreeing(table, 5)),
            "never": ensure(cache, f"spec-draft-{draft}-never", SHAPES[draft], disagreeing(table, 1))}


# ---- measurement ------------------------------------------------------------------------------
def ours(target: Path, draft: Path | None, tokens: int, threads: int, draft_k: int | None = None) -> dict:
    from edge import Chat, Engine
    with Engine.load(target, n_ctx=1024, n_threads=threads, draft=draft, draft_k=draft_k) as engine:
        chat = Chat(engine, mode="no_think", sampling={"temperature": 0}, max_tokens=tokens)
        reply = chat.send("Go.")
        stats = engine.speculator.stats if engine.speculator else None
        return {"tok_s": reply.tokens_per_s, "tokens": reply.generated_tokens,
                "acceptance": round(stats.acceptance, 3) if stats else None,
                "target_decodes": stats.target_decodes if stats else None,
                "plain_decodes": stats.plain_decodes if stats else None,
                "prompt": engine.tokenize(chat.render(chat.messages([]) + [{"role": "user", "content": "Go."}], False))}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def llama_server(binary: Path, target: Path, draft: Path, prompt: list[int], tokens: int, threads: int,
                 draft_max: int) -> dict:
    """llama-server with --model-draft (--spec-draft-n-max as given, its other draft settings default):
    one /completion of the same prompt tokens, greedy."""
    port = free_port()
    # The vendored llama.cpp names its draft options --spec-draft-* (--draft-max and -cd are gone), and
    # speculates only with an explicit --spec-type (a plain draft GGUF implies none).
    cmd = [str(binary), "-m", str(target), "--model-draft", str(draft), "-c", "1024",
           "-t", str(threads), "-td", str(threads), "--port", str(port), "-np", "1",
           "--spec-type", "draft-simple", "--spec-draft-n-max", str(draft_max), "-ngl", "0", "-ngld", "0", "--no-warmup"]
    # Its log goes to a file: a pipe nobody reads fills up and stops the server before it listens.
    log = tempfile.NamedTemporaryFile("w+", prefix="llama-server-", suffix=".log", delete=False)
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, text=True)
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 600
        while True:
            if proc.poll() is not None or time.monotonic() > deadline:
                log.seek(0)
                tail = log.read()[-2000:]
                raise SystemExit(f"llama-server did not come up (exit {proc.returncode}); {log.name}:\n{tail}")
            try:
                with urllib.request.urlopen(url + "/health", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                time.sleep(0.5)
        body = json.dumps({"prompt": prompt, "n_predict": tokens, "temperature": 0, "top_k": 1,
                           "ignore_eos": True, "cache_prompt": False}).encode()
        req = urllib.request.Request(url + "/completion", body, {"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=1200) as r:
            out = json.loads(r.read())
        t = out["timings"]
        return {"tok_s": round(t["predicted_per_second"], 2), "tokens": t["predicted_n"],
                "acceptance": round(t.get("draft_n_accepted", 0) / max(t.get("draft_n", 0), 1), 3)}
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        log.close()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--target", default="4b", choices=sorted(SHAPES))
    ap.add_argument("--draft", default="0.6b", choices=sorted(SHAPES))
    ap.add_argument("--tokens", type=int, default=128)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--cache", type=Path, default=ROOT / "benchmarks" / ".cache")
    ap.add_argument("--llama-server", type=Path, default=None)
    ap.add_argument("--server-draft-max", type=int, nargs="*", default=[3, 16],
                    help="llama-server --spec-draft-n-max values to run (3 is its default)")
    ap.add_argument("--only", nargs="*", default=None, help="configurations to run (plain agree80 never server)")
    ap.add_argument("--build-only", action="store_true")
    args = ap.parse_args()
    models = build_models(args.cache, args.target, args.draft)
    if args.build_only:
        print(json.dumps({k: str(v) for k, v in models.items()}))
        return
    configs = {"plain": lambda: ours(models["target"], None, args.tokens, args.threads),
               "agree80": lambda: ours(models["target"], models["agree80"], args.tokens, args.threads),
               "never": lambda: ours(models["target"], models["never"], args.tokens, args.threads),
               # k fixed at 4, adaptation off: what speculation gives where the policy would back off
               "agree80_k4": lambda: ours(models["target"], models["agree80"], args.tokens, args.threads, draft_k=4)}
    if args.llama_server:
        prompt = ours(models["target"], None, 2, args.threads)["prompt"]
        for dmax in args.server_draft_max:
            configs[f"server_agree80_dmax{dmax}"] = (
                lambda dmax=dmax: llama_server(args.llama_server, models["target"], models["agree80"], prompt,
                                               args.tokens, args.threads, dmax))
    if args.only:
        configs = {k: v for k, v in configs.items() if k in args.only or k.startswith(tuple(args.only))}
    runs: dict[str, list[dict]] = {k: [] for k in configs}
    for r in range(args.rounds):
        for name, fn in configs.items():
            res = fn()
            res.pop("prompt", None)
            runs[name].append(res)
            print(f"round {r + 1} {name}: {res}", flush=True)
    med = {k: statistics.median(x["tok_s"] for x in v) for k, v in runs.items()}
    print(json.dumps({"target": args.target, "draft": args.draft, "tokens": args.tokens, "threads": args.threads,
                      "median_tok_s": med}, indent=None))
    if "plain" in med:
        for k in med:
            if k != "plain":
                print(f"{k} / plain = {med[k] / med['plain']:.2f}")
    for k in med:
        if k.startswith("server_agree80") and "agree80" in med:
            print(f"agree80 / llama-server --model-draft ({k}) = {med['agree80'] / med[k]:.2f}")


if __name__ == "__main__":
    main()
