"""Conversion benchmark: a full-size Qwen3-0.6B-shaped model with seeded random weights (real
shapes, real tokenizer), converted safetensors -> Q8_0 and -> Q4_K_M by `qwen3-edge quantize`,
each in its own process so that wall time and peak RSS are the run's own.

    python benchmarks/bench_quantize.py [--shape 0.6b|1.7b|4b] [--work DIR] [--types q8_0 q4_k_m]

Prints one line per type: seconds, peak RSS, output size, bits per weight. Memory should stay
near the largest tensor (the 151,936 x hidden embedding) plus the output buffer, not the model.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.model_factory import SHAPES  # noqa: E402


def run_measured(cmd: list[str]) -> tuple[float, int, str]:
    """Run a command; return (wall seconds, peak RSS bytes, stdout)."""
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - start
    out, err = proc.stdout.read(), proc.stderr.read()
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{err}")
    return wall, usage.ru_maxrss * 1024, out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--shape", choices=sorted(SHAPES), default="0.6b")
    ap.add_argument("--work", type=Path, default=ROOT / "benchmarks" / ".cache")
    ap.add_argument("--types", nargs="+", default=["q8_0", "q4_k_m"])
    args = ap.parse_args()

    folder = args.work / f"Qwen3-{args.shape.upper()}-random"
    if not (folder / "config.json").exists():
        # In a child process: Linux children inherit the parent's peak RSS at fork, so a parent
        # that generated 1 GB of weights would inflate every measurement after it.
        t = time.perf_counter()
        subprocess.run([sys.executable, "-c", "import sys; sys.path.insert(0, sys.argv[1]); "
                        "from pathlib import Path; from tests.model_factory import build_model, SHAPES; "
                        "build_model(Path(sys.argv[2]), SHAPES[sys.argv[3]], seed=0)",
                        str(ROOT), str(folder), args.shape], check=True)
        print(f"built {folder} in {time.perf_counter() - t:.1f}s")
    src_bytes = sum(p.stat().st_size for p in folder.glob("*.safetensors"))
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}")
    print(f"source: {folder.name}, {src_bytes / 1e9:.2f} GB BF16 safetensors")
    print(f"{'type':8} {'seconds':>8} {'peak RSS':>10} {'output':>10} {'bits/w':>7}")
    for qtype in args.types:
        out = args.work / f"{folder.name}-{qtype}.gguf"
        wall, rss, stdout = run_measured([sys.executable, "-m", "cli", "quantize", str(folder),
                                          "-t", qtype, "-o", str(out), "--json"])
        r = json.loads(stdout)
        print(f"{qtype:8} {wall:8.1f} {rss / 1e9:8.2f} GB {r['size_bytes'] / 1e9:7.2f} GB {r['bits_per_weight']:7.2f}")


if __name__ == "__main__":
    main()
