"""Tools and response formats through `serve`, driven by the real `openai` client: calls in
message.tool_calls and reassembled from streamed delta.tool_calls, a two-step tool loop written the
usual way, tool_choice variants, JSON schemas validated, and bad tool input as 400s."""

from __future__ import annotations

import json

import jsonschema
import openai
import pytest

from edge.runtime.engine import Engine
from tests.scripted_model import SCRIPT_THINKING_TEXT
from tests.serve.test_server import reasoning, serving
from tests.tool_scripts import ANSWER_TEXT, THINKING_TEXT, TIME_TOOL, WEATHER_TOOL

NO_THINK = {"chat_template_kwargs": {"enable_thinking": False}}
TOOLS = [WEATHER_TOOL, TIME_TOOL]


@pytest.fixture(scope="module")
def client(tool_ggufs):
    with Engine.load(tool_ggufs["call_then_answer"], n_ctx=1024) as engine, serving(engine, model_name="tools") as port:
        yield openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="x", max_retries=0, timeout=120)


@pytest.fixture(scope="module")
def thinker(tool_ggufs):
    """The model that thinks and then calls."""
    with Engine.load(tool_ggufs["think_then_call"], n_ctx=1024) as engine, serving(engine, model_name="t") as port:
        yield openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="x", max_retries=0, timeout=120)


@pytest.fixture(scope="module")
def plain(scripted_gguf):
    with Engine.load(scripted_gguf, n_ctx=1024) as engine, serving(engine, model_name="plain") as port:
        yield openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="x", max_retries=0, timeout=120)


def ask(client, messages, **kwargs):
    return client.chat.completions.create(model="m", messages=messages, seed=1, **kwargs)


def test_call_comes_back_as_tool_calls(thinker):
    r = ask(thinker, [{"role": "user", "content": "Weather in Paris?"}], tools=TOOLS)
    choice = r.choices[0]
    assert choice.finish_reason == "tool_calls" and choice.message.content is None
    [call] = choice.message.tool_calls
    assert call.type == "function" and call.id.startswith("call_")
    assert call.function.name == "get_weather" and json.loads(call.function.arguments) == {"city": "Paris"}
    assert reasoning(choice.message) == THINKING_TEXT


def test_streamed_call_reassembles(thinker):
    calls: dict[int, dict] = {}
    thinking, content, reasons = [], [], []
    for c in ask(thinker, [{"role": "user", "content": "Weather?"}], tools=TOOLS, stream=True):
        for choice in c.choices:
            d = choice.delta
            thinking.append((d.model_extra or {}).get("reasoning_content") or "")
            content.append(d.content or "")
            for tc in d.tool_calls or []:
                slot = calls.setdefault(tc.index, {"id": None, "name": "", "arguments": ""})
                slot["id"] = tc.id or slot["id"]
                if tc.function:
                    slot["name"] += tc.function.name or ""
                    slot["arguments"] += tc.function.arguments or ""
            if choice.finish_reason:
                reasons.append(choice.finish_reason)
    assert list(calls) == [0] and calls[0]["name"] == "get_weather" and calls[0]["id"].startswith("call_")
    assert json.loads(calls[0]["arguments"]) == {"city": "Paris"}
    assert "".join(thinking) == THINKING_TEXT and "".join(content) == "" and reasons == ["tool_calls"]


def test_two_step_tool_loop_written_the_usual_way(client):
    messages = [{"role": "system", "content": "Use tools."}, {"role": "user", "content": "Weather in Paris?"}]
    first = ask(client, messages, tools=TOOLS, extra_body=NO_THINK)
    message = first.choices[0].message
    assert first.choices[0].finish_reason == "tool_calls"
    messages.append(message)  # the client sends it back with content null
    for call in message.tool_calls:
        messages.append({"role": "tool", "tool_call_id": call.id, "content": '{"temperature": 21}'})
    second = ask(client, messages, tools=TOOLS)
    assert second.choices[0].message.content == ANSWER_TEXT and second.choices[0].finish_reason == "stop"
    assert reasoning(second.choices[0].message) == THINKING_TEXT
    assert second.usage.prompt_tokens_details.cached_tokens > first.usage.prompt_tokens // 2


def test_tool_choice_none_and_required(client):
    r = ask(client, [{"role": "user", "content": "Hi"}], tools=TOOLS, tool_choice="none")
    assert r.choices[0].message.content == ANSWER_TEXT and not r.choices[0].message.tool_calls
    r = ask(client, [{"role": "user", "content": "Hi"}], tools=TOOLS, tool_choice="required", max_tokens=80)
    assert r.choices[0].finish_reason == "tool_calls" and r.choices[0].message.tool_calls
    r = ask(client, [{"role": "user", "content": "Hi"}], tools=TOOLS, max_tokens=80, parallel_tool_calls=False,
            tool_choice={"type": "function", "function": {"name": "get_time"}})
    [call] = r.choices[0].message.tool_calls
    assert call.function.name == "get_time"
    jsonschema.validate(json.loads(call.function.arguments), TIME_TOOL["function"]["parameters"])


SCHEMA = {"type": "object", "properties": {"city": {"type": "string", "maxLength": 10},
                                           "days": {"type": "array", "items": {"type": "integer"}, "maxItems": 3},
                                           "unit": {"enum": ["C", "F"]}},
          "required": ["city", "days", "unit"], "additionalProperties": False}


@pytest.mark.parametrize("extra", [{}, NO_THINK])
def test_response_format_json_schema(plain, extra):
    r = ask(plain, [{"role": "user", "content": "Forecast?"}], max_tokens=200, extra_body=extra,
            response_format={"type": "json_schema", "json_schema": {"name": "forecast", "schema": SCHEMA}})
    jsonschema.validate(json.loads(r.choices[0].message.content), SCHEMA)
    assert reasoning(r.choices[0].message) == (SCRIPT_THINKING_TEXT if not extra else None)


@pytest.mark.parametrize("extra", [{}, NO_THINK])
def test_pydantic_model_through_the_sdks_parse(plain, extra):
    """client.chat.completions.parse() with a pydantic model holding nested models, an enum class,
    Field(ge, le), EmailStr, datetime and Literal: the SDK sends its strict schema (refs and
    all), the server answers it, the SDK parses it into the model; thinking on and off."""
    from tests.schema_cases import Profile
    r = plain.chat.completions.parse(model="m", messages=[{"role": "user", "content": "Profile?"}], seed=1,
                                     max_tokens=600, response_format=Profile, extra_body=extra)
    message = r.choices[0].message
    assert isinstance(message.parsed, Profile) and r.choices[0].finish_reason == "stop"
    assert 0 <= message.parsed.person.age <= 120 and "@" in message.parsed.person.email
    assert reasoning(message) == (SCRIPT_THINKING_TEXT if not extra else None)


def test_answer_the_engine_cannot_hold_comes_back_with_a_notice(plain):
    """uniqueItems is checked on the finished answer: the reply is returned, its notices say why."""
    schema = {"type": "array", "items": {"const": 1}, "minItems": 2, "maxItems": 2, "uniqueItems": True}
    r = ask(plain, [{"role": "user", "content": "x"}], extra_body=NO_THINK,
            response_format={"type": "json_schema", "json_schema": {"name": "pair", "schema": schema}})
    message = r.choices[0].message
    assert json.loads(message.content) == [1, 1]
    assert any("non-unique" in n for n in (message.model_extra or {}).get("notices", []))


def test_streamed_response_format(plain):
    parts = [c.choices[0].delta.content or "" for c in ask(
        plain, [{"role": "user", "content": "Forecast?"}], max_tokens=200, stream=True, extra_body=NO_THINK,
        response_format={"type": "json_schema", "json_schema": {"name": "forecast", "schema": SCHEMA}}) if c.choices]
    jsonschema.validate(json.loads("".join(parts)), SCHEMA)


BAD = [
    ({"tools": [{"type": "function", "function": {"parameters": {}}}]}, "tools[0]"),
    ({"tools": [{"type": "function", "function": {"name": "f", "parameters": [1, 2]}}]}, "tools[0]"),
    ({"tools": TOOLS, "tool_choice": {"type": "function", "function": {"name": "missing"}}}, "tool_choice"),
    ({"tool_choice": "required"}, "tool_choice"),
    ({"response_format": {"type": "json_schema", "json_schema": {"schema": {
        "type": "integer", "multipleOf": 0.123456789}}}}, "response_format"),
    ({"response_format": {"type": "xml"}}, "response_format"),
    ({"response_format": {"type": "json_schema", "json_schema": {"schema": {"enum": list(range(2000))}}}},
     "response_format"),
]


@pytest.mark.parametrize("extra, param", BAD)
def test_bad_tool_input_is_a_400_naming_the_field(client, extra, param):
    with pytest.raises(openai.BadRequestError) as err:
        ask(client, [{"role": "user", "content": "Hi"}], extra_body=extra)
    assert err.value.body["param"].startswith(param) if err.value.body.get("param") else param in err.value.message
    assert ask(client, [{"role": "user", "content": "Hi"}], extra_body=NO_THINK).choices[0].message.content


def test_deep_schema_and_orphan_tool_message_are_400s(client):
    schema: dict = {"type": "string"}
    for _ in range(300):
        schema = {"type": "array", "items": schema}
    body = {"response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": schema}}}
    with pytest.raises(openai.BadRequestError, match="nests"):
        ask(client, [{"role": "user", "content": "Hi"}], extra_body=body)
    with pytest.raises(openai.BadRequestError, match="tool_call_id"):
        ask(client, [{"role": "user", "content": "Hi"}, {"role": "tool", "tool_call_id": "call_1", "content": "x"}])
    assert ask(client, [{"role": "user", "content": "Hi"}], tools=TOOLS, extra_body=NO_THINK).choices[0].message.tool_calls
