"""The server's figures in Prometheus' text format (/metrics): requests by endpoint and status,
prompt, cached and generated tokens, generation speed, slots busy and requests waiting.

Counting requests is an ASGI wrapper (every response, whatever the endpoint); tokens are added
by the endpoints when a generation ends (`Metrics.record`)."""

from __future__ import annotations

import threading
from collections import Counter

KNOWN_PATHS = {"/v1/chat/completions", "/v1/completions", "/v1/messages", "/v1/messages/count_tokens",
               "/v1/models", "/api/chat", "/api/generate", "/api/tags", "/api/show", "/api/version", "/health",
               "/metrics", "/"}


class Metrics:
    def __init__(self):
        self._lock = threading.Lock()
        self.requests: Counter = Counter()     # (path, status) -> count
        self.prompt_tokens = self.cached_tokens = self.generated_tokens = self.replies = 0
        self.generation_seconds = 0.0

    def count_request(self, path: str, status: int) -> None:
        with self._lock:
            self.requests[path if path in KNOWN_PATHS else "other", status] += 1

    def record(self, choices: list) -> None:
        """A finished request's choices (completion.Choice): its tokens and time."""
        with self._lock:
            for i, c in enumerate(choices):
                r = c.reply
                if i == 0:  # the prompt is read once per request
                    self.prompt_tokens += r.prompt_tokens
                    self.cached_tokens += r.prompt_tokens - r.evaluated_tokens
                self.generated_tokens += r.generated_tokens
                self.generation_seconds += max(r.seconds - r.ttft_s, 0.0)
                self.replies += 1

    def render(self, slots: int, active: int) -> str:
        """The exposition text; `active` requests are running or waiting for one of `slots`."""
        with self._lock:
            speed = self.generated_tokens / self.generation_seconds if self.generation_seconds else 0.0
            lines = ["# HELP qwen3_edge_requests_total HTTP requests by endpoint and status.",
                     "# TYPE qwen3_edge_requests_total counter"]
            lines += [f'qwen3_edge_requests_total{{path="{p}",status="{s}"}} {n}'
                      for (p, s), n in sorted(self.requests.items())]
            for name, kind, value, text in (
                    ("prompt_tokens_total", "counter", self.prompt_tokens, "Prompt tokens of finished requests."),
                    ("prompt_tokens_cached_total", "counter", self.cached_tokens,
                     "Prompt tokens reused from the KV cache (cache hits)."),
                    ("generated_tokens_total", "counter", self.generated_tokens, "Tokens generated."),
                    ("replies_total", "counter", self.replies, "Replies (choices) finished."),
                    ("generation_tokens_per_second", "gauge", round(speed, 3),
                     "Generated tokens per second of generation time, over all replies."),
                    ("slots", "gauge", slots, "Generations the model runs at once."),
                    ("slots_busy", "gauge", min(active, slots), "Slots generating now."),
                    ("queue_depth", "gauge", max(active - slots, 0), "Requests waiting for a slot.")):
                lines += [f"# HELP qwen3_edge_{name} {text}", f"# TYPE qwen3_edge_{name} {kind}",
                          f"qwen3_edge_{name} {value}"]
        return "\n".join(lines) + "\n"


class CountRequests:
    """ASGI middleware: every HTTP response's status, by path, into `metrics`."""

    def __init__(self, app, metrics: Metrics):
        self.app, self.metrics = app, metrics

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)

        async def counting(message):
            if message["type"] == "http.response.start":
                self.metrics.count_request(scope.get("path", ""), message["status"])
            await send(message)
        await self.app(scope, receive, counting)
