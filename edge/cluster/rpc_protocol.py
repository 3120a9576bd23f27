"""llama.cpp's RPC wire format, as far as qwen3-edge needs it: pure functions, no sockets.

Every request is | command (1 byte) | size (8 bytes, little-endian) | payload |, every answer
| size (8 bytes) | payload |, and only some commands are answered (ggml-rpc.cpp, protocol 7.0.0,
the version the pinned bindings vendor). The handshake (HELLO, command 14 in every version)
tells the server's version; the relay (rpc_relay.py) needs to know which commands expect an
answer and how long it is, so it can stand in for a worker that died.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

PROTO_VERSION = (7, 0, 0)        # RPC_PROTO_{MAJOR,MINOR,PATCH}_VERSION in the vendored ggml-rpc.h
CONN_CAPS_SIZE = 24              # RPC_CONN_CAPS_SIZE: transport capabilities (RDMA), zero for plain TCP
MAX_SERVERS = 16                 # GGML_RPC_MAX_SERVERS

(ALLOC_BUFFER, GET_ALIGNMENT, GET_MAX_SIZE, BUFFER_GET_BASE, FREE_BUFFER, BUFFER_CLEAR, SET_TENSOR,
 SET_TENSOR_HASH, GET_TENSOR, COPY_TENSOR, GRAPH_COMPUTE, GET_DEVICE_MEMORY, INIT_TENSOR, GET_ALLOC_SIZE,
 HELLO, DEVICE_COUNT, GRAPH_RECOMPUTE, MEMSET_TENSOR, NONE, COUNT) = range(20)

HELLO_ANSWER_SIZE = 4 + CONN_CAPS_SIZE   # major, minor, patch, padding, caps

# Fixed answer sizes of the answered commands; GET_TENSOR's answer is as long as it asked for.
ANSWER_SIZES: dict[int, int] = {
    HELLO: HELLO_ANSWER_SIZE, DEVICE_COUNT: 4, ALLOC_BUFFER: 16, GET_ALLOC_SIZE: 8, GET_ALIGNMENT: 8,
    GET_MAX_SIZE: 8, BUFFER_GET_BASE: 8, SET_TENSOR_HASH: 1, COPY_TENSOR: 1, GET_DEVICE_MEMORY: 16,
}


class ProtocolError(ValueError):
    """Bytes that are not llama.cpp's RPC protocol, or another version of it."""


@dataclass(frozen=True)
class Version:
    major: int
    minor: int
    patch: int

    def __str__(self) -> str:
        return f"{self.major}.{self.minor}.{self.patch}"


def request(cmd: int, payload: bytes = b"") -> bytes:
    return struct.pack("<BQ", cmd, len(payload)) + payload


def hello_request() -> bytes:
    """HELLO with all-zero transport caps: plain TCP, no RDMA upgrade."""
    return request(HELLO, bytes(CONN_CAPS_SIZE))


def answer_size(size_field: bytes, expected: int) -> None:
    """Check an answer's 8-byte size field against what the command answers."""
    (size,) = struct.unpack("<Q", size_field)
    if size != expected:
        raise ProtocolError(f"an answer of {size} bytes where llama.cpp's RPC protocol has {expected}")


def parse_hello(payload: bytes) -> Version:
    """The server's version from its HELLO answer; refused unless this build can talk to it
    (the same major version and a minor no newer than ours, llama.cpp's own rule)."""
    if len(payload) != HELLO_ANSWER_SIZE:
        raise ProtocolError(f"a handshake answer of {len(payload)} bytes, not {HELLO_ANSWER_SIZE}")
    v = Version(payload[0], payload[1], payload[2])
    ours = Version(*PROTO_VERSION)
    if v.major != ours.major or v.minor > ours.minor:
        raise ProtocolError(f"it speaks RPC protocol {v}, this build speaks {ours}: run a worker built from "
                            f"the same llama.cpp (qwen3-edge worker with the same llama-cpp-python)")
    return v


def parse_device_count(payload: bytes) -> int:
    (n,) = struct.unpack("<I", payload)
    return n


def device_memory_request(device: int) -> bytes:
    return request(GET_DEVICE_MEMORY, struct.pack("<I", device))


def parse_device_memory(payload: bytes) -> tuple[int, int]:
    """(free, total) bytes of a worker's device."""
    free, total = struct.unpack("<QQ", payload)
    return free, total


def expected_answer(cmd: int, payload: bytes) -> int | None:
    """Bytes of the answer to a request, None when the command is not answered. GET_TENSOR
    ends with the size it asks for (| tensor | offset u64 | size u64 |)."""
    if cmd == GET_TENSOR:
        if len(payload) < 16:
            raise ProtocolError("a GET_TENSOR request too short to hold its size")
        return struct.unpack("<Q", payload[-8:])[0]
    if cmd not in range(COUNT):
        raise ProtocolError(f"unknown RPC command {cmd}")
    return ANSWER_SIZES.get(cmd)


def stand_in_answer(cmd: int, payload: bytes) -> bytes | None:
    """What the relay answers for a worker that is gone: well-formed zeros (so llama.cpp's
    client, which aborts the process on any broken answer, returns instead), except the
    handshake, which must carry our version, and the buffer type's alignment and maximum size,
    which ggml checks (a stale device's buffer type may be created after its worker is gone)."""
    size = expected_answer(cmd, payload)
    if size is None:
        return None
    if cmd == HELLO:
        body = bytes(PROTO_VERSION) + bytes(1 + CONN_CAPS_SIZE)
    elif cmd == DEVICE_COUNT:
        body = struct.pack("<I", 1)
    elif cmd == GET_ALIGNMENT:
        body = struct.pack("<Q", 32)        # ggml asserts a power of two
    elif cmd == GET_MAX_SIZE:
        body = struct.pack("<Q", (1 << 64) - 1)
    else:
        body = bytes(size)
    return struct.pack("<Q", len(body)) + body
