"""What every API dialect's endpoint does the same way, on the one generation path
(completion.Generation): read a bounded JSON body, run a generation to its end or stream its
events from a worker thread, and say what an exception that ended one means."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator
from typing import Any

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request

from edge.chat import BackendError, ChatError
from edge.serve.completion import Generation
from edge.serve.openai_api import RequestError, decode_body


async def read_body(request: Request, max_body_bytes: int) -> Any:
    """The decoded JSON body (openai_api.decode_body), or RequestError (413 past the bound)."""
    body = b""
    async for part in request.stream():
        body += part
        if len(body) > max_body_bytes:
            raise RequestError(f"request body over {max_body_bytes} bytes", status=413)
    return decode_body(body)


async def run_to_end(generation: Generation) -> list:
    """The choices of a generation run on a worker thread (not streamed)."""
    return await run_in_threadpool(generation.run, lambda _: None)


async def events(generation: Generation, ticket: "_Ticket") -> AsyncIterator[Any]:
    """A generation's ChoiceEvents as they come (it runs on a worker thread), then its list of
    choices, or the exception that ended it. Leaving early cancels the generation."""
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[Any] = asyncio.Queue()

    def put(item: Any) -> None:
        loop.call_soon_threadsafe(queue.put_nowait, item)

    def work() -> None:
        try:
            put(generation.run(put))
        except Exception as e:  # delivered to the client in its API's error shape
            put(e)
        finally:
            ticket.release()  # the slot is free only once the worker has stopped
            put(None)

    threading.Thread(target=work, daemon=True).start()
    try:
        while (item := await queue.get()) is not None:
            yield item
    finally:
        generation.cancel()  # a client that went away stops its generation


def error_kind(e: Exception) -> tuple[int, str]:
    """(status, OpenAI error type) for an exception that ended a generation."""
    if isinstance(e, BackendError):
        return 503, "server_error"
    if isinstance(e, ChatError):
        return getattr(e, "status", 400), "invalid_request_error"
    return 500, "server_error"


