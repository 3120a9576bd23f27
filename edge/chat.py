"""A chat session on an Engine: Qwen3's protocol, streamed.

- The prompt is Qwen's own template rendered over the history; earlier assistant turns keep only
  their answer, never their thinking (Qwen requires it).
- Modes: think, no_think, auto (see modes.py); a /think or /no_think at the end of a user message
  switches that turn and the following ones, and stays in the message text.
- Thinking budget: after N thinking tokens the runtime stops the thinking, appends Qwen's phrase
  and lets the model answer, continuing on the same KV cache.
- KV reuse: each turn evaluates only the tokens after the longest prefix already in the cache.
  Since earlier turns lose their thinking in the re-rendered prompt, turn N+1 costs the previous
  answer plus the new message, never the whole history.
- When the history outgrows the context, the oldest turns are dropped (the system prompt stays)
  and a notice event says so.
"""

from __future__ import annotations

import codecs
import json
import os
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import llama_cpp

from .chat_template import TemplateError
from .engine import Engine
from .modes import Mode, soft_switch, thinking_for
from .sampling import SamplingParams, build_sampler, preset
from .thinking_parser import THINK_CLOSE, THINK_OPEN, ThinkingParser

BUDGET_PHRASE = ("Considering the limited time by the user, I have to give the solution based on the "
                 "thinking directly now.\n</think>.\n\n")
DEFAULT_REPLY_RESERVE = 1024


class ChatError(Exception):
    """A turn that cannot run (too long for the context, a broken template); history is unchanged."""


@dataclass
class Message:
    role: str
    content: str
    thinking: str = ""  # kept for the transcript; never rendered into a prompt

    def for_template(self) -> dict[str, str]:
        return {"role": self.role, "content": self.content}


@dataclass(frozen=True)
class Reply:
    thinking: str
    answer: str
    stop_reason: str          # "eos", "length" or "cancelled"
    budget_hit: bool          # thinking was cut by the budget (the answer still came)
    thinking_enabled: bool
    prompt_tokens: int
    evaluated_tokens: int     # prompt tokens actually evaluated (the rest came from the KV cache)
    generated_tokens: int
    thinking_tokens: int
    ttft_s: float
    tokens_per_s: float
    seconds: float


@dataclass(frozen=True)
class Event:
    kind: str                 # "thinking", "answer", "notice" or "done"
    text: str = ""
    reply: Reply | None = None


@dataclass
class _Turn:
    """Mutable state of one generation."""
    parser: ThinkingParser
    thinking: list[str] = field(default_factory=list)
    answer: list[str] = field(default_factory=list)
    generated: int = 0
    thinking_tokens: int = 0
    in_think: bool = False
    think_done: bool = False
    budget_hit: bool = False


class Chat:
    """One conversation. Not thread-safe, except cancel(), which any thread may call."""

    def __init__(self, engine: Engine, *, system: str | None = None, mode: Mode | str = Mode.THINK,
                 budget: int | None = None, max_tokens: int | None = None, presence_penalty: float = 0.0,
                 seed: int | None = None, sampling: dict | None = None):
        self.engine = engine
        self.system = system
        self.mode = Mode(mode)
        self.budget = budget
        self.max_tokens = max_tokens
        self.presence_penalty = presence_penalty
        self.seed = seed
        self.sampling_overrides = dict(sampling or {})
        self.history: list[Message] = []
        self._cancel = threading.Event()
        llama = engine.llama
        self._vocab = llama._model.vocab
        self._think_ids = (self._single_token(THINK_OPEN), self._single_token(THINK_CLOSE))
        self._budget_tokens = engine.tokenize(BUDGET_PHRASE)

    # ---- prompt -------------------------------------------------------------------------------
    def messages(self, history: list[Message] | None = None) -> list[dict[str, str]]:
        msgs = [{"role": "system", "content": self.system}] if self.system else []
        return msgs + [m.for_template() for m in (self.history if history is None else history)]

    def render(self, messages: list[dict[str, str]], thinking: bool) -> str:
        try:
            return self.engine.template.render(messages, add_generation_prompt=True, enable_thinking=thinking)
        except TemplateError as e:
            raise ChatError(f"chat template failed: {e}") from None

    def sampling_params(self, thinking: bool) -> SamplingParams:
        return preset(thinking).with_overrides(presence_penalty=self.presence_penalty or None, seed=self.seed,
                                               **self.sampling_overrides)

    def _fit(self, user: Message, thinking: bool) -> tuple[list[Message], list[int], int]:
        """History trimmed (oldest turns first) so the prompt plus a reply reserve fits."""
        reserve = min(self.max_tokens or DEFAULT_REPLY_RESERVE, self.engine.n_ctx // 4)
        history, dropped = list(self.history), 0
        while True:
            tokens = self.engine.tokenize(self.render(self.messages(history + [user]), thinking))
            if len(tokens) + reserve <= self.engine.n_ctx:
                return history, tokens, dropped
            if not history:
                raise ChatError(f"message too long: the prompt needs {len(tokens)} tokens plus {reserve} for the "
                                f"reply, the context holds {self.engine.n_ctx}")
            cut = next((i for i in range(1, len(history)) if history[i].role == "user"), len(history))
            history, dropped = history[cut:], dropped + 1

    # ---- generation ---------------------------------------------------------------------------
    def cancel(self) -> None:
        """Stop the reply in progress within one token; the partial answer is kept."""
        self._cancel.set()

    def send(self, text: str) -> Reply:
        reply = None
        for event in self.stream(text):
            reply = event.reply or reply
        assert reply is not None
        return reply

    def stream(self, text: str) -> Iterator[Event]:
        """Stream one turn: thinking and answer text as it is generated, then a done event."""
        self._cancel.clear()
        if (switch := soft_switch(text)) is not None:
            self.mode = switch
        thinking = thinking_for(self.mode, text)
        user = Message("user", text)
        history, prompt, dropped = self._fit(user, thinking)
        if dropped:
            yield Event("notice", f"dropped the {dropped} oldest turn(s) to fit the {self.engine.n_ctx}-token context")
        started = time.perf_counter()
        evaluated = self._evaluate_prompt(prompt)
        turn = _Turn(ThinkingParser())
        stop, first_at = "length", None
        sampler = build_sampler(self.sampling_params(thinking), self.engine.llama.n_vocab())
        decoder = codecs.getincrementaldecoder("utf-8")("replace")
        llama = self.engine.llama
        while True:
            if self._cancel.is_set():
                stop = "cancelled"
                break
            if llama.n_tokens >= self.engine.n_ctx or (self.max_tokens and turn.generated >= self.max_tokens):
                break
            token = sampler.sample(llama._ctx, -1)
            first_at = first_at or time.perf_counter()
            if llama_cpp.llama_vocab_is_eog(self._vocab, token):
                stop = "eos"
                break
            llama.eval([token])
            self._track(turn, token)
            yield from self._emit(turn, self._piece(token, decoder))
            if self._budget_reached(turn):
                if llama.n_tokens + len(self._budget_tokens) >= self.engine.n_ctx:
                    break  # no room left for the phrase and an answer: the context is full
                yield from self._cut_thinking(turn)
        yield from self._emit(turn, None)
        ended = time.perf_counter()
        reply = Reply(
            thinking="".join(turn.thinking), answer="".join(turn.answer), stop_reason=stop,
            budget_hit=turn.budget_hit, thinking_enabled=thinking, prompt_tokens=len(prompt),
            evaluated_tokens=evaluated, generated_tokens=turn.generated, thinking_tokens=turn.thinking_tokens,
            ttft_s=round((first_at or ended) - started, 4),
            tokens_per_s=round((turn.generated - 1) / (ended - first_at), 2) if first_at and turn.generated > 1 and ended > first_at else 0.0,
            seconds=round(ended - started, 4),
        )
        self.history = history + [user, Message("assistant", reply.answer, reply.thinking)]
        yield Event("done", reply=reply)

    def _evaluate_prompt(self, prompt: list[int]) -> int:
        """Evaluate what the KV cache lacks of `prompt`; return how many tokens that was."""
        llama = self.engine.llama
        keep = llama_cpp.Llama.longest_token_prefix(llama.input_ids[: llama.n_tokens].tolist(), prompt)
        keep = min(keep, len(prompt) - 1)  # the last prompt token is re-evaluated for its logits
        llama.n_tokens = keep
        llama.eval(prompt[keep:])
        return len(prompt) - keep

    def _piece(self, token: int, decoder: codecs.IncrementalDecoder) -> str:
        if token in self._think_ids:
            return THINK_OPEN if token == self._think_ids[0] else THINK_CLOSE
        return decoder.decode(self.engine.llama.detokenize([token], special=False))

    def _track(self, turn: _Turn, token: int) -> None:
        """Count generated and thinking tokens (the <think> markers themselves are not thinking)."""
        turn.generated += 1
        if token == self._think_ids[0] and not turn.think_done:
            turn.in_think = True
        elif token == self._think_ids[1]:
            turn.in_think, turn.think_done = False, True
        elif turn.in_think:
            turn.thinking_tokens += 1

    def _emit(self, turn: _Turn, text: str | None) -> Iterator[Event]:
        """Feed the parser (None closes it) and turn its pieces into events."""
        pieces = turn.parser.close() if text is None else turn.parser.feed(text)
        for p in pieces:
            (turn.thinking if p.kind == "thinking" else turn.answer).append(p.text)
            yield Event(p.kind, p.text)

    def _budget_reached(self, turn: _Turn) -> bool:
        return self.budget is not None and turn.in_think and turn.thinking_tokens >= self.budget

    def _cut_thinking(self, turn: _Turn) -> Iterator[Event]:
        """Append Qwen's budget phrase to the KV cache (no prompt re-evaluation) and go on to the
        answer. The phrase closes the thinking; the ".\\n\\n" after </think> is not answer text."""
        turn.budget_hit, turn.in_think, turn.think_done = True, False, True
        self.engine.llama.eval(self._budget_tokens)
        head = BUDGET_PHRASE[: BUDGET_PHRASE.index(THINK_CLOSE)]
        yield from self._emit(turn, head)
        yield from self._emit(turn, THINK_CLOSE)

    # ---- session ------------------------------------------------------------------------------
    def reset(self) -> None:
        """Forget the conversation (the system prompt and settings stay)."""
        self.history = []

    def _single_token(self, text: str) -> int:
        ids = self.engine.tokenize(text)
        if len(ids) != 1:
            raise ChatError(f"the model's tokenizer has no single token for {text}")
        return ids[0]


# ---- transcripts -------------------------------------------------------------------------------
TRANSCRIPT_VERSION = 1


def save_transcript(chat: Chat, path: str | os.PathLike[str]) -> None:
    """Write the conversation as JSON (thinking included, for the reader; never re-sent)."""
    data = {"version": TRANSCRIPT_VERSION, "system": chat.system, "mode": chat.mode.value, "budget": chat.budget,
            "messages": [{"role": m.role, "content": m.content, "thinking": m.thinking} for m in chat.history]}
    target = Path(path)
    tmp = target.with_name(f".{target.name}.partial")
    try:
        tmp.write_text(json.dumps(data, ensure_ascii=False, indent=2), encoding="utf-8")
        os.replace(tmp, target)
    except OSError as e:
        tmp.unlink(missing_ok=True)
        raise ChatError(f"{path}: cannot write the transcript ({e.strerror or e})") from None


def load_transcript(chat: Chat, path: str | os.PathLike[str]) -> None:
    """Replace the conversation with a saved one; a bad file changes nothing."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
        messages = [Message(m["role"], m["content"], m.get("thinking") or "") for m in data["messages"]]
        roles_ok = all(m.role in ("user", "assistant") and isinstance(m.content, str) for m in messages)
        system, mode, budget = data.get("system"), Mode(data.get("mode", chat.mode.value)), data.get("budget")
        if not roles_ok or not (system is None or isinstance(system, str)) or not (budget is None or isinstance(budget, int)):
            raise ValueError("unexpected roles or fields")
    except FileNotFoundError:
        raise ChatError(f"{path}: not found") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError, ValueError) as e:
        raise ChatError(f"{path}: not a qwen3-edge transcript ({e})") from None
    chat.system, chat.mode, chat.budget, chat.history = system, mode, budget, messages
