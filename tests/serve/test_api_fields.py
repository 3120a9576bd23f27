"""Every field whose meaning is known is honoured (a malformed value is a 400 naming it), every
other is accepted, ignored and named in X-Ignored-Fields; checked three ways: parse_request called
directly (what a Python caller gets), the real server through the `openai` client, and a few of
the fuzz cases (tests/serve/test_api_fuzz.py) over a real socket."""

from __future__ import annotations

import http.client
import json

import openai
import pytest
from hypothesis import HealthCheck, given, settings

from edge.runtime.engine import Engine
from edge.protocol.modes import Mode
from edge.serve.openai_api import RequestError, decode_body, parse_request
from tests.llama_probe import record_sampling
from tests.scripted_model import SCRIPT_ANSWER_TEXT, SCRIPT_THINKING_TEXT
from tests.serve.test_api_fuzz import MUTATIONS, Case, cases, check_response
from tests.chat.test_engine_chat import reference_prompt
from tests.serve.test_server import reasoning, serving

HI = [{"role": "user", "content": "Hi"}]


def refused(body: dict, n_ctx: int = 1024) -> RequestError:
    with pytest.raises(RequestError) as e:
        parse_request(body, n_ctx)
    return e.value


# ---- parse_request, as a Python caller gets it ---------------------------------------------------
@pytest.mark.parametrize("key", ["temperature", "top_p", "presence_penalty", "min_p"])
@pytest.mark.parametrize("value", [float("nan"), float("inf"), float("-inf")])
def test_non_finite_floats_from_python_are_refused(key, value):
    """decode_body never yields NaN, but a Python caller can pass one: NaN passes every range test."""
    e = refused({"messages": HI, key: value})
    assert e.param == key and "finite" in e.message


@pytest.mark.parametrize("key, value", [("n", True), ("logprobs", 0), ("top_logprobs", False),
                                        ("frequency_penalty", False), ("n", 1.5), ("modalities", ["audio"])])
def test_values_are_of_the_right_json_type(key, value):
    """In Python True == 1 and 0 == False; in JSON they are different types."""
    assert refused({"messages": HI, key: value}).param == key


def test_neutral_and_ignored_values_are_accepted():
    req = parse_request({"messages": HI, "n": 1, "logprobs": False, "top_logprobs": 0, "frequency_penalty": 0.0,
                         "logit_bias": {}, "modalities": ["text"], "audio": None, "verbosity": "medium",
                         "user": "u", "metadata": {"k": "v"}, "store": True, "service_tier": "auto",
                         "prompt_cache_key": "k", "safety_identifier": "s", "prediction": {"type": "content"}}, 1024)
    assert req.user == "Hi"


def test_open_ranges_read_well():
    e = refused({"messages": HI, "max_tokens": 0})
    assert e.param == "max_tokens" and e.message == "max_tokens must be at least 1, got 0" and "None" not in e.message
    assert refused({"messages": HI, "thinking_budget": -1}).message == "thinking_budget must be at least 0, got -1"
    assert refused({"messages": HI, "temperature": 3}).message == "temperature must be between 0 and 2, got 3"


def test_both_token_caps_are_checked_and_the_newer_name_wins():
    assert refused({"messages": HI, "max_completion_tokens": 5, "max_tokens": "x"}).param == "max_tokens"
    assert parse_request({"messages": HI, "max_completion_tokens": 5, "max_tokens": 9}, 1024).max_tokens == 5
    assert parse_request({"messages": HI, "max_completion_tokens": 2000}, 1024).max_tokens == 2000  # clamped by the context


@pytest.mark.parametrize("effort, mode", [("none", Mode.NO_THINK), ("minimal", Mode.NO_THINK), ("low", Mode.THINK),
                                          ("high", Mode.THINK), (None, Mode.THINK)])
def test_reasoning_effort_sets_thinking(effort, mode):
    assert parse_request({"messages": HI, "reasoning_effort": effort}, 1024).mode is mode


def test_reasoning_effort_that_contradicts_enable_thinking_is_refused():
    assert refused({"messages": HI, "reasoning_effort": "high",
                    "chat_template_kwargs": {"enable_thinking": False}}).param == "reasoning_effort"
    assert refused({"messages": HI, "reasoning_effort": "max"}).param == "reasoning_effort"


def test_seed_is_an_int64_and_never_llama_cpps_random_marker():
    """llama.cpp reads its 32-bit seed 0xFFFFFFFF as "random"; -1 (its low 32 bits) would be too."""
    seeds = {s: parse_request({"messages": HI, "seed": s}, 1024).seed for s in (0, 1, 12345, -1, 0xFFFFFFFF, 2**63 - 1)}
    assert seeds[0] == 0 and seeds[1] == 1 and seeds[12345] == 12345
    assert all(0 <= s < 0xFFFFFFFF for s in seeds.values()) and seeds[-1] != seeds[0xFFFFFFFF]
    assert refused({"messages": HI, "seed": 2**63}).param == "seed"


def test_developer_is_system_and_null_content_goes_with_tool_calls():
    req = parse_request({"messages": [
        {"role": "developer", "content": "Be brief."}, {"role": "user", "content": "Weather?"},
        {"role": "assistant", "content": None, "refusal": None, "annotations": [], "tool_calls": [
            {"id": "c1", "type": "function", "function": {"name": "w", "arguments": "{}"}}]},
        {"role": "tool", "tool_call_id": "c1", "content": "sunny"}]}, 1024)
    assert req.system == "Be brief." and req.user is None and req.history[1].tool_calls[0].id == "c1"
    # an assistant message with neither (a replayed refusal, an empty turn) is an empty answer, not a 400
    assert parse_request({"messages": [{"role": "assistant", "content": None}, *HI]}, 1024).history[0].content == ""


def test_tool_call_arguments_are_read_as_strictly_as_the_body():
    def with_args(args: str) -> RequestError:
        return refused({"messages": [*HI, {"role": "assistant", "content": None, "tool_calls": [
            {"id": "c", "type": "function", "function": {"name": "f", "arguments": args}}]},
            {"role": "tool", "tool_call_id": "c", "content": "r"}]})
    where = "messages[1].tool_calls[0].function.arguments"
    assert with_args('{"x": NaN}').param == f"{where}.x"
    assert with_args("[" * 5000 + "]" * 5000).message.startswith("the JSON nests deeper than 64")
    assert with_args('{"a": 1, "a": 2}').param == f"{where}.a"


@pytest.mark.parametrize("raw, param, fragment", [
    (b'{"messages": [], "messages": []}', "messages", "twice"),
    (b'{"top_p": NaN}', "top_p", "NaN"),
    (b'{"temperature": 1e999}', "temperature", "beyond the range"),
    (b'{"seed": ' + b"9" * 5000 + b"}", "seed", "5000 digits"),
    ('{"user": "caf\u00e9"}'.encode("latin-1"), None, "not UTF-8 (byte 0xe9 at offset 13)"),
    (b'{"user": "\\udfff"}', "user", "U+DFFF"),
    (b'{"m": {"k\\u0000": 1}}', "m", "NUL"),
    (b"[" * 100_000, None, "deeper than 64"),
])
def test_decode_body_names_what_it_refuses(raw, param, fragment):
    with pytest.raises(RequestError) as e:
        decode_body(raw)
    assert e.value.param == param and fragment in e.value.message


def test_decode_body_takes_utf8_with_a_bom_and_surrogate_pairs():
    assert decode_body('\ufeff{"a": "\\ud83d\\ude00 é"}'.encode()) == {"a": "\U0001F600 é"}


# ---- the real server, through the openai client --------------------------------------------------
@pytest.fixture(scope="module")
def engine(scripted_gguf):
    with Engine.load(scripted_gguf, n_ctx=1024) as e:
        yield e


@pytest.fixture(scope="module")
def port(engine):
    with serving(engine, model_name="scripted") as p:
        yield p


@pytest.fixture(scope="module")
def client(port):
    return openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="x", max_retries=0, timeout=60)


def ask(client, messages=HI, **kwargs):
    return client.chat.completions.create(model="scripted", messages=messages, seed=1, **kwargs)


@pytest.mark.parametrize("kwargs, param, fragment", [
    ({"n": 0}, "n", "between 1 and 16"),
    ({"logprobs": True, "top_logprobs": 30}, "top_logprobs", "between 0 and 20"),
    ({"frequency_penalty": 2.5}, "frequency_penalty", "between -2 and 2"),
    ({"logit_bias": {"abc": 5}}, "logit_bias", "token ids"),
    ({"modalities": ["text", "audio"]}, "modalities", "text-only"),
    ({"audio": {"voice": "alloy", "format": "wav"}}, "audio", "audio"),
    ({"max_tokens": 0}, "max_tokens", "at least 1"),
    ({"reasoning_effort": "high", "extra_body": {"chat_template_kwargs": {"enable_thinking": False}}},
     "reasoning_effort", "contradicts"),
    ({"extra_body": {"repetition_penalty": "high"}}, "repetition_penalty", "number"),
    ({"extra_body": {"stream": "yes"}}, "stream", "true or false"),
])
def test_known_fields_with_bad_values_are_400s_naming_them(client, kwargs, param, fragment):
    with pytest.raises(openai.BadRequestError) as e:
        ask(client, **kwargs)
    assert e.value.body["param"] == param and fragment in e.value.body["message"]


def test_unknown_fields_and_message_keys_are_served_and_named_in_a_header(client, capfd):
    """CodeCompanion's message id, Open WebUI's options: served, and the response says what was
    ignored; the console says each distinct field once."""
    messages = [{"role": "user", "content": "Hi", "id": 1, "opts": {"visible": True}}]
    for _ in range(2):
        raw = client.chat.completions.with_raw_response.create(
            model="scripted", messages=messages, seed=1,
            extra_body={"num_ctx": 4096, "cache_prompt": True, "stream_options": None})
        assert raw.http_response.headers["x-ignored-fields"] == "num_ctx, messages[0].id, messages[0].opts"
        assert raw.parse().choices[0].message.content == SCRIPT_ANSWER_TEXT
    said = capfd.readouterr().err
    assert said.count("'num_ctx'") == 1 and said.count("'messages[].id'") == 1
    plain = client.chat.completions.with_raw_response.create(model="scripted", messages=HI, seed=1)
    assert "x-ignored-fields" not in plain.http_response.headers


def test_once_refused_fields_are_honoured(client):
    r = ask(client, n=2, logprobs=True, top_logprobs=2, frequency_penalty=0.5, logit_bias={"100": 1},
            reasoning_effort="none", extra_body={"repetition_penalty": 1.1, "ignore_eos": False})
    assert [c.message.content for c in r.choices] == [SCRIPT_ANSWER_TEXT] * 2
    tokens = [t.token for t in r.choices[1].logprobs.content]
    assert "".join(tokens) == SCRIPT_ANSWER_TEXT and len(r.choices[1].logprobs.content[0].top_logprobs) == 2


def test_streamed_choices_carry_their_index(client):
    stream = ask(client, n=2, stream=True, reasoning_effort="none")
    texts = ["", ""]
    for c in stream:
        for choice in c.choices:
            texts[choice.index] += choice.delta.content or ""
    assert texts == [SCRIPT_ANSWER_TEXT] * 2


def test_a_nan_is_refused_by_the_client_itself(client):
    """The openai client will not send NaN or a lone surrogate (it raises before sending), so the
    server's checks for those are reached only by other clients: see the raw-socket test below."""
    with pytest.raises(ValueError):
        ask(client, temperature=float("nan"))


def test_harmless_fields_are_accepted_and_change_nothing(client):
    r = ask(client, n=1, logprobs=False, frequency_penalty=0, user="u-1", metadata={"app": "test"}, store=False,
            service_tier="auto", safety_identifier="s", prompt_cache_key="k", modalities=["text"],
            stream_options=None, extra_body={"top_logprobs": 0})
    assert r.choices[0].message.content == SCRIPT_ANSWER_TEXT and len(r.choices) == 1


def test_developer_role_is_rendered_as_the_system_prompt(client, engine):
    r = ask(client, [{"role": "developer", "content": "Be brief."}, *HI])
    as_system = engine.tokenize(reference_prompt([{"role": "system", "content": "Be brief."}, *HI], True))
    assert r.usage.prompt_tokens == len(as_system) != len(engine.tokenize(reference_prompt(HI, True)))
    assert r.choices[0].message.content == SCRIPT_ANSWER_TEXT


def test_reasoning_effort_none_answers_without_thinking(client):
    r = ask(client, reasoning_effort="none")
    assert r.choices[0].message.content == SCRIPT_ANSWER_TEXT and not reasoning(r.choices[0].message)
    assert r.usage.completion_tokens_details.reasoning_tokens == 0
    r = ask(client, reasoning_effort="high")
    assert reasoning(r.choices[0].message) == SCRIPT_THINKING_TEXT


def test_top_k_min_p_and_seed_reach_the_sampler(client, monkeypatch):
    """(temperature, top_p, top_k, min_p, presence_penalty, seed) the chain was built with."""
    built = record_sampling(monkeypatch)
    ask(client, extra_body={"top_k": 5, "min_p": 0.1})
    client.chat.completions.create(model="scripted", messages=HI, seed=-1)
    assert built[0] == (0.6, 0.95, 5, 0.1, 0.0, 1)
    assert built[1][5] == 0xFFFFFFFE  # -1 folded off llama.cpp's "random seed" marker


# ---- a few fuzz cases over a real socket ------------------------------------------------------------
def post_raw(port: int, body: bytes) -> tuple[int, str, bytes, str]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    conn.request("POST", "/v1/chat/completions", body=body, headers={"Content-Type": "application/json"})
    resp = conn.getresponse()
    out = resp.status, resp.getheader("content-type", ""), resp.read(), resp.getheader("x-ignored-fields", "")
    conn.close()
    return out


@pytest.mark.parametrize("mutation", MUTATIONS, ids=lambda m: m.__name__[2:])
def test_fuzz_cases_over_a_real_socket(port, mutation):
    """Three examples per mutation through uvicorn and a real connection: the same answers."""
    @settings(max_examples=3, deadline=None, suppress_health_check=list(HealthCheck), database=None)
    @given(cases(mutation))
    def post(case: Case) -> None:
        check_response(case, *post_raw(port, case.body))

    post()
    status, _, payload, _ = post_raw(port, json.dumps({"messages": HI, "seed": 1}).encode())
    assert status == 200 and json.loads(payload)["choices"][0]["message"]["content"] == SCRIPT_ANSWER_TEXT


@pytest.mark.parametrize("method, path, status", [("GET", "/v1/chat/completions", 405), ("POST", "/v1/nowhere", 404)])
def test_wrong_paths_and_methods_get_openai_error_objects(port, method, path, status):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    conn.request(method, path, body=b"{}" if method == "POST" else None)
    resp = conn.getresponse()
    data = json.loads(resp.read())
    assert resp.status == status and set(data["error"]) == {"message", "type", "param", "code"}
