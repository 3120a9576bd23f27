"""The decisions of the per-machine calibration (tune.py), as pure functions.

No fixed default is right everywhere: flash attention and the thread count change sign between a
2-core VM, a 16-core Xeon and a GPU (issue 25). The calibration measures a few candidates; these
functions say which candidates, which one wins, and under which key the choice is cached.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass
from typing import Iterable, Mapping

TUNE_ENV = "QWEN3_EDGE_TUNE"      # "0"/"off"/"no"/"false": never calibrate (the test suite sets it)
CHAT_DEPTH = 512                  # the chat depth decoding is measured at (and at depth 0)
TIE = 0.02                        # candidates within 2% are equal: the simpler one wins
PROMPT_TIE = 0.15                 # a calibration's prompt batch is small and noisy: within 15%, equal


@dataclass(frozen=True)
class Setting:
    """One candidate: flash attention on or off and the CPU threads llama.cpp uses."""
    flash_attn: bool
    threads: int


@dataclass(frozen=True)
class Measured:
    """A candidate's speeds in tokens/s: decoding at depth 0, at CHAT_DEPTH, and a prompt batch."""
    setting: Setting
    tg0: float
    tg_depth: float
    pp: float


@dataclass(frozen=True)
class Tuned:
    """What the calibration chose: flash attention for the context, threads for decoding and
    threads for prompt batches (llama.cpp takes the two separately), and how it was measured."""
    flash_attn: bool
    n_threads: int
    n_threads_batch: int
    tg0: float = 0.0
    tg_depth: float = 0.0
    pp: float = 0.0
    seconds: float = 0.0

    def describe(self) -> str:
        fa = "on" if self.flash_attn else "off"
        threads = f"{self.n_threads} thread{'s' if self.n_threads != 1 else ''}"
        if self.n_threads_batch != self.n_threads:
            threads += f" ({self.n_threads_batch} for prompts)"
        return f"tuned for this machine: flash attention {fa}, {threads}"

    def describe_applied(self, threads: int, threads_batch: int, flash_attn: bool) -> str:
        """describe(), plus what the load used instead where an explicit option (or a quantized
        cache, which needs flash attention) overrode the calibration: the line must say what runs."""
        instead = []
        if flash_attn != self.flash_attn:
            instead.append(f"flash attention {'on' if flash_attn else 'off'}")
        if (threads, threads_batch) != (self.n_threads, self.n_threads_batch):
            batch = f" ({threads_batch} for prompts)" if threads_batch != threads else ""
            instead.append(f"{threads} thread{'s' if threads != 1 else ''}{batch}")
        return self.describe() + (f"; in use instead: {', '.join(instead)}" if instead else "")

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping) -> "Tuned":
        return cls(flash_attn=bool(d["flash_attn"]), n_threads=int(d["n_threads"]),
                   n_threads_batch=int(d["n_threads_batch"]), tg0=float(d.get("tg0", 0)),
                   tg_depth=float(d.get("tg_depth", 0)), pp=float(d.get("pp", 0)), seconds=float(d.get("seconds", 0)))


def tuning_enabled(env: Mapping[str, str]) -> bool:
    """Calibration runs unless QWEN3_EDGE_TUNE says 0, off, no or false."""
    return env.get(TUNE_ENV, "").strip().lower() not in ("0", "off", "no", "false")


def outgrown_by_idle(entry: Mapping, load_now: float) -> bool:
    """Whether a cached choice of fewer threads than cores was made under a load that has gone
    since (at least one core's worth): measured again, else a calibration run beside a busy
    build keeps a serve at 1 of 2 threads, 0.52-0.67x of its speed, once the machine is idle
    (benchmarks/RESULTS.md, 2026-12-05). The other way (an idle choice, a busy machine now) keeps
    the cache: loads come and go, and a calibration on every start would cost more. Entries
    written before the load was recorded are kept as they are."""
    load, cores, threads = entry.get("load"), entry.get("cores"), entry.get("n_threads")
    if not all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in (load, cores, threads)):
        return False
    return threads < cores and load - load_now >= 1.0


def thread_candidates(cores: int, backend: str = "cpu") -> list[int]:
    """Thread counts worth measuring: all physical cores, one fewer (a core left to the rest of
    the machine), half, a quarter and one (a loaded machine: on a busy 2-core VM one thread
    decoded 5x faster than two). With a GPU holding the layers the CPU threads barely matter:
    only the cores."""
    cores = max(1, cores)
    if backend != "cpu":
        return [cores]
    return sorted({cores, max(1, cores - 1), max(1, cores // 2), max(1, cores // 4), 1}, reverse=True)


def candidates(cores: int, backend: str = "cpu") -> list[Setting]:
    """Every (flash attention, threads) pair the calibration measures, the default-like first."""
    return [Setting(fa, t) for fa in (False, True) for t in thread_candidates(cores, backend)]


def decode_score(m: Measured, use_depth: bool = True) -> float:
    """Decoding speed over a chat: the geometric mean of depth 0 and CHAT_DEPTH (flash attention
    may win at one and lose at the other; a chat spends its time at both); depth 0 alone where
    the calibration had no time to measure at depth (tg_depth 0)."""
    if not use_depth:
        return max(m.tg0, 0.0)
    return (max(m.tg0, 0.0) * max(m.tg_depth, 0.0)) ** 0.5


def _best(items: list, key, prefer, tie: float = TIE) -> object:
    """The item with the highest key; within `tie` of it, the one `prefer` ranks first."""
    top = max(key(i) for i in items)
    close = [i for i in items if key(i) >= top * (1 - tie)]
    return sorted(close, key=prefer)[0]


def choose(measured: Iterable[Measured]) -> Tuned:
    """Flash attention by the best decode score either setting reaches (it is one per context);
    then, with it, the decoding threads by decode score and the prompt threads by pp. Within TIE
    fewer threads win (they leave cores to the rest of the machine), and flash attention on:
    llama.cpp's own default (auto, on for the CPU, as llama-server runs), which also keeps serve's
    slot state copies cheap (load_plan.saved_states_bytes); for prompts the decoding threads win a tie."""
    ms = [m for m in measured if m.tg0 > 0 or m.tg_depth > 0 or m.pp > 0]
    if not ms:
        raise ValueError("nothing was measured")
    top_tg0 = max(m.tg0 for m in ms)
    # at depth too only when every contender (within 3x at depth 0) was measured there
    depth = all(m.tg_depth > 0 for m in ms if m.tg0 * 3 >= top_tg0)
    score = lambda m: decode_score(m, depth)  # noqa: E731
    per_fa = {fa: [m for m in ms if m.setting.flash_attn == fa] for fa in (False, True)}
    best_fa = {fa: max(score(m) for m in group) for fa, group in per_fa.items() if group}
    fa = _best(list(best_fa), key=lambda f: best_fa[f], prefer=lambda f: not f)
    group = per_fa[fa]
    dec = _best(group, key=score, prefer=lambda m: m.setting.threads)
    # Prompt threads: within PROMPT_TIE the decoding threads (a calibration batch is too small to
    # show a prompt's gain from more cores: on a 16-core Xeon every count measured 280-330 tok/s,
    # and the fewest of the best, 4, then halved pp512); another count only where clearly faster.
    batch = _best(group, key=lambda m: m.pp, prefer=lambda m: (m.setting.threads != dec.setting.threads,
                                                              m.setting.threads), tie=PROMPT_TIE)
    return Tuned(flash_attn=fa, n_threads=dec.setting.threads, n_threads_batch=batch.setting.threads,
                 tg0=dec.tg0, tg_depth=dec.tg_depth, pp=batch.pp)


def machine_id(cpu_model: str, logical_cpus: int, physical: int, devices: Iterable[str]) -> str:
    """The machine as the choice depends on it: the CPU, its cores, the offload devices."""
    return json.dumps({"cpu": cpu_model, "logical": logical_cpus, "physical": physical,
                       "devices": sorted(devices)}, sort_keys=True)


def tune_key(machine: str, shape: Mapping[str, int], backend: str, bindings_version: str) -> str:
    """The cache key: (machine, model shape, backend, bindings version), hashed. The shape is the
    GGUF's dimensions and weight type, so every file of one model shape and type shares it."""
    text = json.dumps({"machine": machine, "shape": dict(sorted(shape.items())), "backend": backend,
                       "bindings": bindings_version}, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:24]


def apply_tuned(tuned: Tuned | None, asked_threads: int | None, asked_flash_attn: bool | None,
                default_threads: int) -> tuple[int, int, bool | None]:
    """(n_threads, n_threads_batch, flash_attn) to load with: what was asked always wins; then
    the tuned choice; else the fixed defaults (physical cores, flash attention left to the
    Engine's rule, None)."""
    if asked_threads is not None:
        threads = batch = asked_threads
    elif tuned is not None:
        threads, batch = tuned.n_threads, tuned.n_threads_batch
    else:
        threads = batch = default_threads
    flash = asked_flash_attn if asked_flash_attn is not None else (tuned.flash_attn if tuned else None)
    return threads, batch, flash
