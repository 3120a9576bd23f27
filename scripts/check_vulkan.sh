#!/usr/bin/env bash
# Build llama-cpp-python 0.3.36 with llama.cpp's Vulkan and RPC backends into a separate virtual
# environment (once; later runs reuse it), install qwen3-edge there, and run the Vulkan test set.
#
# Without a GPU, Mesa's software Vulkan driver (lavapipe) gives a Vulkan device on the CPU, so the
# whole Vulkan path runs for correctness. llama.cpp skips CPU-type Vulkan devices unless
# GGML_VK_VISIBLE_DEVICES names them; this script sets it to 0 unless it is already set.
#
#   scripts/check_vulkan.sh            # build if needed, then run the tests
#   scripts/check_vulkan.sh --build    # build (or reuse) only
#
# Environment: QWEN3_EDGE_BACKENDS_VENV (default: <repo>/.venv-backends), PYTHON (the interpreter
# the venv is made from, default python3), NICE (default "nice -n 19": a build takes ~6-10 min on two cores).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${QWEN3_EDGE_BACKENDS_VENV:-$ROOT/.venv-backends}"
PYTHON="${PYTHON:-python3}"
NICE="${NICE:-nice -n 19}"
LLAMA_CPP_PYTHON_VERSION="0.3.36"
HEADERS="$VENV/vulkan-headers"          # Debian 13's libvulkan-dev unpacked here when the system's is too old

say() { echo "check_vulkan: $*"; }

# Both backends are in the bindings when their libraries sit beside libllama and ggml's registry lists them.
bindings_ready() {
    [ -x "$VENV/bin/python" ] || return 1
    "$VENV/bin/python" - <<'PY' 2>/dev/null
import ctypes, pathlib, sys
import llama_cpp  # loads the package's libggml; the same file opened again is the same loaded copy
ggml = ctypes.CDLL(str(pathlib.Path(llama_cpp.__file__).parent / "lib" / "libggml.so"))
ggml.ggml_backend_reg_get.restype = ctypes.c_void_p
ggml.ggml_backend_reg_name.argtypes = [ctypes.c_void_p]
ggml.ggml_backend_reg_name.restype = ctypes.c_char_p
names = {ggml.ggml_backend_reg_name(ggml.ggml_backend_reg_get(i)).decode() for i in range(ggml.ggml_backend_reg_count())}
sys.exit(0 if {"Vulkan", "RPC"} <= names else 1)
PY
}

headers_have_layer_settings() {   # llama.cpp's Vulkan backend uses VK_EXT_layer_settings (Vulkan 1.3.261+)
    grep -q VK_EXT_layer_settings "$1/vulkan/vulkan_core.h" 2>/dev/null
}

install_system_packages() {
    local missing=()
    command -v glslc >/dev/null || missing+=(glslc)
    command -v vulkaninfo >/dev/null || missing+=(vulkan-tools)
    ls /usr/share/vulkan/icd.d/lvp_icd*.json >/dev/null 2>&1 || missing+=(mesa-vulkan-drivers)
    ls /usr/lib/*/libvulkan.so.1 >/dev/null 2>&1 || missing+=(libvulkan1)
    command -v cmake >/dev/null || missing+=(cmake)
    if [ ${#missing[@]} -gt 0 ]; then
        [ "$(id -u)" = 0 ] || { echo "check_vulkan: need root to apt-get install ${missing[*]} (or install them and rerun)" >&2; exit 1; }
        say "apt-get install ${missing[*]}"
        $NICE apt-get update -qq
        $NICE apt-get install -y -qq "${missing[@]}"
    fi
}

vulkan_include_dir() {   # prints the include folder to build against
    local prefix
    for prefix in /usr "$HEADERS/usr"; do
        if headers_have_layer_settings "$prefix/include" && [ -f "$prefix/share/cmake/SPIRV-Headers/SPIRV-HeadersConfig.cmake" ]; then
            echo "$prefix/include"; return
        fi
    done
    # Debian 12 ships 1.3.239; fetch Debian 13's libvulkan-dev (1.4.x) and the SPIR-V headers of the same
    # SDK release (llama.cpp's Vulkan CMake needs SPIRV-Headers' CMake config) without touching the system's apt state.
    local work="$VENV/.trixie-apt"
    mkdir -p "$work/lists/partial" "$HEADERS"
    local host
    host="$(grep -rhE '^(URIs:|deb )' /etc/apt/sources.list /etc/apt/sources.list.d/ 2>/dev/null \
            | grep -oE 'https?://[^ ]*/debian/?( |$)' | head -1 | tr -d ' ')"
    host="${host:-http://deb.debian.org/debian}"
    echo "deb ${host%/} trixie main" > "$work/trixie.list"
    local opts=(-o "Dir::Etc::sourcelist=$work/trixie.list" -o "Dir::Etc::sourceparts=-" -o "Dir::State::Lists=$work/lists")
    $NICE apt-get "${opts[@]}" update -qq >&2
    (cd "$work" && $NICE apt-get "${opts[@]}" download libvulkan-dev spirv-headers >&2) \
        || { echo "check_vulkan: could not download Debian 13's libvulkan-dev and spirv-headers from $host" >&2; exit 1; }
    for deb in "$work"/libvulkan-dev_*.deb "$work"/spirv-headers_*.deb; do dpkg -x "$deb" "$HEADERS" || exit 1; done
    headers_have_layer_settings "$HEADERS/usr/include" || { echo "check_vulkan: Debian 13's libvulkan-dev lacks VK_EXT_layer_settings" >&2; exit 1; }
    echo "$HEADERS/usr/include"
}

build() {
    install_system_packages
    [ -x "$VENV/bin/python" ] || "$PYTHON" -m venv "$VENV"
    "$VENV/bin/python" -m pip install -q --upgrade pip
    local inc lib
    inc="$(vulkan_include_dir)" || exit 1
    lib="$(ls /usr/lib/*/libvulkan.so.1 | head -1)"
    local spirv
    spirv="${inc%/include}/share/cmake/SPIRV-Headers"
    export CMAKE_ARGS="-DGGML_VULKAN=on -DGGML_RPC=on -DVulkan_INCLUDE_DIR=$inc -DVulkan_LIBRARY=$lib -DSPIRV-Headers_DIR=$spirv"
    BUILD_COMMAND="CMAKE_ARGS=\"$CMAKE_ARGS\" $NICE $VENV/bin/python -m pip install --force-reinstall --no-binary llama-cpp-python --no-cache-dir llama-cpp-python==$LLAMA_CPP_PYTHON_VERSION"
    # Two compile jobs at most (a shared two-core machine); CMAKE_BUILD_PARALLEL_LEVEL overrides.
    export CMAKE_BUILD_PARALLEL_LEVEL="${CMAKE_BUILD_PARALLEL_LEVEL:-2}"
    say "$BUILD_COMMAND"
    local t0=$SECONDS
    $NICE "$VENV/bin/python" -m pip install -q --force-reinstall --no-binary llama-cpp-python --no-cache-dir \
        "llama-cpp-python==$LLAMA_CPP_PYTHON_VERSION"
    say "bindings built in $((SECONDS - t0)) s"
    $NICE "$VENV/bin/python" -m pip install -q -e "$ROOT[test]"
}

cd "$ROOT"
if bindings_ready; then
    say "reusing $VENV (bindings with Vulkan and RPC)"
else
    build
    bindings_ready || { echo "check_vulkan: the bindings in $VENV do not list both Vulkan and RPC in ggml's registry" >&2; exit 1; }
fi
# The project may have moved on since the venv was made: make sure this tree is the installed one.
"$VENV/bin/python" -c "import edge, pathlib, sys; sys.exit(0 if pathlib.Path(edge.__file__).resolve().is_relative_to(pathlib.Path('$ROOT').resolve()) else 1)" \
    || $NICE "$VENV/bin/python" -m pip install -q -e "$ROOT[test]"

[ "${1:-}" = "--build" ] && exit 0

export GGML_VK_VISIBLE_DEVICES="${GGML_VK_VISIBLE_DEVICES:-0}"
say "devices (GGML_VK_VISIBLE_DEVICES=$GGML_VK_VISIBLE_DEVICES):"
"$VENV/bin/python" -c "from edge.runtime.devices import main; main()"
# -s shows the measured logit difference; ggml-vulkan's device banner is filtered out.
$NICE "$VENV/bin/python" -m pytest -q -s -m vulkan -rs -W ignore::UserWarning tests/runtime/test_vulkan.py "$@" 2>&1 \
    | grep -v -e '^ggml_vulkan: ' -e 'does not match expectation'
$NICE "$VENV/bin/python" -m pytest -q -rs tests/runtime/test_devices.py tests/runtime/test_backend_errors.py
