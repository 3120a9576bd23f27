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
REF_EXTRA: dict = {**EXTRA, "ignore_eos": True}  # llama-server only (ours refuses unknown fields)


def ask(client: openai.OpenAI, prompt: str, tokens: int, extra: dict, temperature: float = 0) -> tuple[int, float]:
    """Completion tokens and time to the first content token of one streamed request."""
    started, first, n = time.perf_counter(), None, 0
    stream = client.chat.completions.create(
        model="m", messages=[{"role": "user", "content": prompt + " /no_think"}], max_tokens=tokens,
        temperature=temperature, seed=1, stream=True, stream_options={"include_usage": True},
        extra_body=extra)
    for c in stream:
        if c.choices and first is None and (c.choices[0].delta.content or ""):
            first = time.perf_counter() - started
        if c.usage:
            n = c.usage.completion_tokens
    return n, first or 0.0


def aggregate(client: openai.OpenAI, clients: int, tokens: int, extra: dict) -> float:
    ask(client, "Warm up.", 8, extra)
    start = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        done = list(pool.map(lambda i: ask(client, PROMPTS[i % len(PROMPTS)], tokens, extra), range(clients)))
    return sum(n for n, _ in done) / (time.perf_counter() - start)


def ttft_under_load(client: openai.OpenAI, tokens: int, extra: dict) -> float:
    """Time to first token of a request sent while 3 others are decoding."""
    busy = [threading.Thread(target=ask, args=(client, PROMPTS[i], tokens * 4, extra)) for i in range(3)]
    for t in busy:
        t.start()
    time.sleep(2.0)
    # sampled, not greedy: greedy random weights repeat "\n\n", which an answer's start drops
    _, first = ask(client, PROMPTS[3], 8, extra, temperature=1.0)
    for t in busy:
        t.join()
    return first


def peak_rss(pid: int) -> int:
    """The process's peak resident set (VmHWM), in bytes."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    return 0


def run_server(cmd: list[str], port: int, clients: int, tokens: int, ttft: bool, extra: dict) -> dict:
    """Start a server, measure aggregate tok/s at `clients` (best of 2 rounds, after a warm-up),
    time to first token beside 3 decoding requests when asked, and the server's peak RSS."""
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        wait_up(port, proc)
        client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="x", max_retries=0, timeout=600)
        out = {"tps": max(aggregate(client, clients, tokens, extra) for _ in range(2))}
        if ttft:
            out["ttft"] = ttft_under_load(client, tokens, extra)
        out["rss"] = peak_rss(proc.pid)
        return out
    finally:
        proc.terminate()
        try:
            _, errors = proc.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            _, errors = proc.communicate()
        out_lines = [line for line in (errors or "").splitlines() if line.startswith("serving ")]
        if out_lines:
            print("  " + out_lines[0])


def extra_buffers() -> bool:
    """Whether our Engine lets llama.cpp repack weights here (edge/cpu_buffers.py: off where the CPU
    offers AMX, whose kernels crash this llama.cpp); llama-server gets the same (--no-repack)."""
    from edge.cpu_buffers import cpu_extra_buffer_types, extra_buffers_safe
    return extra_buffers_safe(cpu_extra_buffer_types())


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--gguf", type=Path, default=DEFAULT_GGUF)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--tokens", type=int, default=64)
    ap.add_argument("--clients", type=int, nargs="+", default=[1, 2, 4])
    ap.add_argument("--ctx", type=int, default=2048, help="context per slot")
    ap.add_argument("--flash-attn", choices=["on", "off"], default="off",
                    help="llama-server's -fa (ours: off on the CPU with an f16 cache, as the Engine opens models)")
    ap.add_argument("--llama-server", type=Path, default=DEFAULT_SERVER)
    args = ap.parse_args()
    repack = extra_buffers()
    print(f"{args.gguf.name}, {args.threads} threads, {os.cpu_count()} CPUs, load {os.getloadavg()[0]:.1f}, "
          f"{args.tokens} tokens per request, slots = clients, weight repacking {'on' if repack else 'off'}, "
          f"llama-server -fa {args.flash_attn}")
    have_ref = args.llama_server.exists()
    if not have_ref:
        print(f"no llama-server at {args.llama_server}: ours only")
    results = {}
    for n in args.clients:  # ours and llama-server alternate, each with as many slots as clients
        port = free_port()
        ours = run_server([sys.executable, "-m", "cli", "serve", str(args.gguf), "--port", str(port), "--ctx",
                           str(args.ctx), "--threads", str(args.threads), "--parallel", str(n)],
                          port, n, args.tokens, ttft=n == 4, extra=EXTRA)
        theirs = None
        if have_ref:
            port = free_port()
            cmd = [str(args.llama_server), "-m", str(args.gguf), "--port", str(port), "-c", str(args.ctx * n),
                   "-np", str(n), "-t", str(args.threads), "--jinja", "-fa", args.flash_attn]
            theirs = run_server(cmd + ([] if repack else ["--no-repack"]), port, n, args.tokens, ttft=n == 4, extra=REF_EXTRA)
        results[n] = (ours, theirs)
        line = f"{n} client(s): ours {ours['tps']:.1f} tok/s (peak RSS {ours['rss'] / (1 << 30):.2f} GiB)"
        if theirs:
            line += (f", llama-server {theirs['tps']:.1f} tok/s (peak RSS {theirs['rss'] / (1 << 30):.2f} GiB), "
                     f"ratio {ours['tps'] / theirs['tps']:.2f}")
        first = results[args.clients[0]][0]["tps"]
        print(line + f", ours vs our {args.clients[0]} client(s) {ours['tps'] / first:.2f}x", flush=True)
        if "ttft" in ours:
            print(f"time to first token beside 3 decoding: ours {ours['ttft']:.3f} s"
                  + (f", llama-server {theirs['ttft']:.3f} s" if theirs else ""), flush=True)
    print(f"load after: {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
