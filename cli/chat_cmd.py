"""`qwen3-edge chat` (interactive) and `qwen3-edge run` (one-shot, for scripts)."""

from __future__ import annotations

import dataclasses
import json
import sys
from pathlib import Path
from typing import Optional

import typer
from rich.markup import escape

from edge.chat import ChatError, Event
from edge.protocol.json_answer import json_answer_problem
from edge.models.store import ModelStore
from edge.protocol.text_check import text_problem

from .chat_repl import ChatRepl, make_reader
from .tune_cmd import tuning_line
from .console import err, friendly_errors, out, where
from .session import (CTX, FLASH_ATTN, GPU_LAYERS, KV_CACHE, MMAP, MODEL_HELP, PROMPT_CACHE, DRAFT, RPC, SOURCE, THREADS, load_engine,
                      make_chat)

THINK = typer.Option(None, "--think/--no-think", help="Thinking mode on (default) or off.")
AUTO = typer.Option(False, "--auto", help="Think only when the message needs reasoning.")
BUDGET = typer.Option(None, "--budget", help="Cap thinking at N tokens, or 'auto' to size it per message from its "
                                              "difficulty and this machine's speed (0: no cap).")
THINK_TIME = typer.Option(None, "--think-time", help="Cap thinking at about SECONDS (a token budget from the measured speed).")
SYSTEM = typer.Option(None, "--system", help="System prompt.")
SEED = typer.Option(None, "--seed", help="Sampling seed, for repeatable replies.")
TEMPERATURE = typer.Option(None, "--temperature", help="Override the mode's temperature (thinking 0.6, else 0.7).")
TOP_P = typer.Option(None, "--top-p", help="Override top_p (thinking 0.95, else 0.8).")
TOP_K = typer.Option(None, "--top-k", help="Override top_k (20).")
MIN_P = typer.Option(None, "--min-p", help="Override min_p (0).")
PRESENCE = typer.Option(0.0, "--presence-penalty", help="0 to 2; Qwen suggests up to 1.5 against repetition in quantized models.")
MAX_TOKENS = typer.Option(None, "--max-tokens", help="Stop a reply after N tokens.")
SHOW_THINKING = typer.Option(True, "--show-thinking/--hide-thinking", help="Show the model's thinking (dimmed).")
JSON_SCHEMA = typer.Option(None, "--json-schema", help="A JSON schema file: the answer (not the thinking) is held to it.")
JSON_OBJECT = typer.Option(False, "--json-object", help="The answer is a JSON object (the thinking stays free).")


def response_format(json_schema: Optional[Path], json_object: bool) -> Optional[dict]:
    """--json-schema FILE or --json-object as a response format; a bad file is one line."""
    if json_schema is None:
        return {"type": "json_object"} if json_object else None
    try:
        schema = json.loads(json_schema.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ChatError(f"{json_schema}: not a readable JSON schema ({e})") from None
    if not isinstance(schema, dict):
        raise ChatError(f"{json_schema}: a JSON schema must be an object")
    return {"type": "json_schema", "json_schema": {"name": json_schema.stem, "schema": schema}}


def chat(model: Optional[str] = typer.Argument(None, help=MODEL_HELP), ctx: int = CTX, think: Optional[bool] = THINK,
         auto: bool = AUTO, budget: Optional[str] = BUDGET, think_time: Optional[float] = THINK_TIME, system: Optional[str] = SYSTEM,
         threads: Optional[int] = THREADS, gpu_layers: Optional[int] = GPU_LAYERS, kv_cache: str = KV_CACHE,
         seed: Optional[int] = SEED, temperature: Optional[float] = TEMPERATURE, top_p: Optional[float] = TOP_P,
         top_k: Optional[int] = TOP_K, min_p: Optional[float] = MIN_P, presence_penalty: float = PRESENCE,
         max_tokens: Optional[int] = MAX_TOKENS, show_thinking: bool = SHOW_THINKING, mmap: bool = MMAP,
         source: Optional[str] = SOURCE, rpc: Optional[str] = RPC, prompt_cache: bool = PROMPT_CACHE,
         draft: Optional[str] = DRAFT, flash_attn: Optional[bool] = FLASH_ATTN) -> None:
    """Chat with a Qwen3 model in the terminal. /help lists the in-chat commands."""
    with friendly_errors():
        engine = load_engine(model, ctx, threads, gpu_layers, kv_cache, mmap, source=source, rpc=rpc,
                             prompt_cache=prompt_cache, draft=draft, flash_attn=flash_attn)
        session = make_chat(engine, think=think, auto=auto, budget=budget, think_time=think_time, system=system, seed=seed,
                            temperature=temperature, top_p=top_p, top_k=top_k, min_p=min_p,
                            presence_penalty=presence_penalty, max_tokens=max_tokens)
    out.print(f"[dim]{escape(engine.footprint.describe())}[/]", soft_wrap=True)
    if engine.speculator is not None:
        out.print(f"[dim]speculative decoding: {escape(engine.speculator.describe())}[/]", soft_wrap=True)
    if line := tuning_line(engine):
        out.print(f"[dim]{escape(line)}[/]", soft_wrap=True)
    out.print(f"[bold]qwen3-edge[/] · {escape(engine.info.name or engine.info.path.name)} · {escape(where(engine))} · "
              f"ctx {engine.n_ctx} · mode {session.mode.value} · /help for commands, /exit or Ctrl-D to leave",
              soft_wrap=True)
    reader = make_reader(ModelStore().root / "chat_history")
    with engine:
        ChatRepl(session, out, show_thinking=show_thinking, read=reader).run()


def run(model: str = typer.Argument(..., help=MODEL_HELP),
        prompt: str = typer.Argument(..., help="The message; '-' reads it from stdin."),
        as_json: bool = typer.Option(False, "--json", help="Print one JSON object: thinking, answer, stats."),
        ctx: int = CTX, think: Optional[bool] = THINK, auto: bool = AUTO, budget: Optional[str] = BUDGET, think_time: Optional[float] = THINK_TIME,
        system: Optional[str] = SYSTEM, threads: Optional[int] = THREADS, gpu_layers: Optional[int] = GPU_LAYERS,
        kv_cache: str = KV_CACHE, seed: Optional[int] = SEED, temperature: Optional[float] = TEMPERATURE,
        top_p: Optional[float] = TOP_P, top_k: Optional[int] = TOP_K, min_p: Optional[float] = MIN_P,
        presence_penalty: float = PRESENCE, max_tokens: Optional[int] = MAX_TOKENS,
        show_thinking: bool = SHOW_THINKING, mmap: bool = MMAP, json_schema: Optional[Path] = JSON_SCHEMA,
        json_object: bool = JSON_OBJECT, source: Optional[str] = SOURCE, rpc: Optional[str] = RPC,
        prompt_cache: bool = PROMPT_CACHE, draft: Optional[str] = DRAFT,
        flash_attn: Optional[bool] = FLASH_ATTN) -> None:
    """One message, one reply: the answer on stdout, the thinking on stderr (or hidden).
    With --json-schema or --json-object the answer is JSON a script can parse; an answer that is not
    (cut by --max-tokens, say) exits 1 with the reason on stderr (and in --json's schema_error)."""
    with friendly_errors():
        text = read_stdin() if prompt == "-" else prompt
        if not text.strip():
            raise typer.BadParameter("the prompt is empty")
        if (problem := text_problem(text)) is not None:  # before the model loads: a NUL, an undecodable argv byte
            raise ChatError(f"the prompt {problem}")
        fmt = response_format(json_schema, json_object)
        engine = load_engine(model, ctx, threads, gpu_layers, kv_cache, mmap, source=source, rpc=rpc,
                             prompt_cache=prompt_cache, draft=draft, flash_attn=flash_attn)
        with engine:
            session = make_chat(engine, think=think, auto=auto, budget=budget, think_time=think_time, system=system, seed=seed,
                                temperature=temperature, top_p=top_p, top_k=top_k, min_p=min_p,
                                presence_penalty=presence_penalty, max_tokens=max_tokens)
            reply, printer = None, _RunPrinter(show_thinking)
            held = []   # with a format, notices wait for the end: the schema's verdict is said once, below
            for event in session.stream(text, response_format=fmt):
                reply = event.reply or reply
                if as_json:
                    continue
                if fmt is not None and event.kind == "notice":
                    held.append(event)
                else:
                    printer(event)
            for event in held:
                if event.text != reply.schema_error:
                    printer(event)
    # None without a format: the answer's shape (a cut reply says so), then the Chat's own check (answer_check.py)
    problem = (json_answer_problem(reply.answer, fmt, reply.stop_reason) or reply.schema_error) if fmt is not None else None
    if as_json:
        fields = {"schema_error": problem} if fmt is not None else {}
        out.print_json(json.dumps({"model": str(engine.info.path), **dataclasses.asdict(reply), **fields}))
    else:
        sys.stdout.write("\n")
    if problem is not None:  # a script must not take a cut or invalid answer for the JSON it asked for
        sys.stdout.flush()
        err.print(f"[bold red]error:[/] {escape(problem)}", soft_wrap=True)
        raise typer.Exit(1)


def read_stdin() -> str:
    """stdin as UTF-8 whatever the locale (a leading BOM dropped); anything else is one line."""
    stream = getattr(sys.stdin, "buffer", None)
    if stream is None:  # a text-only stdin (embedding, tests): already decoded
        return sys.stdin.read()
    data = stream.read()
    if data.startswith((b"\xff\xfe", b"\xfe\xff")):
        raise ChatError("stdin is UTF-16 (it starts with a byte-order mark); convert it to UTF-8, "
                        "e.g. with iconv -f UTF-16 -t UTF-8")
    try:
        return data.decode("utf-8").removeprefix("\ufeff")
    except UnicodeDecodeError as e:
        raise ChatError(f"stdin is not UTF-8 text (byte 0x{data[e.start]:02x} at offset {e.start}); convert it, "
                        f"e.g. with iconv -f LATIN1 -t UTF-8") from None


class _RunPrinter:
    """Answer to stdout, thinking to stderr (ended by a newline once the answer starts)."""

    def __init__(self, show_thinking: bool):
        self.show_thinking, self.thought = show_thinking, False

    def __call__(self, event: Event) -> None:
        if event.kind == "answer":
            if self.thought:
                sys.stderr.write("\n")
                self.thought = False
            sys.stdout.write(event.text)
            sys.stdout.flush()
        elif event.kind == "thinking" and self.show_thinking:
            self.thought = True
            sys.stderr.write(event.text)
            sys.stderr.flush()
        elif event.kind == "notice":
            err.print(f"[yellow]{escape(event.text)}[/]")
