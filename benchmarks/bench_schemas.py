"""Structured-output coverage: every schema of tests/schema_cases.py (the JSON-Schema-Test-Suite's
draft 2020-12 keyword and format files, pydantic models, the OpenAI SDK's strict schemas) sent as a
response format to a small random-weight model at temperature 1, each answer checked with
jsonschema (Draft 2020-12, formats checked). Two engines on the same cases and seeds:

- llguidance: qwen3-edge's engine (edge/protocol/grammar.py, edge/protocol/guidance.py);
- gbnf: the previous planner with llama.cpp's converter and grammar sampler (benchmarks/legacy_gbnf.py).

    python benchmarks/bench_schemas.py [--seeds 3] [--max-tokens 384] [--sampler plain|qwen] [--model tiny-untied|tiny-tied] [--engines llguidance,gbnf] [--only TEXT]
    python benchmarks/bench_schemas.py --compile-only

Per engine: refused up front, answers valid, accepted but invalid (flagged: Reply.schema_error;
"silent" counts invalid answers that were not flagged, which must be 0 for llguidance), the
median grammar compile time, and the cases that failed.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CACHE = ROOT / "benchmarks" / ".cache"
sys.path.insert(0, str(ROOT))

from edge import Chat, ChatError, Engine  # noqa: E402
from edge.protocol.answer_check import answer_problem  # noqa: E402
from edge.protocol.grammar import Constraints  # noqa: E402
from edge.runtime.sampling import Grammar, GrammarCompileError  # noqa: E402

PROMPT = "Reply with JSON."


MODELS = {"tiny-tied": ("TINY_TIED", 7), "tiny-untied": ("TINY_UNTIED_SHARDED", 7), "tiny-prior": ("TINY_PRIOR", 7)}


def tiny_random_gguf(model: str = "tiny-untied") -> Path:
    """A tiny random-weight Qwen3 (real tokenizer, full 151,936-token vocabulary), built once.
    "tiny-untied" (the default) has its own random output matrix: near-uniform logits, random
    tokens, the regime the issue measured in. "tiny-tied" shares the embedding as output matrix,
    so each token scores itself highest: at temperature 1 it repeats a token, a JSON string never
    closes, and most answers end on max_tokens (flagged, never silent): it measures the model
    more than the engine."""
    shape, seed = MODELS[model]
    out = CACHE / f"{model}-random-f16.gguf"
    if not out.exists():
        from quantize import quantize_model
        from tests import model_factory
        CACHE.mkdir(parents=True, exist_ok=True)
        quantize_model(model_factory.build_model(CACHE / f"{model}-random-hf", getattr(model_factory, shape), seed=seed),
                       "f16", out)
    return out


class LegacyChat(Chat):
    """The same Chat on the previous engine: the GBNF planner and llama.cpp's grammar sampler."""

    def _constraints(self, tools, tool_choice, response_format, parallel_tool_calls) -> Constraints:
        from benchmarks import legacy_gbnf
        try:
            c = legacy_gbnf.plan_constraints(tools, tool_choice, response_format, parallel_tool_calls)
        except legacy_gbnf.GrammarError as e:
            raise ChatError(e.message) from None
        return Constraints(c.tools, c.answer_gbnf, c.call_gbnf, c.tool_names)  # no answer check: measured here

    def _compile(self, gbnf):
        if gbnf is None:
            return None
        try:
            return Grammar(self._vocab, gbnf)
        except GrammarCompileError as e:
            raise ChatError(str(e)) from None


def response_format(schema) -> dict:
    return {"type": "json_schema", "json_schema": {"name": "case", "schema": schema}}


def compile_seconds(engine: Engine, kind: str, schema) -> float | None:
    """Time to plan and compile the schema's grammar for this model (None: refused)."""
    from edge.protocol.grammar import GrammarError, plan_constraints
    from edge.protocol.guidance import ConstraintError, compile_grammar, tokenizer_for
    from benchmarks import legacy_gbnf
    tokenizer_for(engine.llama)  # built once per model, not per request
    started = time.perf_counter()
    try:
        if kind == "gbnf":
            Grammar(engine.llama._model.vocab, legacy_gbnf.plan_constraints(response_format=response_format(schema)).answer_gbnf).close()
        else:
            compile_grammar(tokenizer_for(engine.llama), plan_constraints(response_format=response_format(schema)).answer_grammar)
    except (GrammarError, legacy_gbnf.GrammarError, ConstraintError, GrammarCompileError):
        return None
    return time.perf_counter() - started


SAMPLERS = {
    # temperature 1 over the whole allowed distribution: the model is a random source that walks the grammar
    "plain": {"temperature": 1.0, "top_k": 0, "top_p": 1.0, "min_p": 0.0},
    # Qwen's non-thinking top_k 20 / top_p 0.8 at temperature 1: a tiny random model repeats one token
    # inside strings and numbers until max_tokens (the answer is cut, and flagged)
    "qwen": {"temperature": 1.0},
}


def run_case(engine: Engine, kind: str, schema, seed: int, max_tokens: int, sampler: str = "plain") -> tuple[str, str]:
    """("refused" | "valid" | "cut" | "flagged" | "silent", detail). "cut": flagged, and the reply
    ended on max_tokens before the JSON was complete (on random weights, a string that never closes);
    an answer the closing completed in time that is still invalid is "flagged"."""
    cls = LegacyChat if kind == "gbnf" else Chat
    chat = cls(engine, mode="no_think", seed=seed, max_tokens=max_tokens, sampling=SAMPLERS[sampler])
    try:
        reply = chat.send(PROMPT, response_format=response_format(schema))
    except ChatError as e:
        return "refused", str(e)[:160]
    problem = answer_problem(reply.answer, schema)
    if problem is None:
        return "valid", ""
    if getattr(reply, "schema_error", None):
        cut = reply.stop_reason == "length" and "not complete JSON" in problem  # a closed answer is complete
        return "cut" if cut else "flagged", f"{problem} | {reply.answer[:80]!r}"
    return "silent", f"{problem} | {reply.answer[:80]!r}"


def compile_times() -> None:
    """Plan + compile CPU time per schema (process time: other load on the machine does not count),
    against the real Qwen3 vocabulary from tests/fixtures (no model needed)."""
    import llguidance

    from edge.protocol.grammar import GrammarError, plan_constraints
    from edge.protocol.guidance import compile_grammar
    from tests.schema_cases import app_cases, suite_cases
    tok = llguidance.LLTokenizer(str(ROOT / "tests" / "fixtures" / "qwen3-tokenizer" / "tokenizer.json"),
                                 n_vocab=151936, eos_token=[151643, 151645])
    compile_grammar(tok, plan_constraints(response_format={"type": "object"}).answer_grammar)  # warm
    props = {f"p{i}": {"enum": [f"value-{i}-{j}" for j in range(60)]} for i in range(40)}
    largest = [("largest the bounds allow", {"type": "object", "properties": props, "required": list(props)})] * 3
    for label, cases in (("app schemas", app_cases()), ("suite schemas", suite_cases()), ("largest", largest)):
        times = []
        for _, schema in cases:
            started = time.process_time()
            try:
                compile_grammar(tok, plan_constraints(response_format=response_format(schema)).answer_grammar)
            except GrammarError:
                continue
            times.append(time.process_time() - started)
        times.sort()
        print(f"{label:14} n={len(times):3}  plan+compile CPU ms: median {1e3 * statistics.median(times):.1f}  "
              f"p90 {1e3 * times[int(0.9 * len(times))]:.1f}  max {1e3 * times[-1]:.1f}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--max-tokens", type=int, default=384)
    ap.add_argument("--engines", default="llguidance,gbnf")
    ap.add_argument("--only", default="", help="run only the cases whose name contains this")
    ap.add_argument("--show", type=int, default=40, help="failed cases listed per engine")
    ap.add_argument("--sampler", choices=sorted(SAMPLERS), default="plain",
                    help="plain: temperature 1, no top-k/top-p truncation; qwen: Qwen's non-thinking defaults at temperature 1")
    ap.add_argument("--model", choices=sorted(MODELS), default="tiny-untied", help="the random-weight model (see tiny_random_gguf)")
    ap.add_argument("--threads", type=int, default=1, help="llama.cpp threads (the tiny model needs one)")
    ap.add_argument("--compile-only", action="store_true", help="only the plan + compile times (no model)")
    args = ap.parse_args()
    if args.compile_only:
        return compile_times()
    from tests.schema_cases import app_cases, satisfiable, suite_cases
    cases = [c for c in suite_cases() + app_cases() if args.only in c[0]]
    print(f"{len(cases)} schemas ({sum(n.startswith('suite:') for n, _ in cases)} from the JSON-Schema-Test-Suite), "
          f"{args.seeds} seeds, temperature 1 ({args.sampler} sampler), max_tokens {args.max_tokens}, {args.model} random-weight model")
    with Engine.load(tiny_random_gguf(args.model), n_ctx=2048, n_threads=args.threads) as engine:
        for kind in args.engines.split(","):
            outcomes: Counter = Counter()
            per_schema: dict[str, Counter] = {}
            per_seed = [Counter() for _ in range(args.seeds)]
            failures, compiles = [], []
            started = time.perf_counter()
            for name, schema in cases:
                per_schema[name] = Counter()
                if (compile_s := compile_seconds(engine, kind, schema)) is not None:
                    compiles.append(compile_s)
                for seed in range(args.seeds):
                    outcome, detail = run_case(engine, kind, schema, seed, args.max_tokens, args.sampler)
                    outcomes[outcome] += 1
                    per_schema[name][outcome] += 1
                    per_seed[seed][outcome] += 1
                    if outcome != "valid":
                        failures.append(f"  {outcome:8} {name[:70]:70} seed {seed}: {detail}")
                    if outcome == "refused":
                        break  # refusal does not depend on the seed
                print(f"  {len(per_schema)}/{len(cases)} {name[:60]}: {dict(per_schema[name])}", file=sys.stderr, flush=True)
            n = len(cases)
            refused = sum(1 for c in per_schema.values() if c["refused"])
            all_valid = sum(1 for c in per_schema.values() if c["valid"] == args.seeds)
            answers = sum(outcomes[k] for k in ("valid", "cut", "flagged", "silent"))
            finished = answers - outcomes["cut"]
            print(f"\n[{kind}] {time.perf_counter() - started:.0f}s")
            print(f"  schemas accepted {n - refused}/{n}; valid on every seed {all_valid}/{n} ({100 * all_valid / max(1, n):.1f}%)")
            met = [name for name in per_schema if satisfiable(name)]
            met_valid = sum(1 for name in met if per_schema[name]["valid"] == args.seeds)
            print(f"  of the {len(met)} schemas some value meets (tests/schema_cases.UNSATISFIABLE lists the others): "
                  f"valid on every seed {met_valid}/{len(met)} ({100 * met_valid / max(1, len(met)):.1f}%)")
            print(f"  answers: valid {outcomes['valid']}/{answers}, accepted but invalid "
                  f"{outcomes['cut'] + outcomes['flagged'] + outcomes['silent']} (cut by max_tokens and flagged "
                  f"{outcomes['cut']}, other flagged {outcomes['flagged']}, silent {outcomes['silent']})")
            print(f"  answers that ended before max_tokens: valid {outcomes['valid']}/{finished}")
            print("  schemas with a valid answer, per seed: " + ", ".join(
                f"seed {i} {c['valid']}/{n} ({100 * c['valid'] / n:.1f}%)" for i, c in enumerate(per_seed)))
            if compiles:
                compiles.sort()
                print(f"  plan + compile per schema: median {1e3 * statistics.median(compiles):.1f} ms, "
                      f"max {1e3 * compiles[-1]:.1f} ms")
            print("\n".join(failures[: args.show]))
            print(json.dumps({"engine": kind, "schemas": n, "accepted": n - refused, "valid_all_seeds": all_valid,
                              **outcomes}))


if __name__ == "__main__":
    main()
