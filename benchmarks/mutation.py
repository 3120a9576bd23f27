"""Mutation testing of the core modules, run by hand (never in CI): which small breakages of the
code do the unit tests fail to notice?

    python benchmarks/mutation.py                          # every module below, from HEAD
    python benchmarks/mutation.py edge/protocol/modes.py --list     # the mutants, without running them
    python benchmarks/mutation.py edge/protocol/modes.py --only 12 40 --overlay tests/protocol/test_mutants_modes.py

A self-contained runner rather than mutmut: mutmut 3 needs its own [tool.mutmut] table and
writes a mutants/ copy inside the checkout, and this tree is edited by others while it runs. Here
the committed tree (`git archive REV`) is unpacked into a temporary folder; each mutant is one
AST edit of one module written over that copy, and only the fast test files that cover the
module run against it (`pytest -x`, with a timeout). A mutant survives when those tests pass.

Mutations (each applied alone): comparison swaps (== !=, < <=, > >=, in / not in, is / is not),
arithmetic and bit swaps (+ -, * /, // /, % //, << >>, & |), and/or, dropping `not` and unary
minus, integer and float constants n -> n + 1, True <-> False, string constants wrapped in "XX",
`return x` -> `return None`, negated if/while/comprehension conditions, a call statement replaced
by `pass`, += <-> -=, break <-> continue, min <-> max. Not mutated: docstrings, annotations,
`__all__`, and message text (string parts of f-strings and of `raise` statements), whose mutants
would only test wording. Results go to benchmarks/.cache/mutation/<module>-<rev>[-partial-<time>].json.
"""

from __future__ import annotations

import argparse
import ast
import copy
import json
import os
import shutil
import signal
import subprocess
import sys
import tarfile
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "benchmarks" / ".cache" / "mutation"

# module -> the fast tests (pytest files or node ids) that cover it. Any
# tests/test_mutants_<stem>.py present in the snapshot is added.
TARGETS: dict[str, list[str]] = {
    "edge/protocol/thinking_parser.py": ["tests/protocol/test_thinking_parser.py"],
    "edge/protocol/modes.py": ["tests/protocol/test_modes_and_sampling.py", "tests/protocol/test_modes_languages.py"],
    "edge/runtime/context_plan.py": ["tests/runtime/test_context_plan.py"],
    "quantize/gguf_header.py": ["tests/quantize/test_hostile_files.py::test_corpus_of_broken_ggufs",
                                "tests/quantize/test_hostile_files.py::test_fuzz_gguf_checker"],
    "edge/runtime/sampling.py": ["tests/protocol/test_modes_and_sampling.py", "tests/protocol/test_grammar.py",
                         *(f"tests/chat/test_engine_chat.py::test_sampler_{t}" for t in
                           ("chain_is_qwens", "keeps_what_qwens_preset_keeps", "applies_each_override"))],
    "edge/serve/openai_api.py": ["tests/serve/test_server.py", "tests/serve/test_server_tools.py", "tests/serve/test_api_fuzz.py",
                           "tests/serve/test_api_fields.py", "tests/serve/test_completion.py"],
    "edge/serve/completion.py": ["tests/serve/test_completion.py", "tests/serve/test_api_dialects.py"],
    "edge/serve/api_ollama.py": ["tests/serve/test_api_dialects.py"],
    "edge/serve/api_completions.py": ["tests/serve/test_api_dialects.py"],
    "edge/serve/api_anthropic.py": ["tests/serve/test_real_clients.py", "tests/serve/test_api_dialects.py"],
    # issue 21's newer modules: their fast, model-free tests (the end-to-end ones take minutes a run)
    "edge/protocol/tool_calls.py": ["tests/protocol/test_tool_calls.py", "tests/protocol/test_guard_rules.py"],
    "edge/protocol/budget.py": ["tests/protocol/test_guard_rules.py"],
    "edge/runtime/footprint.py": ["tests/runtime/test_footprint.py"],
    "edge/protocol/retrieval_format.py": ["tests/protocol/test_retrieval_format.py"],
    "quantize/retrieval_head.py": ["tests/protocol/test_retrieval_format.py"],
    "edge/protocol/grammar.py": ["tests/protocol/test_grammar.py"],
    "edge/models/sources/__init__.py": ["tests/models/test_sources.py"],
    "edge/runtime/context_growth.py": ["tests/runtime/test_context_growth.py"],
    "edge/protocol/guidance.py": ["tests/protocol/test_grammar.py"],
    # its fastest model tests (random weights, scripted chats): about 30 s a run, so sample it
    "edge/runtime/scheduler.py": [f"tests/runtime/test_parallel.py::test_{t}" for t in (
        "batched_rows_match_rows_alone", "slots_are_separate_sequences_in_llama_cpp",
        "scripted_streams_identical_alone_and_together", "more_chats_than_slots_wait_for_one",
        "cancel_mid_stream_frees_the_slot")],
    # issue 21's remainder: the scripted model end to end (about 80 s a run for chat: sample them)
    "edge/chat.py": ["tests/chat/test_engine_chat.py", "tests/chat/test_small_things.py"],
    "edge/serve/server.py": ["tests/serve/test_server.py", "tests/serve/test_api_dialects.py"],
    "edge/runtime/embedding.py": ["tests/runtime/test_embeddings.py"],
    "edge/serve/api_embeddings.py": ["tests/serve/test_api_embeddings.py"],
    "edge/runtime/ram_states.py": ["tests/runtime/test_ram_states.py", "tests/runtime/test_parallel.py"],
    # issue 24's schema rewrites and number bound: pure rules, fast tests
    "edge/protocol/schema_narrowing.py": ["tests/protocol/test_schema_narrowing.py", "tests/protocol/test_schema_validator.py"],
    "edge/protocol/number_bound.py": ["tests/protocol/test_number_bound.py"],
}

_COMPARE = {ast.Eq: ast.NotEq, ast.NotEq: ast.Eq, ast.Lt: ast.LtE, ast.LtE: ast.Lt, ast.Gt: ast.GtE,
            ast.GtE: ast.Gt, ast.In: ast.NotIn, ast.NotIn: ast.In, ast.Is: ast.IsNot, ast.IsNot: ast.Is}
_BINARY = {ast.Add: ast.Sub, ast.Sub: ast.Add, ast.Mult: ast.Div, ast.Div: ast.Mult, ast.FloorDiv: ast.Div,
           ast.Mod: ast.FloorDiv, ast.LShift: ast.RShift, ast.RShift: ast.LShift, ast.BitAnd: ast.BitOr,
           ast.BitOr: ast.BitAnd, ast.Pow: ast.Mult}


@dataclass
class Mutant:
    index: int
    line: int
    what: str            # "x < y  ->  x <= y"
    status: str = ""     # killed | survived | timeout | error
    seconds: float = 0.0


def _op(node: ast.AST) -> str:
    return ast.unparse(node)


def _mutations(node: ast.AST, in_message: bool) -> list[ast.AST]:
    """Replacements for `node` in its slot (each one a mutant)."""
    out: list[ast.AST] = []
    if isinstance(node, ast.Compare):
        for i, op in enumerate(node.ops):
            if type(op) in _COMPARE:
                new = copy.deepcopy(node)
                new.ops[i] = _COMPARE[type(op)]()
                out.append(new)
    elif isinstance(node, ast.BinOp) and type(node.op) in _BINARY:
        out.append(ast.BinOp(node.left, _BINARY[type(node.op)](), node.right))
    elif isinstance(node, ast.BoolOp):
        out.append(ast.BoolOp(ast.Or() if isinstance(node.op, ast.And) else ast.And(), node.values))
    elif isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.Not, ast.USub)):
        out.append(node.operand)
    elif isinstance(node, ast.Constant):
        v = node.value
        if isinstance(v, bool):
            out.append(ast.Constant(not v))
        elif isinstance(v, (int, float)):
            out.append(ast.Constant(v + 1))
        elif isinstance(v, str) and not in_message:
            out.append(ast.Constant(f"XX{v}XX"))
    elif isinstance(node, ast.Return) and node.value is not None and not (
            isinstance(node.value, ast.Constant) and node.value.value is None):
        out.append(ast.Return(ast.Constant(None)))
    elif isinstance(node, (ast.If, ast.While)) and not _swappable(node.test):
        new = copy.copy(node)
        new.test = ast.UnaryOp(ast.Not(), node.test)
        out.append(new)
    elif isinstance(node, ast.comprehension) and node.ifs:
        new = copy.copy(node)
        new.ifs = [ast.UnaryOp(ast.Not(), ast.BoolOp(ast.And(), node.ifs) if len(node.ifs) > 1 else node.ifs[0])]
        out.append(new)
    elif isinstance(node, ast.Expr) and isinstance(node.value, ast.Call):
        out.append(ast.Pass())
    elif isinstance(node, ast.AugAssign) and isinstance(node.op, (ast.Add, ast.Sub)):
        out.append(ast.AugAssign(node.target, ast.Sub() if isinstance(node.op, ast.Add) else ast.Add(), node.value))
    elif isinstance(node, ast.Break):
        out.append(ast.Continue())
    elif isinstance(node, ast.Continue):
        out.append(ast.Break())
    elif isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in ("min", "max"):
        new = copy.copy(node)
        new.func = ast.Name("max" if node.func.id == "min" else "min", ast.Load())
        out.append(new)
    return out


def _swappable(test: ast.AST) -> bool:
    """A condition whose own mutants already include its negation (one swapped comparison, `not`)."""
    return ((isinstance(test, ast.Compare) and len(test.ops) == 1 and type(test.ops[0]) in _COMPARE)
            or (isinstance(test, ast.UnaryOp) and isinstance(test.op, ast.Not)))


def _slots(tree: ast.AST):
    """Every (parent, field, index, node, in_message) in a fixed order, skipping what is not mutated."""
    def walk(parent, in_message):
        for name, value in ast.iter_fields(parent):
            if name in ("annotation", "returns", "decorator_list", "type_comment"):
                continue
            items = value if isinstance(value, list) else [value]
            for i, child in enumerate(items):
                if not isinstance(child, ast.AST):
                    continue
                if _is_docstring(parent, name, i, child) or _is_dunder_all(child):
                    continue
                yield parent, name, (i if isinstance(value, list) else None), child, in_message
                yield from walk(child, in_message or isinstance(child, (ast.JoinedStr, ast.Raise)))
    yield from walk(tree, False)


def _is_docstring(parent, name, i, child) -> bool:
    return (name == "body" and i == 0 and isinstance(parent, (ast.Module, ast.ClassDef, ast.FunctionDef))
            and isinstance(child, ast.Expr) and isinstance(child.value, ast.Constant)
            and isinstance(child.value.value, str))


def _is_dunder_all(child) -> bool:
    return isinstance(child, ast.Assign) and any(isinstance(t, ast.Name) and t.id == "__all__" for t in child.targets)


def _candidates(tree: ast.AST):
    for parent, name, i, node, in_message in _slots(tree):
        for new in _mutations(node, in_message):
            yield parent, name, i, node, new


def generate(source: str) -> list[tuple[Mutant, str]]:
    """All distinct mutants of a module: (description, mutated source)."""
    original = ast.unparse(ast.parse(source))
    lines = source.splitlines()
    seen, out = {original}, []
    count = sum(1 for _ in _candidates(ast.parse(source)))
    for k in range(count):
        tree = ast.parse(source)
        parent, name, i, node, new = next(c for j, c in enumerate(_candidates(tree)) if j == k)
        before = _op(node) if not isinstance(node, ast.stmt) else lines[node.lineno - 1].strip()
        if i is None:
            setattr(parent, name, new)
        else:
            getattr(parent, name)[i] = new
        ast.fix_missing_locations(tree)
        try:
            text = ast.unparse(tree)
            compile(text, "<mutant>", "exec")
        except (SyntaxError, ValueError):
            continue
        if text in seen:
            continue
        seen.add(text)
        after = _op(new) if not isinstance(node, ast.stmt) else ast.unparse(new).splitlines()[0]
        line = next((n.lineno for n in ast.walk(node) if hasattr(n, "lineno")), 0)   # comprehensions have none
        out.append((Mutant(len(out), line, f"{_short(before)}  ->  {_short(after)}"), text))
    return out


def _short(s: str, n: int = 70) -> str:
    s = " ".join(s.split())
    return s if len(s) <= n else s[: n - 3] + "..."


def snapshot(rev: str, dest: Path) -> None:
    """The committed tree at rev, unpacked; the working tree is never read or written."""
    blob = subprocess.run(["git", "-C", str(ROOT), "archive", "--format=tar", rev], check=True,
                          capture_output=True).stdout
    tar_path = dest.parent / "snapshot.tar"
    tar_path.write_bytes(blob)
    with tarfile.open(tar_path) as tar:
        tar.extractall(dest, filter="data")
    tar_path.unlink()


def run_tests(tree: Path, args: list[str], timeout: float) -> tuple[str, float]:
    env = {**os.environ, "PYTHONPATH": str(tree), "PYTHONDONTWRITEBYTECODE": "1"}
    cmd = [sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider",
           f"--basetemp={tree.parent / 'pytest-tmp'}", *args]
    start = time.monotonic()
    # its own process group, so that a timeout (or this runner's end) also stops what the tests spawned
    proc = subprocess.Popen(cmd, cwd=tree, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    try:
        rc = _wait_running(proc, timeout)
        if rc is None:
            return "timeout", time.monotonic() - start
    finally:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait()
    # a test process killed by a signal (llama.cpp's SIGSEGV / SIGABRT on a mutant) noticed the mutant
    status = {0: "survived", 1: "killed", 2: "killed"}.get(rc, "crashed" if rc < 0 or rc in (134, 139)
                                                           else f"error (pytest rc {rc})")
    return status, time.monotonic() - start


def _wait_running(proc: subprocess.Popen, timeout: float) -> int | None:
    """The exit status, or None once the process has *run* for `timeout` seconds: time it spends
    stopped (SIGSTOP: this shared machine pauses nice-19 processes while it measures) is not
    counted, so a pause is not taken for a mutant that hangs."""
    ran, last = 0.0, time.monotonic()
    while ran < timeout:
        try:
            return proc.wait(timeout=0.5)
        except subprocess.TimeoutExpired:
            now = time.monotonic()
            if not _stopped(proc.pid):
                ran += now - last
            last = now
    return None


def _stopped(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat[stat.rindex(")") + 2:].startswith(("T", "t"))


def check_isolation(tree: Path) -> None:
    """The snapshot, not the editable install in the working tree, must be what the tests import."""
    env = {**os.environ, "PYTHONPATH": str(tree), "PYTHONDONTWRITEBYTECODE": "1"}
    where = subprocess.run([sys.executable, "-c", "import edge, quantize; print(edge.__file__); print(quantize.__file__)"],
                           cwd=tree, env=env, capture_output=True, text=True, check=True).stdout.split()
    if not all(Path(p).resolve().is_relative_to(tree.resolve()) for p in where):
        sys.exit(f"tests would import {where}, not the snapshot in {tree}")


def module_name(module: str) -> str:
    """The name of a module for files: its stem, or its package's name for an __init__.py."""
    path = Path(module)
    return path.parent.name if path.stem == "__init__" else path.stem


def test_args(tree: Path, module: str) -> list[str]:
    """The module's fast tests, plus any tests/test_mutants_<name>.py or tests/<room>/test_mutants_<name>.py."""
    name = f"test_mutants_{module_name(module)}.py"
    extra = sorted(p.relative_to(tree) for p in [tree / "tests" / name, *(tree / "tests").glob(f"*/{name}")]
                   if p.exists())
    return [*TARGETS[module], *(str(p) for p in extra if str(p) not in TARGETS[module])]


def mutate_module(tree: Path, module: str, max_mutants: int | None, only: list[int] | None,
                  tests: list[str] | None) -> dict:
    path = tree / module
    source = path.read_text()
    mutants = generate(source)
    chosen = [m for m in mutants if only is None or m[0].index in only]
    if max_mutants and len(chosen) > max_mutants:  # an even spread over the file, reported as capped
        step = len(chosen) / max_mutants
        chosen = [chosen[int(k * step)] for k in range(max_mutants)]
    args = tests if tests is not None else test_args(tree, module)
    status, base = run_tests(tree, args, timeout=1800)
    if status != "survived":
        sys.exit(f"{module}: the tests fail on the unmutated code ({status}); fix that first")
    timeout = max(30.0, 5 * base)
    print(f"{module}: {len(mutants)} mutants, running {len(chosen)}; tests: {' '.join(args)} "
          f"(baseline {base:.1f}s, timeout {timeout:.0f}s)", flush=True)
    try:
        for mutant, text in chosen:
            path.write_text(text)
            mutant.status, mutant.seconds = run_tests(tree, args, timeout)
            mark = "SURVIVED" if mutant.status == "survived" else mutant.status
            print(f"  #{mutant.index:<4} line {mutant.line:<4} {mark:<9} {mutant.what}", flush=True)
    finally:
        path.write_text(source)
    counts = {s: sum(m.status == s for m, _ in chosen) for s in ("killed", "timeout", "crashed", "survived")}
    return {"module": module, "tests": args, "generated": len(mutants), "run": len(chosen),
            **counts, "errors": len(chosen) - sum(counts.values()),
            "mutants": [asdict(m) for m, _ in chosen]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("modules", nargs="*", default=list(TARGETS), help="module paths (default: all)")
    ap.add_argument("--rev", default="HEAD", help="the commit to mutate and test (default HEAD)")
    ap.add_argument("--max-mutants", type=int, default=None, help="cap per module (an even spread)")
    ap.add_argument("--only", type=int, nargs="*", default=None, help="mutant indexes to run")
    ap.add_argument("--list", action="store_true", help="print the mutants and exit")
    ap.add_argument("--tests", nargs="*", default=None, metavar="TEST",
                    help="run these tests instead of the module's own (e.g. slower ones on the survivors)")
    ap.add_argument("--overlay", nargs="*", default=[], metavar="PATH",
                    help="working-tree files copied over the snapshot (a new test not yet committed)")
    opts = ap.parse_args()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))   # clean up the snapshot and the tests
    for module in opts.modules:
        if module not in TARGETS:
            sys.exit(f"unknown module {module}; choose from {', '.join(TARGETS)}")
    with tempfile.TemporaryDirectory(prefix="mutation-") as tmp:
        tree = Path(tmp) / "tree"
        tree.mkdir()
        rev = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", opts.rev], check=True,
                             capture_output=True, text=True).stdout.strip()
        snapshot(rev, tree)
        for rel in opts.overlay:
            (tree / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(ROOT / rel, tree / rel)
        if opts.list:
            for module in opts.modules:
                for m, _ in generate((tree / module).read_text()):
                    print(f"{module} #{m.index:<4} line {m.line:<4} {m.what}")
            return
        check_isolation(tree)
        print(f"snapshot of {rev} in {tree}", flush=True)
        OUT.mkdir(parents=True, exist_ok=True)
        summary = []
        for module in opts.modules:
            result = mutate_module(tree, module, opts.max_mutants, opts.only, opts.tests)
            result["rev"] = rev
            whole = opts.only is None and opts.tests is None and not opts.max_mutants
            partial = "" if whole else time.strftime("-partial-%Y%m%d-%H%M%S")
            (OUT / f"{module_name(module)}-{rev}{partial}.json").write_text(json.dumps(result, indent=1))
            summary.append(result)
    print("\n| module | generated | run | killed | timeout | crashed | survived | errors |\n|---|---|---|---|---|---|---|---|")
    for r in summary:
        print(f"| {r['module']} | {r['generated']} | {r['run']} | {r['killed']} | {r['timeout']} | "
              f"{r['crashed']} | {r['survived']} | {r['errors']} |")
    for r in summary:
        for m in r["mutants"]:
            if m["status"] == "survived":
                print(f"survived: {r['module']} #{m['index']} line {m['line']}: {m['what']}")


if __name__ == "__main__":
    main()
