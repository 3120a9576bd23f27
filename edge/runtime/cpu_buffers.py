"""Which of the CPU backend's extra weight buffers (repacked layouts) the runtime lets llama.cpp use.

llama.cpp's CPU backend offers "extra buffer types" for weights: CPU_REPACK (interleaved Q4_0/Q4_K
rows for AVX2/AVX-512/NEON kernels) and, on CPUs with Intel AMX, "AMX" (tiles for AMX_INT8), tried
in that order. The AMX kernels of the llama.cpp that llama-cpp-python 0.3.36 vendors crash the
process on the first batch of two or more tokens (a prompt, or any batched step): SIGSEGV at
`ldtilecfg` inside ggml_backend_amx_mul_mat, with a tile configuration whose column widths are
garbage (seen here on a Xeon with amx_int8 in a VM, by llama-bench from the same source as well;
upstream ggml-org/llama.cpp#20824, closed unfixed). Single-token decoding works, so a test of
generation alone would not notice. The bindings cannot take AMX out of the list alone, so where the
CPU backend offers it, the extra buffer types are turned off as a whole (use_extra_bufts = false,
llama-bench's `--repack 0`, llama-server's `--no-repack`): a slower prompt on those Xeons instead of
a crash. Machines without AMX (laptops, ARM boards) keep CPU_REPACK.
"""

from __future__ import annotations

import ctypes

import llama_cpp

CRASHING = frozenset({"AMX"})   # extra buffer types whose kernels crash in this llama.cpp


def _lib() -> ctypes.CDLL:
    """libllama's handle: ggml's symbols resolve in the libggml it loaded (see devices.py)."""
    lib = llama_cpp.llama_cpp._lib
    if not getattr(lib, "_edge_cpu_buffers_bound", False):
        vp = ctypes.c_void_p
        for fn, args, res in (("ggml_backend_dev_by_type", [ctypes.c_int], vp),
                              ("ggml_backend_dev_backend_reg", [vp], vp),
                              ("ggml_backend_reg_get_proc_address", [vp, ctypes.c_char_p], vp),
                              ("ggml_backend_buft_name", [vp], ctypes.c_char_p)):
            f = getattr(lib, fn)
            f.argtypes, f.restype = args, res
        lib._edge_cpu_buffers_bound = True
    return lib


def cpu_extra_buffer_types() -> list[str]:
    """The names of the CPU device's extra buffer types, as llama.cpp will try them ("AMX",
    "CPU_REPACK"); [] when the backend offers none."""
    lib = _lib()
    dev = lib.ggml_backend_dev_by_type(0)  # GGML_BACKEND_DEVICE_TYPE_CPU
    if not dev:
        return []
    fn = lib.ggml_backend_reg_get_proc_address(lib.ggml_backend_dev_backend_reg(dev), b"ggml_backend_dev_get_extra_bufts")
    if not fn:
        return []
    bufts = ctypes.CFUNCTYPE(ctypes.POINTER(ctypes.c_void_p), ctypes.c_void_p)(fn)(dev)
    names, i = [], 0
    while bufts and bufts[i]:
        names.append((lib.ggml_backend_buft_name(bufts[i]) or b"").decode("utf-8", "replace"))
        i += 1
    return names


def extra_buffers_safe(names: list[str]) -> bool:
    """Whether llama.cpp may use its extra weight buffers, given their names (pure)."""
    return not CRASHING.intersection(names)


def default_extra_buffers() -> bool:
    """The rule everything that opens a model here follows (the Engine, safe_llama, the
    benchmarks' reference tools): the extra buffers on unless this CPU backend offers AMX."""
    return extra_buffers_safe(cpu_extra_buffer_types())


class TunedLlama(llama_cpp.Llama):
    """llama_cpp.Llama with model params its constructor does not take (use_extra_bufts, ...):
    `model_overrides` are set on the llama_model_params the constructor creates, before it loads
    the model; the fields the constructor sets itself (n_gpu_layers, mmap, ...) stay its own."""

    def __init__(self, *args, model_overrides: dict | None = None, **kwargs):
        self._model_overrides = dict(model_overrides or {})
        super().__init__(*args, **kwargs)

    @property
    def model_params(self):
        return self.__dict__["_model_params"]

    @model_params.setter
    def model_params(self, params) -> None:
        for name, value in self._model_overrides.items():
            setattr(params, name, value)
        self.__dict__["_model_params"] = params


def safe_llama(*args, **kwargs) -> TunedLlama:
    """A llama_cpp.Llama whose weights avoid the extra buffers that crash here (for tools and
    tests that open a GGUF without an Engine)."""
    return TunedLlama(*args, model_overrides={"use_extra_bufts": default_extra_buffers()},
                      **kwargs)
