"""`qwen3-edge worker`: llama.cpp's RPC server on this machine, for a main machine's `--rpc`."""

from __future__ import annotations

import os
import sys
from typing import Optional

import typer

from edge.runtime.context_plan import physical_cores
from edge.cluster.rpc import RpcError
from edge.cluster.rpc_worker import SECURITY_WARNING, check_bind_host, is_loopback, run_worker

from .console import err, terminate_as_interrupt


def worker(host: str = typer.Option("127.0.0.1", "--host", help="IPv4 address to listen on (loopback by default)."),
           port: int = typer.Option(50052, "--port", help="Port (llama.cpp's rpc-server default: 50052)."),
           threads: Optional[int] = typer.Option(None, "--threads", help="CPU threads (default: physical cores)."),
           allow_remote: bool = typer.Option(False, "--allow-remote",
                                             help="Allow a non-loopback --host. The RPC protocol has no authentication."),
           cache: Optional[str] = typer.Option(None, "--cache", help="Folder where the worker keeps large weights it "
                                                                    "was sent, so a reload skips sending them.")) -> None:
    """Lend this machine's memory and cores to a model run elsewhere (`chat MODEL --rpc HOST:PORT`)."""
    refusal = check_bind_host(host, allow_remote)
    if refusal:
        err.print(f"[bold red]error:[/] {refusal}", soft_wrap=True)
        raise typer.Exit(2)
    if not is_loopback(host):
        err.print(f"[yellow]warning:[/] {SECURITY_WARNING.format(where=f'{host}:{port}')}", soft_wrap=True)

    def started(devices: list[str]) -> None:
        err.print(f"worker on {host}:{port} with {', '.join(devices)}; Ctrl-C stops it", soft_wrap=True)

    code = 0
    try:
        with terminate_as_interrupt():
            run_worker(host, port, threads or physical_cores(), cache, on_start=started)
    except RpcError as e:
        err.print(f"[bold red]error:[/] {e}", soft_wrap=True)
        code = 1
    except KeyboardInterrupt:
        err.print("worker stopped")
        code = 130
    sys.stdout.flush()
    sys.stderr.flush()
    # llama.cpp's server thread is blocked in accept() for good: leave without waiting for it.
    os._exit(code)
