#!/usr/bin/env bash
# Issue 25 sections 1-2 on a GPU host (runs in the repo root, no network, about 5 minutes):
#  (a) the tests that must pass where the bindings see a GPU: bench (perf counters, cleared cache,
#      synchronize), the device compute estimate, test_engine_basics, the nested-schema test, the
#      calibration, and tests/runtime/test_vulkan.py (the memory plan against llama.cpp's device buffers);
#  (b) `qwen3-edge bench` on the 0.6B Q4_K_M (GPU, 3 repetitions, per-repetition perf counters)
#      next to llama-bench pp512/tg128 -fa 1 when LLAMA_BENCH points at one: pp must no longer read 2x;
#  (c) the calibration's time and choice on the GPU and on the CPU (16 cores), and
#      benchmarks/bench_tune.py (tuned vs exhaustive sweep vs llama-bench) on the CPU.
# Environment: PYTHON (default python3), LLAMA_BENCH (a llama-bench built from the vendored llama.cpp),
# GGUF (a 0.6B-shaped Q4_K_M; built here from random weights when absent), OUT (default /tmp/perf-check).
set -uo pipefail
PY="${PYTHON:-python3}"
OUT="${OUT:-/tmp/perf-check}"
mkdir -p "$OUT"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" QWEN3_EDGE_HOME="$OUT/home"
step() { echo; echo "## $1"; }
run() { local t=$1; shift; timeout "$t" "$@"; echo "rc=$?"; }

step "(a) tests"
QWEN3_EDGE_TUNE=off run 150 "$PY" -m pytest -q -x tests/runtime/test_bench.py tests/runtime/test_devices.py tests/runtime/test_tune.py \
    tests/protocol/test_grammar.py "tests/chat/test_engine_chat.py::test_engine_basics" \
    "tests/chat/test_tools_chat.py::test_deeply_nested_schema_is_refused_quickly" 2>&1 | tail -15
QWEN3_EDGE_TUNE=off run 90 "$PY" -m pytest -q -m vulkan tests/runtime/test_vulkan.py 2>&1 | tail -8

GGUF="${GGUF:-$OUT/Qwen3-0.6B-random-q4_k_m.gguf}"
if [ ! -f "$GGUF" ]; then
    step "build a 0.6B-shaped Q4_K_M"
    run 120 "$PY" benchmarks/bench_quantize.py --work "$OUT" --types q4_k_m | tail -3
fi

step "(b) qwen3-edge bench (GPU), then llama-bench"
QWEN3_EDGE_TUNE=off run 60 "$PY" -m cli bench "$GGUF" -p 512 -n 128 -r 3 --json
if [ -n "${LLAMA_BENCH:-}" ] && [ -x "$LLAMA_BENCH" ]; then
    run 60 "$LLAMA_BENCH" -m "$GGUF" -ngl 99 -fa 1 -p 512 -n 128 -r 3
fi

step "(c) calibration on the GPU, then on the CPU (16 threads candidates)"
run 40 "$PY" -m cli tune "$GGUF" --json
run 60 "$PY" -m cli tune "$GGUF" --gpu-layers 0 --json
step "(c) bench_tune.py on the CPU"
run 150 "$PY" benchmarks/bench_tune.py --cpu --gguf "$GGUF" \
    ${LLAMA_BENCH:+--llama-bench "$LLAMA_BENCH"} --tokens 32
