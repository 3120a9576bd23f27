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
import functools
import dataclasses
import json
import os
import threading
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import llama_cpp

from edge.runtime.async_bridge import iterate_in_thread
from edge.protocol.answer_check import reply_problems
from edge.protocol.budget import answer_reserve, turn_budget
from edge.protocol.chat_args import chat_arguments_problem, max_tokens_problem, mode_problem, stop_list, stop_problem
from edge.protocol.chat_template import TemplateError
from edge.runtime.context_growth import GrowthError
from edge.runtime.engine import Engine, EngineClosedError
from edge.protocol.grammar import Constraints, GrammarError, plan_constraints
from edge.protocol.guidance import Constraint, ConstraintError, compile_grammar, tokenizer_for
from edge.protocol.model_kind import ModelKind, prompt_opens_thinking
from edge.protocol.modes import Mode, soft_switch, thinking_for
from edge.cluster.rpc import WorkerLost
from edge.runtime.sampling import GrammarCompileError, SamplingParams, TokenSampler, preset
from edge.runtime.scheduler import SchedulerError
from edge.runtime.sequence import DecodeError, StreamUnavailable, open_sequence
from edge.protocol.stop_strings import StopCutter
from edge.protocol.text_check import text_problem, tree_problem
from edge.protocol.thinking_calls import ThinkingCallHold
from edge.protocol.thinking_parser import THINK_CLOSE, THINK_OPEN, ThinkingParser
from edge.protocol.tool_calls import TOOL_OPEN, Content, InvalidCall, ToolCall, ToolCallParser

# Qwen's model card (and vLLM's, SGLang's reproductions) start the phrase on new lines, so it is
# never glued to the last word of the thinking.
BUDGET_PHRASE = ("\n\nConsidering the limited time by the user, I have to give the solution based on the "
                 "thinking directly now.\n</think>\n\n")
CLOSE_THINKING = "\n</think>\n\n"  # how Qwen's template closes a think block
DEFAULT_REPLY_RESERVE = 1024
SPEED_SAMPLE = 8  # tokens generated before a time budget is set from this reply's speed


class ChatError(Exception):
    """A turn that cannot run (too long for the context, a broken template); history is unchanged."""


class ArgumentError(ChatError, ValueError):
    """An argument the Chat cannot take (Chat(mode="fast"), budget=-1, a negative temperature): the
    line names the argument and what it takes; raised before anything changes."""


class BackendError(ChatError):
    """A reply the model's backend could not finish (an RPC worker lost, a larger context llama.cpp
    refused): not the request's fault, so a server answers 503; history is unchanged."""


def _check_open(engine: Engine) -> None:
    """A closed Engine's llama.cpp context is freed: touching it would crash the process."""
    if getattr(engine, "closed", False):
        raise ChatError(str(EngineClosedError()))


@dataclass
class Message:
    role: str                 # "user", "assistant" or "tool"
    content: str
    thinking: str = ""        # an assistant turn's reasoning: Qwen's template keeps it only for
                              # the turns after the last user message (a tool chain in progress)
    tool_calls: tuple[ToolCall, ...] = ()
    tool_call_id: str | None = None   # a tool message: the call it answers

    def for_template(self) -> dict:
        out: dict = {"role": self.role, "content": self.content}
        if self.role == "assistant":
            if self.thinking:
                out["reasoning_content"] = self.thinking
            if self.tool_calls:
                out["tool_calls"] = [c.to_openai() for c in self.tool_calls]
        elif self.role == "tool" and self.tool_call_id:
            out["tool_call_id"] = self.tool_call_id
        return out


@dataclass(frozen=True)
class Reply:
    thinking: str
    answer: str
    stop_reason: str          # "eos", "tool_calls", "length", "stop" (a stop string) or "cancelled"
    budget_hit: bool          # thinking was cut by the budget (the answer still came)
    thinking_enabled: bool
    prompt_tokens: int
    evaluated_tokens: int     # prompt tokens actually evaluated (the rest came from the KV cache)
    generated_tokens: int
    thinking_tokens: int
    ttft_s: float
    tokens_per_s: float
    seconds: float
    tool_calls: tuple[ToolCall, ...] = ()
    invalid_tool_calls: tuple[str, ...] = ()   # why each <tool_call> block that was not a call failed
    grammar_rejections: int = 0                # tokens the grammar sent back for a full pass
    notices: tuple[str, ...] = ()              # what the chat said about this turn (also as events)
    thinking_budget: int | None = None         # the budget this turn ran with (auto / time budgets)
    thinking_cut: str | None = None            # "budget" or "max_tokens": why the thinking was cut
    schema_error: str | None = None            # why the answer or a call fails its schema (answer_check.py)


@dataclass(frozen=True)
class Event:
    kind: str                 # "thinking", "answer", "tool_call", "notice" or "done"
    text: str = ""
    reply: Reply | None = None
    call: ToolCall | None = None


@dataclass
class _Turn:
    """Mutable state of one generation: the one loop's thinking, answer, tool-call and grammar
    state (a grammar waits in answer_grammar / call_grammar until its moment comes)."""
    parser: ThinkingParser
    sampler: TokenSampler
    calls: ToolCallParser | None = None
    answer_grammar: Constraint | None = None
    call_grammar: Constraint | None = None
    thinking: list[str] = field(default_factory=list)
    answer: list[str] = field(default_factory=list)
    tool_calls: list[ToolCall] = field(default_factory=list)
    invalid: list[str] = field(default_factory=list)
    notices: list[str] = field(default_factory=list)
    message: str = ""              # the user message the turn answers (for the auto budget)
    budget: int | None = None
    budget_pending: bool = False   # a time budget waits for this reply's measured speed
    cut: str | None = None
    generated: int = 0
    thinking_tokens: int = 0
    in_think: bool = False
    think_done: bool = False
    budget_hit: bool = False
    seq: Any = None                # the KV sequence it runs on (sequence.py)
    max_tokens: int | None = None  # this turn's cap (stream(max_tokens=) or the chat's)
    stops: StopCutter | None = None  # this turn's stop strings, cutting the answer
    call_hold: ThinkingCallHold | None = None  # with tools: a <tool_call> in the thinking, held

    def start_answer(self) -> None:
        """The answer begins: its grammar (response format, required call) now applies."""
        if self.answer_grammar is not None and self.sampler.grammar is None:
            self.sampler.arm(self.answer_grammar)


def _one_turn_at_a_time(stream):
    """A Chat answers one turn at a time: a second stream/send on the same Chat while one runs (from
    another thread, or an asyncio task) is a ChatError, not a race on its history. The turn counts
    as a use of the engine, so Engine.close() waits for it, and a closed engine is a ChatError."""
    @functools.wraps(stream)
    def exclusive(self, *args, **kwargs):
        if not self._busy.acquire(blocking=False):
            raise ChatError("this Chat is already answering (on another thread or task): use one Chat per "
                            "conversation, or wait for its reply")
        try:
            with self.engine.using():
                yield from stream(self, *args, **kwargs)
        except EngineClosedError as e:
            raise ChatError(str(e)) from None
        finally:
            self._busy.release()
    return exclusive


class Chat:
    """One conversation. Many Chats may share an Engine from any threads: a Chat whose engine's
    streams are all busy waits for one, in arrival order (`wait_timeout` seconds at most, then a
    ChatError; cancel() stops the wait). One Chat answers one turn at a time; cancel() may be
    called from any thread.

    Tools and a response format may be set for the whole chat (`tools=`) or per turn
    (`stream(..., tools=, tool_choice=, response_format=)`). A reply that calls tools ends with
    stop_reason "tool_calls"; add each result with add_tool_result() and call send() with no text
    to let the model go on.
    """

    def __init__(self, engine: Engine, *, system: str | None = None, mode: Mode | str = Mode.THINK,
                 budget: int | None = None, max_tokens: int | None = None, presence_penalty: float = 0.0,
                 seed: int | None = None, sampling: dict | None = None, tools: list[dict] | None = None,
                 think_time: float | None = None, wait_timeout: float | None = None):
        if problem := chat_arguments_problem(mode=mode, budget=budget, max_tokens=max_tokens, seed=seed,
                                             presence_penalty=presence_penalty, sampling=sampling,
                                             think_time=think_time, system=system):
            raise ArgumentError(problem)
        if wait_timeout is not None and (isinstance(wait_timeout, bool) or not isinstance(wait_timeout, (int, float))
                                         or not wait_timeout >= 0):
            raise ArgumentError(f"wait_timeout must be a number of seconds >= 0 or None, not {wait_timeout!r}")
        _check_open(engine)
        if getattr(engine, "purpose", "chat") != "chat":   # an embedding model or reranker (embedding.py)
            from edge.runtime.embedding import wrong_model
            raise ChatError(wrong_model(engine.purpose, "chat"))
        self.engine = engine
        self.wait_timeout = wait_timeout  # seconds to wait for a free stream of the engine (None: no limit)
        self._busy = threading.Lock()     # held by the turn in progress
        self.system = system
        self.mode = Mode(mode)
        self.budget = budget          # thinking tokens, "auto" (budget.py), or None
        self.think_time = think_time  # seconds of thinking, enforced as tokens at the measured speed
        self.measured_tokens_per_s: float | None = None  # of this model here: set by each reply
        self.max_tokens = max_tokens
        self.presence_penalty = presence_penalty
        self.seed = seed
        self.sampling_overrides = dict(sampling or {})
        self.tools = tools
        self.history: list[Message] = []
        self._cancel = threading.Event()
        llama = engine.llama
        self._vocab = llama._model.vocab
        self._think_ids = (self._single_token(THINK_OPEN), self._single_token(THINK_CLOSE))
        self._tool_open_id = self._single_token(TOOL_OPEN)
        self._budget_tokens = engine.tokenize(BUDGET_PHRASE)
        self._close_tokens = engine.tokenize(CLOSE_THINKING)

    @property
    def mode(self) -> Mode:
        return self._mode

    @mode.setter
    def mode(self, value: Mode | str) -> None:
        if problem := mode_problem(value):
            raise ArgumentError(problem)
        self._mode = Mode(value)  # "think" and Mode.THINK alike

    # ---- prompt -------------------------------------------------------------------------------
    def messages(self, history: list[Message] | None = None) -> list[dict]:
        msgs = [{"role": "system", "content": self.system}] if self.system else []
        return msgs + [m.for_template() for m in (self.history if history is None else history)]

    def render(self, messages: list[dict], thinking: bool, tools: list[dict] | None = None) -> str:
        try:
            return self.engine.template.render(messages, add_generation_prompt=True, enable_thinking=thinking,
                                               tools=tools)
        except TemplateError as e:
            raise ChatError(f"chat template failed: {e}") from None

    def sampling_params(self, thinking: bool) -> SamplingParams:
        """Qwen's preset for the mode, replaced by the preset the GGUF carries (its
        generation_config.json) for the mode that preset was written for: a hybrid model's is its
        thinking preset, a single-mode model's is its only one; then the user's overrides."""
        base = preset(thinking)
        carried = self.engine.info.sampling_defaults
        if carried and (thinking or self.engine.kind is not ModelKind.HYBRID):
            base = base.with_overrides(**{k: v for k, v in carried.items() if k in ("temperature", "top_p", "top_k", "min_p")})
        return base.with_overrides(presence_penalty=self.presence_penalty or None, seed=self.seed,
                                               **self.sampling_overrides)

    def _fit(self, new: list[Message], thinking: bool, tools: list[dict] | None,
             max_tokens: int | None = None) -> tuple[list[Message], list[int], int, str]:
        """History trimmed (oldest turns first) so the prompt plus a reply reserve fits."""
        reserve = min(max_tokens or self.max_tokens or DEFAULT_REPLY_RESERVE, self.engine.n_ctx // 4)
        history, dropped = list(self.history), 0
        while True:
            text = self.render(self.messages(history + new), thinking, tools)
            tokens = self.engine.tokenize(text)
            if len(tokens) + reserve <= self.engine.n_ctx:
                return history, tokens, dropped, text
            cut = next((i for i in range(1, len(history)) if history[i].role == "user"), len(history))
            if not history or (not new and cut == len(history)):
                raise ChatError(f"message too long: the prompt needs {len(tokens)} tokens plus {reserve} for the "
                                f"reply, the context holds {self.engine.n_ctx}")
            history, dropped = history[cut:], dropped + 1

    # ---- tools --------------------------------------------------------------------------------
    def add_tool_result(self, call_id: str, content: str) -> None:
        """The result of one call of the last reply, as a tool message for the next send()."""
        if not isinstance(content, str):
            raise ChatError("a tool result must be a string (serialize it, e.g. with json.dumps)")
        if (problem := text_problem(content)) is not None:
            raise ChatError(f"the tool result {problem}")
        pending = self._open_calls()
        if call_id not in pending:
            raise ChatError(f"no call {call_id!r} awaits a result (open calls: {', '.join(pending) or 'none'})")
        self.history.append(Message("tool", content, tool_call_id=call_id))

    def _open_calls(self) -> list[str]:
        """Ids of the last assistant message's calls that have no result yet."""
        answered = []
        for m in reversed(self.history):
            if m.role == "tool":
                answered.append(m.tool_call_id)
            elif m.role == "assistant":
                return [c.id for c in m.tool_calls if c.id not in answered]
            else:
                break
        return []

    def _constraints(self, tools, tool_choice, response_format, parallel_tool_calls) -> Constraints:
        try:
            return plan_constraints(self.tools if tools is None else tools, tool_choice, response_format,
                                    parallel_tool_calls)
        except GrammarError as e:
            raise ChatError(e.message) from None

    def _compile(self, lark: str | None) -> Constraint | None:
        """An llguidance matcher for one of the turn's grammars (guidance.py)."""
        if lark is None:
            return None
        try:
            return compile_grammar(tokenizer_for(self.engine.llama), lark)
        except ConstraintError as e:
            raise ChatError(str(e)) from None

    # ---- generation ---------------------------------------------------------------------------
    def cancel(self) -> None:
        """Stop the reply in progress within one token; the partial answer is kept."""
        self._cancel.set()

    def send(self, text: str | None = None, **turn) -> Reply:
        reply = None
        for event in self.stream(text, **turn):
            reply = event.reply or reply
        assert reply is not None
        return reply

    async def asend(self, text: str | None = None, **turn) -> Reply:
        """send() for asyncio: the turn runs on a worker thread, the event loop stays free.
        Cancelling the awaiting task stops the reply within a token; the partial answer is kept in
        the history before the cancellation reaches the caller."""
        reply = None
        async for event in self.astream(text, **turn):
            reply = event.reply or reply
        assert reply is not None
        return reply

    async def astream(self, text: str | None = None, **turn) -> AsyncIterator[Event]:
        """stream() for asyncio (`async for event in chat.astream(...)`), with asend()'s cancellation."""
        async for event in iterate_in_thread(lambda: self.stream(text, **turn), self.cancel):
            yield event

    @_one_turn_at_a_time
    def stream(self, text: str | None = None, *, tools: list[dict] | None = None, tool_choice: str | dict = "auto",
               response_format: dict | str | None = None, parallel_tool_calls: bool = True,
               constrain_tool_calls: bool = True, max_tokens: int | None = None,
               stop: str | list[str] | None = None) -> Iterator[Event]:
        """Stream one turn: thinking, answer and tool-call events as they come, then a done event.
        `text` None continues after tool results (add_tool_result). tool_choice "auto", "none",
        "required" or {"type": "function", "function": {"name": ...}}; response_format OpenAI's
        {"type": "json_object"} / {"type": "json_schema", "json_schema": {"schema": ...}}, or a
        bare JSON schema. With constrain_tool_calls (the default) a call the model starts is held to
        the tools' schemas by a grammar. `max_tokens` caps this turn (else the chat's max_tokens);
        `stop` (a string or a list) ends the answer just before the first stop string, with
        stop_reason "stop" (the thinking is not searched)."""
        if problem := max_tokens_problem(max_tokens) or stop_problem(stop):
            raise ArgumentError(problem)
        _check_open(self.engine)
        self._check_text(text)
        self._cancel.clear()
        if text is None and (not self.history or self.history[-1].role != "tool"):
            raise ChatError("nothing to answer: send a message, or add tool results first")
        switch = soft_switch(text) if text is not None else None
        if switch is not None:
            self.mode = switch
        last_user = text if text is not None else next((m.content for m in reversed(self.history) if m.role == "user"), "")
        thinking, mode_notice = self._thinking_for(last_user, switch)
        constraints = self._constraints(tools, tool_choice, response_format, parallel_tool_calls)
        new = [Message("user", text)] if text is not None else []
        history, prompt, dropped, rendered = self._fit(new, thinking, constraints.tools, max_tokens)
        opened = prompt_opens_thinking(rendered)  # the template opened <think> (Thinking-2507)
        thinking = thinking or opened
        turn = _Turn(ThinkingParser(opened=opened),
                     TokenSampler(self.sampling_params(thinking), self.engine.llama.n_vocab()),
                     ToolCallParser(set(constraints.tool_names)) if constraints.parse_calls else None,
                     in_think=opened, message=last_user, max_tokens=max_tokens or self.max_tokens,
                     stops=StopCutter(stop_list(stop)) if stop else None,
                     call_hold=ThinkingCallHold() if constraints.parse_calls else None)
        turn.budget = turn_budget(self.budget, self.think_time, last_user, self.measured_tokens_per_s)
        turn.budget_pending = self.think_time is not None and self.measured_tokens_per_s is None
        try:
            turn.answer_grammar = self._compile(constraints.answer_grammar)
            turn.call_grammar = self._compile(constraints.call_grammar if constrain_tool_calls else None)
            for note in filter(None, [mode_notice, dropped and f"dropped the {dropped} oldest turn(s) to fit the "
                                                              f"{self.engine.n_ctx}-token context", *constraints.notices]):
                yield self._notice(turn, note)
            reply = yield from self._generate(turn, prompt, thinking)
            if problems := reply_problems(reply.answer, reply.tool_calls, constraints.answer_schema,
                                          constraints.tool_schemas):
                reply = dataclasses.replace(reply, schema_error=problems[0], notices=reply.notices + tuple(problems))
                for problem in problems:
                    yield Event("notice", problem)
        finally:
            turn.sampler.close()  # llama.cpp's buffers go now, not at Python's next cycle collection
            for g in (turn.answer_grammar, turn.call_grammar):
                if g is not None:
                    g.close()
        if reply.tokens_per_s:
            self.measured_tokens_per_s = reply.tokens_per_s
        self.history = history + new + [Message("assistant", reply.answer, reply.thinking, reply.tool_calls)]
        yield Event("done", reply=reply)

    def _check_text(self, text: str | None) -> None:
        """The message and system prompt are text (text_check.py): refused before anything changes."""
        if text is not None and not isinstance(text, str):
            raise ChatError(f"a message must be a string, not {type(text).__name__}")
        for name, value in (("the message", text), ("the system prompt", self.system)):
            if isinstance(value, str) and (problem := text_problem(value)) is not None:
                raise ChatError(f"{name} {problem}")

    def _thinking_for(self, text: str, switch: Mode | None) -> tuple[bool, str | None]:
        """Whether this turn thinks, and a notice when the model's kind overrides what was asked:
        a thinking-only model always thinks, a non-thinking-only one never; auto is for hybrids."""
        kind = self.engine.kind
        if kind is ModelKind.HYBRID:
            return thinking_for(self.mode, text), None
        always = kind is ModelKind.THINKING
        asked = switch or (self.mode if self.mode is not Mode.THINK or not always else None)
        conflict = asked is not None and (asked is Mode.AUTO or (asked is Mode.THINK) != always)
        if conflict and (switch is not None or asked is not Mode.THINK):
            what = {Mode.THINK: "/think", Mode.NO_THINK: "/no_think", Mode.AUTO: "auto mode"}[asked]
            return always, (f"this model is {kind.value}: it {'always' if always else 'never'} thinks, "
                            f"so {what} has no effect")
        return always, None

    def _notice(self, turn: _Turn, text: str) -> Event:
        turn.notices.append(text)
        return Event("notice", text)

    def _generate(self, turn: _Turn, prompt: list[int], thinking: bool):
        """The generation on a sequence of the engine (its own context, or a parallel slot that
        may first have to wait for a free one); released when the generation ends."""
        started = time.perf_counter()
        try:
            turn.seq = open_sequence(self.engine, prompt, self._cancel, self.wait_timeout)
        except StreamUnavailable as e:  # closed, or no stream within wait_timeout
            raise ChatError(str(e)) from None
        try:
            evaluated = turn.seq.prefill(prompt) if turn.seq is not None else 0
            return (yield from self._loop(turn, prompt, thinking, started, evaluated))
        # An RPC worker died or stalled, llama.cpp could not make a larger context or decode (the
        # sequence's cache was reset), the scheduler failed: this reply ends, the history stays.
        except (WorkerLost, GrowthError, DecodeError, SchedulerError) as e:
            raise BackendError(str(e)) from None
        finally:
            if turn.seq is not None:
                turn.seq.release()

    def _loop(self, turn: _Turn, prompt: list[int], thinking: bool, started: float, evaluated: int):
        """The generation loop: thinking, budget, tool calls and grammars are states of it."""
        stop, first_at = "length", None
        decoder = codecs.getincrementaldecoder("utf-8")("replace")
        seq, sampler = turn.seq, turn.sampler
        is_eog = lambda t: llama_cpp.llama_vocab_is_eog(self._vocab, t)  # noqa: E731
        if not thinking:
            turn.start_answer()  # the prompt already holds the empty think block
        while True:
            if self._cancel.is_set():
                stop = "cancelled"
                break
            if turn.stops is not None and turn.stops.stopped:
                stop = "stop"
                break
            if seq.n_tokens >= self.engine.n_ctx or (turn.max_tokens and turn.generated >= turn.max_tokens):
                break
            if turn.budget_pending and turn.generated >= SPEED_SAMPLE:
                speed = (turn.generated - 1) / max(time.perf_counter() - first_at, 1e-6)
                turn.budget, turn.budget_pending = turn_budget(self.budget, self.think_time, turn.message, speed), False
            if cut := self._thinking_cut(turn):  # before the next token: a prompt may open the thinking
                if not self._room_for(turn, self._budget_tokens):
                    break  # no room left for the phrase and an answer: the context is full
                turn.budget_hit, turn.cut = cut == "budget", cut
                if cut == "max_tokens":
                    yield self._notice(turn, f"thinking was cut after {turn.thinking_tokens} tokens to leave room "
                                             f"for an answer within max_tokens {turn.max_tokens}")
                yield from self._close_thinking(turn, self._budget_tokens, BUDGET_PHRASE[: BUDGET_PHRASE.index(THINK_CLOSE)])
            remaining = self._remaining(turn)
            try:
                token = seq.sample(sampler, is_eog, remaining)
                if thinking and turn.generated == 0 and not turn.in_think and token != self._think_ids[0] \
                        and turn.answer_grammar and sampler.grammar is None:
                    turn.start_answer()  # no thinking after all: the answer starts here, constrained
                    token = seq.sample(sampler, is_eog, remaining)
            except GrammarCompileError as e:
                yield self._notice(turn, f"generation stopped: {e}")
                break
            first_at = first_at or time.perf_counter()
            if is_eog(token):
                if turn.in_think and turn.answer_grammar is not None and self._room_for(turn, self._close_tokens):
                    # ended inside the thinking, but an answer is owed: close it the template's way
                    yield self._notice(turn, "the model ended inside its thinking; it was closed so the answer could follow")
                    yield from self._close_thinking(turn, self._close_tokens, "")
                    continue
                stop = "eos"
                break
            if (token == self._tool_open_id and turn.call_grammar is not None and sampler.grammar is None
                    and not turn.in_think):
                sampler.arm(turn.call_grammar, trigger=token)  # the model starts a call: keep it well formed
            self._track(turn, token)
            # The piece goes out before the token is evaluated: with slots, eval waits for the
            # scheduler's next step, and emitting after it held every streamed token (the first
            # one too) back by a whole step.
            yield from self._emit(turn, self._piece(token, decoder))
            seq.eval([token])
            if token == self._think_ids[1] and turn.think_done:
                turn.start_answer()
        yield from self._emit(turn, None)
        if sampler.closed_tokens:  # the closing steered the end: the limit ended it, not the model
            stop = "length" if stop == "eos" else stop
            limit = (f"max_tokens {turn.max_tokens}" if turn.max_tokens and turn.max_tokens - turn.generated
                     <= self.engine.n_ctx - seq.n_tokens else f"the {self.engine.n_ctx}-token context")
            closed = "the tool call" if turn.tool_calls else "the answer"
            yield self._notice(turn, f"{closed} was closed early to end within {limit} "
                                     f"({sampler.closed_tokens} closing tokens forced)")
        if stop == "eos":
            yield from self._calls_in_open_thinking(turn)
        if turn.call_hold is not None:  # cut, cancelled or no call after all: it was reasoning
            yield from self._thought(turn, turn.call_hold.release())
        ended = time.perf_counter()
        calls = tuple(turn.tool_calls)
        return Reply(
            thinking="".join(turn.thinking), answer="".join(turn.answer),
            stop_reason="tool_calls" if calls and stop == "eos" else stop,
            budget_hit=turn.budget_hit, thinking_enabled=thinking, prompt_tokens=len(prompt),
            evaluated_tokens=evaluated, generated_tokens=turn.generated, thinking_tokens=turn.thinking_tokens,
            ttft_s=round((first_at or ended) - started, 4),
            tokens_per_s=round((turn.generated - 1) / (ended - first_at), 2) if first_at and turn.generated > 1 and ended > first_at else 0.0,
            seconds=round(ended - started, 4), tool_calls=calls, invalid_tool_calls=tuple(turn.invalid),
            grammar_rejections=sampler.rejections, notices=tuple(turn.notices), thinking_budget=turn.budget,
            thinking_cut=turn.cut,
        )

    def _remaining(self, turn: _Turn) -> int:
        """How many tokens this turn may still generate, the next one included: to max_tokens, or
        to the context's end, whichever comes first (what the grammar's closing works to)."""
        room = self.engine.n_ctx - turn.seq.n_tokens
        return min(room, turn.max_tokens - turn.generated) if turn.max_tokens else room

    def _room_for(self, turn: _Turn, tokens: list[int]) -> bool:
        return turn.seq.n_tokens + len(tokens) < self.engine.n_ctx

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
        """Feed the parsers (None closes them) and turn their pieces into events."""
        pieces = turn.parser.close() if text is None else turn.parser.feed(text)
        for p in pieces:
            if p.kind == "thinking":
                yield from self._thought(turn, p.text if turn.call_hold is None else turn.call_hold.feed(p.text))
                continue
            if turn.call_hold is not None:  # the think block closed: what it held was reasoning
                yield from self._thought(turn, turn.call_hold.release())
            if turn.calls is None:
                yield from self._answer(turn, p.text)
            else:
                yield from self._emit_calls(turn, turn.calls.feed(p.text))
        if text is None and turn.calls is not None:
            yield from self._emit_calls(turn, turn.calls.close())
        if text is None and turn.stops is not None:
            yield from self._answer(turn, turn.stops.flush(), cut=False)

    def _thought(self, turn: _Turn, text: str) -> Iterator[Event]:
        if text:
            turn.thinking.append(text)
            yield Event("thinking", text)

    def _answer(self, turn: _Turn, text: str, cut: bool = True) -> Iterator[Event]:
        """Answer text, cut by the turn's stop strings (nothing after the first one)."""
        if cut and turn.stops is not None:
            text = turn.stops.feed(text)
        if text:
            turn.answer.append(text)
            yield Event("answer", text)

    def _emit_calls(self, turn: _Turn, items: list) -> Iterator[Event]:
        for item in items:
            if turn.stops is not None and turn.stops.stopped:
                return  # the answer ended at a stop string: nothing after it counts
            if isinstance(item, ToolCall):
                turn.tool_calls.append(item)
                yield Event("tool_call", call=item)
            elif isinstance(item, InvalidCall):
                turn.invalid.append(item.reason)
                yield from self._answer(turn, item.text)
                yield Event("notice", f"not a valid tool call ({item.reason}); kept as text")
            elif isinstance(item, Content):
                yield from self._answer(turn, item.text)

    def _calls_in_open_thinking(self, turn: _Turn) -> Iterator[Event]:
        """Small models sometimes write their call inside a think block they never close. When the
        reply ends that way, with no answer and no other call, those calls are the reply's calls;
        the call_hold kept their markup out of the streamed reasoning (thinking_calls.py)."""
        if turn.call_hold is None or not turn.call_hold.holding or not turn.in_think or turn.tool_calls \
                or "".join(turn.answer).strip():
            return
        parser = ToolCallParser(turn.calls.known)
        items = parser.feed(turn.call_hold.held) + parser.close()
        if not any(isinstance(i, ToolCall) for i in items):
            return  # not a call: released as reasoning by the caller
        turn.call_hold.release()
        for item in items:
            if isinstance(item, ToolCall):
                turn.tool_calls.append(item)
                yield Event("tool_call", call=item)
            else:
                yield from self._thought(turn, item.text)

    def _thinking_cut(self, turn: _Turn) -> str | None:
        """"budget" when the thinking reached its budget; "max_tokens" when going on thinking
        would leave no room for an answer within max_tokens (budget_reserve keeps a quarter)."""
        if not turn.in_think:
            return None
        if turn.budget is not None and turn.thinking_tokens >= turn.budget:
            return "budget"
        if turn.max_tokens and turn.generated >= turn.max_tokens - answer_reserve(turn.max_tokens):
            return "max_tokens"
        return None

    def _close_thinking(self, turn: _Turn, tokens: list[int], head: str) -> Iterator[Event]:
        """Append tokens that close the thinking (Qwen's budget phrase, or the template's own
        "\\n</think>\\n\\n") to the KV cache, without re-evaluating the prompt, and go on to the
        answer. The text after </think> is not answer text."""
        turn.in_think, turn.think_done = False, True
        turn.seq.eval(tokens)
        yield from self._emit(turn, head)
        yield from self._emit(turn, THINK_CLOSE)
        turn.start_answer()

    # ---- session ------------------------------------------------------------------------------
    def reset(self) -> None:
        """Forget the conversation (the system prompt and settings stay)."""
        self.history = []

    def restore(self, messages: list[dict]) -> None:
        """Replace the conversation with an OpenAI-shaped messages list (restore.py); its system
        message, when it has one, replaces the system prompt. A bad list changes nothing."""
        from edge.protocol.restore import conversation_from_messages
        system, history = conversation_from_messages(messages)
        self.system = system if system is not None else self.system
        self.history = history

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
            "messages": [_transcript_message(m) for m in chat.history]}
    target = Path(path)
    tmp = target.with_name(f".{target.name}.partial")
    try:
        tmp.write_text(json.dumps(data, ensure_ascii=False, indent=2), encoding="utf-8")
        os.replace(tmp, target)
    except OSError as e:
        tmp.unlink(missing_ok=True)
        raise ChatError(f"{path}: cannot write the transcript ({e.strerror or e})") from None


def _transcript_message(m: Message) -> dict:
    out = {"role": m.role, "content": m.content, "thinking": m.thinking}
    if m.tool_calls:
        out["tool_calls"] = [{"id": c.id, "name": c.name, "arguments": c.arguments} for c in m.tool_calls]
    if m.tool_call_id:
        out["tool_call_id"] = m.tool_call_id
    return out


def _message_from_transcript(m: dict) -> Message:
    calls = tuple(ToolCall(c["id"], c["name"], c["arguments"]) for c in m.get("tool_calls") or [])
    if not all(isinstance(c.id, str) and isinstance(c.name, str) and isinstance(c.arguments, dict) for c in calls):
        raise ValueError("malformed tool call")
    return Message(m["role"], m["content"], m.get("thinking") or "", calls, m.get("tool_call_id"))


def load_transcript(chat: Chat, path: str | os.PathLike[str]) -> None:
    """Replace the conversation with a saved one; a bad file changes nothing."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
        messages = [_message_from_transcript(m) for m in data["messages"]]
        roles_ok = all(m.role in ("user", "assistant", "tool") and isinstance(m.content, str) for m in messages)
        system, mode, budget = data.get("system"), Mode(data.get("mode", chat.mode.value)), data.get("budget")
        if not roles_ok or not (system is None or isinstance(system, str)) or not (budget is None or isinstance(budget, int) or budget == "auto"):
            raise ValueError("unexpected roles or fields")
        if (problem := tree_problem(data)) is not None:  # "\ud800" escapes decode to lone surrogates
            raise ValueError(problem)
    except FileNotFoundError:
        raise ChatError(f"{path}: not found") from None
    except RecursionError:
        raise ChatError(f"{path}: not a qwen3-edge transcript (nested too deeply)") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError, ValueError) as e:
        raise ChatError(f"{path}: not a qwen3-edge transcript ({e})") from None
    chat.system, chat.mode, chat.budget, chat.history = system, mode, budget, messages
