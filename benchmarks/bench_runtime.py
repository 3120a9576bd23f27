"""Run-time benchmark: our Engine against llama.cpp's own llama-bench, same files, same run.

    python benchmarks/bench_runtime.py [--shape 0.6b] [--types f16 q8_0 q4_k_m q4_0] [--reps 3] [--llama-bench PATH]

Inputs: the full-size Qwen3-0.6B-shaped random model (built by bench_quantize.py into
benchmarks/.cache), converted once per type. llama-bench is built from the llama.cpp that the
installed llama-cpp-python vendors (see benchmarks/README.md); nothing of it is committed.
Prints, per type: pp512 and tg128 tokens/s for both and their ratio, our time to first token
against llama-bench's pp512 time, load time, peak RSS; then the machine's memory bandwidth and
tg128 as a fraction of the decode ceiling (bandwidth / bytes read per token).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
CACHE = ROOT / "benchmarks" / ".cache"
sys.path.insert(0, str(ROOT))

from quantize import quantize_model  # noqa: E402
from quantize.gguf_header import read_header  # noqa: E402
from edge.runtime.cpu_buffers import default_extra_buffers  # noqa: E402

DEFAULT_LLAMA_BENCH = CACHE / "llama.cpp-src" / "build" / "bin" / "llama-bench"


def ensure_gguf(folder: Path, qtype: str) -> Path:
    out = CACHE / f"{folder.name}-{qtype}.gguf"
    if not out.exists():
        quantize_model(folder, qtype, out)
    return out


def llama_bench(binary: Path, model: Path, threads: int, reps: int, n_prompt: int, n_gen: int) -> dict[str, float]:
    # Flash attention off, as the Engine opens models (on this CPU it speeds depth 0 and slows
    # generation at the depths a chat runs at; see benchmarks/RESULTS.md).
    cmd = [str(binary), "-m", str(model), "-p", str(n_prompt), "-n", str(n_gen), "-t", str(threads),
           "-r", str(reps), "-fa", "off", "-o", "json", "--repack", "1" if default_extra_buffers() else "0"]
    rows = json.loads(subprocess.run(cmd, check=True, capture_output=True, text=True).stdout)
    result = {}
    for row in rows:
        key = "pp" if row["n_prompt"] else "tg"
        result[key] = row["avg_ts"]
    return result


def ours(model: Path, threads: int, reps: int, n_prompt: int, n_gen: int) -> dict:
    code = ("import json, sys; from edge.runtime.bench import run_bench; "
            "r = run_bench(sys.argv[1], n_prompt=int(sys.argv[2]), n_gen=int(sys.argv[3]), "
            "repetitions=int(sys.argv[4]), n_threads=int(sys.argv[5])); print(json.dumps(r.to_dict()))")
    out = subprocess.run([sys.executable, "-c", code, str(model), str(n_prompt), str(n_gen), str(reps), str(threads)],
                         check=True, capture_output=True, text=True, cwd=ROOT).stdout
    return json.loads(out.strip().splitlines()[-1])


def memory_bandwidth_gbs(size_mb: int = 512, reps: int = 5) -> float:
    """Best of `reps` large array copies: bytes read + bytes written per second."""
    a = np.ones(size_mb * (1 << 20) // 8)
    b = np.empty_like(a)
    best = float("inf")
    for _ in range(reps):
        t = time.perf_counter()
        np.copyto(b, a)
        best = min(best, time.perf_counter() - t)
    return 2 * a.nbytes / best / 1e9


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--types", nargs="+", default=["f16", "q8_0", "q4_k_m", "q4_0"])
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--llama-bench", type=Path, default=DEFAULT_LLAMA_BENCH)
    ap.add_argument("-p", type=int, default=512)
    ap.add_argument("-n", type=int, default=128)
    ap.add_argument("--shape", default="0.6b", help="0.6b, 1.7b or 4b (built by bench_quantize.py --shape)")
    args = ap.parse_args()
    folder = CACHE / f"Qwen3-{args.shape.upper()}-random"
    if not (folder / "config.json").exists():
        raise SystemExit(f"run benchmarks/bench_quantize.py --shape {args.shape} first: it builds the model")
    bw = memory_bandwidth_gbs()
    print(f"threads {args.threads}, reps {args.reps}, memory bandwidth {bw:.1f} GB/s (numpy copy)")
    print(f"{'type':7} {'pp ours':>8} {'pp l-b':>8} {'ratio':>6} {'tg ours':>8} {'tg l-b':>8} {'ratio':>6} "
          f"{'ttft ms':>8} {'pp512 ms':>8} {'ratio':>6} {'load s':>7} {'RSS MB':>7} {'tg/ceil':>7}")
    for qtype in args.types:
        model = ensure_gguf(folder, qtype)
        ref = llama_bench(args.llama_bench, model, args.threads, args.reps, args.p, args.n)
        our = ours(model, args.threads, args.reps, args.p, args.n)
        pp_ms = 1000 * args.p / ref["pp"]
        bytes_per_token = read_header(model).data_bytes  # every weight is read once per decoded token
        ceiling = bw * 1e9 / bytes_per_token
        print(f"{qtype:7} {our['pp_tokens_per_s']:8.1f} {ref['pp']:8.1f} {our['pp_tokens_per_s'] / ref['pp']:6.3f} "
              f"{our['tg_tokens_per_s']:8.1f} {ref['tg']:8.1f} {our['tg_tokens_per_s'] / ref['tg']:6.3f} "
              f"{our['ttft_s'] * 1000:8.1f} {pp_ms:8.1f} {our['ttft_s'] * 1000 / pp_ms:6.3f} "
              f"{our['load_s']:7.2f} {our['peak_rss_bytes'] / 1e6:7.0f} {our['tg_tokens_per_s'] / ceiling:7.2f}")


if __name__ == "__main__":
    main()
