"""`qwen3-edge worker`: llama.cpp's RPC server (tools/rpc/rpc-server.cpp's job) run in this
process from the same bindings build, through ggml_backend_rpc_start_server.

That call never returns (it accepts clients forever), so it runs on a daemon thread while the
main thread waits in short joins: Ctrl-C and SIGTERM then reach Python and end the process.
Only the checks are pure (loopback, endpoint); the rest touches llama.cpp and sockets.
"""

from __future__ import annotations

import ctypes
import ipaddress
import socket
import threading
from collections.abc import Callable

from edge.cluster.rpc import BUILD_HINT, RpcError, _Ggml

SECURITY_WARNING = ("the RPC protocol has no authentication and no encryption: anyone who can reach {where} "
                    "can read and write this worker's memory buffers and run graphs on it; expose it only on a "
                    "network you trust")


def is_loopback(host: str) -> bool:
    try:
        return ipaddress.IPv4Address(host).is_loopback
    except ValueError:
        return False


def check_bind_host(host: str, allow_remote: bool) -> str | None:
    """None when `host` may be bound, else the one-line refusal. llama.cpp's server takes only a
    dotted IPv4 address (inet_addr); anything but loopback needs allow_remote."""
    try:
        ipaddress.IPv4Address(host)
    except ValueError:
        return f"--host must be an IPv4 address such as 127.0.0.1 or 0.0.0.0, not {host!r}"
    if not is_loopback(host) and not allow_remote:
        return (f"refusing to bind {host}: {SECURITY_WARNING.format(where='the port')}. Pass --allow-remote "
                f"to bind it anyway")
    return None


def worker_devices() -> list[int]:
    """rpc-server's choice: every non-CPU device (GPUs, iGPUs), else the CPU."""
    g = _Ggml()
    devs = [g.dev_get(i) for i in range(g.dev_count())]
    accel = [d for d in devs if g.dev_type(d) not in (0, 3) and not g.is_rpc(d)]  # not CPU, not ACCEL
    return accel or [d for d in devs if g.dev_type(d) == 0][:1]


def _start_server_fn():
    g = _Ggml()
    reg = g.reg_by_name(b"RPC")
    fn = g.reg_proc(reg, b"ggml_backend_rpc_start_server") if reg else None
    if not fn:
        raise RpcError(f"these llama-cpp-python bindings have no RPC backend; {BUILD_HINT}")
    return ctypes.CFUNCTYPE(None, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_size_t, ctypes.c_size_t,
                            ctypes.POINTER(ctypes.c_void_p))(fn)


def _check_port_free(host: str, port: int) -> None:
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as llama.cpp's server socket does
    try:
        s.bind((host, port))
    except OSError as e:
        raise RpcError(f"cannot listen on {host}:{port} ({e.strerror or e})") from None
    finally:
        s.close()


def run_worker(host: str, port: int, threads: int, cache_dir: str | None = None,
               on_start: Callable[[list[str]], None] | None = None) -> None:
    """Serve llama.cpp's RPC protocol on host:port until the process is stopped. Raises RpcError
    (one line) for bindings without RPC, a port that cannot be bound, or a server that stops."""
    if not 1 <= port <= 65535:
        raise RpcError(f"--port must be 1-65535, not {port}")
    if threads < 1:
        raise RpcError(f"--threads must be at least 1, not {threads}")
    start = _start_server_fn()
    _check_port_free(host, port)
    g = _Ggml()
    devices = worker_devices()
    array = (ctypes.c_void_p * len(devices))(*devices)
    if on_start is not None:
        on_start([f"{g.dev_name(d).decode()} ({g.dev_description(d).decode()})" for d in devices])
    endpoint = f"{host}:{port}".encode()
    cache = cache_dir.encode() if cache_dir else None
    thread = threading.Thread(target=start, args=(endpoint, cache, threads, len(devices), array),
                              name="llama.cpp rpc server", daemon=True)
    thread.start()
    while thread.is_alive():
        thread.join(0.25)   # short joins: a signal handler runs between them
    raise RpcError(f"llama.cpp's RPC server on {host}:{port} stopped (see its message above)")
