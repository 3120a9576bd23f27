"""A blocking event stream, consumed from asyncio without blocking the event loop.

llama.cpp's calls block (they release the GIL), so a turn runs on its own thread and hands each event
to the loop as it comes. Cancelling the consuming task (task.cancel(), a client gone) stops the
turn within a token through its cancel function and waits, off the loop, for the thread to finish,
so the turn's bookkeeping (a Chat's history with the partial answer) is complete when the
cancellation reaches the caller.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator, Callable, Iterator
from typing import TypeVar

T = TypeVar("T")
_END = object()


async def iterate_in_thread(make: Callable[[], Iterator[T]], cancel: Callable[[], None]) -> AsyncIterator[T]:
    """Yield what `make()`'s iterator yields, run on a worker thread; an exception it raises is
    raised here. When the consumer stops early (cancelled, or leaves the loop), `cancel()` is
    called and the worker is awaited before this generator finishes."""
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue = asyncio.Queue()

    def put(item) -> None:
        try:
            loop.call_soon_threadsafe(queue.put_nowait, item)
        except RuntimeError:  # the loop is closed: nobody listens any more
            pass

    def work() -> None:
        try:
            for item in make():
                put((True, item))
        except BaseException as e:  # noqa: BLE001 - handed to the consumer, raised there
            put((False, e))
        else:
            put((True, _END))

    worker = threading.Thread(target=work, name="qwen3-edge-turn", daemon=True)
    worker.start()
    finished = False
    try:
        while True:
            ok, item = await queue.get()
            if not ok:
                finished = True
                raise item
            if item is _END:
                finished = True
                return
            yield item
    finally:
        if not finished:
            cancel()
        await _join(worker)


async def _join(worker: threading.Thread) -> None:
    """Wait for the worker without blocking the loop; a second cancellation waits on regardless."""
    while worker.is_alive():
        try:
            await asyncio.sleep(0.01)
        except asyncio.CancelledError:
            worker.join()
            raise
