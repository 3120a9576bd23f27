"""RPC without llama.cpp's RPC backend: endpoint parsing, the wire format, llama.cpp's layer split,
the split memory plan, the worker's bind rules, and the probe and relay against Python stand-ins
for workers (a silent port, a garbage speaker, another protocol version, a worker that dies).
These run on every build of the bindings."""

from __future__ import annotations

import socket
import struct
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from edge.cluster import rpc_protocol as proto
from edge.cluster.rpc import Endpoint, RpcError, parse_endpoint, parse_endpoints, probe, rpc_available
from edge.cluster.rpc_relay import Relay
from edge.cluster.rpc_worker import check_bind_host, is_loopback
from edge.cluster.split_plan import ModelBytes, layer_devices, model_bytes, plan_split

GIB = 1 << 30


# ---- endpoints ------------------------------------------------------------------------------

def test_endpoints_parse_in_order():
    assert parse_endpoints("192.168.1.20:50052, board-2.local:50053") == [
        Endpoint("192.168.1.20", 50052), Endpoint("board-2.local", 50053)]
    assert parse_endpoints(["10.0.0.1:1", "10.0.0.2:65535,10.0.0.3:2"]) == [
        Endpoint("10.0.0.1", 1), Endpoint("10.0.0.2", 65535), Endpoint("10.0.0.3", 2)]


@pytest.mark.parametrize("bad, words", [
    ("", "no empty"), ("a:1,,b:2", "no empty"), ("a:1,", "no empty"),
    ("host", "HOST:PORT"), (":50052", "HOST:PORT"), ("host:", "1 to 65535"), ("host:0", "1 to 65535"),
    ("host:65536", "1 to 65535"), ("host:-1", "1 to 65535"), ("host:5e4", "1 to 65535"),
    ("::1:50052", "IPv6"), ("[::1]:50052", "IPv6"), ("999.1.1.1:50052", "neither"), ("bad_host:1", "neither"),
    ("-x.org:1", "neither"), ("a:1,A:1", "twice"),
])
def test_bad_endpoints_are_one_line(bad, words):
    with pytest.raises(RpcError) as e:
        parse_endpoints(bad)
    assert words in str(e.value) and "\n" not in str(e.value)


def test_at_most_sixteen_servers():
    parse_endpoints([f"10.0.0.{i}:1" for i in range(16)])
    with pytest.raises(RpcError, match="at most 16"):
        parse_endpoints([f"10.0.0.{i}:1" for i in range(17)])


def test_endpoint_text_round_trips():
    assert str(parse_endpoint(" 127.0.0.1:50052 ")) == "127.0.0.1:50052"


# ---- wire format (ggml-rpc.cpp, protocol 7.0.0) ------------------------------------------------

def test_hello_request_is_command_14_with_24_zero_caps():
    assert proto.hello_request() == bytes([14]) + struct.pack("<Q", 24) + bytes(24)


@pytest.mark.parametrize("version, ok", [((7, 0, 0), True), ((7, 0, 9), True), ((7, 1, 0), False),
                                         ((6, 0, 0), False), ((8, 0, 0), False), ((3, 0, 0), False)])
def test_hello_versions(version, ok):
    payload = bytes(version) + bytes(1 + 24)
    if ok:
        assert str(proto.parse_hello(payload)) == "%d.%d.%d" % version
    else:
        with pytest.raises(proto.ProtocolError, match=r"speaks RPC protocol %d\.%d\.%d, this build speaks 7\.0\.0" % version):
            proto.parse_hello(payload)


def test_answer_sizes():
    assert proto.expected_answer(proto.GET_TENSOR, bytes(296) + struct.pack("<QQ", 5, 1234)) == 1234
    assert proto.expected_answer(proto.SET_TENSOR, b"x" * 100) is None
    assert proto.expected_answer(proto.GRAPH_COMPUTE, b"") is None
    assert proto.expected_answer(proto.GET_DEVICE_MEMORY, b"") == 16
    with pytest.raises(proto.ProtocolError):
        proto.expected_answer(proto.COUNT, b"")
    with pytest.raises(proto.ProtocolError):
        proto.answer_size(struct.pack("<Q", 27), 28)


def test_stand_in_answers_are_well_formed():
    hello = proto.stand_in_answer(proto.HELLO, bytes(24))
    assert struct.unpack("<Q", hello[:8])[0] == 28 and proto.parse_hello(hello[8:]) == proto.Version(7, 0, 0)
    assert proto.stand_in_answer(proto.DEVICE_COUNT, b"") == struct.pack("<QI", 4, 1)
    got = proto.stand_in_answer(proto.GET_TENSOR, bytes(296) + struct.pack("<QQ", 0, 12))
    assert got == struct.pack("<Q", 12) + bytes(12)
    assert proto.stand_in_answer(proto.SET_TENSOR, b"abc") is None
    assert proto.stand_in_answer(proto.GET_ALIGNMENT, bytes(4)) == struct.pack("<QQ", 8, 32)
    assert proto.stand_in_answer(proto.GET_MAX_SIZE, bytes(4)) == struct.pack("<QQ", 8, (1 << 64) - 1)


# ---- llama.cpp's layer split (llama_model_base::load_tensors) ------------------------------------

def test_equal_free_memory_splits_like_llama_cpp():
    # 28 layers + output = 29; split points 0.5, 1.0: layers il/29 < 0.5, i.e. 0-14, on the first.
    place = layer_devices([10 * GIB, 10 * GIB], 28, -1)
    assert place == [0] * 15 + [1] * 14


def test_split_follows_free_memory():
    place = layer_devices([30 * GIB, 10 * GIB], 36, -1)   # 3:1 -> il/37 < 0.75: layers 0-27
    assert place.count(0) == 28 and place.count(1) == 9 and place[-1] == 1


def test_partial_offload_keeps_the_first_layers_on_the_cpu():
    place = layer_devices([10, 10], 28, 10)
    assert place[:19] == [None] * 19 and place[19:] == [0] * 5 + [1] * 5


def test_zero_memory_device_weighs_the_host_and_tensor_split_overrides():
    assert layer_devices([0, 10], 3, -1, host_free=10) == [0, 0, 1, 1]
    assert layer_devices([10, 10], 3, -1, tensor_split=[3, 1]) == [0, 0, 0, 1]
    assert layer_devices([], 3, -1) == [None] * 4


def test_split_points_are_strict_upper_bounds():
    # std::upper_bound: a layer exactly at a split point (x = 2/4 = 0.5) goes to the next device
    assert layer_devices([1, 1], 3, -1) == [0, 0, 1, 1]
    assert layer_devices([1, 1, 1], 3, -1) == [0, 0, 1, 2]
    assert layer_devices([1, 1, 1], 5, -1) == [0, 0, 1, 1, 2, 2]   # x = 2/6 and 4/6 against float32 thirds


def test_model_bytes_by_placement():
    tensors = [("token_embd.weight", 100), ("blk.0.attn_q.weight", 7), ("blk.0.ffn_up.weight", 3),
               ("blk.1.attn_q.weight", 5), ("output_norm.weight", 1)]
    assert model_bytes(tensors, 2) == ModelBytes(100, (10, 5), 101)              # tied: a copy of token_embd
    assert model_bytes(tensors + [("output.weight", 50)], 2) == ModelBytes(100, (10, 5), 51)


def _plan(free, host=8 * GIB, n_ctx=4096, layer=GIB // 8):
    weights = ModelBytes(GIB // 2, (layer,) * 28, GIB // 2)
    return plan_split(weights, [(f"w{i}", f) for i, f in enumerate(free)], host, n_ctx,
                      n_kv_heads=8, head_dim=128, n_heads=16)


def test_split_plan_shares():
    plan = _plan([4 * GIB, 4 * GIB])
    host, a, b = plan.shares
    assert host.layers == () and a.layers == tuple(range(15)) and b.layers == tuple(range(15, 29))
    assert a.weights_bytes == 15 * GIB // 8 and b.weights_bytes == 13 * GIB // 8 + GIB // 2
    # KV: 4096 tokens x 2 (K, V) x 8 x 128 x 2 bytes per layer
    per_layer = 4096 * 2 * 8 * 128 * 2
    assert a.kv_bytes == 15 * per_layer and b.kv_bytes == 13 * per_layer and host.kv_bytes == 0  # output: no KV
    assert host.weights_bytes == GIB // 2
    assert plan.fits and plan.refusal() is None and plan.max_ctx >= 4096


def test_split_plan_refuses_naming_the_device():
    small = 11 * GIB // 10      # w1 gets layers 26-27 + output (0.75 GiB), the logits buffer and their KV
    plan = _plan([8 * GIB, small], n_ctx=16384)
    assert not plan.fits and plan.shares[2].layers == (26, 27, 28)
    line = plan.refusal()
    assert line.startswith("w1: layers 26-28") and "does not fit at 16384 tokens" in line and "\n" not in line
    assert 0 < plan.max_ctx < 16384
    assert _plan([8 * GIB, small], n_ctx=plan.max_ctx).fits
    assert not _plan([8 * GIB, small], n_ctx=plan.max_ctx + 256).fits
    assert "not even a 256-token context" in _plan([8 * GIB, GIB]).refusal()


def test_split_plan_memory_summary():
    plan = _plan([4 * GIB, 4 * GIB])
    m = plan.memory_plan()
    assert m.model_bytes == sum(s.weights_bytes for s in plan.shares) == GIB // 2 + 28 * GIB // 8 + GIB // 2
    assert m.fits and m.available_bytes == 16 * GIB and m.max_ctx == plan.max_ctx


# ---- the worker's bind rules -----------------------------------------------------------------

def test_bind_rules():
    assert check_bind_host("127.0.0.1", False) is None and check_bind_host("127.0.0.2", False) is None
    assert "Pass --allow-remote" in check_bind_host("0.0.0.0", False)
    assert "no authentication" in check_bind_host("192.168.1.5", False)
    assert check_bind_host("192.168.1.5", True) is None
    assert "IPv4 address" in check_bind_host("localhost", True)
    assert is_loopback("127.0.0.1") and not is_loopback("0.0.0.0") and not is_loopback("::1")


# ---- probe and relay against Python stand-ins ---------------------------------------------------

class FakeServer:
    """A TCP server on a free loopback port that runs `handle(conn)` for each connection."""

    def __init__(self, handle):
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.handle, self.conns = handle, []
        threading.Thread(target=self._run, daemon=True).start()

    def _run(self):
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.conns.append(conn)
            threading.Thread(target=self._one, args=(conn,), daemon=True).start()

    def _one(self, conn):
        try:
            self.handle(conn)
        except OSError:
            pass

    def close(self):
        self.sock.close()
        for c in self.conns:
            c.close()


def _read_request(conn):
    head = b""
    while len(head) < 9:
        part = conn.recv(9 - len(head))
        if not part:
            return None, None
        head += part
    cmd, size = struct.unpack("<BQ", head)
    payload = b""
    while len(payload) < size:
        payload += conn.recv(size - len(payload))
    return cmd, payload


def fake_worker(die_after: int | None = None, version=(7, 0, 0), memory=(3 * GIB, 4 * GIB)):
    """A worker that speaks the handshake, DEVICE_COUNT, GET_DEVICE_MEMORY and GET_TENSOR (bytes 1..n);
    it closes the connection after `die_after` requests."""
    def handle(conn):
        n = 0
        while True:
            cmd, payload = _read_request(conn)
            if cmd is None or (die_after is not None and n >= die_after):
                conn.close()
                return
            n += 1
            if cmd == proto.HELLO:
                conn.sendall(struct.pack("<Q", 28) + bytes(version) + bytes(25))
            elif cmd == proto.DEVICE_COUNT:
                conn.sendall(struct.pack("<QI", 4, 1))
            elif cmd == proto.GET_DEVICE_MEMORY:
                conn.sendall(struct.pack("<QQQ", 16, *memory))
            elif cmd == proto.GET_TENSOR:
                size = struct.unpack("<Q", payload[-8:])[0]
                conn.sendall(struct.pack("<Q", size) + bytes(range(1, size + 1)))
    return FakeServer(handle)


def _free_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def test_probe_reads_version_and_memory():
    server = fake_worker()
    try:
        info = probe(Endpoint("127.0.0.1", server.port), timeout=2)
        assert info.version == proto.Version(7, 0, 0) and info.memory == ((3 * GIB, 4 * GIB),)
    finally:
        server.close()


def _probe_line(server_or_port, timeout=1.0):
    port = server_or_port if isinstance(server_or_port, int) else server_or_port.port
    started = time.monotonic()
    with pytest.raises(RpcError) as e:
        probe(Endpoint("127.0.0.1", port), timeout=timeout)
    elapsed = time.monotonic() - started
    assert "\n" not in str(e.value)
    return str(e.value), elapsed


def test_probe_refused_port():
    line, elapsed = _probe_line(_free_port())
    assert "connection refused" in line and "qwen3-edge worker --port" in line and elapsed < 1


def test_probe_silent_port_is_bounded():
    server = FakeServer(lambda conn: time.sleep(30))
    try:
        line, elapsed = _probe_line(server, timeout=1.0)
        assert "no answer within 1 s" in line and elapsed < 3
    finally:
        server.close()


def test_probe_garbage_speaker():
    def garbage(conn):
        conn.recv(100)
        conn.sendall(b"HTTP/1.1 400 Bad Request\r\n\r\n" * 3)
    server = FakeServer(garbage)
    try:
        line, elapsed = _probe_line(server)
        assert "does not speak llama.cpp's RPC protocol" in line and elapsed < 1
    finally:
        server.close()


def test_probe_another_version():
    server = fake_worker(version=(3, 0, 0))
    try:
        line, _ = _probe_line(server)
        assert "speaks RPC protocol 3.0.0, this build speaks 7.0.0" in line
    finally:
        server.close()


def test_probe_server_that_hangs_up_at_the_handshake():
    server = FakeServer(lambda conn: (conn.recv(100), conn.close()))   # an older rpc-server refuses our HELLO so
    try:
        line, _ = _probe_line(server)
        assert "closed the connection at the handshake" in line and "another" in line
    finally:
        server.close()


def _ask(sock, cmd, payload=b"", answer: int | None = None):
    sock.sendall(proto.request(cmd, payload))
    if answer is None:
        return None
    data = b""
    while len(data) < 8 + answer:
        part = sock.recv(8 + answer - len(data))
        assert part, "relay closed the connection"
        data += part
    assert struct.unpack("<Q", data[:8])[0] == answer
    return data[8:]


def test_relay_forwards_then_stands_in_when_the_worker_dies():
    server = fake_worker(die_after=3)
    relay = Relay("127.0.0.1", server.port, connect_timeout=1, io_timeout=1)
    try:
        host, port = relay.address.split(":")
        with socket.create_connection((host, int(port)), timeout=5) as c:
            assert _ask(c, proto.HELLO, bytes(24), 28)[:3] == bytes([7, 0, 0])
            get = bytes(296) + struct.pack("<QQ", 0, 4)
            assert _ask(c, proto.GET_TENSOR, get, 4) == bytes([1, 2, 3, 4])     # forwarded
            _ask(c, proto.SET_TENSOR, b"x" * 2_000_000)                         # streamed, no answer
            assert relay.failure is None
            assert _ask(c, proto.GET_TENSOR, get, 4) == bytes(4)                # worker gone: zeros
            assert "closed the connection" in relay.failure and relay.worker in relay.failure
            assert _ask(c, proto.GET_DEVICE_MEMORY, struct.pack("<I", 0), 16) == bytes(16)
    finally:
        server.close()


def test_relay_bounds_a_stalled_worker():
    def stall(conn):
        _read_request(conn)
        conn.sendall(struct.pack("<Q", 28) + bytes([7, 0, 0]) + bytes(25))
        time.sleep(30)
    server = FakeServer(stall)
    relay = Relay("127.0.0.1", server.port, connect_timeout=5, io_timeout=0.5)
    try:
        host, port = relay.address.split(":")
        with socket.create_connection((host, int(port)), timeout=5) as c:
            _ask(c, proto.HELLO, bytes(24), 28)
            started = time.monotonic()
            assert _ask(c, proto.GET_DEVICE_MEMORY, struct.pack("<I", 0), 16) == bytes(16)
            assert time.monotonic() - started < 2
            assert "gave no answer within 0.5 s" in relay.failure
    finally:
        server.close()


def test_retired_relay_answers_without_the_worker():
    server = fake_worker(memory=(5, 6))
    relay = Relay("127.0.0.1", server.port, connect_timeout=1, io_timeout=1)
    relay.retire()
    try:
        host, port = relay.address.split(":")
        with socket.create_connection((host, int(port)), timeout=5) as c:
            assert proto.parse_hello(_ask(c, proto.HELLO, bytes(24), 28)) == proto.Version(7, 0, 0)
            assert _ask(c, proto.DEVICE_COUNT, b"", 4) == struct.pack("<I", 1)
            assert _ask(c, proto.GET_DEVICE_MEMORY, struct.pack("<I", 0), 16) == bytes(16)
        assert server.conns == [] and relay.failure is None   # the worker was not asked; not a failure
    finally:
        server.close()


# ---- the command line, on any build -------------------------------------------------------------

def _cli(*args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    root = Path(__file__).resolve().parents[2]
    return subprocess.run([sys.executable, "-m", "cli", *args], cwd=root, capture_output=True, text=True,
                          timeout=timeout, stdin=subprocess.DEVNULL)


def _our_lines(stderr: str) -> list[str]:
    return [ln for ln in stderr.splitlines() if ln.strip() and not ln.startswith("ggml_vulkan:")]


def test_worker_refuses_a_remote_bind_without_the_flag():
    done = _cli("worker", "--host", "0.0.0.0", "--port", str(_free_port()))
    lines = _our_lines(done.stderr)
    assert done.returncode == 2 and len(lines) == 1 and "--allow-remote" in lines[0] and "no authentication" in lines[0]


@pytest.mark.skipif(rpc_available(), reason="these bindings have RPC")
def test_worker_without_rpc_says_how_to_build():
    done = _cli("worker", "--port", str(_free_port()))
    lines = _our_lines(done.stderr)
    assert done.returncode == 1 and len(lines) == 1 and 'CMAKE_ARGS="-DGGML_RPC=on"' in lines[0]


def test_bad_rpc_option_is_one_line_before_any_download(tmp_path):
    done = _cli("run", "qwen3-0.6b", "hi", "--rpc", "host-without-port", timeout=60)
    lines = _our_lines(done.stderr)
    assert done.returncode == 1 and len(lines) == 1 and "is not HOST:PORT" in lines[0]
