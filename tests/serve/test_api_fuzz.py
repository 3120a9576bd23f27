"""Property-based: bodies shaped like OpenAI chat-completion requests, then mutated one way each
(wrong types, out-of-range and non-finite numbers, lone surrogates and NUL, odd but valid Unicode,
deep nesting, duplicate keys, unknown fields, fields only accepted at their neutral value, broken
bytes), posted to the ASGI app in process on the scripted model. Never a 5xx; every 4xx is an
OpenAI error object, and for each mutation the test knows what must come back (200, or a 400
naming the field; an unknown field is a 200 whose X-Ignored-Fields header names it); the app
serves a normal request afterwards."""

from __future__ import annotations

import copy
import json
from collections import Counter
from dataclasses import dataclass
from typing import Any, Callable

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from starlette.testclient import TestClient

from edge.runtime.engine import Engine
from edge.serve.openai_api import KNOWN, MAX_JSON_DEPTH, MESSAGE_KEYS
from edge.serve.server import create_app
from tests.scripted_model import SCRIPT_ANSWER_TEXT

N_CTX = 1024
EXAMPLES = 40   # per mutation


# ---- JSON with the things json.dumps will not write ------------------------------------------------
class Raw(str):
    """Literal JSON text: NaN, 1e400, a deep nest."""


class Pairs(list):
    """An object as (key, value) pairs, so a key can be given twice."""


def dump(v: Any, ascii_only: bool = True) -> str:
    if isinstance(v, Raw):
        return str(v)
    if isinstance(v, (dict, Pairs)):
        items = v.items() if isinstance(v, dict) else v
        return "{" + ",".join(json.dumps(k, ensure_ascii=ascii_only) + ":" + dump(x, ascii_only) for k, x in items) + "}"
    if isinstance(v, list):
        return "[" + ",".join(dump(x, ascii_only) for x in v) + "]"
    return json.dumps(v, ensure_ascii=ascii_only)


def path_of(path: str, key: str | int) -> str:
    """The server's field names: messages[0].content, stream_options.include_usage."""
    return f"{path}[{key}]" if isinstance(key, int) else (f"{path}.{key}" if path else key)


def containers(v: Any, path: str = ""):
    """(path, container) for every object and array, outermost first."""
    if isinstance(v, (dict, list)):
        yield path, v
        for k, x in (v.items() if isinstance(v, dict) else enumerate(v)):
            yield from containers(x, path_of(path, k))


# ---- what a valid request looks like -------------------------------------------------------------
TEXT = st.text(st.characters(exclude_categories=("Cs",), exclude_characters="\x00"), max_size=12)
WORD = st.text("abcdefghijklmnopqrstuvwxyz_", min_size=1, max_size=10)
TOOL = {"type": "function", "function": {"name": "get_weather", "description": "Weather",
                                         "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}}

OPTIONAL = {
    "temperature": st.floats(0, 2), "top_p": st.floats(0, 1), "presence_penalty": st.floats(-2, 2),
    "top_k": st.integers(0, 50), "min_p": st.floats(0, 1), "seed": st.integers(-(1 << 63), (1 << 63) - 1),
    "stop": st.one_of(WORD, st.lists(WORD, min_size=1, max_size=4)), "stream": st.booleans(),
    "stream_options": st.fixed_dictionaries({}, optional={"include_usage": st.booleans()}),
    "thinking_budget": st.one_of(st.integers(0, 8), st.just("auto")), "model": TEXT, "user": TEXT,
    "metadata": st.dictionaries(WORD, TEXT, max_size=3), "store": st.booleans(),
    "service_tier": st.sampled_from(["auto", "default", "flex"]), "prompt_cache_key": TEXT,
    "safety_identifier": TEXT, "n": st.integers(1, 2), "logprobs": st.booleans(), "top_logprobs": st.integers(0, 3),
    "frequency_penalty": st.floats(-2, 2), "logit_bias": st.dictionaries(st.integers(0, 151000).map(str),
                                                                        st.floats(-100, 100), max_size=2),
    "modalities": st.just(["text"]), "ignore_eos": st.booleans(), "repeat_penalty": st.floats(0.5, 2),
    "parallel_tool_calls": st.booleans(), "response_format": st.just({"type": "text"}),
    "prediction": st.just({"type": "content", "content": "x"}), "tools": st.just([TOOL]),
    "tool_choice": st.sampled_from(["auto", "none"]),
}
THINKING = st.one_of(st.none(), st.fixed_dictionaries({"chat_template_kwargs": st.fixed_dictionaries(
    {"enable_thinking": st.booleans()})}), st.fixed_dictionaries({"reasoning_effort": st.sampled_from(
        ["none", "minimal", "low", "medium", "high"])}))


@st.composite
def conversations(draw) -> list[dict]:
    """A system or developer message maybe, turns, and a last user message or a tool result."""
    msgs = []
    if draw(st.booleans()):
        msgs.append({"role": draw(st.sampled_from(["system", "developer"])), "content": draw(TEXT)})
    for _ in range(draw(st.integers(0, 2))):
        msgs += [{"role": "user", "content": draw(TEXT)}, {"role": "assistant", "content": draw(TEXT)}]
    if draw(st.booleans()):
        msgs.append({"role": "user", "content": draw(st.one_of(TEXT, st.lists(
            st.fixed_dictionaries({"type": st.just("text"), "text": TEXT}), min_size=1, max_size=2)))})
    else:  # the openai client sends the call back with content null, then the result
        msgs += [{"role": "user", "content": draw(TEXT)},
                 {"role": "assistant", "content": None, "tool_calls": [
                     {"id": "call_1", "type": "function", "function": {"name": "get_weather",
                                                                       "arguments": '{"city": "Paris"}'}}]},
                 {"role": "tool", "tool_call_id": "call_1", "content": draw(TEXT)}]
    return msgs


@st.composite
def valid_bodies(draw) -> dict:
    body = {"messages": draw(conversations()), draw(st.sampled_from(["max_tokens", "max_completion_tokens"])):
            draw(st.integers(1, 2))}
    for key in draw(st.lists(st.sampled_from(sorted(OPTIONAL)), unique=True, max_size=6)):
        body[key] = draw(OPTIONAL[key])
    body.update(draw(THINKING) or {})
    return body


# ---- one mutation each, with what must come back --------------------------------------------------
@dataclass
class Case:
    kind: str
    body: bytes
    status: int | None = None        # None: any status below 500
    param: str | None = None         # the field the 400 must name
    fragment: str | None = None      # in the error message
    ignored: str | None = None       # a 200 whose X-Ignored-Fields header must name this


INT_FIELDS = {"max_tokens": (1, None), "max_completion_tokens": (1, None), "top_k": (0, None),
              "thinking_budget": (0, None), "seed": (-(1 << 63), (1 << 63) - 1), "n": (1, 16), "top_logprobs": (0, 20)}
FLOAT_FIELDS = {"temperature": (0, 2), "top_p": (0, 1), "presence_penalty": (-2, 2), "min_p": (0, 1),
                "frequency_penalty": (-2, 2), "repeat_penalty": (0, 10)}
BOOL_FIELDS = ["stream", "parallel_tool_calls", "store", "logprobs", "ignore_eos", "enable_thinking"]
STR_FIELDS = ["model", "user", "service_tier", "prompt_cache_key", "safety_identifier", "reasoning_effort"]
OBJECT_FIELDS = ["metadata", "stream_options", "chat_template_kwargs", "prediction"]
# Fields once accepted only at a neutral value: now honoured (200), or refused where a text-only
# model cannot do what they ask (400).
HONOURED_OR_REFUSED = {"n": (st.sampled_from([2, 3]), 200), "logprobs": (st.just(True), 200),
                       "top_logprobs": (st.integers(1, 20), 200), "frequency_penalty": (st.sampled_from([0.5, -1, 2]), 200),
                       "logit_bias": (st.just({"100": 5}), 200), "web_search_options": (st.just({}), 200),
                       "verbosity": (st.just("high"), 200), "moderation": (st.just({}), 200),
                       "modalities": (st.just(["text", "audio"]), 400),
                       "audio": (st.just({"voice": "alloy", "format": "wav"}), 400),
                       "functions": (st.just([TOOL["function"]]), 400), "function_call": (st.just("auto"), 400)}
ANY_VALUE = st.one_of(st.none(), st.booleans(), st.integers(-5, 5), st.floats(-3, 3), TEXT,
                      st.lists(st.integers(), max_size=2), st.dictionaries(WORD, st.integers(), max_size=2))
NON_FINITE = {"NaN": "not a JSON number", "Infinity": "not a JSON number", "-Infinity": "not a JSON number",
              "1e400": "beyond the range", "-1e400": "beyond the range", "1E999": "beyond the range",
              "9" * 41: "41 digits", "-" + "1" * 60: "60 digits"}
VALID_ODD = ["\U0001F600", "\u202e", "e\u0301", "\ufeff", "\uffff", "\U0010FFFF", "\u2028", "\r\n", "\x7f", "\x01"]


def ok_body(body: dict, ascii_only: bool = True) -> bytes:
    return dump(body, ascii_only).encode("utf-8", "surrogatepass")


def m_valid(draw, body):
    return Case("valid", ok_body(body, draw(st.booleans())), 200)


def m_wrong_type(draw, body):
    key = draw(st.sampled_from(sorted(INT_FIELDS) + sorted(FLOAT_FIELDS) + BOOL_FIELDS + STR_FIELDS + OBJECT_FIELDS))
    right = (lambda v: isinstance(v, int) and not isinstance(v, bool)) if key in INT_FIELDS else \
        (lambda v: isinstance(v, (int, float)) and not isinstance(v, bool)) if key in FLOAT_FIELDS else \
        (lambda v: isinstance(v, bool)) if key in BOOL_FIELDS else (lambda v: isinstance(v, str)) if key in STR_FIELDS \
        else (lambda v: isinstance(v, dict))
    value = draw(ANY_VALUE.filter(lambda v: v is not None and not right(v) and v != "auto"))
    return Case("wrong type", ok_body({**body, key: value}), 400, key)


def m_bad_message(draw, body):
    msgs = body["messages"]
    i = draw(st.integers(0, len(msgs) - 1))
    how = draw(st.sampled_from(["role", "content", "not an object", "tool_calls"]))
    if how == "role":
        msgs[i] = {**msgs[i], "role": draw(st.one_of(WORD.filter(lambda r: r not in (
            "system", "developer", "user", "assistant", "tool")), st.integers(), st.none()))}
    elif how == "content":
        msgs[i] = {**msgs[i], "content": draw(st.one_of(st.integers(), st.booleans(), st.dictionaries(WORD, TEXT),
                                                         st.just([{"type": "image_url", "image_url": {"url": "x"}}])))}
    elif how == "tool_calls":
        msgs[i] = {**msgs[i], "role": "assistant", "tool_calls": draw(st.one_of(
            TEXT, st.just([{"id": 1}]), st.just([{"id": "c", "function": {"name": "f", "arguments": "{bad"}}])))}
    else:
        msgs[i] = draw(st.one_of(TEXT, st.integers(), st.lists(st.integers(), max_size=2)))
    return Case("bad message", ok_body(body), 400, "messages")  # the field, or one of its messages


def m_out_of_range(draw, body):
    fields = {**INT_FIELDS, **FLOAT_FIELDS}
    key = draw(st.sampled_from(sorted(fields)))
    low, high = fields[key]
    if key in INT_FIELDS:
        value = draw(st.one_of(st.integers(max_value=low - 1, min_value=low - 10**30), st.integers(
            min_value=high + 1, max_value=high + 10**30)) if high is not None else st.integers(max_value=low - 1))
    else:
        value = draw(st.one_of(st.floats(max_value=low, exclude_max=True, allow_infinity=False, allow_nan=False),
                               st.floats(min_value=high, exclude_min=True, allow_infinity=False, allow_nan=False)))
    for other in ("max_tokens", "max_completion_tokens"):
        body.pop(other, None)
    return Case("out of range", ok_body({**body, key: value}), 400, key)


def m_non_finite(draw, body):
    token = Raw(draw(st.sampled_from(sorted(NON_FINITE))))
    where = draw(st.sampled_from(sorted(INT_FIELDS) + sorted(FLOAT_FIELDS) + ["metadata.x", "messages[0].content"]))
    if where == "metadata.x":
        body["metadata"] = {"x": token}
    elif where == "messages[0].content":
        body["messages"][0] = {**body["messages"][0], "content": token}
    else:
        body[where] = token
    return Case("non-finite number", ok_body(body), 400, where, NON_FINITE[token])


def string_sites(body: dict):
    """(path of the string, container, key) for every string value, and (container path, container,
    key, 'key') for every object key."""
    for path, c in containers(body):
        for k, v in (c.items() if isinstance(c, dict) else enumerate(c)):
            if isinstance(v, str):
                yield path_of(path, k), c, k, "value"
            if isinstance(k, str):
                yield path, c, k, "key"


def m_bad_unicode(draw, body):
    sites = list(string_sites(body))
    path, container, key, what = draw(st.sampled_from(sites))
    bad = draw(st.one_of(st.characters(min_codepoint=0xD800, max_codepoint=0xDFFF), st.just("\x00")))
    original = key if what == "key" else container[key]
    at = draw(st.integers(0, len(original)))
    spoiled = original[:at] + bad + original[at:]
    if what == "key":
        items = [(spoiled if k == key else k, v) for k, v in container.items()]
        container.clear()
        container.update(items)
    else:
        container[key] = spoiled
    if bad != "\x00" and draw(st.booleans()):  # written as UTF-8 bytes (CESU): not UTF-8 at all
        return Case("lone surrogate as bytes", ok_body(body, ascii_only=False), 400, None, "not UTF-8")
    return Case("lone surrogate or NUL", ok_body(body), 400, path or None,
                "NUL" if bad == "\x00" else "surrogate")


def m_odd_valid_unicode(draw, body):
    texts = [i for i, m in enumerate(body["messages"]) if isinstance(m.get("content"), str)]
    if not texts:  # the one user message was given as text parts
        body["messages"][-1]["content"], texts = "x", [len(body["messages"]) - 1]
    i = draw(st.sampled_from(texts))
    text = body["messages"][i]["content"]
    at = draw(st.integers(0, len(text)))
    body["messages"][i]["content"] = text[:at] + "".join(draw(st.lists(st.sampled_from(VALID_ODD), min_size=1,
                                                                        max_size=3))) + text[at:]
    return Case("odd but valid Unicode", ok_body(body, draw(st.booleans())), 200)


def m_deep(draw, body):
    depth = draw(st.one_of(st.integers(1, 80), st.integers(80, 5000)))
    opener, closer = draw(st.sampled_from([("[", "]"), ('{"a":', "}")]))
    nest = Raw(opener * depth + "1" + closer * depth)
    if draw(st.booleans()):  # metadata takes any object: served when within the bound
        body["metadata"] = {"k": nest}
        total, shallow = 2 + depth, Case("deep nesting", b"", 200)
    else:
        body["messages"][0] = {**body["messages"][0], "content": nest}
        total, shallow = 3 + depth, Case("deep nesting", b"", 400, "messages[0].content")
    case = shallow if total <= MAX_JSON_DEPTH else Case("deep nesting", b"", 400, None, f"deeper than {MAX_JSON_DEPTH}")
    case.body = ok_body(body)
    return case


def m_duplicate_key(draw, body):
    objects = [(p, c) for p, c in containers(body) if isinstance(c, dict) and c]
    path, obj = draw(st.sampled_from(objects))
    key = draw(st.sampled_from(sorted(obj)))
    pairs = list(obj.items())
    pairs.insert(draw(st.integers(0, len(pairs))), (key, draw(st.one_of(st.just(obj[key]), ANY_VALUE))))
    if path == "":
        return Case("duplicate key", dump(Pairs(pairs)).encode(), 400, key, "twice")
    parent, slot = next((c, k) for _, c in containers(body)
                        for k, v in (c.items() if isinstance(c, dict) else enumerate(c)) if v is obj)
    parent[slot] = Pairs(pairs)
    return Case("duplicate key", ok_body(body), 400, path_of(path, key), "twice")


def m_unknown_field(draw, body):
    where = draw(st.sampled_from(["top", "message", "stream_options", "chat_template_kwargs"]))
    name = draw(st.one_of(st.sampled_from(["best_of", "echo", "guided_json", "num_ctx", "repeat_last_n",
                                           "max_new_tokens", "Temperature", "top-p", "suffix"]), WORD))
    if where == "top":
        name = name if name not in KNOWN else name + "_x"
        return Case("unknown field", ok_body({**body, name: draw(ANY_VALUE)}), 200, ignored=name)
    if where == "message":
        name = name if name not in MESSAGE_KEYS else name + "_x"
        body["messages"][-1] = {**body["messages"][-1], name: draw(ANY_VALUE)}
        return Case("unknown field", ok_body(body), 200, ignored=f"messages[{len(body['messages']) - 1}].{name}")
    body.pop("reasoning_effort", None)
    allowed = {"stream_options": ("include_usage", "include_obfuscation", "continuous_usage_stats"),
               "chat_template_kwargs": ("enable_thinking",)}
    name = name if name not in allowed[where] else name + "_x"
    body[where] = {name: draw(st.booleans())}
    return Case("unknown field", ok_body(body), 200, ignored=f"{where}.{name}")


def m_honoured_or_refused(draw, body):
    key = draw(st.sampled_from(sorted(HONOURED_OR_REFUSED)))
    values, status = HONOURED_OR_REFUSED[key]
    if status == 200:
        body["max_tokens"] = body.pop("max_completion_tokens", None) or body.get("max_tokens") or 1
    return Case("once neutral-only", ok_body({**body, key: draw(values)}), status, key if status == 400 else None)


def m_broken_bytes(draw, body):
    raw = ok_body(body)
    how = draw(st.sampled_from(["truncate", "latin-1", "utf-16", "utf-32", "not an object", "flip", "empty"]))
    if how == "truncate":
        return Case("broken bytes", raw[: draw(st.integers(0, len(raw) - 1))], 400)
    if how == "not an object":
        return Case("broken bytes", dump(draw(st.one_of(ANY_VALUE, st.lists(ANY_VALUE)).filter(
            lambda v: not isinstance(v, dict)))).encode(), 400)
    if how == "flip":
        i = draw(st.integers(0, len(raw) - 1))
        return Case("broken bytes", raw[:i] + bytes([draw(st.integers(0, 255))]) + raw[i + 1:], None)
    if how == "empty":
        return Case("broken bytes", b"", 400)
    text = dump(body, ascii_only=False) + "\u00e9" * (how == "latin-1")  # so latin-1 is not ASCII
    if how == "latin-1":
        try:
            return Case("broken bytes", text.encode("latin-1"), 400, None, "not UTF-8")
        except UnicodeEncodeError:
            return Case("broken bytes", text.encode("utf-16"), 400)
    return Case("broken bytes", text.encode(how), 400)


MUTATIONS: list[Callable] = [m_valid, m_wrong_type, m_bad_message, m_out_of_range, m_non_finite, m_bad_unicode,
                             m_odd_valid_unicode, m_deep, m_duplicate_key, m_unknown_field, m_honoured_or_refused,
                             m_broken_bytes]


@st.composite
def cases(draw, mutation: Callable) -> Case:
    body = copy.deepcopy(draw(valid_bodies()))  # st.just values are shared between examples
    return mutation(draw, body)


# ---- what must come back ------------------------------------------------------------------------
def check_response(case: Case, status: int, content_type: str, payload: bytes, ignored_header: str = "") -> None:
    assert status < 500, (status, payload[:300])
    if case.ignored is not None:
        assert case.ignored in (ignored_header or "").split(", "), (case.ignored, ignored_header)
    if case.status is not None:
        assert status == case.status, (case.kind, status, payload[:300], case.body[:300])
    if status >= 400:
        assert content_type.startswith("application/json")
        data = json.loads(payload)
        assert set(data) == {"error"} and set(data["error"]) == {"message", "type", "param", "code"}, data
        err = data["error"]
        assert isinstance(err["message"], str) and err["message"] and isinstance(err["type"], str)
        assert err["param"] is None or isinstance(err["param"], str)
        if case.param is not None:
            assert err["param"] is not None and err["param"].startswith(case.param), (case.kind, err, case.param)
        if case.fragment is not None:
            assert case.fragment in err["message"], (case.kind, err)
    elif status == 200 and content_type.startswith("text/event-stream"):
        assert payload.rstrip().endswith(b"data: [DONE]")
    elif status == 200:
        data = json.loads(payload)
        assert data["object"] == "chat.completion" and len(data["choices"]) >= 1
        assert isinstance(data["choices"][0]["message"].get("content"), (str, type(None)))


@pytest.fixture(scope="module")
def engine(scripted_gguf):
    with Engine.load(scripted_gguf, n_ctx=N_CTX, n_threads=1) as e:  # a few tokens: one thread is enough
        yield e


@pytest.fixture(scope="module")
def client(engine):
    with TestClient(create_app(engine), raise_server_exceptions=False) as c:
        yield c


@pytest.fixture(scope="module")
def tally(request):
    """Examples run, per mutation and status, written once the module is done (docs/ROBUSTNESS.md)."""
    seen: Counter = Counter()
    yield seen
    line = f"API fuzz, {sum(seen.values())} examples: " + ", ".join(
        f"{k} -> {s}: {n}" for (k, s), n in sorted(seen.items()))
    with request.config.pluginmanager.get_plugin("capturemanager").global_and_fixture_disabled():
        print("\n" + line)


@pytest.mark.parametrize("mutation", MUTATIONS, ids=lambda m: m.__name__[2:])
def test_no_body_reaches_a_500(client, tally, mutation):
    """EXAMPLES bodies with this one mutation: what must come back comes back (never a 5xx), and a
    normal request is served afterwards."""
    count = Counter()

    @settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck), database=None)
    @given(cases(mutation))
    def post(case: Case) -> None:
        r = client.post("/v1/chat/completions", content=case.body, headers={"content-type": "application/json"})
        check_response(case, r.status_code, r.headers.get("content-type", ""), r.content,
                       r.headers.get("x-ignored-fields", ""))
        count[case.kind, r.status_code] += 1

    post()
    tally.update(count)
    assert sum(count.values()) >= EXAMPLES // 2, count  # the strategy did not starve
    r = client.post("/v1/chat/completions", json={"messages": [{"role": "user", "content": "Hi"}], "seed": 1})
    assert r.status_code == 200 and r.json()["choices"][0]["message"]["content"] == SCRIPT_ANSWER_TEXT
