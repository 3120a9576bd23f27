"""Who may use an Engine's llama.cpp context now: fair waiting for a stream, and the engine's life.

llama.cpp's context is not thread-safe: two threads decoding on it at once corrupt its KV cache or
kill the process. Every generation therefore holds the engine's stream (its own context, or a
scheduler slot) from its prefill to its last token. Waiters are served in the order they arrived,
a waiter stops waiting when its cancel event is set, and a wait may have a deadline.

EngineLife counts the calls that use the engine's model (tokenizing, a turn), so that close()
waits for them instead of freeing memory under a running thread.
"""

from __future__ import annotations

import itertools
import threading
import time
from collections import deque

POLL_S = 0.05  # a waiter re-checks its cancel event this often


class WaitTimeout(Exception):
    """No stream became free within the wait's deadline."""


class Closed(Exception):
    """The engine was closed: nothing can run on it any more."""


def first_in_line(queue: deque[int], ticket: int) -> bool:
    """A waiter may take a free stream only when nobody who came before it still waits."""
    return bool(queue) and queue[0] == ticket


_TICKETS = itertools.count()


def wait_in_line(cv: threading.Condition, line: deque[int], can_take, cancel: threading.Event | None,
                 timeout: float | None, closed) -> bool:
    """Wait (holding `cv`) until this waiter is first in `line` and can_take(): True; False if
    `cancel` is set first; WaitTimeout after `timeout` seconds; Closed once closed(). The caller
    takes what it waited for before releasing `cv`."""
    deadline = None if timeout is None else time.monotonic() + timeout
    ticket = next(_TICKETS)
    line.append(ticket)
    try:
        while True:
            if closed():
                raise Closed()
            if cancel is not None and cancel.is_set():
                return False
            if first_in_line(line, ticket) and can_take():
                return True
            left = None if deadline is None else deadline - time.monotonic()
            if left is not None and left <= 0:
                raise WaitTimeout()
            cv.wait(POLL_S if left is None else min(POLL_S, left))
    finally:
        line.remove(ticket)
        cv.notify_all()


class FairLock:
    """A lock for one stream, handed out in arrival order; cancellable and with a deadline.

    `holder_cancel` is the cancel event of the generation that holds it, so that close() can stop
    that generation within a token instead of waiting for its last one."""

    def __init__(self):
        self._cv = threading.Condition()
        self._queue: deque[int] = deque()
        self._held = False
        self._closed = False
        self.holder_cancel: threading.Event | None = None

    def acquire(self, cancel: threading.Event | None = None, timeout: float | None = None) -> bool:
        """True once held; False if `cancel` was set while waiting. WaitTimeout past `timeout`
        seconds, Closed once close() was called."""
        with self._cv:
            if not wait_in_line(self._cv, self._queue, lambda: not self._held, cancel, timeout, lambda: self._closed):
                return False
            self._held, self.holder_cancel = True, cancel
            return True

    def release(self) -> None:
        with self._cv:
            self._held, self.holder_cancel = False, None
            self._cv.notify_all()

    def close(self, wait: float = 30.0) -> bool:
        """Refuse new holders, stop the current one's generation and wait until it lets go.
        False if it still holds the stream after `wait` seconds."""
        deadline = time.monotonic() + wait
        with self._cv:
            self._closed = True
            if self.holder_cancel is not None:
                self.holder_cancel.set()
            self._cv.notify_all()
            while self._held and time.monotonic() < deadline:
                self._cv.wait(POLL_S)
            return not self._held

    @property
    def waiting(self) -> int:
        with self._cv:
            return len(self._queue)


class EngineLife:
    """Counts the calls in progress on an engine; close() waits for them to leave."""

    def __init__(self):
        self._cv = threading.Condition()
        self._active = 0
        self.closed = False

    def enter(self) -> None:
        with self._cv:
            if self.closed:
                raise Closed()
            self._active += 1

    def leave(self) -> None:
        with self._cv:
            self._active -= 1
            self._cv.notify_all()

    def close(self, wait: float = 30.0) -> bool:
        """Refuse new calls; True once none is in progress (False after `wait` seconds)."""
        deadline = time.monotonic() + wait
        with self._cv:
            self.closed = True
            while self._active and time.monotonic() < deadline:
                self._cv.wait(POLL_S)
            return self._active == 0

    def __enter__(self) -> "EngineLife":
        self.enter()
        return self

    def __exit__(self, *exc: object) -> None:
        self.leave()
