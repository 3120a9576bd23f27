#!/usr/bin/env bash
# The GPU host's check (NVIDIA H200, 16 cores, no network), run from the repo root:
#   1. Debian's Vulkan loader packages (.gl/*.deb) unpacked into /, ldconfig; NVIDIA's ICD found or named;
#   2. an offline install from .devcarry/ (wheels: llama-cpp-python 0.3.36 built with Vulkan and RPC,
#      and what the project and its tests import that the host may lack), then qwen3-edge itself;
#   3. what the bindings see (backends, devices: there is no vulkaninfo there);
#   4. pytest on a keyword selection (GGML_VK_VISIBLE_DEVICES unset: llama.cpp picks the GPU itself);
#   5. a 0.6B-shaped random Q4_K_M built there, `qwen3-edge bench` on Vulkan and on the CPU, at default
#      settings and with --threads 16; `qwen3-edge tune` on both when the command exists.
# Every step runs under `timeout` and inside one overall budget (BUDGET seconds, default 450), so the
# script ends well inside 8 minutes; a step with no time left is skipped. Logs: $OUT/device-*.txt
# (6 files). Environment: OUT (default /tmp/device-check), PYTHON (default python3), BUDGET,
# DEVICE_K (the pytest -k selection), TEST_CAP (most seconds for pytest, default 240), GGUF (a
# 0.6B-shaped Q4_K_M to bench instead of building one).
#
# Local dry run (no GPU: the Vulkan wheel finds none, llama.cpp skips CPU Vulkan devices):
#   OUT=/tmp/dc PYTHON=/tmp/devtest/bin/python SKIP_GL=1 scripts/device_check.sh
set -uo pipefail

START=$(date +%s)
BUDGET="${BUDGET:-450}"
OUT="${OUT:-/tmp/device-check}"
PY="${PYTHON:-python3}"
TEST_CAP="${TEST_CAP:-240}"
K="${DEVICE_K:-engine_basics or vulkan or memory_plan or parallel or tools_chat or nested_schema or deeply_nested or shared_engine or load_plan or bench}"
WORK=/tmp/device-work
mkdir -p "$OUT" "$WORK"
SETUP="$OUT/device-setup.txt"; TESTS="$OUT/device-tests.txt"; QUANT="$OUT/device-quantize.txt"
BENCH="$OUT/device-bench.txt"; TUNE="$OUT/device-tune.txt"; SUMMARY="$OUT/device-summary.txt"
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 QWEN3_EDGE_OFFLINE=1 QWEN3_EDGE_HOME="$WORK/home"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
unset GGML_VK_VISIBLE_DEVICES
printf 'step\trc\tseconds\n' > "$SUMMARY"

left() { echo $(( BUDGET - ($(date +%s) - START) )); }
# step NAME CAP LOGFILE CMD...: runs CMD under timeout min(CAP, time left - 5), appends to LOGFILE.
step() {
    local name=$1 cap=$2 log=$3; shift 3
    local t; t=$(left); t=$(( t - 5 )); [ "$t" -gt "$cap" ] && t=$cap
    if [ "$t" -lt 10 ]; then printf '%s\tskip\t0\n' "$name" >> "$SUMMARY"; echo "## $name: skipped (no time left)" >> "$log"; return 1; fi
    echo "## $name (timeout ${t}s)" >> "$log"
    local s; s=$(date +%s)
    if declare -F "$1" >/dev/null; then   # a shell function: timeout needs a program
        timeout -k 5 "$t" bash -c "$*" >> "$log" 2>&1
    else
        timeout -k 5 "$t" "$@" >> "$log" 2>&1
    fi
    local rc=$?
    printf '%s\t%s\t%s\n' "$name" "$rc" "$(( $(date +%s) - s ))" >> "$SUMMARY"
    echo "## rc=$rc" >> "$log"; echo >> "$log"
    return $rc
}

# ---- 1. Vulkan loader ------------------------------------------------------------------------------
{
    echo "date: $(date -u +%FT%TZ)  kernel: $(uname -r)  project: $(git rev-parse HEAD 2>/dev/null) $(git status --porcelain 2>/dev/null | wc -l) changed paths"
    echo "python: $PY -> $(command -v "$PY") $("$PY" --version 2>&1)"
    nvidia-smi --query-gpu=name,driver_version,memory.total,memory.used --format=csv,noheader 2>&1 | sed 's/^/gpu: /'
    echo "cpu: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2); nproc $(nproc); amx: $(grep -o 'amx[a-z0-9_]*' /proc/cpuinfo | sort -u | tr '\n' ' ')"
    echo "ram: $(free -g | awk '/Mem:/ {print $2 " GiB total, " $7 " GiB available"}')"
    if [ -z "${SKIP_GL:-}" ] && ls .gl/*.deb >/dev/null 2>&1; then
        for f in .gl/*.deb; do dpkg -x "$f" / || echo "dpkg -x $f failed"; done
        ldconfig
    fi
    echo "libvulkan: $(ldconfig -p | grep -o '/[^ ]*libvulkan.so.1' | head -1)"
    ICDS=$(ls /usr/share/vulkan/icd.d/*.json /etc/vulkan/icd.d/*.json /usr/local/share/vulkan/icd.d/*.json 2>/dev/null | tr '\n' ' ')
    echo "ICDs found: ${ICDS:-none}"
    if ! echo "$ICDS" | grep -qi nvidia && [ -f /usr/local/nvidia/share/vulkan/icd.d/nvidia_icd.json ]; then
        echo "no NVIDIA ICD in the standard folders: VK_DRIVER_FILES -> /usr/local/nvidia/share/vulkan/icd.d/nvidia_icd.json"
    fi
} >> "$SETUP" 2>&1
ICDS=$(ls /usr/share/vulkan/icd.d/*.json /etc/vulkan/icd.d/*.json /usr/local/share/vulkan/icd.d/*.json 2>/dev/null | tr '\n' ' ')
if ! echo "$ICDS" | grep -qi nvidia && [ -f /usr/local/nvidia/share/vulkan/icd.d/nvidia_icd.json ]; then
    export VK_DRIVER_FILES=/usr/local/nvidia/share/vulkan/icd.d/nvidia_icd.json
    export __EGL_VENDOR_LIBRARY_FILENAMES=/usr/local/nvidia/share/glvnd/egl_vendor.d/10_nvidia.json
fi

# ---- 2. offline install ----------------------------------------------------------------------------
# What pyproject.toml asks for (dependencies and the test extra), less llama-cpp-python (its own wheel,
# --no-deps), modelscope-hub (imported lazily, by the ModelScope source alone) and the test extras
# whose tests importorskip them (ollama, anthropic, selenium, langchain-openai: not carried); a fixed
# list when pyproject.toml cannot be read (Python 3.10 has no tomllib).
REQS=$("$PY" - <<'PYEOF' 2>/dev/null
import re, tomllib
project = tomllib.load(open("pyproject.toml", "rb"))["project"]
skip = {"llama-cpp-python", "modelscope-hub", "ollama", "anthropic", "selenium", "langchain-openai"}
for req in project["dependencies"] + project.get("optional-dependencies", {}).get("test", []):
    if re.split(r"[<>=!~;\[ ]", req, maxsplit=1)[0].strip().lower().replace("_", "-") not in skip:
        print(req.replace(" ", ""))
print("diskcache>=5.6.1")
PYEOF
) || REQS=""
[ -n "$REQS" ] || REQS="gguf>=0.17 numpy>=1.24 typer>=0.12 rich>=13 jinja2>=3.1 platformdirs>=3 huggingface_hub>=2.4,<3
prompt_toolkit>=3 starlette>=0.37 uvicorn>=0.29 jsonschema>=4.18 llguidance>=1.9,<2 pytest>=8 tokenizers>=0.19
openai>=1.40 hypothesis>=6 pydantic>=2.6 email-validator>=2 diskcache>=5.6.1"
install() {
    local pip=("$PY" -m pip install -q --no-index --find-links .devcarry --no-cache-dir --no-compile --disable-pip-version-check --no-warn-script-location)
    "${pip[@]}" --no-deps --force-reinstall .devcarry/llama_cpp_python-*.whl || return 1
    # One --no-deps install of every wheel for this interpreter: the host's own packages (an older
    # tokenizers pinned by its torch stack) make pip's resolver give up, and one call is fast.
    local tag
    tag=$("$PY" -c 'import sys; print(f"cp{sys.version_info[0]}{sys.version_info[1]}")')
    local wheels
    wheels=$("$PY" - "$tag" <<'PYEOF'
import re, sys, pathlib
tag, best = sys.argv[1], {}
for w in sorted(pathlib.Path(".devcarry").glob("*.whl")):
    name, version = w.name.split("-")[:2]
    if name == "llama_cpp_python" or not re.search(rf"-({tag}|py3|py2\.py3)-|abi3", w.name):
        continue
    key = tuple(int(x) if x.isdigit() else 0 for x in re.split(r"[.+]", version))
    if name.lower() not in best or key > best[name.lower()][0]:
        best[name.lower()] = (key, str(w))
print(" ".join(v[1] for v in best.values()))
PYEOF
)
    # shellcheck disable=SC2086
    "${pip[@]}" --no-deps $wheels || echo "  the --no-deps install of .devcarry failed"
    # Build isolation takes setuptools from .devcarry (the host's own may be older than pyproject's >=68).
    "${pip[@]}" --no-deps -e . || echo "editable install failed: PYTHONPATH=$PWD and a qwen3-edge wrapper stand in"
    echo "requirements: $(echo $REQS)"
    "$PY" -c "import edge, cli, quantize, llama_cpp, numpy, gguf, jinja2, typer, rich, platformdirs, huggingface_hub, starlette, uvicorn, openai, jsonschema, hypothesis, tokenizers, pytest; print('imports ok; llama_cpp', llama_cpp.__version__, llama_cpp.__file__)"
}
export PY REQS; export -f install
step "pip install (offline, .devcarry)" 120 "$SETUP" install
# `qwen3-edge` below is always this interpreter's (`python -m cli` is the same app as the entry point).
mkdir -p "$WORK/bin"
printf '#!/bin/sh\nexec %s -m cli "$@"\n' "$(command -v "$PY")" > "$WORK/bin/qwen3-edge"; chmod +x "$WORK/bin/qwen3-edge"
export PATH="$WORK/bin:$PATH"
echo "qwen3-edge: $(command -v qwen3-edge)" >> "$SETUP"

# ---- 3. what the bindings see ----------------------------------------------------------------------
devices() {
    "$PY" - <<'PY'
import importlib
for name in ("edge.runtime.devices", "edge.runtime.devices"):
    try:
        m = importlib.import_module(name)
    except ImportError as e:
        print(f"{name}: {e}")
        continue
    print(f"{name}: backends:", ", ".join(m.registry_names()))
    for line in m.describe_devices(m.list_devices()):
        print("  ", line)
    break
import llama_cpp
print("llama_cpp", llama_cpp.__version__, "gpu offload:", llama_cpp.llama_supports_gpu_offload())
PY
}
export -f devices
step "devices (bindings)" 60 "$SETUP" devices
if ! grep -qi "vulkan.*gpu" "$SETUP" && [ -z "${VK_DRIVER_FILES:-}" ] && [ -f /usr/local/nvidia/share/vulkan/icd.d/nvidia_icd.json ]; then
    export VK_DRIVER_FILES=/usr/local/nvidia/share/vulkan/icd.d/nvidia_icd.json
    export __EGL_VENDOR_LIBRARY_FILENAMES=/usr/local/nvidia/share/glvnd/egl_vendor.d/10_nvidia.json
    step "devices again, VK_DRIVER_FILES=$VK_DRIVER_FILES" 60 "$SETUP" devices
fi
env | grep -E '^(VK_|__EGL|LD_LIBRARY_PATH|NVIDIA_)' | sed 's/^/env: /' >> "$SETUP"

# ---- 4. the model for bench (built first: it is quick, and bench must not lose it to a slow test run) --
if [ -n "${GGUF:-}" ] && [ -f "$GGUF" ]; then
    echo "GGUF given: $GGUF (not built)" >> "$QUANT"
else
    GGUF="$WORK/Qwen3-0.6B-random-q4_k_m.gguf"
    step "build 0.6B-shaped random Q4_K_M" 120 "$QUANT" "$PY" benchmarks/bench_quantize.py --shape 0.6b --types q4_k_m --work "$WORK"
    ls -la "$WORK" >> "$QUANT" 2>&1
fi

# ---- 5. tests (leave ~150 s for bench and tune) ----------------------------------------------------
PT=(-m pytest -v -rfEs --durations=15 -p no:cacheprovider --continue-on-collection-errors tests -k "$K")
"$PY" -c "import pytest_timeout" 2>/dev/null && PT+=(--timeout=90)
cap=$(( $(left) - 150 )); [ "$cap" -gt "$TEST_CAP" ] && cap=$TEST_CAP
echo "selection: -k \"$K\"" >> "$TESTS"
step "pytest -k selection" "$cap" "$TESTS" "$PY" "${PT[@]}"

# ---- 6. bench and tune -------------------------------------------------------------------------------
if [ -f "$GGUF" ]; then
    step "bench vulkan (default)" 60 "$BENCH" qwen3-edge bench "$GGUF"
    step "bench vulkan --threads 16" 60 "$BENCH" qwen3-edge bench "$GGUF" --threads 16
    step "bench cpu --gpu-layers 0 (default threads)" 60 "$BENCH" qwen3-edge bench "$GGUF" --gpu-layers 0
    step "bench cpu --gpu-layers 0 --threads 16" 60 "$BENCH" qwen3-edge bench "$GGUF" --gpu-layers 0 --threads 16
    if qwen3-edge --help 2>/dev/null | grep -qw tune; then
        step "tune vulkan" 90 "$TUNE" qwen3-edge tune "$GGUF" --json
        step "tune cpu --gpu-layers 0" 90 "$TUNE" qwen3-edge tune "$GGUF" --gpu-layers 0 --json
    else
        echo "qwen3-edge has no tune command in this tree" >> "$TUNE"
    fi
else
    echo "no $GGUF: bench skipped" >> "$BENCH"
fi

echo "total seconds: $(( $(date +%s) - START ))" >> "$SUMMARY"
# The gist on stdout (the run's output_tail); the whole logs are in $OUT/device-*.txt.
cat "$SUMMARY"
grep -hE "^(FAILED|ERROR)|[0-9]+ (passed|failed)" "$TESTS" 2>/dev/null | tail -25
grep -hE "^## bench|tok/s| threads" "$BENCH" 2>/dev/null
grep -hE "^## tune|^## rc|\"(threads|flash_attn|backend)\"" "$TUNE" 2>/dev/null | head -20
exit 0
