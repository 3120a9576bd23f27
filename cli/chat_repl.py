"""The interactive chat loop: read a line, run a slash command or stream a reply, repeat.

Thinking is shown dimmed under a label, the answer plainly, then a one-line footer. Ctrl-C
during a reply cancels that reply (the partial answer stays in the history); Ctrl-C or Ctrl-D at
the prompt leaves. Line editing and typed-line history come from prompt_toolkit on a terminal.
"""

from __future__ import annotations

import signal
import sys
from collections.abc import Callable
from pathlib import Path

from rich.console import Console
from rich.markup import escape

from edge.chat import Chat, ChatError, Reply, load_transcript, save_transcript
from edge.protocol.modes import Mode

from .chat_commands import COMMANDS, Command, CommandError, parse_budget, parse_command
from .console import where


def make_reader(history_file: Path | None) -> Callable[[str], str]:
    """prompt_toolkit on a terminal (editing, history); plain input() otherwise (pipes, tests)."""
    if sys.stdin.isatty() and sys.stdout.isatty():
        from prompt_toolkit import PromptSession
        from prompt_toolkit.history import FileHistory, InMemoryHistory
        history = InMemoryHistory()
        if history_file is not None:
            try:
                history_file.parent.mkdir(parents=True, exist_ok=True)
                history = FileHistory(str(history_file))
            except OSError:
                pass
        session = PromptSession(history=history)
        return lambda prompt: session.prompt(prompt)
    return input


class ChatRepl:
    def __init__(self, chat: Chat, console: Console, *, show_thinking: bool = True,
                 read: Callable[[str], str] = input):
        self.chat, self.console, self.show_thinking, self.read = chat, console, show_thinking, read
        self.last: Reply | None = None

    def run(self) -> None:
        while True:
            try:
                line = self.read(">>> ")
            except (EOFError, KeyboardInterrupt):
                self.console.print()
                return
            if not line.strip():
                continue
            try:
                command = parse_command(line)
                if command is None:
                    self.reply(line)
                elif not self.command(command):
                    return
            except (CommandError, ChatError) as e:
                self.console.print(f"[red]error:[/] {escape(str(e))}", soft_wrap=True)

    # ---- replies ------------------------------------------------------------------------------
    def reply(self, text: str) -> None:
        previous = signal.signal(signal.SIGINT, lambda *_: self.chat.cancel())
        shown_kind = None
        try:
            for event in self.chat.stream(text):
                if event.kind == "notice":
                    self.console.print(f"[yellow]{escape(event.text)}[/]")
                elif event.kind == "thinking" and self.show_thinking:
                    if shown_kind != "thinking":
                        self.console.print("[dim italic]Thinking…[/]")
                        shown_kind = "thinking"
                    self.console.print(event.text, style="dim", end="", markup=False, highlight=False)
                elif event.kind == "answer":
                    if shown_kind == "thinking":
                        self.console.print("\n")
                    shown_kind = "answer"
                    self.console.print(event.text, end="", markup=False, highlight=False)
                elif event.kind == "done":
                    self.last = event.reply
        finally:
            signal.signal(signal.SIGINT, previous)
        self.console.print()
        if self.last is not None:
            self.console.print(f"[dim]{escape(self.footer(self.last))}[/]")

    def footer(self, r: Reply) -> str:
        budget = r.thinking_budget if r.thinking_budget is not None else "∞"
        parts = [f"{r.generated_tokens} tokens", f"{r.tokens_per_s:.1f} tok/s", f"ttft {r.ttft_s * 1000:.0f} ms",
                 f"thinking {r.thinking_tokens}/{budget}" if r.thinking_enabled else "no thinking"]
        if r.budget_hit:
            parts.append("budget reached")
        if r.stop_reason != "eos":
            parts.append(r.stop_reason)
        parts.append(self.chat.engine.backend)
        return " · ".join(parts)

    # ---- slash commands -----------------------------------------------------------------------
    def command(self, c: Command) -> bool:
        """Run a slash command; False means leave the chat."""
        chat, say = self.chat, self.console.print
        if c.name == "/exit":
            return False
        if c.name in ("/think", "/no_think", "/auto"):
            chat.mode = Mode(c.name[1:])
            say(f"[green]mode: {chat.mode.value}[/] (from the next message on)")
        elif c.name == "/budget":
            chat.budget = parse_budget(c.argument)
            say(f"[green]thinking budget: {chat.budget if chat.budget is not None else 'off'}[/]")
        elif c.name == "/system":
            chat.system = c.argument or None
            say(f"[green]system prompt {'set' if chat.system else 'removed'}[/]")
        elif c.name == "/reset":
            chat.reset()
            say("[green]new conversation[/]")
        elif c.name == "/history":
            self.show_history()
        elif c.name == "/save":
            save_transcript(chat, Path(c.argument).expanduser())
            say(f"[green]saved {len(chat.history)} messages to {escape(c.argument)}[/]")
        elif c.name == "/load":
            load_transcript(chat, Path(c.argument).expanduser())
            say(f"[green]loaded {len(chat.history)} messages from {escape(c.argument)}[/]")
        elif c.name == "/stats":
            self.show_stats()
        elif c.name == "/help":
            for name, text in COMMANDS.items():
                say(f"  [bold]{name:10}[/] {escape(text)}")
            say("  A /think or /no_think at the end of a message switches Qwen's mode with that message.")
        return True

    def show_history(self) -> None:
        if self.chat.system:
            self.console.print(f"[bold]system:[/] {escape(self.chat.system)}")
        if not self.chat.history:
            self.console.print("[dim](no messages yet)[/]")
        for m in self.chat.history:
            style = "bold cyan" if m.role == "user" else "bold green"
            self.console.print(f"[{style}]{m.role}:[/] {escape(m.content)}", soft_wrap=True)

    def show_stats(self) -> None:
        e = self.chat.engine
        budget = self.chat.budget if self.chat.budget is not None else "off"
        self.console.print(f"model {escape(str(e.info.path))} · {escape(where(e))} · ctx {e.n_ctx} · "
                           f"{e.n_threads} threads · kv {e.kv_cache_type} · mode {self.chat.mode.value} · "
                           f"budget {budget} · {len(self.chat.history)} messages", soft_wrap=True)
        if self.last is not None:
            r = self.last
            self.console.print(f"last reply: {self.footer(r)} · prompt {r.prompt_tokens} tokens "
                               f"({r.evaluated_tokens} evaluated) · {r.seconds:.2f}s", soft_wrap=True)
