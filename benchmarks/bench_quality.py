"""Quality per quant type: KL divergence and top-1 agreement against the F16 file's logits over a
fixed multilingual text, with bits per weight. Random weights have no structure that makes
quantization benign, so these figures bound what real checkpoints show rather than predict it.

    python benchmarks/bench_quality.py [--types q8_0 q6_k q5_k_m q4_k_m q4_0]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.bench_runtime import CACHE, ensure_gguf  # noqa: E402
from quantize.gguf_header import read_header  # noqa: E402
from quantize.gguf_info import bits_per_weight  # noqa: E402
from tests.reference_qwen3 import kl_divergence  # noqa: E402
from edge.runtime.cpu_buffers import safe_llama

TEXT = ("The quick brown fox jumps over the lazy dog. 你好，世界！今天的天气怎么样？ "
        "def fib(n):\n    return n if n < 2 else fib(n - 1) + fib(n - 2)\n"
        "Emoji 😀🎉 and español, Ελληνικά, 日本語のテキスト. <|im_start|>user\nWhat is 2+2?<|im_end|>\n")


def all_logits(path: Path, tokens: list[int]) -> np.ndarray:
    import llama_cpp
    llm = safe_llama(str(path), n_ctx=512, n_batch=512, logits_all=True, verbose=False)
    llm.eval(tokens)
    out = np.array(llm.scores[: len(tokens)], dtype=np.float64)
    llm.close()
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--types", nargs="+", default=["q8_0", "q6_k", "q5_k_m", "q4_k_m", "q4_0"])
    args = ap.parse_args()
    folder = CACHE / "Qwen3-0.6B-random"
    import llama_cpp
    base = ensure_gguf(folder, "f16")
    vocab = safe_llama(str(base), vocab_only=True, verbose=False)
    tokens = vocab.tokenize(TEXT.encode(), add_bos=False, special=True)
    ref = all_logits(base, tokens)
    print(f"{len(tokens)} tokens of multilingual text; reference F16 ({bits_per_weight(read_header(base))} bits/weight)")
    print(f"{'type':8} {'bits/w':>7} {'KL (nats)':>10} {'top-1 agree':>12}")
    for qtype in args.types:
        path = ensure_gguf(folder, qtype)
        lg = all_logits(path, tokens)
        agree = float(np.mean(lg.argmax(-1) == ref.argmax(-1)))
        print(f"{qtype:8} {bits_per_weight(read_header(path)):7.2f} {kl_divergence(ref, lg):10.5f} {agree:12.3f}")


if __name__ == "__main__":
    main()
