"""OpenAI's legacy text completions (/v1/completions): a raw prompt continued, no chat template;
still what editors' code completion and evaluation harnesses send.

The request is checked into the same ChatRequest as a chat request (openai_api.parse_request does
the sampling fields, stop, seed, n, ...), with the prompt as its raw_prompt, and runs on the one
generation path (completion.Generation)."""

from __future__ import annotations

import time
import uuid
from typing import Any

from edge.serve.openai_api import ChatRequest, RequestError, parse_request, usage

DEFAULT_MAX_TOKENS = 16     # OpenAI's default for this endpoint
MAX_LEGACY_LOGPROBS = 5     # the legacy API's bound on `logprobs`
OWN_FIELDS = {"prompt", "echo", "logprobs", "suffix", "best_of"}


def parse_completion_request(body: Any) -> tuple[ChatRequest, bool]:
    """(the request, echo) from a /v1/completions body; RequestError names the field."""
    if not isinstance(body, dict):
        raise RequestError("the request body must be a JSON object")
    prompt = body.get("prompt")
    if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], str):
        prompt = prompt[0]
    if isinstance(prompt, list):
        raise RequestError("prompt must be one string (a list of prompts is not supported: send one request each)",
                           "prompt")
    if not isinstance(prompt, str) or not prompt:
        raise RequestError("prompt must be a non-empty string", "prompt")
    logprobs = body.get("logprobs")
    if logprobs is not None and (isinstance(logprobs, bool) or not isinstance(logprobs, int)
                                 or not 0 <= logprobs <= MAX_LEGACY_LOGPROBS):
        raise RequestError(f"logprobs must be an integer between 0 and {MAX_LEGACY_LOGPROBS}", "logprobs")
    echo = body.get("echo")
    if echo is not None and not isinstance(echo, bool):
        raise RequestError("echo must be true or false", "echo")
    best_of = body.get("best_of")
    chat_body = {k: v for k, v in body.items() if k not in OWN_FIELDS and k != "messages"}
    chat_body["messages"] = [{"role": "user", "content": "-"}]   # stands in; the raw prompt is what runs
    if "max_tokens" not in body and "max_completion_tokens" not in body:
        chat_body["max_tokens"] = DEFAULT_MAX_TOKENS
    req = parse_request(chat_body)
    req.user, req.history, req.raw_prompt = None, [], prompt
    if logprobs is not None:
        req.logprobs, req.top_logprobs = True, logprobs
    req.ignored += [k for k in ("suffix",) if body.get(k)]
    if best_of is not None and best_of != req.n:
        req.ignored.append("best_of")
    if "messages" in body:
        req.ignored.append("messages")
    return req, bool(echo)


def legacy_logprobs(entries: list[dict], offset: int) -> dict:
    """OpenAI's chat logprobs entries in the legacy shape (tokens, token_logprobs, top_logprobs,
    text_offset)."""
    offsets, at = [], offset
    for e in entries:
        offsets.append(at)
        at += len(e["token"])
    return {"tokens": [e["token"] for e in entries], "token_logprobs": [e["logprob"] for e in entries],
            "top_logprobs": [{t["token"]: t["logprob"] for t in e["top_logprobs"]} for e in entries],
            "text_offset": offsets}


def completion_id() -> str:
    return f"cmpl-{uuid.uuid4().hex[:24]}"


def text_completion(cid: str, model: str, req: ChatRequest, choices: list, echo: bool) -> dict[str, Any]:
    prefix = req.raw_prompt if echo else ""
    return {"id": cid, "object": "text_completion", "created": int(time.time()), "model": model,
            "choices": [{"index": c.index, "text": prefix + c.answer, "finish_reason": c.finish_reason,
                         "logprobs": legacy_logprobs(c.logprobs, len(prefix)) if c.logprobs is not None else None}
                        for c in choices],
            "usage": {k: v for k, v in usage(choices[0].reply, [c.reply for c in choices[1:]]).items()
                      if k in ("prompt_tokens", "completion_tokens", "total_tokens")}}


class TextChunkShaper:
    """completion.ChoiceEvents as streamed text_completion objects."""

    def __init__(self, cid: str, model: str, req: ChatRequest, echo: bool):
        self.cid, self.model, self.req, self.echo = cid, model, req, echo
        self.offsets = [len(req.raw_prompt) if echo else 0] * req.n

    def _chunk(self, index: int, text: str, reason: str | None = None, logprobs: dict | None = None) -> dict:
        return {"id": self.cid, "object": "text_completion", "created": int(time.time()), "model": self.model,
                "choices": [{"index": index, "text": text, "finish_reason": reason, "logprobs": logprobs}]}

    def start(self) -> list[dict]:
        return [self._chunk(i, self.req.raw_prompt) for i in range(self.req.n)] if self.echo else []

    def feed(self, item) -> list[dict]:
        if item.event.kind != "answer":
            return []
        i = item.index
        logprobs = legacy_logprobs(item.logprobs, self.offsets[i]) if self.req.logprobs else None
        self.offsets[i] += len(item.event.text)
        return [self._chunk(i, item.event.text, logprobs=logprobs)]

    def finish(self, choices: list) -> list[dict]:
        out = [self._chunk(c.index, "", c.finish_reason) for c in choices]
        if self.req.include_usage and choices:
            out.append({"id": self.cid, "object": "text_completion", "created": int(time.time()),
                        "model": self.model, "choices": [], "usage": text_completion(
                            self.cid, self.model, self.req, choices, False)["usage"]})
        return out
