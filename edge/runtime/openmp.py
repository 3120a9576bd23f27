"""Give a thread's OpenMP worker pool back once it is done decoding.

llama.cpp's CPU backend (as llama-cpp-python builds it on Linux) computes each graph in an OpenMP
team: libgomp keeps one pool of worker threads per thread that ever decoded. While all pools
together hold no more threads than the machine has CPUs, the workers spin at the graph's barriers;
past that, libgomp throttles the spinning and every barrier sleeps and wakes through the kernel.
A model warmed or calibrated on the main thread and then decoded on the scheduler's thread (or a
request's thread) is exactly that second pool: on 2 cores single-token decoding took 23-30 ms
instead of 17-19 ms, a quarter to a third of the speed, until the first pool was released
(omp_pause_resource_all; benchmarks/RESULTS.md, 2026-12-05). llama-server decodes on one thread
only, so it never pays this.
"""

from __future__ import annotations

import ctypes
import os

OMP_PAUSE_HARD = 2  # omp_pause_resource_t: the pool's threads exit


def _libgomp() -> ctypes.CDLL | None:
    """libgomp if the process has already loaded it (llama.cpp's CPU backend links it), else None:
    builds without OpenMP (ggml's own thread pool, macOS) have nothing to release."""
    try:
        return ctypes.CDLL("libgomp.so.1", mode=os.RTLD_NOLOAD | os.RTLD_LAZY)
    except (OSError, AttributeError):
        return None


def release_thread_pool() -> bool:
    """Let the calling thread's OpenMP workers exit; the next decode on this thread starts a new
    pool (a fraction of a millisecond). False where there is no OpenMP runtime to ask."""
    lib = _libgomp()
    if lib is None or not hasattr(lib, "omp_pause_resource_all"):
        return False
    return lib.omp_pause_resource_all(OMP_PAUSE_HARD) == 0
