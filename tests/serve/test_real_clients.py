"""The clients people point at a local server, unmodified, against `serve` on scripted models,
offline: the `ollama` library (chat with think, streamed, tools), the `anthropic` SDK (thinking,
tool use, streamed, count_tokens, errors), the `openai` SDK async and `.parse()` with pydantic
(the sync SDK is driven in tests/test_server*.py and tests/serve/test_api_fields.py), and LangChain's
ChatOpenAI (invoke, stream, bind_tools, with_structured_output)."""

from __future__ import annotations

import pytest

from edge.runtime.engine import Engine
from tests.scripted_model import SCRIPT_ANSWER_TEXT, SCRIPT_THINKING_TEXT
from tests.serve.test_server import serving
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


# ---- the anthropic SDK -----------------------------------------------------------------------------
anthropic = pytest.importorskip("anthropic")


def test_anthropic_message_with_thinking(port):
    client = anthropic.Anthropic(base_url=f"http://127.0.0.1:{port}", api_key="x", max_retries=0)
    m = client.messages.create(model="qwen3:scripted", max_tokens=200, messages=HI,
                               thinking={"type": "enabled", "budget_tokens": 1024}, system="Be brief.")
    assert [b.type for b in m.content] == ["thinking", "text"]
    assert m.content[0].thinking == SCRIPT_THINKING_TEXT and m.content[1].text == SCRIPT_ANSWER_TEXT
    assert m.stop_reason == "end_turn" and m.usage.output_tokens > 0
    counted = client.messages.count_tokens(model="qwen3:scripted", messages=HI, system="Be brief.",
                                           thinking={"type": "enabled", "budget_tokens": 1024})
    assert counted.input_tokens == m.usage.input_tokens  # the prompt the reply was generated from
    off = client.messages.create(model="qwen3:scripted", max_tokens=200, messages=HI, thinking={"type": "disabled"})
    assert [b.type for b in off.content] == ["text"]
    cut = client.messages.create(model="qwen3:scripted", max_tokens=200, messages=HI, stop_sequences=["forty"],
                                 thinking={"type": "disabled"})
    assert cut.stop_reason == "stop_sequence" and cut.stop_sequence == "forty" and cut.content[0].text == "The answer is "


def test_anthropic_streamed(port):
    client = anthropic.Anthropic(base_url=f"http://127.0.0.1:{port}", api_key="x", max_retries=0)
    with client.messages.stream(model="qwen3:scripted", max_tokens=200, messages=HI) as stream:
        texts = list(stream.text_stream)
        final = stream.get_final_message()
    assert "".join(texts) == SCRIPT_ANSWER_TEXT
    assert final.content[0].type == "thinking" and final.content[0].thinking == SCRIPT_THINKING_TEXT
    assert final.stop_reason == "end_turn"
    count = client.messages.count_tokens(model="qwen3:scripted", messages=HI)
    assert count.input_tokens > 0


def test_anthropic_errors_in_its_shape(port):
    client = anthropic.Anthropic(base_url=f"http://127.0.0.1:{port}", api_key="x", max_retries=0)
    with pytest.raises(anthropic.BadRequestError) as e:
        client.messages.create(model="m", max_tokens=10, messages=[{"role": "user", "content": [
            {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "aGk="}}]}])
    assert e.value.body["type"] == "error" and "text-only" in e.value.body["error"]["message"]


def test_anthropic_tool_use_and_result(tool_port):
    client = anthropic.Anthropic(base_url=f"http://127.0.0.1:{tool_port}", api_key="x", max_retries=0)
    tool = {"name": "get_weather", "description": WEATHER_TOOL["function"]["description"],
            "input_schema": WEATHER_TOOL["function"]["parameters"]}
    ask = [{"role": "user", "content": "Weather in Paris?"}]
    with client.messages.stream(model="t", max_tokens=300, messages=ask, tools=[tool]) as stream:
        m = stream.get_final_message()
    assert m.stop_reason == "tool_use"
    [use] = [b for b in m.content if b.type == "tool_use"]
    assert use.name == "get_weather" and use.input == {"city": "Paris"}
    assert m.content[0].type == "thinking" and m.content[0].thinking == THINKING_TEXT
    follow = ask + [{"role": "assistant", "content": m.content},
                    {"role": "user", "content": [{"type": "tool_result", "tool_use_id": use.id, "content": "sunny"}]}]
    r = client.messages.create(model="t", max_tokens=300, messages=follow, tools=[tool],
                               thinking={"type": "disabled"})
    assert r.stop_reason in ("end_turn", "tool_use")  # the result reached the model as its call's answer


# ---- the openai SDK, async and .parse() ------------------------------------------------------------
def test_openai_async_and_parse(port):
    import asyncio
    from typing import Literal

    import openai
    from pydantic import BaseModel, Field

    class Forecast(BaseModel):
        city: str = Field(max_length=10)
        days: list[int] = Field(max_length=3)
        unit: Literal["C", "F"]

    async def main():
        client = openai.AsyncOpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="x", max_retries=0)
        r = await client.chat.completions.create(model="qwen3:scripted", messages=HI, seed=1)
        stream = await client.chat.completions.create(model="qwen3:scripted", messages=HI, seed=1, stream=True)
        parts = [c.choices[0].delta.content or "" async for c in stream if c.choices]
        parsed = await client.chat.completions.parse(model="qwen3:scripted", messages=HI, seed=1, max_tokens=200,
                                                     response_format=Forecast)
        return r, parts, parsed
    r, parts, parsed = asyncio.run(main())
    assert r.choices[0].message.content == SCRIPT_ANSWER_TEXT and "".join(parts) == SCRIPT_ANSWER_TEXT
    assert isinstance(parsed.choices[0].message.parsed, Forecast)


# ---- LangChain's ChatOpenAI ------------------------------------------------------------------------
def test_langchain_chat_openai(port, tool_port):
    langchain_openai = pytest.importorskip("langchain_openai")
    from pydantic import BaseModel

    class Answer(BaseModel):
        city: str
        unit: str

    llm = langchain_openai.ChatOpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="x", model="qwen3:scripted",
                                      max_retries=0, seed=1)
    assert llm.invoke("Hi").content == SCRIPT_ANSWER_TEXT
    assert "".join(c.content for c in llm.stream("Hi")) == SCRIPT_ANSWER_TEXT
    structured = llm.with_structured_output(Answer).invoke("Where?")
    assert isinstance(structured, Answer)
    tools_llm = langchain_openai.ChatOpenAI(base_url=f"http://127.0.0.1:{tool_port}/v1", api_key="x", model="t",
                                            max_retries=0, seed=1)
    msg = tools_llm.bind_tools([WEATHER_TOOL]).invoke("Weather in Paris?")
    assert [(c["name"], c["args"]) for c in msg.tool_calls] == [("get_weather", {"city": "Paris"})]
