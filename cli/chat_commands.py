"""The in-chat slash commands, parsed apart from any terminal so they can be tested as text.

A line that is exactly `/think` or `/no_think` switches the mode for the following turns; the same
words at the end of an ordinary message are Qwen's soft switch and go to the model with it.
"""

from __future__ import annotations

from dataclasses import dataclass

COMMANDS = {
    "/think": "thinking on for the following turns",
    "/no_think": "thinking off for the following turns",
    "/auto": "think only when the message needs reasoning (math, code, several steps)",
    "/budget": "/budget N caps thinking at N tokens; /budget auto sizes it per message; /budget 0 or off removes the cap",
    "/system": "/system TEXT sets the system prompt (empty removes it)",
    "/reset": "start a new conversation (system prompt and settings stay)",
    "/history": "show the conversation so far",
    "/save": "/save FILE writes the transcript as JSON",
    "/load": "/load FILE replaces the conversation with a saved transcript",
    "/stats": "show the last reply's figures and the session's settings",
    "/help": "show this help",
    "/exit": "leave (Ctrl-D works too)",
}
NEEDS_ARGUMENT = {"/save", "/load", "/budget"}


class CommandError(Exception):
    """A slash command that cannot run: one line, and the chat goes on."""


@dataclass(frozen=True)
class Command:
    name: str
    argument: str = ""


def parse_command(line: str) -> Command | None:
    """A Command when the line is a slash command, None when it is a message for the model."""
    text = line.strip()
    if not text.startswith("/"):
        return None
    name, _, argument = text.partition(" ")
    name = name.lower()
    if name not in COMMANDS:
        if name in ("/quit", "/bye"):
            return Command("/exit")
        raise CommandError(f"unknown command {name}; /help lists the commands")
    if name in NEEDS_ARGUMENT and not argument.strip():
        raise CommandError(f"{name} needs an argument: {COMMANDS[name]}")
    return Command(name, argument.strip())


def parse_budget(argument: str) -> int | str | None:
    """`/budget 256` -> 256; `auto` -> "auto" (sized per message, edge/protocol/budget.py); `0` or `off` ->
    None (no cap)."""
    value = argument.strip().lower()
    if value in ("0", "off", "none"):
        return None
    if value == "auto":
        return "auto"
    try:
        budget = int(value)
    except ValueError:
        raise CommandError(f"/budget takes a whole number of tokens or 'auto' or 'off', not {argument!r}") from None
    if budget < 0:
        raise CommandError("/budget cannot be negative")
    return budget
