"""Continuous batching: aggregate completion tokens/s at 1, 2, 4 concurrent clients through the
`openai` client, `qwen3-edge serve --parallel N` against llama-server `-np N`, same GGUF, same
threads, same run; and time to first token of a request arriving while 3 others decode.

    python benchmarks/bench_parallel.py [--gguf PATH] [--threads 2] [--tokens 64] [--clients 1 2 4]
                                        [--llama-server PATH]

The GGUF defaults to the 0.6B-shaped Q4_K_M that bench_runtime.py uses (bench_quantize.py builds
it). llama-server: build it from the llama.cpp that llama-cpp-python vendors (benchmarks/README.md,
/work/shared/README.md: -DLLAMA_BUILD_SERVER=ON -DLLAMA_USE_PREBUILT_UI=OFF -DLLAMA_BUILD_UI=OFF).
Requests are non-thinking, temperature 0, `max_tokens` fixed; tokens counted from usage.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import threading
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import openai

ROOT = Path(__file__).resolve().parents[1]
CACHE = ROOT / "benchmarks" / ".cache"
DEFAULT_GGUF = CACHE / "Qwen3-0.6B-random-q4_k_m.gguf"
DEFAULT_SERVER = CACHE / "llama.cpp-src" / "build" / "bin" / "llama-server"
PROMPTS = ["Write a story about a lighthouse keeper.", "List ten uses of a paperclip.",
           "Explain how a bicycle stays upright.", "Describe the water cycle to a child."]


def free_port() -> int:
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_up(port: int, proc: subprocess.Popen, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"server exited with {proc.returncode}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.5)
    raise SystemExit("server did not come up")


EXTRA: dict = {"chat_template_kwargs": {"enable_thinking": False}}


def ask(client: openai.OpenAI, prompt: str, tokens: int) -> tuple[int, float]:
    """Completion tokens and time to the first content token of one streamed request."""
    started, first, n = time.perf_counter(), None, 0
    stream = client.chat.completions.create(
        model="m", messages=[{"role": "user", "content": prompt + " /no_think"}], max_tokens=tokens,
        temperature=0, stream=True, stream_options={"include_usage": True},
        extra_body=EXTRA)
    for c in stream:
        if c.choices and first is None and (c.choices[0].delta.content or ""):
            first = time.perf_counter() - started
        if c.usage:
            n = c.usage.completion_tokens
    return n, first or 0.0


def aggregate(client: openai.OpenAI, clients: int, tokens: int) -> float:
    ask(client, "Warm up.", 8)
    start = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        done = list(pool.map(lambda i: ask(client, PROMPTS[i % len(PROMPTS)], tokens), range(clients)))
    return sum(n for n, _ in done) / (time.perf_counter() - start)


def ttft_under_load(client: openai.OpenAI, tokens: int) -> float:
    """Time to first token of a request sent while 3 others are decoding."""
    busy = [threading.Thread(target=ask, args=(client, PROMPTS[i], tokens * 4)) for i in range(3)]
    for t in busy:
        t.start()
    time.sleep(2.0)
    _, first = ask(client, PROMPTS[3], 8)
    for t in busy:
        t.join()
    return first


def run_server(cmd: list[str], port: int, clients: list[int], tokens: int) -> dict:
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_up(port, proc)
        client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="x", max_retries=0, timeout=600)
        out = {n: aggregate(client, n, tokens) for n in clients}
        out["ttft"] = ttft_under_load(client, tokens)
        return out
    finally:
        proc.terminate()
        proc.wait(30)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--gguf", type=Path, default=DEFAULT_GGUF)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--tokens", type=int, default=64)
    ap.add_argument("--clients", type=int, nargs="+", default=[1, 2, 4])
    ap.add_argument("--ctx", type=int, default=2048)
    ap.add_argument("--llama-server", type=Path, default=DEFAULT_SERVER)
    args = ap.parse_args()
    slots = max(args.clients)
    print(f"{args.gguf.name}, {args.threads} threads, {os.cpu_count()} CPUs, load {os.getloadavg()[0]:.1f}, "
          f"{args.tokens} tokens per request, {slots} slots")
    port = free_port()
    ours = run_server([sys.executable, "-m", "cli", "serve", str(args.gguf), "--port", str(port), "--ctx", str(args.ctx),
                       "--threads", str(args.threads), "--parallel", str(slots)], port, args.clients, args.tokens)
    theirs = None
    if args.llama_server.exists():
        EXTRA["ignore_eos"] = True  # llama-server only (ours refuses unknown fields); random weights rarely end
        port = free_port()
        theirs = run_server([str(args.llama_server), "-m", str(args.gguf), "--port", str(port), "-c",
                             str(args.ctx * slots), "-np", str(slots), "-t", str(args.threads), "--jinja"],
                            port, args.clients, args.tokens)
    else:
        print(f"no llama-server at {args.llama_server}: ours only")
    for n in args.clients:
        line = f"{n} client(s): ours {ours[n]:.1f} tok/s"
        if theirs:
            line += f", llama-server {theirs[n]:.1f} tok/s, ratio {ours[n] / theirs[n]:.2f}"
        print(line + f", ours vs our 1 client {ours[n] / ours[args.clients[0]]:.2f}x")
    print(f"time to first token beside 3 decoding: ours {ours['ttft']:.3f} s"
          + (f", llama-server {theirs['ttft']:.3f} s" if theirs else ""))
    print(f"load after: {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
