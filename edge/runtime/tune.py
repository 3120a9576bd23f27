"""Per-machine calibration: measure a few settings once per (machine, model shape, backend,
bindings version), cache the choice, and let Engine.load use it where nothing was asked.

The measurement is llama-bench's (bench.py: cleared cache, synchronized decodes) on one copy of
the model and one llama.cpp context per flash-attention setting; thread counts are switched on the
same context (llama_set_n_threads), so no candidate pays a reload. Decoding is measured at depth 0
and at tune_rules.CHAT_DEPTH, prompts as a 128-token batch, each candidate twice, interleaved, best
kept (a busy machine's noise falls on every candidate alike). Under TIME_BUDGET_S on the 0.6B.
The decisions are tune_rules' pure functions.
"""

from __future__ import annotations

import json
import os
import random
import tempfile
import time
from pathlib import Path
from typing import Callable

import llama_cpp
import llama_cpp._logger

from edge.runtime.bench import RawContext
from edge.runtime.context_plan import physical_cores
from edge.models.store import store_root
from edge.runtime.tune_rules import (CHAT_DEPTH, Measured, Setting, Tuned, candidates, choose, machine_id,
                                     outgrown_by_idle, tune_key, tuning_enabled)

TIME_BUDGET_S = 12.0   # candidates not reached by then are left out (the 0.6B needs about 8 s on 2 cores)
PP_TOKENS = 64
TG_TOKENS = 8
ROUNDS = 2
CAP_S = 0.75           # no single measurement runs longer (a busy core can make one take seconds per token)


class TuneError(RuntimeError):
    """The calibration could not run (the model would not load here)."""


def cache_path() -> Path:
    return store_root() / "tune.json"


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                if line.startswith(("model name", "Hardware", "cpu model")):
                    return line.partition(":")[2].strip()
    except OSError:
        pass
    import platform
    return platform.processor() or platform.machine()


def this_machine(device_names: list[str]) -> str:
    return machine_id(cpu_model(), os.cpu_count() or 1, physical_cores(), device_names)


def model_shape(info) -> dict[str, int]:
    """engine.ModelInfo's dimensions and weight type: what the speeds depend on."""
    return {"layers": info.n_layers, "embd": info.n_embd, "heads": info.n_heads, "kv_heads": info.n_kv_heads,
            "head_dim": info.head_dim, "file_type": int(info.file_type or 0)}


def read_cache(path: Path | None = None) -> dict:
    path = path or cache_path()
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        return data if isinstance(data, dict) else {}
    except (OSError, ValueError):
        return {}


def write_cache(key: str, tuned: Tuned, note: dict, path: Path | None = None) -> None:
    """Add one entry, replacing the file atomically (a killed run leaves the old cache)."""
    path = path or cache_path()
    data = read_cache(path)
    data[key] = {**tuned.to_dict(), **note, "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tune-", suffix=".json")
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        json.dump(data, f, indent=1, sort_keys=True)
    os.replace(tmp, path)


def current_load() -> float:
    """The 1-minute load average (runnable processes), 0.0 where the OS does not say."""
    try:
        return round(os.getloadavg()[0], 2)
    except (AttributeError, OSError):
        return 0.0


def cached(key: str, path: Path | None = None) -> Tuned | None:
    entry = read_cache(path).get(key)
    try:
        return Tuned.from_dict(entry) if isinstance(entry, dict) else None
    except (KeyError, TypeError, ValueError):
        return None


def _decode_each(raw: RawContext, tokens: list[int], give_up_s: float = float("inf")) -> float:
    """Tokens/s of one synchronized decode per token; stops early past give_up_s (a candidate
    several times slower than the best so far need not finish to lose)."""
    t0 = time.perf_counter()
    done = 0
    for token in tokens:
        raw.decode([token])
        raw.synchronize()
        done += 1
        if time.perf_counter() - t0 > give_up_s:
            break
    return done / (time.perf_counter() - t0)


def _give_up(fastest: float) -> float:
    """Seconds after which a TG_TOKENS decode stops: CAP_S, or 4x the fastest candidate's time."""
    return min(CAP_S, 4 * TG_TOKENS / fastest) if fastest else CAP_S


def _prompt(raw: RawContext, tokens: list[int], chunk: int = 32) -> float:
    """Tokens/s of prompt batches from an empty cache, stopping after CAP_S."""
    raw.clear()
    t0 = time.perf_counter()
    done = 0
    for i in range(0, len(tokens), chunk):
        raw.decode(tokens[i:i + chunk])
        raw.synchronize()
        done += len(tokens[i:i + chunk])
        if time.perf_counter() - t0 > CAP_S:
            break
    return done / (time.perf_counter() - t0)


def _measure_context(ctx, group: list[Setting], rng: random.Random, vocab: int, deadline: float, end: float,
                     clock: Callable[[], float]) -> dict[Setting, list[float]]:
    """[tg0, tg_depth, pp] per setting of one flash-attention context (tg_depth 0: not measured).
    Depth 0 first, fewest threads first (so a setting that a busy machine makes crawl is cut after
    its first token against a known reference): decoding, then a prompt batch where decoding came
    within 3x of the best, ROUNDS times (a second round only before `deadline`). Then, when the
    fill fits before `end`, the cache is filled to CHAT_DEPTH once with the fastest prompt threads
    and each setting that was within 3x decodes TG_TOKENS there, cut back to CHAT_DEPTH after each."""
    raw = RawContext(ctx)
    memory = llama_cpp.llama_get_memory(ctx)
    group = sorted(group, key=lambda s: s.threads)
    best: dict[Setting, list[float]] = {s: [0.0, 0.0, 0.0] for s in group}
    tokens = lambda n: [rng.randrange(vocab) for _ in range(n)]  # noqa: E731
    llama_cpp.llama_set_n_threads(ctx, group[0].threads, group[0].threads)
    raw.clear()
    _decode_each(raw, tokens(1))  # warm-up
    for r in range(ROUNDS):
        if r and clock() > deadline:
            break
        for s in group:
            llama_cpp.llama_set_n_threads(ctx, s.threads, s.threads)
            b = best[s]
            raw.clear()
            fastest = max(v[0] for v in best.values())
            b[0] = max(b[0], _decode_each(raw, tokens(TG_TOKENS), _give_up(fastest)))
            if b[0] * 3 >= max(v[0] for v in best.values()):  # a prompt batch only where decoding was close
                b[2] = max(b[2], _prompt(raw, tokens(PP_TOKENS)))
    top_tg0 = max(v[0] for v in best.values())
    close = [s for s in group if best[s][0] * 3 >= top_tg0]
    fill = max(group, key=lambda s: best[s][2])
    if not best[fill][2] or clock() + CHAT_DEPTH / best[fill][2] > end:
        return best  # no time to fill the cache: decided at depth 0 alone
    llama_cpp.llama_set_n_threads(ctx, fill.threads, fill.threads)
    raw.clear()
    depth = tokens(CHAT_DEPTH)
    for i in range(0, CHAT_DEPTH, 512):
        raw.decode(depth[i:i + 512])
    raw.synchronize()
    for r in range(ROUNDS):
        if r and clock() > deadline:
            break
        for s in close:
            llama_cpp.llama_set_n_threads(ctx, s.threads, s.threads)
            fastest = max(v[1] for v in best.values())
            b = best[s]
            b[1] = max(b[1], _decode_each(raw, tokens(TG_TOKENS), _give_up(fastest)))
            llama_cpp.llama_memory_seq_rm(memory, 0, CHAT_DEPTH, -1)
    return best


def measure(path: str | Path, *, n_gpu_layers: int, extra_buffers: bool, settings: list[Setting],
            budget_s: float | None = None, seed: int = 0,
            clock: Callable[[], float] = time.perf_counter) -> list[Measured]:
    """Each setting's speeds on this machine now (tune_rules.Measured), best of up to ROUNDS:
    the second round is left out once budget_s has passed."""
    rng = random.Random(seed)
    budget_s = TIME_BUDGET_S if budget_s is None else budget_s
    started = clock()
    settings_by_fa = {fa: [s for s in settings if s.flash_attn == fa] for fa in sorted({s.flash_attn for s in settings})}
    was = llama_cpp._logger.logger.level
    llama_cpp._logger.set_verbose(False)  # the bindings print llama.cpp's log unless told not to
    try:
        mparams = llama_cpp.llama_model_default_params()
        mparams.n_gpu_layers = n_gpu_layers
        mparams.use_extra_bufts = extra_buffers
        model = llama_cpp.llama_model_load_from_file(str(path).encode(), mparams)
        if not model:
            raise TuneError(f"{path}: llama.cpp could not load the model to calibrate")
        best: dict[Setting, list[float]] = {}
        try:
            vocab = llama_cpp.llama_vocab_n_tokens(llama_cpp.llama_model_get_vocab(model))
            for i, (fa, group) in enumerate(settings_by_fa.items()):
                cparams = llama_cpp.llama_context_default_params()
                cparams.n_ctx = CHAT_DEPTH + PP_TOKENS + 2 * TG_TOKENS + 64
                cparams.n_batch = cparams.n_ubatch = 512
                cparams.n_threads = cparams.n_threads_batch = max(s.threads for s in group)
                cparams.flash_attn_type = (llama_cpp.LLAMA_FLASH_ATTN_TYPE_ENABLED if fa
                                           else llama_cpp.LLAMA_FLASH_ATTN_TYPE_DISABLED)
                ctx = llama_cpp.llama_init_from_model(model, cparams)
                if not ctx:
                    continue
                try:  # each context gets its share of the time left
                    share = max(budget_s - (clock() - started), 0.0) / (len(settings_by_fa) - i)
                    best.update(_measure_context(ctx, group, rng, vocab, clock() + share / 2, clock() + share,
                                                 clock))
                finally:
                    llama_cpp.llama_free(ctx)
        finally:
            llama_cpp.llama_model_free(model)
    finally:
        llama_cpp._logger.logger.setLevel(was)
    return [Measured(s, *best[s]) for s in settings if s in best]


def calibrate(path: str | Path, info, backend: str, *, n_gpu_layers: int, extra_buffers: bool,
              device_names: list[str], cache: Path | None = None) -> tuple[Tuned, list[Measured]]:
    """Measure, choose, cache; returns the choice (with the seconds it took) and the measurements."""
    started = time.perf_counter()
    load = current_load()
    settings = candidates(physical_cores(), backend)
    measured = measure(path, n_gpu_layers=n_gpu_layers, extra_buffers=extra_buffers, settings=settings)
    tuned = choose(measured)
    tuned = Tuned(**{**tuned.to_dict(), "seconds": round(time.perf_counter() - started, 2)})
    try:
        write_cache(key_for(info, backend, device_names), tuned,
                    {"model": str(path), "backend": backend, "bindings": llama_cpp.__version__,
                     "load": load, "cores": physical_cores(),
                     "measured": [{"flash_attn": m.setting.flash_attn, "threads": m.setting.threads,
                                   "tg0": round(m.tg0, 2), "tg_depth": round(m.tg_depth, 2), "pp": round(m.pp, 2)}
                                  for m in measured]}, cache)
    except OSError:
        pass  # a read-only store: the choice holds for this load, and is measured again next time
    return tuned, measured


def tune_model(path: str | Path, n_gpu_layers: int | None = None) -> tuple[Tuned, list[Measured], str]:
    """`qwen3-edge tune`: measure again whatever is cached; (choice, measurements, backend)."""
    from edge.runtime.cpu_buffers import default_extra_buffers
    from edge.runtime.engine import EngineError, detect_backend, local_offload_targets, read_model_info
    path = Path(path)
    info = read_model_info(path)
    targets = local_offload_targets()
    layers = (-1 if targets else 0) if n_gpu_layers is None else n_gpu_layers
    backend = detect_backend(layers, targets)
    try:
        tuned, measured = calibrate(path, info, backend, n_gpu_layers=layers, extra_buffers=bool(default_extra_buffers()),
                                    device_names=[d.description for d in targets])
    except (TuneError, RuntimeError, ValueError) as e:
        raise EngineError(f"{path}: calibration failed ({e})") from None
    return tuned, measured, backend


def key_for(info, backend: str, device_names: list[str]) -> str:
    return tune_key(this_machine(device_names), model_shape(info), backend, llama_cpp.__version__)


def tuned_defaults(path: str | Path, info, backend: str, *, n_gpu_layers: int, extra_buffers: bool,
                   device_names: list[str], tune: bool | None = None) -> tuple[Tuned | None, bool]:
    """(the tuned choice or None, whether it was measured just now). tune None follows
    QWEN3_EDGE_TUNE (on unless it says off: then the cache is not read either, so a run is
    exactly the fixed defaults); False is off; True measures when nothing is cached."""
    if tune is False or (tune is None and not tuning_enabled(os.environ)):
        return None, False
    key = key_for(info, backend, device_names)
    found = cached(key)
    if found is not None and not outgrown_by_idle(read_cache().get(key, {}), current_load()):
        return found, False
    tuned, _ = calibrate(path, info, backend, n_gpu_layers=n_gpu_layers, extra_buffers=extra_buffers,
                         device_names=device_names)
    return tuned, True
