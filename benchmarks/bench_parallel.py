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
import statistics
import subprocess
import sys
import threading
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import openai

from edge.runtime.cpu_buffers import default_extra_buffers

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


class Server:
    """A server process on a free port, with an openai client; stop() returns its peak RSS."""

    def __init__(self, cmd: list[str], port: int, extra: dict, name: str):
        self.name, self.extra, self.port = name, extra, port
        self.proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        wait_up(port, self.proc)
        self.client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="x", max_retries=0, timeout=600)

    def stop(self) -> tuple[int, str]:
        """(peak RSS in bytes, the lines our server prints at start-up: serving, and the calibration's)."""
        rss = peak_rss(self.proc.pid)
        self.proc.terminate()
        try:
            _, errors = self.proc.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            _, errors = self.proc.communicate()
        lines = [line for line in (errors or "").splitlines() if line.startswith(("serving ", "tuned for"))]
        return rss, " / ".join(lines)


def interleaved(servers: list[Server], rounds: int, measure) -> list[list[float]]:
    """`measure(server)` for each server in turn, `rounds` times: [[a1, b1], [a2, b2], ...], so both
    see the same moments of a noisy machine."""
    return [[measure(srv) for srv in servers] for _ in range(rounds)]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--gguf", type=Path, default=DEFAULT_GGUF)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--ours-threads", type=int, default=None,
                    help="threads for ours only (default: --threads), e.g. to measure the calibration's choice")
    ap.add_argument("--tokens", type=int, default=64)
    ap.add_argument("--clients", type=int, nargs="+", default=[1, 2, 4])
    ap.add_argument("--rounds", type=int, default=3, help="alternating rounds per client count (medians reported)")
    ap.add_argument("--ctx", type=int, default=2048, help="context per slot")
    ap.add_argument("--flash-attn", choices=["default", "on", "off"], default="default",
                    help="llama-server's -fa (default: none given, its own default, auto = on where the backend "
                         "has it); ours is the Engine's default: this machine's calibration (edge/runtime/tune.py)")
    ap.add_argument("--llama-server", type=Path, default=DEFAULT_SERVER)
    ap.add_argument("--llama-server-arg", action="append", default=[], metavar="ARG",
                    help="one more argument for llama-server (repeat), e.g. --llama-server-arg=--cache-ram "
                         "--llama-server-arg=0 to measure it without its RAM prompt cache")
    args = ap.parse_args()
    repack = default_extra_buffers()
    print(f"{args.gguf.name}, {args.threads} threads, {os.cpu_count()} CPUs, load {os.getloadavg()[0]:.1f}, "
          f"{args.tokens} tokens per request, slots = clients, {args.rounds} alternating rounds, weight repacking "
          f"{'on' if repack else 'off'}, llama-server -fa {args.flash_attn} {' '.join(args.llama_server_arg)}")
    if not args.llama_server.exists():
        raise SystemExit(f"no llama-server at {args.llama_server} (benchmarks/README.md builds it)")
    base = None
    for n in args.clients:  # both servers up at once, each with as many slots as clients, measured in turn
        port = free_port()
        ours = Server([sys.executable, "-m", "cli", "serve", str(args.gguf), "--port", str(port), "--ctx",
                       str(args.ctx), "--threads", str(args.ours_threads or args.threads), "--parallel", str(n)], port, EXTRA, "ours")
        port = free_port()
        theirs = Server([str(args.llama_server), "-m", str(args.gguf), "--port", str(port), "-c", str(args.ctx * n),
                         "-np", str(n), "-t", str(args.threads), "--jinja"]
                        + ([] if args.flash_attn == "default" else ["-fa", args.flash_attn])
                        + ([] if repack else ["--no-repack"]) + args.llama_server_arg, port, REF_EXTRA, "llama-server")
        try:
            for srv in (ours, theirs):
                aggregate(srv.client, n, 16, srv.extra)  # warm-up
            tps = interleaved([ours, theirs], args.rounds, lambda srv: aggregate(srv.client, n, args.tokens, srv.extra))
            ttft = (interleaved([ours, theirs], args.rounds, lambda srv: ttft_under_load(srv.client, args.tokens, srv.extra))
                    if n == 4 else None)
        finally:
            (rss_ours, line), (rss_theirs, _) = ours.stop(), theirs.stop()
        med = lambda xs: statistics.median(xs)  # noqa: E731
        ours_tps, theirs_tps = med([r[0] for r in tps]), med([r[1] for r in tps])
        base = base or ours_tps
        print(f"  {line}")
        print(f"{n} client(s): ours {ours_tps:.1f} tok/s, llama-server {theirs_tps:.1f} tok/s, "
              f"ratio {med([a / b for a, b in tps]):.2f} (rounds: {', '.join(f'{a / b:.2f}' for a, b in tps)}), "
              f"ours vs our {args.clients[0]} client(s) {ours_tps / base:.2f}x; peak RSS ours "
              f"{rss_ours / (1 << 30):.2f} GiB, llama-server {rss_theirs / (1 << 30):.2f} GiB", flush=True)
        if ttft:
            print(f"time to first token beside 3 decoding (median of {args.rounds}): ours {med([r[0] for r in ttft]):.3f} s, "
                  f"llama-server {med([r[1] for r in ttft]):.3f} s", flush=True)
    print(f"load after: {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
