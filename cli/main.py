"""The Typer app: one module per command, each calling only the library."""

from __future__ import annotations

from importlib.metadata import version

import typer

from .bench_cmd import bench
from .chat_cmd import chat, run
from .embed_cmd import embed, rerank
from .info_cmd import info
from .plan_cmd import plan
from .quantize_cmd import quantize
from .serve_cmd import serve
from .store_cmd import list_models, pull, rm
from .tune_cmd import tune
from .worker_cmd import worker

app = typer.Typer(name="qwen3-edge", help="Run Qwen3 on a small machine.", no_args_is_help=True,
                  add_completion=True, pretty_exceptions_enable=False)
app.command()(chat)
app.command()(run)
app.command()(pull)
app.command("list")(list_models)
app.command()(rm)
app.command()(bench)
app.command()(serve)
app.command()(quantize)
app.command()(info)
app.command()(plan)
app.command()(worker)
app.command()(embed)
app.command()(rerank)
app.command()(tune)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"qwen3-edge {version('qwen3-edge')}")
        raise typer.Exit()


@app.callback()
def main(show_version: bool = typer.Option(False, "--version", callback=_version, is_eager=True,
                                           help="Show the version and exit.")) -> None:
    """qwen3-edge: chat with, run, quantize and inspect Qwen3 models on llama.cpp."""
