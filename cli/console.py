"""Shared terminal output: rich consoles and the one-line error exit every command uses."""

from __future__ import annotations

import signal
from collections.abc import Iterator
from contextlib import contextmanager

import typer
from rich.console import Console
from rich.markup import escape

from edge.chat import ChatError
from edge.runtime.engine import EngineError
from edge.models.store import StoreError
from quantize import QuantizeError


def _library_errors() -> tuple[type[Exception], ...]:
    """Every one-line error the libraries raise for bad input."""
    from edge.models.hub import PullError  # late: keeps huggingface_hub out of commands that never pull
    return (QuantizeError, EngineError, ChatError, StoreError, PullError)


out = Console(highlight=False)
err = Console(stderr=True, highlight=False)


@contextmanager
def friendly_errors() -> Iterator[None]:
    """Bad input becomes one red line on stderr and exit 1; Ctrl-C exits 130 without a traceback."""
    try:
        yield
    except Exception as e:
        if not isinstance(e, _library_errors()):
            raise
        err.print(f"[bold red]error:[/] {escape(str(e))}", soft_wrap=True)
        raise typer.Exit(1) from None
    except KeyboardInterrupt:
        err.print("[yellow]interrupted[/]; nothing was written")
        raise typer.Exit(130) from None


@contextmanager
def terminate_as_interrupt() -> Iterator[None]:
    """SIGTERM (kill, service managers) unwinds like Ctrl-C, so temporary files get removed."""
    def interrupt(*_: object) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def human_bytes(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.2f} {unit}"
        n /= 1000
    return f"{n:.2f} GB"


def where(engine) -> str:
    """Where a loaded Engine runs, as llama.cpp placed it: "vulkan on Vulkan0 (llvmpipe (...))"."""
    return f"{engine.backend} on {engine.device}" if engine.device else engine.backend
