"""The endpoints apps call besides chat completions, all on the one request-to-Chat mapping
(completion.py): model names, /v1/completions, Ollama's API, /metrics; in process on the
scripted model (the real `ollama` client too, over a socket)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from starlette.testclient import TestClient

from cli.serve_cmd import served_names
from edge.runtime.engine import Engine
from edge.serve.server import create_app
from tests.scripted_model import SCRIPT_ANSWER_TEXT, SCRIPT_THINKING_TEXT

HI = [{"role": "user", "content": "Hi"}]


def test_served_names(tmp_path):
    models = tmp_path / "store" / "models"
    stored = models / "qwen3-0.6b" / "q4_k_m.gguf"
    assert served_names(stored, models, None) == ["qwen3-0.6b:q4_k_m"]
    assert served_names(tmp_path / "mine.gguf", models, None) == ["mine"]
    assert served_names(stored, models, ["qwen", "gpt-4o", "qwen"]) == ["qwen", "gpt-4o"]


@pytest.fixture(scope="module")
def engine(scripted_gguf):
    with Engine.load(scripted_gguf, n_ctx=512, n_threads=1) as e:
        yield e


@pytest.fixture(scope="module")
def client(engine):
    with TestClient(create_app(engine, model_name=["qwen3-0.6b:q4_k_m", "my-model"]),
                    raise_server_exceptions=False) as c:
        yield c


def test_models_lists_every_alias(client):
    assert [m["id"] for m in client.get("/v1/models").json()["data"]] == ["qwen3-0.6b:q4_k_m", "my-model"]


# ---- /v1/completions: a raw prompt, no template --------------------------------------------------
def test_text_completion_continues_a_raw_prompt(client, engine):
    """The scripted model continues its script from any of its tokens: a raw prompt ending in
    "The answer" goes on with " is forty-two." and ends."""
    r = client.post("/v1/completions", json={"prompt": "The answer", "max_tokens": 20, "seed": 1})
    assert r.status_code == 200, r.text
    data = r.json()
    assert data["object"] == "text_completion" and data["choices"][0]["text"] == " is forty-two."
    assert data["usage"]["prompt_tokens"] == len(engine.tokenize("The answer"))
    echoed = client.post("/v1/completions", json={"prompt": "The answer", "echo": True, "seed": 1}).json()
    assert echoed["choices"][0]["text"] == "The answer is forty-two."


def test_text_completion_default_cap_stop_and_logprobs(client):
    r = client.post("/v1/completions", json={"prompt": "The answer", "max_tokens": 2, "logprobs": 2, "seed": 1}).json()
    c = r["choices"][0]
    assert c["finish_reason"] == "length" and c["text"] == " is forty"[: len(c["text"])] and len(c["logprobs"]["tokens"]) == 2
    assert c["logprobs"]["text_offset"] == [0, len(c["logprobs"]["tokens"][0])]
    assert all(len(t) == 2 for t in c["logprobs"]["top_logprobs"])
    r = client.post("/v1/completions", json={"prompt": "The answer", "stop": ["forty"], "seed": 1}).json()
    assert r["choices"][0]["text"] == " is " and r["choices"][0]["finish_reason"] == "stop"


def test_text_completion_streams(client):
    with client.stream("POST", "/v1/completions", json={"prompt": "The answer", "stream": True, "seed": 1}) as r:
        lines = [line for line in r.iter_lines() if line.startswith("data: ")]
    assert lines[-1] == "data: [DONE]"
    chunks = [json.loads(line[6:]) for line in lines[:-1]]
    assert "".join(c["choices"][0]["text"] for c in chunks) == " is forty-two."
    assert chunks[-1]["choices"][0]["finish_reason"] == "stop"


@pytest.mark.parametrize("body, param", [({"prompt": ["a", "b"]}, "prompt"), ({"prompt": ""}, "prompt"),
                                         ({"prompt": "x", "logprobs": 9}, "logprobs"),
                                         ({"prompt": "x", "echo": "yes"}, "echo")])
def test_text_completion_bad_requests(client, body, param):
    r = client.post("/v1/completions", json=body)
    assert r.status_code == 400 and r.json()["error"]["param"] == param


# ---- Ollama's API ----------------------------------------------------------------------------------
def test_ollama_chat_not_streamed(client):
    r = client.post("/api/chat", json={"model": "m", "messages": HI, "stream": False, "think": True,
                                       "options": {"seed": 1, "num_ctx": 4096, "temperature": 0.6}})
    assert r.status_code == 200 and r.headers["x-ignored-fields"] == "options.num_ctx"
    data = r.json()
    assert data["message"] == {"role": "assistant", "content": SCRIPT_ANSWER_TEXT, "thinking": SCRIPT_THINKING_TEXT}
    assert data["done"] and data["done_reason"] == "stop" and data["eval_count"] > 0


def test_ollama_chat_streams_ndjson_by_default(client):
    with client.stream("POST", "/api/chat", json={"model": "m", "messages": HI, "think": False,
                                                  "options": {"seed": 1}}) as r:
        assert r.headers["content-type"].startswith("application/x-ndjson")
        parts = [json.loads(line) for line in r.iter_lines() if line]
    assert "".join(p["message"]["content"] for p in parts) == SCRIPT_ANSWER_TEXT
    assert not any(p["message"].get("thinking") for p in parts) and parts[-1]["done"] and not parts[0]["done"]


def test_ollama_generate_and_num_predict(client):
    r = client.post("/api/generate", json={"model": "m", "prompt": "Hi", "stream": False, "think": False,
                                           "options": {"seed": 1, "num_predict": 3}}).json()
    assert r["response"] == SCRIPT_ANSWER_TEXT[: len(r["response"])] and r["done_reason"] == "length"
    r = client.post("/api/generate", json={"model": "m", "prompt": "The answer", "raw": True, "stream": False}).json()
    assert r["response"] == " is forty-two."


def test_ollama_listing_and_errors(client):
    tags = client.get("/api/tags").json()["models"]
    assert [t["name"] for t in tags] == ["qwen3-0.6b:q4_k_m", "my-model"] and tags[0]["details"]["format"] == "gguf"
    assert client.get("/api/version").json()["version"]
    assert "thinking" in client.post("/api/show", json={"model": "my-model"}).json()["capabilities"]
    bad = client.post("/api/chat", json={"messages": [{"role": "user", "content": "x", "images": ["aGk="]}],
                                         "stream": False})
    assert bad.status_code == 400 and "text-only" in bad.json()["error"]
    assert client.get("/api/nothing").json() == {"error": "Not Found"}
    assert client.post("/api/chat", json={"model": "m", "messages": []}).json()["done_reason"] == "load"


# ---- /metrics ---------------------------------------------------------------------------------------
def test_metrics_count_requests_and_tokens(client):
    client.post("/v1/chat/completions", json={"messages": HI, "seed": 1})
    before = client.get("/metrics").text
    client.post("/v1/chat/completions", json={"messages": HI, "seed": 1})   # its prompt is in the KV cache now
    client.post("/v1/chat/completions", json={"messages": HI, "temperature": 9})
    after = client.get("/metrics").text

    def value(text: str, name: str) -> float:
        return next((float(line.split()[-1]) for line in text.splitlines() if line.startswith(name + " ")
                     or line.startswith(name + "{")), 0.0)
    ok = 'qwen3_edge_requests_total{path="/v1/chat/completions",status="200"}'
    bad = 'qwen3_edge_requests_total{path="/v1/chat/completions",status="400"}'
    assert value(after, ok) == value(before, ok) + 1 and value(after, bad) == value(before, bad) + 1
    assert value(after, "qwen3_edge_generated_tokens_total") > value(before, "qwen3_edge_generated_tokens_total")
    assert value(after, "qwen3_edge_prompt_tokens_cached_total") > value(before, "qwen3_edge_prompt_tokens_cached_total")
    assert "qwen3_edge_slots 1" in after and "# TYPE qwen3_edge_queue_depth gauge" in after


def test_ollama_body_translation():
    from edge.serve.api_ollama import chat_body
    body, ignored = chat_body({"model": "m", "think": "high", "format": {"type": "object"}, "keep_alive": "5m",
                               "options": {"num_predict": -1, "repeat_penalty": 1.2, "num_thread": 2},
                               "messages": [{"role": "user", "content": "w?"},
                                            {"role": "assistant", "content": "", "thinking": "hmm", "tool_calls": [
                                                {"function": {"name": "f", "arguments": {"a": 1}}},
                                                {"function": {"name": "g", "arguments": {}}}]},
                                            {"role": "tool", "content": "G", "tool_name": "g"},
                                            {"role": "tool", "content": "F"}]})
    assert body["reasoning_effort"] == "high" and body["stream"] is True and "max_tokens" not in body
    assert body["response_format"] == {"type": "json_schema", "json_schema": {"name": "format",
                                                                              "schema": {"type": "object"}}}
    assert body["repeat_penalty"] == 1.2 and ignored == ["options.num_thread"]
    assistant, g, f = body["messages"][1:]
    assert assistant["reasoning"] == "hmm" and assistant["tool_calls"][0]["function"]["arguments"] == '{"a": 1}'
    assert g["tool_call_id"] == assistant["tool_calls"][1]["id"] and f["tool_call_id"] == assistant["tool_calls"][0]["id"]


# ---- the same fuzzing for every new endpoint ---------------------------------------------------------
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from tests.serve.test_api_fuzz import ANY_VALUE, TEXT, WORD, dump  # noqa: E402

WORDS = TEXT.filter(lambda t: t.strip())
BODIES = {
    "/v1/completions": st.fixed_dictionaries({"prompt": WORDS, "max_tokens": st.integers(1, 2)}, optional={
        "temperature": st.floats(0, 2), "stop": WORD, "echo": st.booleans(), "logprobs": st.integers(0, 2),
        "stream": st.booleans(), "seed": st.integers(0, 9), "n": st.integers(1, 2)}),
    "/api/chat": st.fixed_dictionaries({"model": st.just("m"), "messages": st.just([{"role": "user", "content": "x"}]),
                                        "options": st.fixed_dictionaries({"num_predict": st.integers(1, 2)})},
                                       optional={"stream": st.booleans(), "think": st.booleans(),
                                                 "format": st.just("json")}),
    "/api/generate": st.fixed_dictionaries({"model": st.just("m"), "prompt": WORDS,
                                            "options": st.fixed_dictionaries({"num_predict": st.integers(1, 2)})},
                                           optional={"stream": st.booleans(), "think": st.booleans(),
                                                     "system": TEXT, "raw": st.booleans()}),
    "/v1/messages": st.fixed_dictionaries({"model": st.just("m"), "max_tokens": st.integers(1, 2), "messages": st.just(
        [{"role": "user", "content": [{"type": "text", "text": "x"}]}])}, optional={
        "system": TEXT, "stream": st.booleans(), "stop_sequences": st.lists(WORD, max_size=2),
        "thinking": st.just({"type": "disabled"}), "temperature": st.floats(0, 1)}),
}


@st.composite
def mutated(draw, path: str) -> tuple[bytes, str, str | None]:
    """(body bytes, what was done, the unknown field that must be reported)."""
    body = draw(BODIES[path])
    how = draw(st.sampled_from(["valid", "retype", "unknown", "truncate", "surrogate", "junk messages"]))
    if how == "retype":
        body[draw(st.sampled_from(sorted(body)))] = draw(ANY_VALUE)
    elif how == "unknown":
        name = draw(WORD) + "_x"
        body[name] = draw(ANY_VALUE)
        return dump(body).encode(), how, name
    elif how == "surrogate":
        body["model"] = "m\udc00"
    elif how == "junk messages":
        body["messages"] = draw(ANY_VALUE)
    raw = dump(body).encode("utf-8", "surrogatepass")
    if how == "truncate":
        raw = raw[: draw(st.integers(0, len(raw) - 1))]
    return raw, how, None


def dialect_error(path: str, status: int, data) -> None:
    if path.startswith("/api/"):
        assert set(data) == {"error"} and isinstance(data["error"], str) and data["error"], data
    elif path == "/v1/messages":
        assert data["type"] == "error" and set(data["error"]) == {"type", "message"}, data
    else:
        assert set(data["error"]) == {"message", "type", "param", "code"}, data


@pytest.mark.parametrize("path", sorted(BODIES))
def test_every_endpoint_fuzzed(client, path):
    """Never a 5xx; a refusal in the endpoint's own error shape; an unknown field served and named."""
    @settings(max_examples=25, deadline=None, suppress_health_check=list(HealthCheck), database=None)
    @given(mutated(path))
    def post(case) -> None:
        raw, how, unknown = case
        r = client.post(path, content=raw, headers={"content-type": "application/json"})
        assert r.status_code < 500, (how, r.status_code, r.text[:300])
        if r.status_code >= 400:
            dialect_error(path, r.status_code, r.json())
        if how in ("truncate", "surrogate"):
            assert r.status_code == 400, (how, raw[:200])
        if unknown is not None:
            assert r.status_code == 200 and unknown in r.headers.get("x-ignored-fields", ""), (r.status_code, r.text[:200])
        if r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream"):
            assert r.text.rstrip().endswith("data: [DONE]") or r.text.rstrip().endswith('{"type": "message_stop"}')
        elif r.status_code == 200 and "ndjson" in r.headers["content-type"]:
            assert json.loads(r.text.strip().split("\n")[-1])["done"] is True

    post()
