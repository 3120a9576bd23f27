"""The one mapping from a request to Chat turns: a ChatRequest (openai_api.parse_request, or any
other API dialect checked into one) runs as `n` Chat turns, and comes back as Choices that each
dialect shapes its own way. The server and the library entry point `complete()` both run here,
so there is one generation path.

What a request can ask for beyond Chat.stream's arguments is done here, around the Chat:
- stop strings cut the answer (StopFilter) and end the generation;
- `n` choices run through the engine's parallel slots when it has them, else in turn; a seeded
  request gives choice i the seed + i (choice 0 is what n=1 gives);
- `ignore_eos` bans the end-of-generation tokens through llama.cpp's logit-bias sampler;
- `logprobs`: the sampled token's log-probability under the temperature the chain used, and the
  top alternatives, read from the logits llama.cpp sampled from (LogprobSampler);
- a last assistant message is continued (prefill, as llama-server does) and a request with only a
  system prompt is answered (the model speaks first): RequestChat renders those prompts.
"""

from __future__ import annotations

import math
import queue
import threading
import weakref
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import llama_cpp
import numpy as np

from edge.chat import Chat, ChatError, Event, Message, Reply
from edge.runtime.engine import Engine
from edge.protocol.modes import Mode
from edge.serve.openai_api import ChatRequest, RequestError, StopFilter, finish_reason, parse_request

END_OF_TURN = "<|im_end|>"


@dataclass
class Choice:
    """One finished choice of a request, in neutral terms."""
    index: int
    reply: Reply
    answer: str                          # after stop strings
    finish_reason: str                   # OpenAI's words: stop, length, tool_calls
    logprobs: list[dict] | None = None   # OpenAI's logprobs.content entries, when asked for
    stop_string: str | None = None       # the stop string that ended it, if one did


@dataclass
class ChoiceEvent:
    """An event of choice `index`; answer events carry the logprobs of the tokens they hold."""
    index: int
    event: Event
    logprobs: list[dict] = field(default_factory=list)


# ---- the Chat a request runs as -----------------------------------------------------------------
class RequestChat(Chat):
    """A Chat that can also continue a last assistant message (`prefill`), answer a turn with no
    user message (`open_turn`: the empty stand-in message Chat.stream needs is not rendered), and
    continue a raw text prompt with no template at all (`raw`: /v1/completions, Ollama's raw)."""

    def __init__(self, engine: Engine, *, prefill: Message | None = None, open_turn: bool = False,
                 raw: str | None = None, **kwargs):
        super().__init__(engine, **kwargs)
        self.prefill, self.open_turn, self.raw = prefill, open_turn, raw

    def messages(self, history: list[Message] | None = None) -> list[dict]:
        msgs = super().messages(history)
        if self.open_turn and msgs and msgs[-1] == {"role": "user", "content": ""}:
            msgs = msgs[:-1]
        return msgs + ([self.prefill.for_template()] if self.prefill is not None else [])

    def render(self, messages: list[dict], thinking: bool, tools: list[dict] | None = None) -> str:
        if self.raw is not None:
            return self.raw
        if self.prefill is None:
            return super().render(messages, thinking, tools)
        from edge.protocol.chat_template import TemplateError
        try:
            text = self.engine.template.render(messages, add_generation_prompt=False, enable_thinking=thinking,
                                               tools=tools)
        except TemplateError as e:
            raise ChatError(f"chat template failed: {e}") from None
        return continuation_prompt(text)

    def _generate(self, turn, prompt, thinking):
        if self.recorder is not None:  # logprobs: read each row of logits the chain samples from
            self.recorder.temperature = self.sampling_params(thinking).temperature
            turn.sampler = LogprobSampler(turn.sampler, self.recorder, turn)
        return (yield from super()._generate(turn, prompt, thinking))

    recorder: "LogprobRecorder | None" = None


def continuation_prompt(rendered: str) -> str:
    """A conversation rendered with its last assistant message, open for the model to go on: the
    text up to that message's end-of-turn marker (llama-server's prefill)."""
    end = rendered.rfind(END_OF_TURN)
    return rendered[:end] if end >= 0 else rendered


_EOG: "weakref.WeakKeyDictionary[Any, tuple[int, ...]]" = weakref.WeakKeyDictionary()
_LOCKS: "weakref.WeakKeyDictionary[Any, threading.Lock]" = weakref.WeakKeyDictionary()
_LOCKS_GUARD = threading.Lock()


def engine_lock(engine: Engine) -> threading.Lock | None:
    """The lock that keeps a single-stream engine to one generation at a time (shared by the
    server and complete(), so the two never decode on one llama.cpp context at once); None for an
    engine with parallel slots, whose scheduler queues generations itself."""
    if getattr(engine, "scheduler", None) is not None:
        return None
    with _LOCKS_GUARD:
        return _LOCKS.setdefault(engine, threading.Lock())


def eog_tokens(engine: Engine) -> tuple[int, ...]:
    """The model's end-of-generation tokens (llama.cpp's list), found once per engine."""
    if engine not in _EOG:
        vocab = engine.llama._model.vocab
        _EOG[engine] = tuple(t for t in range(engine.llama.n_vocab()) if llama_cpp.llama_vocab_is_eog(vocab, t))
    return _EOG[engine]


def sampling_for(engine: Engine, req: ChatRequest) -> dict[str, Any]:
    """The request's sampler overrides, with ignore_eos as a -inf bias on every end token, and
    token ids checked against the vocabulary."""
    sampling = dict(req.sampling)
    bias = dict(sampling.pop("logit_bias", ()))
    n_vocab = engine.llama.n_vocab()
    if (bad := next((t for t in bias if t >= n_vocab), None)) is not None:
        raise RequestError(f"logit_bias names token {bad}, beyond the vocabulary of {n_vocab}", "logit_bias")
    if req.ignore_eos:
        bias.update({t: -math.inf for t in eog_tokens(engine)})
    if bias:
        sampling["logit_bias"] = tuple(sorted(bias.items()))
    return sampling


def chat_for(engine: Engine, req: ChatRequest, index: int = 0) -> RequestChat:
    """The Chat that runs choice `index` of `req` (its history set, its turn still to run)."""
    seed = None if req.seed is None else (req.seed + index) % 0xFFFFFFFF
    open_turn = req.user is None and not (req.history and req.history[-1].role == "tool")
    chat = RequestChat(engine, system=req.system, mode=Mode.NO_THINK if req.raw_prompt is not None else req.mode,
                       budget=req.budget, max_tokens=req.max_tokens, presence_penalty=req.presence_penalty, seed=seed,
                       sampling=sampling_for(engine, req), prefill=req.prefill, open_turn=open_turn, raw=req.raw_prompt)
    chat.history = list(req.history)
    if req.logprobs:
        chat.recorder = LogprobRecorder(engine, req.top_logprobs)
    return chat


# ---- logprobs -----------------------------------------------------------------------------------
class LogprobRecorder:
    """Log-probabilities of the answer's sampled tokens, OpenAI's shape: {token, logprob, bytes,
    top_logprobs}. The distribution is the logits row llama.cpp sampled from, divided by the
    temperature the chain applied (greedy: the raw logits)."""

    def __init__(self, engine: Engine, top: int):
        self.engine, self.top = engine, top
        self.temperature = 1.0          # the chain's, set when the turn starts
        self.pending: list[dict] = []   # recorded since the last answer event took them
        self.all: list[dict] = []

    def record(self, row: np.ndarray, token: int) -> None:
        scaled = row.astype(np.float64) / (self.temperature if self.temperature > 0 else 1.0)
        peak = scaled.max()
        logz = peak + math.log(np.exp(scaled - peak).sum())
        entry = self._entry(token, float(scaled[token] - logz))
        if self.top:
            best = np.argpartition(-scaled, self.top)[: self.top]
            best = best[np.argsort(-scaled[best], kind="stable")]
            entry["top_logprobs"] = [self._entry(int(t), float(scaled[t] - logz)) for t in best]
        else:
            entry["top_logprobs"] = []
        self.pending.append(entry)
        self.all.append(entry)

    def _entry(self, token: int, logprob: float) -> dict:
        raw = self.engine.llama.detokenize([token], special=True)
        return {"token": raw.decode("utf-8", "replace"), "logprob": max(logprob, -9999.0), "bytes": list(raw)}

    def take(self) -> list[dict]:
        out, self.pending = self.pending, []
        return out


class LogprobSampler:
    """The turn's TokenSampler, reading the logits row before each draw; everything else is the
    sampler's own (arm, grammar, rejections, close)."""

    def __init__(self, inner, recorder: LogprobRecorder, turn):
        self.inner, self.recorder, self.turn = inner, recorder, turn

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def sample(self, ctx, is_eog, logits: np.ndarray | None = None, remaining: int | None = None) -> int:
        n_vocab = self.inner.n_vocab
        row = np.array(logits if logits is not None else np.ctypeslib.as_array(
            llama_cpp.llama_get_logits_ith(ctx.ctx, -1), shape=(n_vocab,)), dtype=np.float32)
        token = self.inner.sample(ctx, is_eog, logits=logits, remaining=remaining)
        if not self.turn.in_think and not is_eog(token):  # the answer's tokens, as OpenAI counts them
            self.recorder.record(row, token)
        return token


# ---- running a request --------------------------------------------------------------------------
class Generation:
    """A request's choices, run on the caller's thread (n > 1 on parallel slots: one thread each).
    cancel() from any thread stops them within a token, and stops a wait for a slot."""

    def __init__(self, engine: Engine, req: ChatRequest, lock: threading.Lock | None = None):
        self.engine, self.req, self.lock = engine, req, lock
        self.chats = [chat_for(engine, req, i) for i in range(req.n)]
        self.cancelled = threading.Event()
        self.choices: list[Choice | None] = [None] * req.n

    def cancel(self) -> None:
        self.cancelled.set()
        for chat in self.chats:
            chat.cancel()

    def run(self, emit: Callable[[ChoiceEvent], None]) -> list[Choice]:
        """Run every choice, streaming ChoiceEvents to `emit` (from several threads when parallel);
        the first error raised by any choice is raised here."""
        parallel = getattr(self.engine, "scheduler", None) is not None and self.req.n > 1
        if not parallel:
            for i in range(self.req.n):
                self._run_one(i, emit)
            return [c for c in self.choices if c is not None]
        errors: list[BaseException] = []
        emit_lock = threading.Lock()

        def one(i: int) -> None:
            try:
                self._run_one(i, lambda e: _locked(emit_lock, emit, e))
            except BaseException as e:  # noqa: BLE001 - handed to the caller's thread
                errors.append(e)
                self.cancel()
        threads = [threading.Thread(target=one, args=(i,), daemon=True) for i in range(self.req.n)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        if errors:
            raise errors[0]
        return [c for c in self.choices if c is not None]

    def _run_one(self, index: int, emit: Callable[[ChoiceEvent], None]) -> None:
        chat, req = self.chats[index], self.req
        with self.lock or _nothing():
            if self.cancelled.is_set():  # the client left while the request waited
                return
            stops, stopped, answer = StopFilter(req.stop), False, []
            recorder = chat.recorder
            text = "" if chat.open_turn else req.user
            for event in chat.stream(text, **req.turn_options()):
                if self.cancelled.is_set():
                    chat.cancel()
                if event.kind == "answer":
                    piece = stops.feed(event.text) if req.stop else event.text
                    if stops.stopped and not stopped:
                        stopped = True
                        chat.cancel()
                    if piece:
                        answer.append(piece)
                        emit(ChoiceEvent(index, Event("answer", piece), recorder.take() if recorder else []))
                    continue
                if event.kind == "done":
                    if tail := stops.flush():
                        answer.append(tail)
                        emit(ChoiceEvent(index, Event("answer", tail), recorder.take() if recorder else []))
                    reply = event.reply
                    reason = "stop" if stopped else finish_reason(reply.stop_reason)
                    self.choices[index] = Choice(index, reply, "".join(answer), reason,
                                                 recorder.all if recorder else None, stops.matched)
                emit(ChoiceEvent(index, event))


def _locked(lock: threading.Lock, emit, event) -> None:
    with lock:
        emit(event)


class _nothing:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


# ---- the library entry point --------------------------------------------------------------------
def complete(engine: Engine, messages: list[dict], *, stream: bool = False, model: str | None = None,
             **fields: Any) -> dict | Iterator[dict]:
    """OpenAI's chat.completions.create on an Engine: the same request fields (messages, tools,
    tool_choice, response_format, max_tokens, stop, seed, temperature, top_p, n, logprobs, ...)
    and the same response shape (a dict; with stream=True an iterator of chunk dicts), so code
    written for `openai` or llama-cpp-python's create_chat_completion ports by changing one line.
    A bad request raises a ChatError naming the field (openai_api.RequestError)."""
    from edge.serve.openai_api import ChunkShaper, completion_id, completion_response
    req = parse_request({"messages": messages, "stream": stream, **fields})
    name = model or req.model or engine.info.path.stem
    generation = Generation(engine, req, engine_lock(engine))
    cid = completion_id()
    if not stream:
        choices = generation.run(lambda _: None)
        return completion_response(cid, name, req, choices)
    return _stream_chunks(generation, ChunkShaper(cid, name, req))


def _stream_chunks(generation: Generation, shaper) -> Iterator[dict]:
    """Chunks as the generation makes them (it runs on a worker thread); closing the iterator
    early cancels the generation."""
    events: queue.Queue = queue.Queue()

    def work() -> None:
        try:
            events.put(("done", generation.run(events.put)))
        except BaseException as e:  # noqa: BLE001 - raised in the caller's thread
            events.put(("error", e))
    worker = threading.Thread(target=work, daemon=True)
    worker.start()
    try:
        yield from shaper.start()
        while True:
            item = events.get()
            if isinstance(item, tuple) and item[0] == "error":
                raise item[1]
            if isinstance(item, tuple) and item[0] == "done":
                yield from shaper.finish(item[1])
                return
            yield from shaper.feed(item)
    finally:
        generation.cancel()
        worker.join()
