"""The clients people point at a local server, unmodified, against `serve` on scripted models,
offline: the `ollama` Python library (chat with think, streamed, tools). The `openai` SDK is
driven in tests/test_server.py, tests/test_server_tools.py and tests/test_api_fields.py."""

from __future__ import annotations

import pytest

from edge.engine import Engine
from tests.scripted_model import SCRIPT_ANSWER_TEXT, SCRIPT_THINKING_TEXT
from tests.test_server import serving
from tests.tool_scripts import THINKING_TEXT, WEATHER_TOOL

ollama = pytest.importorskip("ollama")
HI = [{"role": "user", "content": "Hi"}]


@pytest.fixture(scope="module")
def port(scripted_gguf):
    with Engine.load(scripted_gguf, n_ctx=1024) as engine, serving(engine, model_name="qwen3:scripted") as p:
        yield p


@pytest.fixture(scope="module")
def tool_port(tool_ggufs):
    with Engine.load(tool_ggufs["think_then_call"], n_ctx=1024) as engine, serving(engine, model_name="t") as p:
        yield p


def test_ollama_chat_with_think(port):
    client = ollama.Client(host=f"http://127.0.0.1:{port}")
    r = client.chat(model="qwen3:scripted", messages=HI, think=True, options={"seed": 1})
    assert r.message.content == SCRIPT_ANSWER_TEXT and r.message.thinking == SCRIPT_THINKING_TEXT
    assert r.done and r.eval_count > 0
    r = client.chat(model="qwen3:scripted", messages=HI, think=False, options={"seed": 1})
    assert r.message.content == SCRIPT_ANSWER_TEXT and not r.message.thinking


def test_ollama_streamed_chat_and_listing(port):
    client = ollama.Client(host=f"http://127.0.0.1:{port}")
    parts = list(client.chat(model="qwen3:scripted", messages=HI, stream=True, think=True, options={"seed": 1}))
    assert "".join(p.message.content for p in parts) == SCRIPT_ANSWER_TEXT
    assert "".join(p.message.thinking or "" for p in parts) == SCRIPT_THINKING_TEXT and parts[-1].done
    assert [m.model for m in client.list().models] == ["qwen3:scripted"]
    g = client.generate(model="qwen3:scripted", prompt="Hi", think=False, options={"seed": 1})
    assert g.response == SCRIPT_ANSWER_TEXT


def test_ollama_tool_call_and_result(tool_port):
    client = ollama.Client(host=f"http://127.0.0.1:{tool_port}")
    r = client.chat(model="t", messages=[{"role": "user", "content": "Weather in Paris?"}], tools=[WEATHER_TOOL],
                    think=True, options={"seed": 1})
    [call] = r.message.tool_calls
    assert call.function.name == "get_weather" and dict(call.function.arguments) == {"city": "Paris"}
    assert r.message.thinking == THINKING_TEXT
    follow = [{"role": "user", "content": "Weather in Paris?"}, r.message,
              {"role": "tool", "content": '{"sky": "sunny"}', "tool_name": "get_weather"}]
    r2 = client.chat(model="t", messages=follow, tools=[WEATHER_TOOL], think=False, options={"seed": 1})
    assert r2.done  # the result was matched to the call (an unmatched one is a 400)
