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

How the workers wait is set once, when libgomp loads (its constructor reads GOMP_SPINCOUNT and
OMP_WAIT_POLICY), so `import edge` sets it before llama_cpp loads libgomp: a short spin
(SPIN_COUNT) instead of libgomp's 300,000 rounds. On a 2-core machine with one busy process per
core, 2 threads decoded the 0.6B at 0.3-7.7 tok/s with the default (a worker spins through its
time slice while the thread it waits for is descheduled) and 10.8-12.3 tok/s with the short
spin, above the best thread count with the default (1 thread, 9.5-11.0); idle, both 27-31 tok/s
over four alternating runs (benchmarks/bench_polling.py, RESULTS.md). Either variable set by the
user wins. The environment is put back once libgomp has loaded, so child processes (a
llama-server a benchmark starts) get the user's.
"""

from __future__ import annotations

import ctypes
import os

OMP_PAUSE_HARD = 2  # omp_pause_resource_t: the pool's threads exit
SPIN_COUNT = 1000   # rounds a waiting worker spins before it sleeps (about 50 microseconds)
USER_KEYS = ("GOMP_SPINCOUNT", "OMP_WAIT_POLICY")


def _libgomp() -> ctypes.CDLL | None:
    """libgomp if the process has already loaded it (llama.cpp's CPU backend links it), else None:
    builds without OpenMP (ggml's own thread pool, macOS) have nothing to release."""
    try:
        return ctypes.CDLL("libgomp.so.1", mode=os.RTLD_NOLOAD | os.RTLD_LAZY)
    except (OSError, AttributeError):
        return None


def wait_setting(environ) -> dict[str, str]:
    """The variables to set for llama.cpp's OpenMP workers (pure): none where the user set
    either, else the short spin."""
    if any(key in environ for key in USER_KEYS):
        return {}
    return {"GOMP_SPINCOUNT": str(SPIN_COUNT)}


def describe_waiting(environ, setting: dict[str, str], was_loaded: bool) -> str:
    """How llama.cpp's workers wait in this process, for the start-up line (pure)."""
    if not setting:
        return "as " + ", ".join(f"{k}={environ[k]}" for k in USER_KEYS if k in environ) + " says"
    if was_loaded:
        return "libgomp's default spin (llama_cpp was imported before qwen3-edge)"
    return f"spin {SPIN_COUNT} rounds, then sleep"


def _gomp_loaded() -> bool:
    return _libgomp() is not None


def _load_llama_cpp() -> None:
    import llama_cpp  # noqa: F401 -- loads libllama, libggml-cpu and the libgomp it links


def apply_wait_setting(environ=None, loaded=_gomp_loaded, load=_load_llama_cpp) -> str:
    """Load llama.cpp (and so libgomp) with wait_setting() in the environment, then put the
    environment back; describe_waiting()'s answer. Does nothing where libgomp is loaded already."""
    environ = os.environ if environ is None else environ
    setting = wait_setting(environ)
    was_loaded = bool(setting) and loaded()
    if setting and not was_loaded:
        environ.update(setting)
        try:
            load()
        finally:
            for key in setting:
                environ.pop(key, None)
    return describe_waiting(environ, setting, was_loaded)


def release_thread_pool() -> bool:
    """Let the calling thread's OpenMP workers exit; the next decode on this thread starts a new
    pool (a fraction of a millisecond). False where there is no OpenMP runtime to ask."""
    lib = _libgomp()
    if lib is None or not hasattr(lib, "omp_pause_resource_all"):
        return False
    return lib.omp_pause_resource_all(OMP_PAUSE_HARD) == 0
