"""The endpoints apps call besides chat completions, all on the one request-to-Chat mapping
(completion.py): model names, /v1/completions, Ollama's API, /metrics; in process on the
scripted model (the real `ollama` client too, over a socket)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from starlette.testclient import TestClient

from cli.serve_cmd import served_names
from edge.engine import Engine
from edge.server import create_app
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
