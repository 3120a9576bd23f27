"""A model split across two `qwen3-edge worker`s on loopback, through llama.cpp's RPC backend.

Marked `rpc` and skipped unless the bindings were built with -DGGML_RPC=on (CPU-only CI skips
them); run with the RPC build's Python: `python -m pytest -m rpc tests/cluster/test_rpc.py`. Where the
layers went is read from llama.cpp's own load log (engine.placement), never from what we asked.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import llama_cpp
import numpy as np
import pytest

from edge import Chat, ChatError, Engine, EngineError
from edge.runtime.cpu_buffers import TunedLlama
from edge.runtime.devices import capture_llama_log, parse_load_log, registry_names
from edge.cluster.rpc import Endpoint, RpcError, WorkerLost, local_choice, probe, registry_has_rpc, rpc_available
from tests.model_factory import TINY_TIED, build_model
from tests.scripted_model import SCRIPT_ANSWER_TEXT, SCRIPT_THINKING_TEXT

pytestmark = [pytest.mark.rpc,
              pytest.mark.skipif(not rpc_available(), reason="the bindings have no RPC backend (-DGGML_RPC=on)")]

ROOT = Path(__file__).resolve().parents[2]
TOKENS = [9707, 11, 1879, 0, 151644, 872, 198, 3838, 374, 220, 17, 10, 17, 30]
# Measured on a 4-layer random model (F32 weights, f16 KV cache, no flash attention): the split
# run's logits equal the local run's bit for bit (max |diff| 0.0); the bound leaves margin for
# ggml's threads reducing in another order on other machines.
LOGIT_TOLERANCE = 1e-4


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Worker:
    """`qwen3-edge worker` in a child process on a free loopback port."""

    def __init__(self, threads: int = 1, env: dict | None = None):
        self.port = free_port()
        self.endpoint = f"127.0.0.1:{self.port}"
        self.proc = subprocess.Popen([sys.executable, "-m", "cli", "worker", "--port", str(self.port),
                                      "--threads", str(threads)], cwd=ROOT, stdin=subprocess.DEVNULL,
                                     stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                     env=None if env is None else {**os.environ, **env})
        deadline = time.monotonic() + 30
        while True:
            try:
                probe(Endpoint("127.0.0.1", self.port), timeout=2)
                return
            except RpcError:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"worker did not start: {self.proc.stdout.read()}")
                time.sleep(0.2)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGCONT)
            self.proc.kill()
        self.proc.wait(10)


@pytest.fixture(scope="module")
def workers():
    pair = [Worker(), Worker()]
    yield pair
    for w in pair:
        w.stop()


@pytest.fixture(scope="module")
def random_gguf(tmp_path_factory) -> Path:
    from quantize import quantize_model
    root = tmp_path_factory.mktemp("rpc")
    folder = build_model(root / "four-layers", TINY_TIED.with_(layers=4), seed=3)
    return Path(quantize_model(folder, "f32", root / "four-layers-f32.gguf").output)


@pytest.fixture(scope="module")
def three_layer_gguf(tmp_path_factory) -> Path:
    from quantize import quantize_model
    root = tmp_path_factory.mktemp("rpc3")
    folder = build_model(root / "three-layers", TINY_TIED.with_(layers=3), seed=4)
    return Path(quantize_model(folder, "f32", root / "three-layers-f32.gguf").output)


def test_a_layer_on_a_split_point_goes_to_the_next_device(three_layer_gguf, workers):
    """3 layers + output on two equal workers: layer 2 sits at x = 2/4 = 0.5, exactly the split point;
    llama.cpp's upper_bound gives it to the second worker, and so does split_plan."""
    with load(three_layer_gguf, [w.endpoint for w in workers]) as engine:
        a, b = [d.name for d in engine.rpc.devices]
        assert engine.placement.layers == (a, a, b, b)
        assert [s.layers for s in engine.split_plan.shares] == [(), (0, 1), (2, 3)]


@pytest.mark.skipif("Vulkan" not in registry_names(), reason="needs the Vulkan backend for a worker of another size")
def test_split_follows_unequal_free_memory(tmp_path):
    """A worker serving Mesa's lavapipe (2048 MiB free) beside a CPU worker (the host's RAM): 12 layers
    + output split in proportion, where llama.cpp and split_plan must agree layer for layer (the
    main process itself does not see lavapipe: GGML_VK_VISIBLE_DEVICES is set for that worker only)."""
    from quantize import quantize_model
    folder = build_model(tmp_path / "twelve", TINY_TIED.with_(layers=12), seed=5)
    gguf = Path(quantize_model(folder, "f32", tmp_path / "twelve-f32.gguf").output)
    pair = [Worker(env={"GGML_VK_VISIBLE_DEVICES": "0"}), Worker()]
    try:
        with load(gguf, [w.endpoint for w in pair]) as engine:
            small, big = engine.rpc.devices
            if small.total >= big.total:
                pytest.skip("no lavapipe device for the first worker")
            planned = [s.layers for s in engine.split_plan.shares]
            assert planned[0] == () and len(planned[1]) < len(planned[2])
            expected = tuple(small.name if il in planned[1] else big.name for il in range(13))
            assert engine.placement.layers == expected
    finally:
        for w in pair:
            w.stop()


def logits(engine: Engine) -> np.ndarray:
    engine.llama.reset()
    engine.llama.eval(TOKENS)
    ptr = llama_cpp.llama_get_logits_ith(engine.llama._ctx.ctx, -1)
    return np.ctypeslib.as_array(ptr, shape=(engine.llama.n_vocab(),)).copy()


def load(path, endpoints=None, **kw) -> Engine:
    return Engine.load(path, n_ctx=256, kv_cache_type="f16", flash_attn=False, use_mmap=True,
                       rpc_servers=endpoints, **kw)


def test_layers_go_where_the_split_plan_says(random_gguf, workers):
    with load(random_gguf, [w.endpoint for w in workers]) as engine:
        names = [d.name for d in engine.rpc.devices]
        layers = engine.placement.layers            # from llama.cpp's "layer N assigned to device X"
        assert len(layers) == 5 and set(layers) == set(names)
        planned = {il: names[i - 1] for i, share in enumerate(engine.split_plan.shares) if i for il in share.layers}
        assert [planned[il] for il in range(5)] == list(layers)
        assert layers == (names[0],) * 3 + (names[1],) * 2   # equal free memory: il/5 < 0.5 on the first
        # llama.cpp names an RPC buffer "RPC<server's device>[<endpoint it connects to>]": one per relay
        relays = {r.address for r in engine.rpc.relays}
        model = {k[k.index("[") + 1:-1]: v for k, v in engine.placement.buffers["model"].items() if "[" in k}
        assert set(model) == relays and all(v > 0 for v in model.values())
        assert {k[k.index("[") + 1:-1] for k in engine.placement.buffers["KV"] if "[" in k} == relays
        assert engine.backend == "rpc"
        assert engine.device == ", ".join(f"{n} ({w.endpoint})" for n, w in zip(names, workers))


def test_logits_equal_the_local_run(random_gguf, workers):
    with load(random_gguf, [w.endpoint for w in workers]) as split:
        got = logits(split)
    # after a load over workers llama.cpp's registry keeps their devices; a plain load must not use them
    with load(random_gguf) as local:
        assert set(local.placement.layers) == {"CPU"}
        expected = logits(local)
    diff = float(np.abs(got - expected).max())
    print(f"max |logit diff| split vs local: {diff:.3g} (logit scale {np.abs(expected).max():.3g})")
    assert diff <= LOGIT_TOLERANCE
    assert np.abs(expected).max() > 1   # a real signal, not two runs of zeros


def test_scripted_chat_says_the_script(scripted_gguf, workers):
    with load(scripted_gguf, ",".join(w.endpoint for w in workers)) as engine:
        assert set(engine.placement.layers) == {d.name for d in engine.rpc.devices}
        reply = Chat(engine, mode="think").send("What is six times seven?")
        assert (reply.thinking, reply.answer, reply.stop_reason) == (SCRIPT_THINKING_TEXT, SCRIPT_ANSWER_TEXT, "eos")


def _first_thinking_then(chat: Chat, text: str, action) -> tuple[list[str], BaseException | None, float]:
    """Stream a reply; at the first thinking event run `action`; return the texts seen, the error and
    the seconds from the action to the error."""
    seen, error, acted = [], None, None
    try:
        for event in chat.stream(text):
            if event.kind == "thinking":
                seen.append(event.text)
                if acted is None:
                    action()
                    acted = time.monotonic()
    except ChatError as e:
        error = e
    return seen, error, time.monotonic() - (acted or time.monotonic())


def test_worker_killed_mid_reply(scripted_gguf):
    pair = [Worker(), Worker()]
    try:
        engine = load(scripted_gguf, [w.endpoint for w in pair])
        chat = Chat(engine, mode="think")
        first = chat.send("Count for me.")
        assert first.answer == SCRIPT_ANSWER_TEXT
        history = list(chat.history)
        seen, error, after = _first_thinking_then(chat, "Again, please.", pair[1].proc.kill)
        assert error is not None, "the reply went on without its worker"
        line = str(error)
        assert f"RPC worker {pair[1].endpoint}" in line and "closed the connection" in line and "\n" not in line
        assert after < 10
        assert "".join(seen) != SCRIPT_THINKING_TEXT           # it stopped mid-reply,
        assert SCRIPT_THINKING_TEXT.startswith("".join(seen))  # and no stand-in zeros became a token
        assert chat.history == history                          # the failed turn left no trace
        started = time.monotonic()
        with pytest.raises(ChatError, match=f"RPC worker {pair[1].endpoint}"):
            chat.send("And now?")                               # a clear error, at once
        assert time.monotonic() - started < 2 and chat.history == history
        engine.close()
        pair[1] = Worker()                                      # the worker is back: load again, go on
        with load(scripted_gguf, [w.endpoint for w in pair]) as again:
            chat2 = Chat(again, mode="think")
            chat2.history = list(history)
            assert chat2.send("Again, please.").answer == SCRIPT_ANSWER_TEXT
    finally:
        for w in pair:
            w.stop()


def test_eval_raises_when_the_worker_dies_during_it(random_gguf):
    """The stand-in zeros of a dead worker never come back as logits: the eval that met the
    failure raises, not the next one."""
    pair = [Worker(), Worker()]
    try:
        with load(random_gguf, [w.endpoint for w in pair]) as engine:
            engine.llama.eval(TOKENS[:4])
            pair[0].proc.kill()
            pair[0].proc.wait(10)
            with pytest.raises(WorkerLost, match=f"RPC worker {pair[0].endpoint} closed the connection"):
                engine.llama.eval(TOKENS[4:6])
    finally:
        for w in pair:
            w.stop()


def test_later_plain_loads_keep_off_stale_rpc_devices(random_gguf, workers):
    """llama.cpp's registry keeps the devices of every server registered in the process; a load
    without workers names its devices (the local accelerators: none here) instead of its default."""
    with load(random_gguf, [w.endpoint for w in workers]) as engine:
        stale = {d.name for d in engine.rpc.devices}
    assert registry_has_rpc()
    choice = local_choice()
    assert choice is not None and not stale & set(choice.names)
    with capture_llama_log() as log:
        llm = TunedLlama(str(random_gguf), n_ctx=64, n_gpu_layers=-1, verbose=False, model_overrides=choice.overrides)
    llm.close()
    assert set(parse_load_log("".join(log)).layers) == {"CPU"}


def test_worker_stalled_mid_reply_is_bounded(scripted_gguf):
    pair = [Worker(), Worker()]
    try:
        engine = load(scripted_gguf, [w.endpoint for w in pair], rpc_timeout=2)
        chat = Chat(engine, mode="think")
        _, error, after = _first_thinking_then(chat, "Count.", lambda: pair[0].proc.send_signal(signal.SIGSTOP))
        assert error is not None and "gave no answer within 2 s" in str(error) and after < 8
        assert chat.history == []
        engine.close()
    finally:
        for w in pair:
            w.stop()


def _bounded_refusal(endpoint: str, path: Path) -> tuple[str, float]:
    started = time.monotonic()
    with pytest.raises(EngineError) as e:
        load(path, [endpoint])
    return str(e.value), time.monotonic() - started


def test_unreachable_endpoint(random_gguf):
    line, seconds = _bounded_refusal(f"127.0.0.1:{free_port()}", random_gguf)
    assert "connection refused" in line and "\n" not in line and seconds < 6


def test_port_that_sends_garbage_or_nothing(random_gguf):
    for behaviour in ("garbage", "silent"):
        server = socket.create_server(("127.0.0.1", 0))
        port = server.getsockname()[1]

        def serve():
            conn, _ = server.accept()
            if behaviour == "garbage":
                conn.sendall(b"SSH-2.0-OpenSSH_9.2\r\n" * 4)
            time.sleep(8)
            conn.close()
        threading.Thread(target=serve, daemon=True).start()
        try:
            line, seconds = _bounded_refusal(f"127.0.0.1:{port}", random_gguf)
        finally:
            server.close()
        assert "\n" not in line and seconds < 7
        if behaviour == "garbage":
            assert "does not speak llama.cpp's RPC protocol" in line
        else:
            assert "no answer within 5 s" in line


def test_a_share_that_does_not_fit_is_refused_before_llama_cpp_sees_it(random_gguf):
    """A worker (here a Python stand-in) reporting 1 MiB: one line naming it and its share; it is
    never registered with llama.cpp (whose own connect would abort on a fake)."""
    from tests.cluster.test_rpc_pure import fake_worker
    server = fake_worker(memory=(1 << 20, 1 << 20))
    try:
        line, seconds = _bounded_refusal(f"127.0.0.1:{server.port}", random_gguf)
    finally:
        server.close()
    assert f"RPC worker 127.0.0.1:{server.port}: layers 0-4" in line and "of 0.00 GiB free" in line
    assert "does not fit at 256 tokens" in line and "\n" not in line and seconds < 5
    assert len(server.conns) == 1   # the probe only


def test_cli_run_over_workers(scripted_gguf, workers):
    cmd = [sys.executable, "-m", "cli", "run", str(scripted_gguf), "Count.", "--ctx", "256", "--hide-thinking",
           "--rpc", ",".join(w.endpoint for w in workers)]
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == SCRIPT_ANSWER_TEXT


def test_cli_refuses_a_dead_endpoint_in_one_line(scripted_gguf):
    cmd = [sys.executable, "-m", "cli", "run", str(scripted_gguf), "hi", "--rpc", f"127.0.0.1:{free_port()}"]
    started = time.monotonic()
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert done.returncode == 1 and time.monotonic() - started < 30
    # ours is one line; a Vulkan build of llama.cpp prints "ggml_vulkan: No devices found." itself at start-up
    lines = [ln for ln in done.stderr.splitlines() if ln.strip() and not ln.startswith("ggml_vulkan:")]
    assert len(lines) == 1 and "connection refused" in lines[0], done.stderr


def test_worker_stops_on_sigterm_and_sigint():
    for sig, code in ((signal.SIGTERM, 130), (signal.SIGINT, 130)):
        w = Worker()
        started = time.monotonic()
        w.proc.send_signal(sig)
        assert w.proc.wait(10) == code and time.monotonic() - started < 5
        assert "worker stopped" in w.proc.stdout.read()


def test_worker_refuses_a_port_in_use():
    w = Worker()
    try:
        done = subprocess.run([sys.executable, "-m", "cli", "worker", "--port", str(w.port)], cwd=ROOT,
                              capture_output=True, text=True, timeout=30)
        assert done.returncode == 1 and "cannot listen on 127.0.0.1:" in done.stderr
    finally:
        w.stop()
