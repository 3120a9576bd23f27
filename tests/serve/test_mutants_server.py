"""edge/serve/server.py's own rules over a stand-in engine (no model: test_server and test_api_dialects
drive a scripted one end to end): /health and /v1/models, the API key, 404 / 405 / 500 in the caller's
API's error shape, admission past slots + queue and its 429, tickets given back once, and the
X-Ignored-Fields header with its one console line per field."""

from __future__ import annotations

import gc
import json
from pathlib import Path
from types import SimpleNamespace

import pytest
from starlette.testclient import TestClient

from edge.serve.completion import engine_lock
from edge.serve.server import MAX_BODY_BYTES, _generic, create_app


class FakeEngine:
    """What create_app reads of an Engine before any generation; hashable, as engine_lock needs."""

    def __init__(self, parallel: int | None = None, fail_backend: bool = False):
        self.info = SimpleNamespace(path=Path("/models/fake-model.gguf"))
        self.device, self.fail_backend = "cpu", fail_backend
        if parallel is not None:
            self.parallel, self.scheduler = parallel, object()

    @property
    def backend(self):
        if self.fail_backend:
            raise RuntimeError("boom")
        return "cpu"


def app_for(engine=None, **kwargs):
    app = create_app(engine or FakeEngine(), **kwargs)
    return app, app.state.qwen3_edge, TestClient(app, raise_server_exceptions=False)


def test_health_names_the_model_and_counts_the_requests_in():
    _, server, c = app_for(model_name=["alias-a", "alias-b"])
    ticket = server.admit()
    assert c.get("/health").json() == {"status": "ok", "model": "alias-a", "busy": 1, "backend": "cpu", "device": "cpu"}
    ticket.release()
    assert c.get("/health").json()["busy"] == 0


def test_models_lists_every_name_behind_the_key():
    _, _, c = app_for(api_key="k", model_name=["a", "b"])
    r = c.get("/v1/models")
    assert r.status_code == 401 and r.json()["error"] == {"message": "invalid or missing API key",
                                                          "type": "authentication_error", "param": None, "code": None}
    assert c.get("/v1/models", headers={"authorization": "Bearer wrong"}).status_code == 401
    body = c.get("/v1/models", headers={"authorization": "Bearer k"}).json()
    assert body["object"] == "list"
    assert [(m["id"], m["object"], m["owned_by"]) for m in body["data"]] == [("a", "model", "qwen3-edge"),
                                                                            ("b", "model", "qwen3-edge")]
    assert all(isinstance(m["created"], int) for m in body["data"])


@pytest.mark.parametrize("path", ["/v1/chat/completions", "/v1/completions"])
def test_a_generation_without_the_key_is_a_401_before_its_body_is_read(path):
    r = app_for(api_key="k")[2].post(path, content=b"not even JSON", headers={"authorization": "Bearer wrong"})
    assert r.status_code == 401 and r.json()["error"] == {"message": "invalid or missing API key",
                                                          "type": "authentication_error", "param": None, "code": None}


def test_without_a_key_every_request_is_authorized_and_the_name_is_the_files():
    _, server, c = app_for()
    assert server.authorized(SimpleNamespace(headers={})) is True
    assert [m["id"] for m in c.get("/v1/models").json()["data"]] == ["fake-model"]


@pytest.mark.parametrize("method, path, status, body", [
    ("GET", "/v1/nowhere", 404, {"error": {"message": "Not Found", "type": "invalid_request_error", "param": None,
                                           "code": None}}),
    ("GET", "/v1/chat/completions", 405, {"error": {"message": "Method Not Allowed", "type": "invalid_request_error",
                                                    "param": None, "code": None}}),
    ("GET", "/api/nowhere", 404, {"error": "Not Found"}),                              # Ollama's shape
    ("POST", "/v1/messages/nowhere", 404, {"type": "error", "error": {"type": "not_found_error", "message": "Not Found"}}),
    ("GET", "/v1/messages", 405, {"type": "error", "error": {"type": "invalid_request_error",
                                                             "message": "Method Not Allowed"}}),   # Anthropic's
])
def test_not_found_and_not_allowed_come_in_the_callers_api_shape(method, path, status, body):
    r = app_for()[2].request(method, path)
    assert (r.status_code, r.json()) == (status, body)


def test_a_bug_is_a_500_an_openai_client_can_read():
    r = app_for(FakeEngine(fail_backend=True))[2].get("/health")
    assert r.status_code == 500 and r.json()["error"] == {"message": "internal error: RuntimeError",
                                                          "type": "server_error", "param": None, "code": None}


def test_a_body_over_one_mebibyte_is_a_413():
    assert MAX_BODY_BYTES == 1 << 20
    r = app_for()[2].post("/v1/chat/completions", content=b"x" * (MAX_BODY_BYTES + 1))
    assert r.status_code == 413


def test_an_engine_without_slots_runs_one_generation_at_a_time_under_the_shared_lock():
    engine = FakeEngine()
    _, server, _ = app_for(engine, queue=2)
    assert (server.slots, server.capacity) == (1, 3) and server.lock is engine_lock(engine)
    _, parallel, _ = app_for(FakeEngine(parallel=3), queue=2)
    assert (parallel.slots, parallel.capacity, parallel.lock) == (3, 5, None)


def test_past_slots_and_queue_a_request_is_refused_and_tickets_go_back_once():
    _, server, _ = app_for(FakeEngine(), queue=1)
    first, second = server.admit(), server.admit()
    assert first is not None and second is not None and server.admit() is None and server.active == 2
    first.release()
    first.release()                       # given back once: a second release changes nothing
    assert server.active == 1
    del second                            # a ticket never released goes back when dropped
    gc.collect()
    assert server.active == 0 and server.admit() is not None and server.active == 1


def test_the_busy_answer_is_a_429_with_retry_after():
    _, server, _ = app_for(FakeEngine(parallel=2), queue=3)
    r = server.busy()
    assert r.status_code == 429 and r.headers["retry-after"] == "1"
    error = json.loads(r.body)["error"]
    assert (error["type"], error["code"]) == ("rate_limit_exceeded", "server_busy")
    assert "2 slot(s) running and 3 request(s) waiting" in error["message"]


def test_ignored_fields_are_named_in_the_header_and_said_once_per_field(capsys):
    _, server, _ = app_for()
    assert server.report_ignored([]) == {}
    header = server.report_ignored(["messages[3].id", "messages[0].id", "num_ctx", "num_ctx", "caf\u00e9"])
    assert header == {"X-Ignored-Fields": "messages[3].id, messages[0].id, num_ctx, caf\\xe9"}
    lines = capsys.readouterr().err.splitlines()
    assert sorted(lines) == sorted(f"qwen3-edge serve: ignoring request field {n} (not used by this server)"
                                   for n in ("'messages[].id'", "'num_ctx'", "'caf\\xe9'"))
    server.report_ignored(["messages[7].id", "num_ctx"])
    assert capsys.readouterr().err == ""
    assert len(server.report_ignored([f"field{i:04d}" for i in range(500)])["X-Ignored-Fields"]) == 2000


def test_generic_names_the_field_not_where_it_was():
    assert _generic("messages[3].tool_calls[12].id") == "messages[].tool_calls[].id"
    assert _generic("num_ctx") == "num_ctx"
