"""Continuous batching: several generations on one model, decoded together.

One scheduler thread owns a llama.cpp context with n_slots sequences (kv_unified, so each slot may
use its whole context of a shared pool sized n_slots * n_ctx: a slot never runs out of room while
the others are full). Each generation is the ordinary chat loop (chat.py) on its own thread,
talking to a BatchSequence: its eval() queues tokens for its slot and blocks until the step that
decoded them; sampling then uses the slot's logits row, copied out at that step, so the loop never
touches the context. Each step gathers what is queued into one llama_batch: one token for every
generating slot, then prompt tokens in chunks (capped while others generate, so a long prompt does
not freeze them); a new request joins at the next step. Slots keep their tokens in the KV cache
after a generation: the next prompt goes to the free slot sharing the longest prefix with it, else
the least recently used one, whose cells past the common prefix are removed (llama-server's
slots). What a slot held before a new prompt replaced it is first copied to host memory, and a
later prompt sharing more with such a copy than with its slot gets it back instead of evaluating
it again, as llama-server does by default (ram_states.py). Design:
/work/shared/ANCHORS.md sections 1, 3, 5.
"""

from __future__ import annotations

import itertools
import threading
import time
from collections import deque

import llama_cpp
import numpy as np

from edge.runtime.ram_states import RamStates
from edge.runtime.sequence import common_prefix
from edge.runtime.stream_lock import wait_in_line

PROMPT_CHUNK = 128   # prompt tokens per step while other slots generate
GATHER_S = 0.02      # how long a step waits for the slots it just served to queue their next token
SIMILAR = 0.1        # share of a prompt a cached prefix must cover to choose its slot (llama-server's)
WAIT_POLL_S = 0.5    # every blocking wait wakes this often to check that the scheduler still runs


class SchedulerError(RuntimeError):
    """A batched decode failed, or the scheduler is closed."""


class _Slot:
    def __init__(self, seq_id: int):
        self.seq_id = seq_id
        self.tokens: list[int] = []   # what the KV cache holds for this sequence, in order
        self.busy = False
        self.used = 0                 # LRU clock of the last release


class _Work:
    """Tokens a sequence asked to evaluate from position `start`; done when all are decoded."""

    def __init__(self, slot: _Slot | None, tokens: list[int], start: int, call=None):
        self.slot, self.tokens, self.start = slot, list(tokens), start
        self.call, self.result = call, None   # call(ctx): run on the scheduler thread instead (Scheduler.call)
        self.done = 0
        self.restored = 0                 # prompt tokens a saved state gave instead of evaluating them
        self.logits: np.ndarray | None = None
        self.error: str | None = None
        self.finished = threading.Event()


class BatchSequence:
    """One slot, held by one generation until release()."""

    def __init__(self, scheduler: "Scheduler", slot: _Slot):
        self.scheduler, self.slot = scheduler, slot
        self.logits: np.ndarray | None = None
        self._n = len(slot.tokens)

    @property
    def seq_id(self) -> int:
        return self.slot.seq_id

    @property
    def n_tokens(self) -> int:
        return self._n

    def prefill(self, prompt: list[int]) -> int:
        keep = common_prefix(self.slot.tokens, prompt)
        cache = self.scheduler.prompt_cache
        held, loaded = cache.prefill_slot(self, prompt, keep) if cache is not None else (keep, 0)  # system block from disk
        work = self._run(prompt[held:], held)
        return len(prompt) - keep - loaded - (work.restored if work else 0)

    def eval(self, tokens: list[int]) -> None:
        self._run(tokens, self._n)

    def sample(self, sampler, is_eog, remaining: int | None = None) -> int:
        return sampler.sample(None, is_eog, logits=self.logits, remaining=remaining)

    def release(self) -> None:
        self.scheduler.release(self.slot)

    def _run(self, tokens: list[int], start: int) -> "_Work | None":
        if not tokens:
            return None
        work = self.scheduler.submit(_Work(self.slot, tokens, start))
        if work.error:
            self._n = len(self.slot.tokens)
            raise SchedulerError(work.error)
        self._n, self.logits = start + len(tokens), work.logits
        return work


class Scheduler:
    """The batched context over `llama`'s model and the thread that decodes it. close() frees it."""

    def __init__(self, llama: llama_cpp.Llama, n_slots: int, n_ctx: int, *, n_batch: int = 512,
                 prompt_chunk: int = PROMPT_CHUNK, ram_cache_bytes: int = 0):
        if not 1 <= n_slots <= llama_cpp.llama_max_parallel_sequences():
            raise SchedulerError(f"parallel slots must be 1 to {llama_cpp.llama_max_parallel_sequences()}")
        params = type(llama.context_params).from_buffer_copy(llama.context_params)  # rope, KV types, threads
        params.n_ctx, params.n_seq_max, params.kv_unified = n_ctx * n_slots, n_slots, True
        params.n_batch = params.n_ubatch = n_batch
        self.ctx = llama_cpp.llama_init_from_model(llama._model.model, params)
        if not self.ctx:
            raise SchedulerError(f"llama.cpp could not create a context for {n_slots} slots of {n_ctx} tokens")
        self.n_slots, self.n_ctx, self.prompt_chunk = n_slots, n_ctx, prompt_chunk
        self.prompt_cache = None          # prompt_cache.PromptCache, set by the Engine
        self.n_batch = llama_cpp.llama_n_batch(self.ctx)
        self.n_vocab = llama.n_vocab()
        self.mem = llama_cpp.llama_get_memory(self.ctx)
        self.batch = llama_cpp.llama_batch_init(self.n_batch, 0, 1)
        self.slots = [_Slot(i) for i in range(n_slots)]
        self.steps = 0                    # decodes run (tests check that streams shared them)
        # Replaced slots' KV states in host memory, as the load plan sized them (load_plan.py's
        # saved_states_bytes: none without flash attention, where copying a slot's cells out of the
        # unified cache costs more than evaluating the prompt again).
        self.states = RamStates(ram_cache_bytes)
        self._clock = itertools.count(1)
        self._waiting: deque[int] = deque()  # generations waiting for a slot, in arrival order
        self._cv = threading.Condition()
        self._queue: list[_Work] = []
        self._expect: set[_Slot] = set()  # slots served by the last step
        self._closed = False
        self._thread = threading.Thread(target=self._loop, name="qwen3-edge-scheduler", daemon=True)
        self._thread.start()

    # ---- the generations' side ------------------------------------------------------------------
    def acquire(self, prompt: list[int], cancel: threading.Event | None = None,
                timeout: float | None = None) -> BatchSequence | None:
        """A free slot for `prompt` (longest cached prefix, else least recently used), waiting in
        arrival order while all are busy; None once `cancel` is set, WaitTimeout after `timeout`
        seconds, Closed once the scheduler is closed."""
        with self._cv:
            if not wait_in_line(self._cv, self._waiting, lambda: any(not s.busy for s in self.slots), cancel, timeout,
                                lambda: self._closed):
                return None
            slot = self._pick([s for s in self.slots if not s.busy], prompt)
            slot.busy = True
            return BatchSequence(self, slot)

    def _pick(self, free: list[_Slot], prompt: list[int]) -> _Slot:
        """The slot sharing the longest prefix with `prompt` when that is over SIMILAR of it (its
        conversation, or a long shared system prompt), else the least recently used: a slot that
        shares only the template's first tokens keeps its conversation for later."""
        shared = {s.seq_id: llama_cpp.Llama.longest_token_prefix(s.tokens, prompt) for s in free}
        best = max(free, key=lambda s: (shared[s.seq_id], -s.used))
        if shared[best.seq_id] > SIMILAR * len(prompt):
            return best
        return min(free, key=lambda s: s.used)

    def release(self, slot: _Slot) -> None:
        """The generation ended; its tokens stay cached for the next prompt that shares them."""
        with self._cv:
            slot.busy, slot.used = False, next(self._clock)
            self._cv.notify_all()

    def busy_slots(self) -> int:
        with self._cv:
            return sum(s.busy for s in self.slots)

    def submit(self, work: _Work) -> _Work:
        with self._cv:
            if self._closed:
                raise SchedulerError("the model is closed")
            self._queue.append(work)
            self._cv.notify_all()
        while not work.finished.wait(WAIT_POLL_S):
            if not self._thread.is_alive():
                raise SchedulerError("the scheduler stopped")
        return work

    def call(self, fn):
        """fn(ctx) on the scheduler thread between two steps (llama.cpp's context is used by one
        thread); its result."""
        work = self.submit(_Work(None, [], 0, call=fn))
        if work.error:
            raise SchedulerError(work.error)
        return work.result

    def close(self) -> None:
        with self._cv:
            self._closed = True
            self._cv.notify_all()
        self._thread.join(30)
        if not self._thread.is_alive() and self.ctx:
            llama_cpp.llama_batch_free(self.batch)
            llama_cpp.llama_free(self.ctx)
            self.ctx = None

    # ---- the scheduler thread -------------------------------------------------------------------
    def _loop(self) -> None:
        try:
            while works := self._gather():
                self._step(works)
        finally:
            with self._cv:
                self._closed = True
                for w in self._queue:
                    w.error = w.error or "the model is closed"
                    w.finished.set()
                self._queue.clear()

    def _gather(self) -> list[_Work]:
        """What is queued, once the slots served last step are back (or GATHER_S has passed):
        without that wait, the first slot to sample would run a step of one token alone."""
        with self._cv:
            deadline = time.monotonic() + GATHER_S
            while not self._closed:
                queued = {w.slot for w in self._queue}
                late = [s for s in self._expect if s.busy and s not in queued]
                now = time.monotonic()
                if self._queue and (not late or now >= deadline):
                    return list(self._queue)
                self._cv.wait(max(deadline - now, 0.001) if self._queue else WAIT_POLL_S)
            return []

    def _step(self, works: list[_Work]) -> None:
        for work in [w for w in works if w.call is not None]:
            try:
                work.result = work.call(self.ctx)
            except Exception as e:  # noqa: BLE001 -- the caller's error, not the scheduler's end
                work.error = f"{type(e).__name__}: {e}"
            self._finish(work)
        works = [w for w in works if w.call is None]
        if not works:
            return
        rows = self._fill(works)
        code = llama_cpp.llama_decode(self.ctx, self.batch)
        if code == 1 and self._purge_idle():  # no room: drop what idle slots keep, try once more
            code = llama_cpp.llama_decode(self.ctx, self.batch)
        self.steps += 1
        served = set()
        for work, take, row in rows:
            if code != 0:
                self._fail(work, code)
                continue
            work.slot.tokens.extend(work.tokens[work.done: work.done + take])
            work.done += take
            if work.done == len(work.tokens):
                logits = llama_cpp.llama_get_logits_ith(self.ctx, row)
                work.logits = np.ctypeslib.as_array(logits, shape=(self.n_vocab,)).copy()
                served.add(work.slot)
                self._finish(work)
        self._expect = served

    def _fill(self, works: list[_Work]) -> list[tuple[_Work, int, int]]:
        """The batch: one token per generating slot first, then prompt chunks."""
        b, n, rows = self.batch, 0, []
        generating = [w for w in works if len(w.tokens) - w.done == 1]
        prompts = [w for w in works if len(w.tokens) - w.done > 1]
        room = self.prompt_chunk if generating else self.n_batch
        for w in generating + prompts:
            left = len(w.tokens) - w.done
            take = min(left, self.n_batch - n, left if left == 1 else room)
            if take <= 0:
                continue
            if w.done == 0:
                self._begin(w)
                take = min(take, len(w.tokens))  # a saved state may have left fewer tokens to evaluate
            for j in range(take):
                k = w.done + j
                b.token[n + j], b.pos[n + j] = w.tokens[k], w.start + k
                b.n_seq_id[n + j], b.seq_id[n + j][0] = 1, w.slot.seq_id
                b.logits[n + j] = k == len(w.tokens) - 1
            rows.append((w, take, n + take - 1))
            n += take
            if left > 1:
                room -= take
        b.n_tokens = n
        return rows

    def _begin(self, w: _Work) -> None:
        """A work's first step: copy what the slot held if a new prompt replaces it, then give the
        slot the copy sharing most with the prompt when that beats what the slot shares."""
        slot = w.slot
        self.states.replacing(self.ctx, slot.seq_id, slot.tokens, w.start)
        prompt = slot.tokens[: w.start] + w.tokens if len(w.tokens) > 1 else w.tokens
        n = self.states.restore(self.ctx, slot.seq_id, prompt, w.start) if len(w.tokens) > 1 else None
        if n is None:
            self._truncate(w)
        else:  # the copy's first n tokens, or an empty sequence (refused): the rest is evaluated
            slot.tokens, w.tokens, w.restored, w.start = prompt[:n], prompt[n:], max(n - w.start, 0), n

    def drop_saved(self) -> None:
        """Forget the copies (tests that need every prompt evaluated)."""
        self.call(lambda ctx: self.states.clear())

    def _truncate(self, w: _Work) -> None:
        """Remove the slot's cells from w.start on (what the new tokens replace)."""
        slot = w.slot
        if len(slot.tokens) <= w.start:
            return
        if llama_cpp.llama_memory_seq_rm(self.mem, slot.seq_id, w.start, -1):
            del slot.tokens[w.start:]
            return
        llama_cpp.llama_memory_seq_rm(self.mem, slot.seq_id, -1, -1)  # a partial removal failed: start over
        w.tokens, w.start, slot.tokens = slot.tokens[: w.start] + w.tokens, 0, []

    def _purge_idle(self) -> bool:
        idle = [s for s in self.slots if not s.busy and s.tokens]
        for s in idle:
            llama_cpp.llama_memory_seq_rm(self.mem, s.seq_id, -1, -1)
            s.tokens = []
        return bool(idle)

    def _fail(self, work: _Work, code: int) -> None:
        if code != 1:  # the cache may hold part of the batch: forget this slot's cells
            llama_cpp.llama_memory_seq_rm(self.mem, work.slot.seq_id, -1, -1)
            work.slot.tokens = []
        work.error = ("no room left in the KV cache" if code == 1
                      else f"llama.cpp failed to decode a batch (code {code})")
        self._finish(work)

    def _finish(self, work: _Work) -> None:
        with self._cv:
            self._queue.remove(work)
            work.finished.set()
            self._cv.notify_all()
