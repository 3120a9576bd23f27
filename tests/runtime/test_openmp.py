"""OpenMP pools (edge/runtime/openmp.py): a thread done decoding gives its workers back, and
Engine.load does so for the thread that loaded (it may have decoded while loading)."""

from __future__ import annotations

import os
import time

import pytest

from edge.chat import Chat
from edge.runtime.engine import Engine
from edge.runtime.openmp import _libgomp, release_thread_pool

pytestmark = pytest.mark.skipif(_libgomp() is None, reason="these bindings run llama.cpp without OpenMP")


def threads_now() -> int:
    return len(os.listdir("/proc/self/task"))


def settles(expected: int) -> int:
    """The thread count once exiting workers are gone (they leave asynchronously)."""
    deadline = time.monotonic() + 2.0
    while threads_now() != expected and time.monotonic() < deadline:
        time.sleep(0.01)
    return threads_now()


def test_a_decoding_thread_gives_its_openmp_workers_back(scripted_gguf):
    with Engine.load(scripted_gguf, n_ctx=256, n_threads=2) as engine:
        before = threads_now()
        Chat(engine, mode="no_think", max_tokens=2).send("Hi")    # decodes here: a pool of 1 worker
        assert threads_now() == before + 1
        assert release_thread_pool()
        assert settles(before) == before
        Chat(engine, mode="no_think", max_tokens=2).send("Hi")    # and decoding still works after
        assert threads_now() == before + 1


def test_engine_load_leaves_the_loading_thread_without_a_pool(scripted_gguf):
    with Engine.load(scripted_gguf, n_ctx=256, n_threads=2) as engine:
        Chat(engine, mode="no_think", max_tokens=2).send("Hi")    # this thread now holds a pool
        with_pool = threads_now()
        with Engine.load(scripted_gguf, n_ctx=256, n_threads=2):
            assert settles(with_pool - 1) == with_pool - 1
