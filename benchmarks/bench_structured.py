"""What a JSON schema or a tool grammar costs, on the 0.6B-shaped Q4_K_M model (random weights).

    python benchmarks/bench_structured.py [--tokens 64] [--reps 3]

- Generation tok/s without a schema, with a schema the model mostly fits (a JSON string: random
  tokens are mostly valid string text), and with one it never fits (an object of enums and
  numbers: the mask removes the model's own top choice at most tokens). llguidance's mask is
  computed and written into the logits row for every constrained token either way; the column
  "top choice masked" counts the tokens where it overrode the model. The ratio is against no
  schema in the same run.
- Time to the first tool-call event of a streamed reply through `serve` and the openai client, on
  the scripted tool model (tests/tool_scripts.py), against its time to the first token.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.bench_runtime import CACHE, ensure_gguf  # noqa: E402

FORMATS = {
    "none": None,
    "string schema (fits)": {"type": "string"},
    "enum/number object (never fits)": {"type": "object", "properties": {
        "kind": {"enum": ["alpha", "beta", "gamma"]}, "values": {"type": "array", "items": {"type": "number"}}},
        "required": ["kind", "values"]},
}


def generation(tokens: int, reps: int, threads: int | None = None) -> None:
    from edge import Chat, Engine
    with Engine.load(ensure_gguf(CACHE / "Qwen3-0.6B-random", "q4_k_m"), n_ctx=1024, n_threads=threads) as engine:
        Chat(engine, mode="no_think", max_tokens=tokens).send("Warm up.")  # page in the weights first
        results: dict[str, list] = {name: [] for name in FORMATS}
        for rep in range(reps):  # formats interleaved, so drifting load hits them alike
            for name, fmt in FORMATS.items():
                r = Chat(engine, mode="no_think", max_tokens=tokens, seed=rep,
                         sampling={"temperature": 0.7}).send("Write data.", response_format=fmt)
                results[name].append(r)
        print(f"{'format':34} tok/s (median of {reps})  vs none  top choice masked / tokens")
        base = statistics.median(r.tokens_per_s for r in results["none"])
        for name, replies in results.items():
            rate = statistics.median(r.tokens_per_s for r in replies)
            passes, generated = sum(r.grammar_rejections for r in replies), sum(r.generated_tokens for r in replies)
            print(f"{name:34} {rate:8.1f}              {rate / base:5.2f}   {passes} / {generated}")


def mask_overhead(reps: int = 20) -> None:
    """CPU time the constraint adds per token (mask computed, written into a 151,936-logit row,
    the token consumed), replaying a valid answer for each schema token by token; process time,
    so other load on the machine does not count. Compare with a token's decode time."""
    import json

    import llguidance
    import numpy as np

    from edge.protocol.grammar import plan_constraints
    from edge.protocol.guidance import compile_grammar
    tok = llguidance.LLTokenizer(str(ROOT / "tests" / "fixtures" / "qwen3-tokenizer" / "tokenizer.json"),
                                 n_vocab=151936, eos_token=[151643, 151645])
    answers = {"string schema (fits)": "Some free text the model writes, " * 4,
               "enum/number object (never fits)": {"kind": "beta", "values": [1.5, -2, 30000.25, 7]}}
    row0 = np.random.default_rng(0).standard_normal(151936).astype(np.float32)
    print(f"{'format':34} constraint CPU per token (median of {reps} replays)")
    for name, value in answers.items():
        grammar = plan_constraints(response_format=FORMATS[name]).answer_grammar
        tokens = tok.tokenize_str(json.dumps(value))
        per_token = []
        for _ in range(reps):
            c = compile_grammar(tok, grammar)
            row = row0.copy()
            started = time.process_time()
            for t in tokens:
                row[:] = row0
                c.mask(row)
                c.accept(t)
            per_token.append((time.process_time() - started) / len(tokens))
        print(f"{name:34} {1e3 * statistics.median(per_token):.3f} ms  ({len(tokens)} tokens)")


def first_tool_call() -> None:
    import openai
    import uvicorn  # noqa: F401

    from edge import Engine
    from quantize import quantize_model
    from tests.scripted_model import build_scripted_model
    from tests.serve.test_server import serving
    from tests.tool_scripts import WEATHER_TOOL, think_then_call
    with tempfile.TemporaryDirectory() as tmp:
        folder = build_scripted_model(Path(tmp) / "tools", think_then_call())
        path = quantize_model(folder, "f16", Path(tmp) / "tools.gguf").output
        with Engine.load(path, n_ctx=1024) as engine, serving(engine) as port:
            client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="x")
            rows = []
            for rep in range(5):
                start, first, call = time.perf_counter(), None, None
                for c in client.chat.completions.create(model="m", messages=[{"role": "user", "content": "Weather?"}],
                                                        tools=[WEATHER_TOOL], stream=True, seed=rep):
                    now = time.perf_counter()
                    delta = c.choices[0].delta if c.choices else None
                    if delta and (delta.content or (delta.model_extra or {}).get("reasoning_content")) and first is None:
                        first = now - start
                    if delta and delta.tool_calls and call is None:
                        call = now - start
                rows.append((first, call))
            print("streamed reply (scripted tool model, thinking then a call), 5 runs:")
            print(f"  first token {statistics.median(r[0] for r in rows) * 1000:.1f} ms, first tool-call delta "
                  f"{statistics.median(r[1] for r in rows) * 1000:.1f} ms (median)")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None, help="llama.cpp threads (default: the Engine's)")
    parser.add_argument("--no-tool-call", action="store_true", help="skip the streamed tool-call timing")
    parser.add_argument("--overhead-only", action="store_true", help="only the constraint's CPU per token")
    args = parser.parse_args()
    mask_overhead()
    if args.overhead_only:
        return
    generation(args.tokens, args.reps, args.threads)
    if not args.no_tool_call:
        first_tool_call()


if __name__ == "__main__":
    main()
