"""A loopback relay between llama.cpp's RPC client and one worker, so that a worker which dies
or stalls costs a clear error instead of the whole process.

llama.cpp's RPC client reads without a timeout and calls abort() on the first broken answer
("Remote RPC server crashed or returned malformed response", GGML_ABORT in ggml-rpc.cpp): a
worker killed mid-reply would end the chat, the server or the app with it. So llama.cpp is
pointed at 127.0.0.1:<relay port> instead, and the relay forwards each request to the worker with
bounded connects and reads. When the worker fails, the relay records why and from then on
answers every request itself with well-formed zeros (rpc_protocol.stand_in_answer): llama.cpp's
call returns, and the Llama that owns the relay (rpc.RpcLlama) raises WorkerLost instead of
using those zeros.
"""

from __future__ import annotations

import socket
import struct
import threading

from edge.cluster import rpc_protocol as proto

CHUNK = 1 << 20


class _Gone(Exception):
    """The worker's side failed (the message says how), after the whole request was read from
    llama.cpp: `payload` is what the stand-in answer needs (GET_TENSOR's size)."""

    def __init__(self, why: str, payload: bytes = b""):
        super().__init__(why)
        self.payload = payload


def _recv_exact(sock: socket.socket, n: int) -> bytes | None:
    """n bytes, or None when the peer closed before the first byte; a close mid-way raises."""
    buf = bytearray(n)
    view, got = memoryview(buf), 0
    while got < n:
        k = sock.recv_into(view[got:], n - got)
        if k == 0:
            if got == 0:
                return None
            raise ConnectionError("connection closed mid-message")
        got += k
    return bytes(buf)


class Relay:
    """Listens on 127.0.0.1:<free port> (`address`, what llama.cpp is given) and joins every
    connection llama.cpp opens to the worker at `host:port`. `failure` is None while the worker
    answers, else one line saying what went wrong."""

    def __init__(self, host: str, port: int, *, connect_timeout: float = 5.0, io_timeout: float = 120.0):
        self.worker = f"{host}:{port}"
        self._host, self._port = host, port
        self.connect_timeout, self.io_timeout = connect_timeout, io_timeout
        self.failure: str | None = None
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.address = f"127.0.0.1:{self._listener.getsockname()[1]}"
        self._retired = False
        threading.Thread(target=self._accept, name=f"rpc-relay {self.worker}", daemon=True).start()

    def retire(self) -> None:
        """Stop forwarding: from now on every request gets a stand-in answer. The listener stays
        open for the life of the process, because llama.cpp's device registry keeps this
        address forever and would abort the process if a later query found nothing there."""
        self._retired = True

    def _fail(self, why: str) -> None:
        if self.failure is None:
            self.failure = f"RPC worker {self.worker} {why}"

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            client.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            threading.Thread(target=self._serve, args=(client,), daemon=True).start()

    def _connect(self) -> socket.socket | None:
        if self.failure is not None or self._retired:
            return None
        try:
            up = socket.create_connection((self._host, self._port), timeout=self.connect_timeout)
        except OSError as e:
            self._fail(f"cannot be reached ({e.strerror or e})")
            return None
        up.settimeout(self.io_timeout)
        up.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return up

    def _serve(self, client: socket.socket) -> None:
        up = self._connect()
        try:
            while True:
                head = _recv_exact(client, 9)
                if head is None:
                    return  # llama.cpp closed this connection
                cmd, size = struct.unpack("<BQ", head)
                payload = None
                if up is not None:
                    try:
                        self._forward(client, up, cmd, size)
                        continue
                    except _Gone as e:
                        self._fail(str(e))
                        up.close()
                        up, payload = None, e.payload
                if payload is None:
                    payload = self._drain(client, cmd, size)
                answer = proto.stand_in_answer(cmd, payload)
                if answer is not None:
                    client.sendall(answer)
        except (OSError, proto.ProtocolError):
            return  # llama.cpp's side went away, or sent what we cannot read: drop the connection
        finally:
            client.close()
            if up is not None:
                up.close()

    @staticmethod
    def _drain(client: socket.socket, cmd: int, size: int) -> bytes:
        """Read a request's payload; only GET_TENSOR's small payload is kept (its answer size)."""
        keep = cmd == proto.GET_TENSOR
        parts, left = [], size
        while left:
            part = _recv_exact(client, min(left, CHUNK))
            if part is None:
                raise ConnectionError("closed mid-request")
            if keep:
                parts.append(part)
            left -= len(part)
        return b"".join(parts)

    def _forward(self, client: socket.socket, up: socket.socket, cmd: int, size: int) -> None:
        """One request to the worker and its answer back. llama.cpp's side failing raises OSError
        (the connection is dropped); the worker's side raises _Gone, always after the whole
        request was read from llama.cpp, so that a stand-in answer lines up."""
        head = struct.pack("<BQ", cmd, size)
        if cmd == proto.GET_TENSOR or size <= CHUNK:
            payload = _recv_exact(client, size) if size else b""
            if payload is None:
                raise ConnectionError("closed mid-request")
            if cmd == proto.HELLO:
                payload = bytes(len(payload))  # zero transport caps: plain TCP through the relay
            try:
                up.sendall(head + payload)
            except OSError as e:
                raise _Gone(self._why(e), payload) from None
        else:  # a large SET_TENSOR (weights): streamed, not held in memory
            payload, left, error = b"", size, None
            try:
                up.sendall(head)
            except OSError as e:
                error = e
            while left:
                part = _recv_exact(client, min(left, CHUNK))
                if part is None:
                    raise ConnectionError("closed mid-request")
                left -= len(part)
                if error is None:
                    try:
                        up.sendall(part)
                    except OSError as e:
                        error = e
            if error is not None:
                raise _Gone(self._why(error))
        expected = proto.expected_answer(cmd, payload)
        if expected is None:
            return
        try:
            size_field = _recv_exact(up, 8)
            if size_field is None:
                raise _Gone("closed the connection (killed, or crashed)", payload)
            try:
                proto.answer_size(size_field, expected)
            except proto.ProtocolError as e:
                raise _Gone(f"sent a malformed answer ({e})", payload) from None
            body = _recv_exact(up, expected) if expected else b""
            if body is None:
                raise _Gone("closed the connection mid-answer", payload)
        except OSError as e:
            raise _Gone(self._why(e), payload) from None
        if cmd == proto.HELLO:
            body = body[:4] + bytes(proto.CONN_CAPS_SIZE)
        client.sendall(size_field + body)

    def _why(self, e: OSError) -> str:
        if isinstance(e, socket.timeout):
            return f"gave no answer within {self.io_timeout:g} s"
        if isinstance(e, ConnectionError):
            return "closed the connection (killed, or crashed)"
        return f"failed ({e.strerror or e})"
