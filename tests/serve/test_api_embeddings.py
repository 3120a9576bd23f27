"""The search endpoints beside a chat model: /v1/embeddings (through the real openai client),
/v1/rerank (llama-server's and Jina's shape) and Ollama's /api/embed; bad requests get a 400 and
a chat on the same server keeps streaming."""

from __future__ import annotations

import base64
import http.client
import json
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import openai
import pytest

from edge.serve.api_embeddings import parse_embeddings, parse_rerank
from edge.runtime.engine import Engine
from edge.serve.openai_api import RequestError
from quantize import quantize_model
from tests.model_factory import TINY_TIED
from tests.retrieval_models import build_embedding_model, build_reranker_model
from tests.scripted_model import SCRIPT_ANSWER_TEXT, SCRIPT_THINKING_TEXT
from tests.serve.test_server import serving

KEY = "k"


# ---- request checks (pure) ------------------------------------------------------------------------------

def test_embeddings_request_fields():
    req = parse_embeddings({"input": "hi", "model": "m", "dimensions": 32, "encoding_format": "base64",
                            "user": "u", "instruction": "Find it"}, 64)
    assert (req["texts"], req["dimensions"], req["format"], req["instruction"], req["single"]) == (
        ["hi"], 32, "base64", "Find it", True)
    for body, param in (({"input": ""}, "input"), ({"input": []}, "input"), ({"input": [1, 2, 3]}, "input"),
                        ({"input": ["a"] * 100_000}, "input"), ({"input": "a", "dimensions": 65}, "dimensions"),
                        ({"input": "a", "dimensions": 8}, "dimensions"), ({"input": "a", "encoding_format": "hex"},
                                                                           "encoding_format"),
                        ({"input": "a", "temperature": 1}, "temperature"), ({}, "input"), ([], None)):
        with pytest.raises(RequestError) as e:
            parse_embeddings(body, 64)
        assert e.value.param == param and e.value.status == 400


def test_rerank_request_fields():
    req = parse_rerank({"query": "q", "documents": ["a", {"text": "b"}], "top_n": 1, "return_documents": True})
    assert (req["documents"], req["top_n"], req["return_documents"]) == (["a", "b"], 1, True)
    for body, param in (({"query": "q", "documents": []}, "documents"), ({"query": "", "documents": ["a"]}, "query"),
                        ({"query": "q", "documents": ["a"], "top_n": 0}, "top_n"), ({"documents": ["a"]}, "query")):
        with pytest.raises(RequestError) as e:
            parse_rerank(body)
        assert e.value.param == param


# ---- one server: chat, embeddings and reranking -------------------------------------------------------

@pytest.fixture(scope="module")
def search_port(scripted_gguf, tmp_path_factory):
    root = tmp_path_factory.mktemp("api-search")
    emb = quantize_model(build_embedding_model(root / "emb", TINY_TIED, seed=21), "f16", root / "emb.gguf").output
    rr = quantize_model(build_reranker_model(root / "rr", TINY_TIED, seed=22), "f16", root / "rr.gguf").output
    with Engine.load(scripted_gguf, n_ctx=2048) as chat, Engine.load(emb, n_threads=2) as e, \
            Engine.load(rr, n_threads=2) as r:
        with serving(chat, api_key=KEY, model_name="scripted", embedders=[e, r]) as port:
            yield port, e, r


def post(port: int, path: str, body, key: str = KEY) -> tuple[int, dict]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    conn.request("POST", path, data, {"Content-Type": "application/json", "Authorization": f"Bearer {key}"})
    resp = conn.getresponse()
    return resp.status, json.loads(resp.read())


def test_openai_client_embeddings_float_and_base64(search_port):
    port, e, _ = search_port
    client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key=KEY, max_retries=0, timeout=120)
    texts = ["first text", "a second, longer text about search"]
    want = e.embed(texts)
    r = client.embeddings.create(model="emb", input=texts, encoding_format="float")
    assert [d.index for d in r.data] == [0, 1] and r.usage.prompt_tokens == sum(map(len, e.input_ids(texts)))
    np.testing.assert_allclose(np.array([d.embedding for d in r.data]), want, atol=1e-6)
    status, body = post(port, "/v1/embeddings", {"input": texts[0], "encoding_format": "base64", "dimensions": 32})
    assert status == 200
    got = np.frombuffer(base64.b64decode(body["data"][0]["embedding"]), dtype="<f4")
    np.testing.assert_allclose(got, e.embed(texts[0], dimensions=32)[0], atol=1e-6)


def test_rerank_and_ollama_shapes(search_port):
    port, e, r = search_port
    docs = ["Paris is in France.", "Bananas are yellow.", "The Eiffel tower is in Paris."]
    scores = r.rerank("Where is Paris?", docs)
    status, body = post(port, "/v1/rerank", {"model": "rr", "query": "Where is Paris?", "documents": docs,
                                             "top_n": 2, "return_documents": True})
    assert status == 200
    best = sorted(range(3), key=lambda i: -scores[i])[:2]
    assert [x["index"] for x in body["results"]] == best
    assert [x["document"]["text"] for x in body["results"]] == [docs[i] for i in best]
    np.testing.assert_allclose([x["relevance_score"] for x in body["results"]], scores[best], atol=1e-6)
    status, body = post(port, "/api/embed", {"model": "emb", "input": ["hello", "world"]})
    assert status == 200 and body["prompt_eval_count"] == sum(map(len, e.input_ids(["hello", "world"])))
    np.testing.assert_allclose(np.array(body["embeddings"]), e.embed(["hello", "world"]), atol=1e-6)


def test_bad_search_requests_are_400s_and_chat_keeps_streaming(search_port):
    port, _, _ = search_port
    client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key=KEY, max_retries=0, timeout=120)

    def chat() -> tuple[str, str]:
        thinking, answer = [], []
        for c in client.chat.completions.create(model="scripted", messages=[{"role": "user", "content": "Hi"}],
                                                stream=True, seed=1):
            d = c.choices[0].delta if c.choices else None
            if d is not None:
                thinking.append((d.model_extra or {}).get("reasoning_content") or "")
                answer.append(d.content or "")
        return "".join(thinking), "".join(answer)

    bad = [("/v1/embeddings", {"input": ""}, "input"), ("/v1/embeddings", {"input": ["a"] * 100_000}, "input"),
           ("/v1/embeddings", {"input": "a", "dimensions": 4096}, "dimensions"),
           ("/v1/embeddings", "{\"input\": \"\\ud800\"}".encode(), "input"),
           ("/v1/embeddings", {"input": "x " * 9000}, "input"),              # over the model's 8192 tokens
           ("/v1/rerank", {"query": "q", "documents": [""]}, "documents")]
    with ThreadPoolExecutor(4) as pool:
        chats = [pool.submit(chat) for _ in range(2)]
        answers = [pool.submit(post, port, path, body) for path, body, _ in bad]
        for (path, body, param), f in zip(bad, answers):
            status, err = f.result()
            assert status == 400, (path, err)
            assert err["error"]["type"] == "invalid_request_error" and err["error"]["param"] == param, err
        for f in chats:
            assert f.result() == (SCRIPT_THINKING_TEXT, SCRIPT_ANSWER_TEXT)
    status, err = post(port, "/api/embed", {"input": ""})
    assert status == 400 and "empty string" in err["error"]                  # Ollama's error shape
    status, err = post(port, "/v1/embeddings", {"input": "a"}, key="wrong")
    assert status == 401


def test_a_body_past_the_bound_is_a_413_on_every_search_endpoint(search_port):
    """The search endpoints read bodies with the server's one bounded reader (api_runtime.read_body)."""
    port, _, _ = search_port
    big = json.dumps({"input": "x" * (2 << 20)}).encode()   # 2 MB: past the 1 MB default
    for path in ("/v1/embeddings", "/v1/rerank", "/api/embed"):
        status, body = post(port, path, big)
        assert status == 413, (path, status, body)
