"""The OpenAI-compatible server, driven by the real `openai` client on a free loopback port."""

from __future__ import annotations

import http.client
import json
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path

import openai
import pytest
import uvicorn

from edge.runtime.engine import Engine
from edge.serve.server import create_app
from tests.fake_hub import free_port
from tests.llama_probe import DecodeCount, cached_ids, common_prefix, kv_tokens, record_sampling
from tests.scripted_model import (SCRIPT_ANSWER_IDS, SCRIPT_ANSWER_TEXT, SCRIPT_THINKING_IDS, SCRIPT_THINKING_MODE_IDS,
                                  SCRIPT_THINKING_TEXT, THINK)
from tests.chat.test_engine_chat import QWEN_BUDGET_PHRASE, reference_prompt

KEY = "test-key"


@contextmanager
def serving(engine: Engine, **kwargs):
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(create_app(engine, **kwargs), host="127.0.0.1", port=port,
                                           log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        assert time.monotonic() < deadline, "server did not start"
        time.sleep(0.05)
    try:
        yield port
    finally:
        server.should_exit = True
        thread.join(10)


@pytest.fixture(scope="module")
def engine(scripted_gguf):
    """The served engine, so tests can ask its llama.cpp context what the server really did."""
    with Engine.load(scripted_gguf, n_ctx=2048) as e:
        yield e


@pytest.fixture(scope="module")
def port(engine):
    with serving(engine, api_key=KEY, model_name="scripted") as p:
        yield p


@pytest.fixture(scope="module")
def client(port) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key=KEY, max_retries=0, timeout=60)


def ask(client, content: str, **kwargs):
    return client.chat.completions.create(model="scripted", messages=[{"role": "user", "content": content}],
                                          seed=1, **kwargs)


def reasoning(message) -> str | None:
    return (message.model_extra or {}).get("reasoning_content")


def test_completion_carries_reasoning_apart(client):
    r = ask(client, "Hi")
    m = r.choices[0].message
    assert m.content == SCRIPT_ANSWER_TEXT and reasoning(m) == SCRIPT_THINKING_TEXT
    assert r.choices[0].finish_reason == "stop" and r.model == "scripted"
    assert r.usage.completion_tokens_details.reasoning_tokens == 13
    assert r.usage.total_tokens == r.usage.prompt_tokens + r.usage.completion_tokens


def test_streaming_deltas_and_usage(client):
    thinking, answer, reasons, usage = [], [], [], None
    for c in ask(client, "Hi", stream=True, stream_options={"include_usage": True}):
        if c.usage:
            usage = c.usage
        for choice in c.choices:
            delta = choice.delta
            if (rc := (delta.model_extra or {}).get("reasoning_content")):
                thinking.append(rc)
            if delta.content:
                answer.append(delta.content)
            if choice.finish_reason:
                reasons.append(choice.finish_reason)
    assert "".join(thinking) == SCRIPT_THINKING_TEXT and "".join(answer) == SCRIPT_ANSWER_TEXT
    assert reasons == ["stop"] and usage.completion_tokens_details.reasoning_tokens == 13


def test_enable_thinking_false_and_soft_switch(client):
    r = ask(client, "Hi", extra_body={"chat_template_kwargs": {"enable_thinking": False}})
    assert r.choices[0].message.content == SCRIPT_ANSWER_TEXT and not reasoning(r.choices[0].message)
    assert r.usage.completion_tokens_details.reasoning_tokens == 0
    r = ask(client, "Hi /no_think")
    assert not reasoning(r.choices[0].message)


def test_thinking_budget(client, engine):
    r = ask(client, "Count", extra_body={"thinking_budget": 4})
    assert r.usage.completion_tokens_details.reasoning_tokens == 4
    assert r.choices[0].message.content == SCRIPT_ANSWER_TEXT
    first_4 = engine.llama.detokenize(SCRIPT_THINKING_IDS[:4]).decode()
    assert reasoning(r.choices[0].message) == (first_4 + "\n\nConsidering the limited time by the user, I have to give "
                                               "the solution based on the thinking directly now.")
    # What llama.cpp's cache holds: the prompt, 4 thinking tokens, Qwen's phrase appended, the answer.
    prompt = engine.tokenize(reference_prompt([{"role": "user", "content": "Count"}], True))
    assert cached_ids(engine.llama) == [*prompt, THINK, *SCRIPT_THINKING_IDS[:4],
                                        *engine.tokenize(QWEN_BUDGET_PHRASE), *SCRIPT_ANSWER_IDS]


def test_max_tokens_and_stop(client):
    r = ask(client, "Hi", max_tokens=5)
    assert r.choices[0].finish_reason == "length" and r.usage.completion_tokens == 5
    r = ask(client, "Hi", stop=[" forty"], extra_body={"chat_template_kwargs": {"enable_thinking": False}})
    assert r.choices[0].message.content == "The answer is" and r.choices[0].finish_reason == "stop"


def test_conversation_reuses_the_kv_prefix(client, engine):
    """Counted by llama.cpp: request 2 decodes only what its prompt does not share with the
    cache left by request 1, plus its own generation."""
    first = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Question one"}]
    r1 = client.chat.completions.create(model="scripted", messages=first)
    cache = engine.tokenize(reference_prompt(first, True)) + SCRIPT_THINKING_MODE_IDS[:-1]
    assert kv_tokens(engine.llama) == len(cache)
    follow = first + [{"role": "assistant", "content": r1.choices[0].message.content},
                      {"role": "user", "content": "Question two"}]
    prompt2 = engine.tokenize(reference_prompt(follow, True))
    kept = common_prefix(cache, prompt2)
    assert kept == r1.usage.prompt_tokens
    with DecodeCount(engine.llama) as decoded:
        r2 = client.chat.completions.create(model="scripted", messages=follow)
    assert decoded.tokens == len(prompt2) - kept + len(SCRIPT_THINKING_MODE_IDS) - 1
    assert (r2.usage.prompt_tokens, r2.usage.prompt_tokens_details.cached_tokens) == (len(prompt2), kept)


def test_request_sampling_reaches_the_sampler(client, monkeypatch):
    """temperature, top_p, presence_penalty and seed from the body are what the sampler is built
    with; the rest is the mode's Qwen preset (checked against llama.cpp in test_engine_chat)."""
    built = record_sampling(monkeypatch)
    ask(client, "Hi", temperature=0.3, top_p=0.7, presence_penalty=1.2)
    ask(client, "Hi", extra_body={"chat_template_kwargs": {"enable_thinking": False}})
    assert built == [(0.3, 0.7, 20, 0.0, 1.2, 1), (0.7, 0.8, 20, 0.0, 0.0, 1)]


def test_models_and_key(client, port):
    assert [m.id for m in client.models.list().data] == ["scripted"]
    bad = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="wrong", max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        bad.chat.completions.create(model="x", messages=[{"role": "user", "content": "Hi"}])
    with pytest.raises(openai.AuthenticationError):
        bad.models.list()


def raw_post(port: int, body: bytes, key: str = KEY) -> tuple[int, dict]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    conn.request("POST", "/v1/chat/completions", body=body,
                 headers={"Authorization": f"Bearer {key}", "Content-Type": "application/json"})
    resp = conn.getresponse()
    data = json.loads(resp.read() or b"{}")
    conn.close()
    return resp.status, data


@pytest.mark.parametrize("body, status, fragment", [
    (b"{not json", 400, "malformed JSON"),
    (b"[]", 400, "JSON object"),
    (json.dumps({"messages": []}).encode(), 400, "non-empty"),
    (json.dumps({"messages": [{"role": "wizard", "content": "x"}]}).encode(), 400, "role"),
    (json.dumps({"messages": [{"role": "user", "content": 5}]}).encode(), 400, "content"),
    (json.dumps({"messages": [{"role": "user", "content": "x"}], "max_tokens": 0}).encode(), 400, "at least 1"),
    (json.dumps({"messages": [{"role": "user", "content": "x"}], "temperature": "hot"}).encode(), 400, "temperature"),
    (json.dumps({"messages": [{"role": "user", "content": "x" * (2 << 20)}]}).encode(), 413, "body over"),
])
def test_bad_requests_get_openai_errors(port, body, status, fragment):
    code, data = raw_post(port, body)
    assert code == status and fragment in data["error"]["message"] and data["error"]["type"]
    assert raw_post(port, json.dumps({"messages": [{"role": "user", "content": "Hi"}]}).encode())[0] == 200


def test_concurrent_requests_all_complete(client):
    with ThreadPoolExecutor(8) as pool:
        replies = list(pool.map(lambda i: ask(client, f"Request {i}").choices[0].message.content, range(20)))
    assert replies == [SCRIPT_ANSWER_TEXT] * 20


def test_disconnect_mid_stream_cancels_generation(looping_gguf, monkeypatch, capsys):
    """The model would think forever; once the client leaves, generation stops: at most one token
    (the one in flight) after the server asks the chat to cancel, and a handful after the socket
    closed. Tokens are counted in llama.cpp's cache."""
    from edge.chat import Chat
    with Engine.load(looping_gguf, n_ctx=8192) as engine, serving(engine) as p:
        at_cancel, real_cancel = [], Chat.cancel

        def cancel(chat):
            real_cancel(chat)
            at_cancel.append(engine.llama.n_tokens)

        monkeypatch.setattr(Chat, "cancel", cancel)
        after_close, after_cancel = [], []
        for _ in range(5):
            at_cancel.clear()
            conn = http.client.HTTPConnection("127.0.0.1", p, timeout=30)
            conn.request("POST", "/v1/chat/completions", body=json.dumps(
                {"messages": [{"role": "user", "content": "Think forever"}], "stream": True}),
                headers={"Content-Type": "application/json"})
            resp = conn.getresponse()
            for _ in range(10):
                assert resp.fp.readline()  # thinking deltas arrive
            at_close = engine.llama.n_tokens
            conn.sock.shutdown(socket.SHUT_RDWR)
            conn.close()
            deadline = time.monotonic() + 20
            while True:
                health = http.client.HTTPConnection("127.0.0.1", p, timeout=5)
                health.request("GET", "/health")
                if json.loads(health.getresponse().read())["busy"] == 0:
                    break
                assert time.monotonic() < deadline, "generation went on after the client left"
                time.sleep(0.01)
            final = len(cached_ids(engine.llama))
            assert at_cancel, "the server never cancelled the chat"
            after_close.append(final - at_close)
            after_cancel.append(final - at_cancel[0])
        with capsys.disabled():
            print(f"\ntokens decoded after the socket closed: {after_close}; after cancel(): {after_cancel}")
        assert max(after_cancel) <= 1
        assert max(after_close) <= 8
        code, data = raw_post(p, json.dumps({"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 3,
                                             "chat_template_kwargs": {"enable_thinking": False}}).encode())
        assert code == 200 and data["choices"][0]["message"]["content"]


def test_serve_command_runs_and_answers(scripted_gguf, tmp_path):
    import subprocess
    import sys
    p = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "cli", "serve", str(scripted_gguf), "--port", str(p), "--ctx", "1024"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**__import__("os").environ, "QWEN3_EDGE_HOME": str(tmp_path)},
                            cwd=Path(__file__).resolve().parents[2])
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                conn = http.client.HTTPConnection("127.0.0.1", p, timeout=5)
                conn.request("GET", "/health")
                if conn.getresponse().status == 200:
                    break
            except OSError:
                pass
            assert time.monotonic() < deadline and proc.poll() is None, proc.stderr.read() if proc.poll() is not None else "timeout"
            time.sleep(0.2)
        client = openai.OpenAI(base_url=f"http://127.0.0.1:{p}/v1", api_key="none", max_retries=0)
        r = client.chat.completions.create(model="any", messages=[{"role": "user", "content": "Hi"}])
        assert r.choices[0].message.content == SCRIPT_ANSWER_TEXT
    finally:
        proc.terminate()
        proc.wait(20)


def test_serve_warns_off_loopback_without_key():
    from typer.testing import CliRunner

    from cli.main import app
    from cli.serve_cmd import _is_loopback
    assert _is_loopback("127.0.0.1") and _is_loopback("::1") and _is_loopback("localhost")
    assert not _is_loopback("0.0.0.0") and not _is_loopback("192.168.1.10")
    r = CliRunner(env={"COLUMNS": "200"}).invoke(app, ["serve", "missing.gguf", "--host", "0.0.0.0"])
    assert r.exit_code == 1 and "without --api-key" in r.stderr and "missing.gguf" in r.stderr


def test_a_backend_failure_is_a_503_and_the_server_serves_on(client, monkeypatch):
    """A reply the backend cannot finish (an RPC worker lost, a context llama.cpp could not grow) is
    the server's fault, not the request's: 503 with an OpenAI server_error object, streamed or not."""
    from edge.chat import BackendError, Chat

    def lost(self, *args, **kwargs):
        raise BackendError("RPC worker 127.0.0.1:50052 stopped answering")
        yield  # a generator, like Chat.stream

    messages = [{"role": "user", "content": "Hi"}]
    with monkeypatch.context() as m:
        m.setattr(Chat, "stream", lost)
        with pytest.raises(openai.InternalServerError) as e:
            client.chat.completions.create(model="scripted", messages=messages)
        assert e.value.status_code == 503
        assert e.value.body["type"] == "server_error" and "stopped answering" in e.value.body["message"]
        with pytest.raises(openai.APIError) as e:
            list(client.chat.completions.create(model="scripted", messages=messages, stream=True))
        assert "stopped answering" in str(e.value)
    r = client.chat.completions.create(model="scripted", messages=messages)
    assert r.choices[0].message.content == SCRIPT_ANSWER_TEXT
