"""A model split across machines with llama.cpp's RPC backend: `qwen3-edge worker` (llama.cpp's
rpc-server) on each board, `Engine.load(..., rpc_servers=["host:port", ...])` on the main one.

Why each step is done the way it is:
- ggml is reached through libllama's own handle (dlsym searches its dependencies), never a
  separately opened libggml: a second copy has its own device registry, and a server registered
  there is invisible to llama.cpp, which then puts every layer on the CPU. That was the first
  try's CPU-only placement: pip installs the wheel's lib/libggml.so, libggml.so.0 and
  libggml.so.0.25.3 as three separate files (not symlinks), libllama loads libggml.so.0 by its
  soname, and llama_cpp._ggml opens libggml.so: two copies in one process (/proc/self/maps).
- Every endpoint is probed first with a bounded connect and handshake (probe), because llama.cpp's
  own connect and reads have no timeout and any failure aborts the process.
- llama.cpp talks to each worker through a loopback relay (rpc_relay.py) that bounds every read and
  turns a worker that dies mid-reply into WorkerLost instead of abort().
- The model is given its devices explicitly (model params `devices`): llama.cpp's registry keeps
  every server ever registered in the process, and its default would use them all.
"""

from __future__ import annotations

import ctypes
import ipaddress
import re
import socket
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import llama_cpp

from edge.cluster import rpc_protocol as proto
from edge.cluster.rpc_relay import Relay

if TYPE_CHECKING:
    from edge.cluster.split_plan import SplitPlan

DEFAULT_PORT = 50052                 # rpc-server's default
CONNECT_TIMEOUT = 5.0
IO_TIMEOUT = 120.0                   # a worker computing a long prompt on a slow board answers late
BUILD_HINT = ('rebuild the bindings with RPC: CMAKE_ARGS="-DGGML_RPC=on" pip install --force-reinstall '
              '--no-cache-dir llama-cpp-python==0.3.36')
_HOST = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*")


class RpcError(Exception):
    """A worker that cannot be used, or bindings without RPC: one line saying what to do."""


class WorkerLost(RpcError):
    """A worker stopped answering while the model was in use; the Engine cannot go on."""


@dataclass(frozen=True)
class Endpoint:
    host: str
    port: int

    def __str__(self) -> str:
        return f"{self.host}:{self.port}"


def parse_endpoint(text: str) -> Endpoint:
    """HOST:PORT, HOST an IPv4 address or a host name (llama.cpp's RPC client resolves IPv4 only,
    and splits at the first colon, so IPv6 cannot be written), PORT 1-65535."""
    item = text.strip()
    host, sep, port = item.rpartition(":")
    if not sep or not host:
        raise RpcError(f"RPC endpoint {item!r} is not HOST:PORT (e.g. 192.168.1.20:{DEFAULT_PORT})")
    if ":" in host or host.startswith("["):
        raise RpcError(f"RPC endpoint {item!r}: IPv6 is not supported by llama.cpp's RPC client; use an "
                       f"IPv4 address or a host name")
    if not port.isdigit() or not 1 <= int(port) <= 65535:
        raise RpcError(f"RPC endpoint {item!r}: the port must be a number from 1 to 65535")
    try:
        ipaddress.IPv4Address(host)
    except ValueError:
        if host.replace(".", "").isdigit() or not _HOST.fullmatch(host) or len(host) > 253:
            raise RpcError(f"RPC endpoint {item!r}: {host!r} is neither an IPv4 address nor a host name") from None
    return Endpoint(host, int(port))


def parse_endpoints(spec: str | Sequence[str]) -> list[Endpoint]:
    """Endpoints from "h1:p1,h2:p2" or a list of "host:port" strings (each may hold commas too):
    at least one, each once, at most 16 (GGML_RPC_MAX_SERVERS)."""
    items = [spec] if isinstance(spec, str) else list(spec)
    parts = [p for item in items for p in str(item).split(",")]
    if not parts or any(not p.strip() for p in parts):
        raise RpcError("--rpc takes HOST:PORT[,HOST:PORT...] with no empty entries")
    out = [parse_endpoint(p) for p in parts]
    seen = set()
    for e in out:
        key = (e.host.lower(), e.port)
        if key in seen:
            raise RpcError(f"RPC endpoint {e} is given twice")
        seen.add(key)
    if len(out) > proto.MAX_SERVERS:
        raise RpcError(f"at most {proto.MAX_SERVERS} RPC endpoints, not {len(out)}")
    return out


@dataclass(frozen=True)
class WorkerInfo:
    endpoint: Endpoint
    version: proto.Version
    memory: tuple[tuple[int, int], ...]   # (free, total) bytes of each of the worker's devices


def _recv(sock: socket.socket, n: int) -> bytes:
    buf = b""
    while len(buf) < n:
        part = sock.recv(n - len(buf))
        if not part:
            raise ConnectionError("closed")
        buf += part
    return buf


def _answer(sock: socket.socket, size: int) -> bytes:
    proto.answer_size(_recv(sock, 8), size)
    return _recv(sock, size)


def probe(endpoint: Endpoint, timeout: float = CONNECT_TIMEOUT) -> WorkerInfo:
    """Handshake with a worker under a timeout for the connect and every read: its protocol
    version and each device's memory, or RpcError with one line saying what is there instead."""
    where = f"RPC worker {endpoint}"
    try:
        sock = socket.create_connection((endpoint.host, endpoint.port), timeout=timeout)
    except socket.gaierror:
        raise RpcError(f"{where}: cannot resolve the host name {endpoint.host!r}") from None
    except ConnectionRefusedError:
        raise RpcError(f"{where}: connection refused (nothing listens there; start one with "
                       f"`qwen3-edge worker --port {endpoint.port}` on that machine)") from None
    except TimeoutError:
        raise RpcError(f"{where}: no answer to the connection within {timeout:g} s (host down, or a "
                       f"firewall)") from None
    except OSError as e:
        raise RpcError(f"{where}: cannot connect ({e.strerror or e})") from None
    with sock:
        try:
            sock.sendall(proto.hello_request())
            try:
                head = _recv(sock, 8)
            except ConnectionError:
                raise RpcError(f"{where}: closed the connection at the handshake: an rpc-server of another "
                               f"llama.cpp version (this build speaks RPC {proto.Version(*proto.PROTO_VERSION)}), "
                               f"or not an rpc-server") from None
            try:
                proto.answer_size(head, proto.HELLO_ANSWER_SIZE)
                version = proto.parse_hello(_recv(sock, proto.HELLO_ANSWER_SIZE))
            except proto.ProtocolError as e:
                if "speaks RPC protocol" in str(e):
                    raise RpcError(f"{where}: {e}") from None
                raise RpcError(f"{where}: does not speak llama.cpp's RPC protocol ({e})") from None
            sock.sendall(proto.request(proto.DEVICE_COUNT))
            count = proto.parse_device_count(_answer(sock, 4))
            if not 1 <= count <= 64:
                raise RpcError(f"{where}: reports {count} devices")
            memory = []
            for i in range(count):
                sock.sendall(proto.device_memory_request(i))
                memory.append(proto.parse_device_memory(_answer(sock, 16)))
        except TimeoutError:
            raise RpcError(f"{where}: no answer within {timeout:g} s (not an rpc-server, or a worker busy "
                           f"with another client: each serves one at a time)") from None
        except proto.ProtocolError as e:
            raise RpcError(f"{where}: malformed answer ({e})") from None
        except OSError as e:
            raise RpcError(f"{where}: the connection failed during the handshake ({e.strerror or e})") from None
    return WorkerInfo(endpoint, version, tuple(memory))


class _Ggml:
    """The ggml device-registry calls, bound to the libggml that libllama itself uses."""

    def __init__(self) -> None:
        lib = llama_cpp.llama_cpp._lib
        vp, cp, sz = ctypes.c_void_p, ctypes.c_char_p, ctypes.c_size_t

        def fn(name, res, *args):
            return ctypes.CFUNCTYPE(res, *args)((name, lib))
        self.reg_by_name = fn("ggml_backend_reg_by_name", vp, cp)
        self.reg_proc = fn("ggml_backend_reg_get_proc_address", vp, vp, cp)
        self.register = fn("ggml_backend_register", None, vp)
        self.reg_dev_count = fn("ggml_backend_reg_dev_count", sz, vp)
        self.reg_dev_get = fn("ggml_backend_reg_dev_get", vp, vp, sz)
        self.reg_name = fn("ggml_backend_reg_name", cp, vp)
        self.dev_count = fn("ggml_backend_dev_count", sz)
        self.dev_get = fn("ggml_backend_dev_get", vp, sz)
        self.dev_name = fn("ggml_backend_dev_name", cp, vp)
        self.dev_description = fn("ggml_backend_dev_description", cp, vp)
        self.dev_type = fn("ggml_backend_dev_type", ctypes.c_int, vp)
        self.dev_reg = fn("ggml_backend_dev_backend_reg", vp, vp)

    def is_rpc(self, dev: int) -> bool:
        return self.reg_name(self.dev_reg(dev)) == b"RPC"


def rpc_available() -> bool:
    """Whether the bindings were built with llama.cpp's RPC backend."""
    return bool(_Ggml().reg_by_name(b"RPC"))


def local_accelerators() -> list[int]:
    """The devices llama.cpp would pick by default, less RPC ones: GPUs, else integrated GPUs
    (its llama_prepare_model_devices rule, without the same-PCI-id deduplication)."""
    g = _Ggml()
    devs = [g.dev_get(i) for i in range(g.dev_count())]
    gpus = [d for d in devs if g.dev_type(d) == 1 and not g.is_rpc(d)]
    return gpus or [d for d in devs if g.dev_type(d) == 2 and not g.is_rpc(d)]


def registry_has_rpc() -> bool:
    """Whether llama.cpp's registry holds RPC devices (registered earlier in this process)."""
    g = _Ggml()
    return any(g.is_rpc(g.dev_get(i)) for i in range(g.dev_count()))


@dataclass(frozen=True)
class RpcDevice:
    name: str          # llama.cpp's device name: RPC0, RPC1, ...
    worker: str        # host:port of the worker
    handle: int        # ggml_backend_dev_t
    free: int
    total: int


class RpcCluster:
    """The workers of one Engine: probed, relayed and registered with llama.cpp, in order."""

    def __init__(self, endpoints: Sequence[Endpoint], *, connect_timeout: float = CONNECT_TIMEOUT,
                 io_timeout: float = IO_TIMEOUT, probed: Sequence[WorkerInfo] | None = None):
        g = _Ggml()
        rpc_reg = g.reg_by_name(b"RPC")
        if not rpc_reg:
            raise RpcError(f"these llama-cpp-python bindings have no RPC backend; {BUILD_HINT}")
        add_fn = g.reg_proc(rpc_reg, b"ggml_backend_rpc_add_server")
        if not add_fn:
            raise RpcError("this llama.cpp's RPC backend has no ggml_backend_rpc_add_server")
        add_server = ctypes.CFUNCTYPE(ctypes.c_void_p, ctypes.c_char_p)(add_fn)
        # all checked before llama.cpp sees one (its own connect would abort on failure)
        infos = list(probed) if probed is not None else [probe(e, connect_timeout) for e in endpoints]
        self.relays: list[Relay] = []
        self.devices: list[RpcDevice] = []
        for info in infos:
            relay = Relay(info.endpoint.host, info.endpoint.port, connect_timeout=connect_timeout,
                          io_timeout=io_timeout)
            self.relays.append(relay)
            reg = add_server(relay.address.encode())
            self.check()
            if not reg:
                raise RpcError(f"RPC worker {info.endpoint} reports no devices")
            g.register(reg)
            for i in range(g.reg_dev_count(reg)):
                dev = g.reg_dev_get(reg, i)
                free, total = info.memory[i] if i < len(info.memory) else (0, 0)
                self.devices.append(RpcDevice(g.dev_name(dev).decode(), str(info.endpoint), dev, free, total))

    def check(self) -> None:
        """Raise WorkerLost if any worker has failed since."""
        for r in self.relays:
            if r.failure is not None:
                raise WorkerLost(f"{r.failure}; the model cannot go on: load it again when the worker is back")

    def retire(self) -> None:
        for r in self.relays:
            r.retire()


def device_array(handles: Sequence[int]) -> ctypes.Array:
    """A NULL-terminated ggml_backend_dev_t array for llama_model_params.devices."""
    return (ctypes.c_void_p * (len(handles) + 1))(*handles, None)


class RpcLlama:
    """Mixed into the Engine's Llama class for a load over workers (see llama_class): every eval
    checks the workers before and after, so stand-in zeros are never read as logits."""

    _rpc_cluster: RpcCluster | None = None

    def eval(self, tokens) -> None:
        if self._rpc_cluster is not None:
            self._rpc_cluster.check()
        super().eval(tokens)
        if self._rpc_cluster is not None:
            self._rpc_cluster.check()


def llama_class(base: type, cluster: RpcCluster | None) -> type:
    """`base` (the Engine's Llama class) with the worker check of RpcLlama when there are workers."""
    if cluster is None:
        return base
    return type(f"Rpc{base.__name__}", (RpcLlama, base), {"_rpc_cluster": cluster})


@dataclass
class DeviceChoice:
    """llama_model_params.devices for one load: `overrides` for TunedLlama's model_overrides; the
    array they point to lives as long as this object (llama.cpp reads it while loading)."""
    handles: list[int]
    names: list[str]

    def __post_init__(self) -> None:
        self._array = device_array(self.handles)

    @property
    def overrides(self) -> dict:
        return {"devices": ctypes.cast(self._array, ctypes.c_void_p).value}


def _device_memory(handle: int) -> tuple[int, int]:
    lib = llama_cpp.llama_cpp._lib
    fn = ctypes.CFUNCTYPE(None, ctypes.c_void_p, ctypes.POINTER(ctypes.c_size_t), ctypes.POINTER(ctypes.c_size_t))(
        ("ggml_backend_dev_memory", lib))
    free, total = ctypes.c_size_t(0), ctypes.c_size_t(0)
    fn(handle, ctypes.byref(free), ctypes.byref(total))
    return free.value, total.value


def local_choice() -> DeviceChoice | None:
    """For a load without workers: None (llama.cpp's default) unless RPC devices of an earlier
    load sit in llama.cpp's registry, which its default would use; then the local accelerators."""
    if not registry_has_rpc():
        return None
    g, handles = _Ggml(), local_accelerators()
    return DeviceChoice(handles, [g.dev_name(h).decode() for h in handles])


@dataclass
class WorkerLoad:
    """What Engine.load needs from the workers: the cluster, the devices for the model (the
    workers' first, in the order given, then local accelerators, llama.cpp's own order) and the
    split plan the refusal or the memory plan comes from."""
    cluster: RpcCluster
    choice: DeviceChoice
    split: "SplitPlan"


def probe_workers(spec: str | Sequence[str], timeout: float = CONNECT_TIMEOUT) -> list[WorkerInfo]:
    """Parse and probe every endpoint (bounded); RpcError for the first that cannot be used."""
    if not rpc_available():
        raise RpcError(f"these llama-cpp-python bindings have no RPC backend; {BUILD_HINT}")
    return [probe(e, timeout) for e in parse_endpoints(spec)]


def split_devices(infos: Sequence[WorkerInfo]) -> list[tuple[str, int]]:
    """(name, free bytes) of the workers' devices (as their probe reported them) and the local
    accelerators, in llama.cpp's order: what the split plan divides the layers over."""
    devices = [(f"RPC worker {i.endpoint}" + (f" device {k}" if len(i.memory) > 1 else ""), free or total)
               for i in infos for k, (free, total) in enumerate(i.memory)]
    g = _Ggml()
    for h in local_accelerators():
        devices.append((g.dev_name(h).decode(), _device_memory(h)[0]))
    return devices


def plan_over_workers(infos: Sequence[WorkerInfo], tensors: Sequence[tuple[str, int]], n_layer: int,
                      host_free: int, n_ctx: int, **plan_kwargs) -> "SplitPlan":
    """The split plan over the workers' devices and the local accelerators, in llama.cpp's order."""
    from edge.cluster.split_plan import model_bytes, plan_split
    return plan_split(model_bytes(tensors, n_layer), split_devices(infos), host_free, n_ctx, **plan_kwargs)


def connect_workers(infos: Sequence[WorkerInfo], split: "SplitPlan", *, connect_timeout: float = CONNECT_TIMEOUT,
                    io_timeout: float = IO_TIMEOUT) -> WorkerLoad:
    """Relay and register the probed workers with llama.cpp; the model's device list."""
    cluster = RpcCluster([i.endpoint for i in infos], connect_timeout=connect_timeout, io_timeout=io_timeout,
                         probed=infos)
    g = _Ggml()
    handles = [d.handle for d in cluster.devices] + local_accelerators()
    return WorkerLoad(cluster, DeviceChoice(handles, [g.dev_name(h).decode() for h in handles]), split)
