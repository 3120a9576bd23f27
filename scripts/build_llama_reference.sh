#!/usr/bin/env bash
# Build llama-bench and llama-server from the llama.cpp that llama-cpp-python 0.3.36 vendors,
# so benchmarks compare the project with llama.cpp's own tools on the same libraries.
# Usage: scripts/build_llama_reference.sh [DEST]   (default /work/wt/_llama); touches DEST/READY.
set -euo pipefail
DEST=${1:-/work/wt/_llama}
VERSION=0.3.36
mkdir -p "$DEST" && cd "$DEST"
[ -f llama_cpp_python-$VERSION.tar.gz ] || \
  pip download llama-cpp-python==$VERSION --no-deps --no-binary :all: -d .
[ -d llama_cpp_python-$VERSION ] || tar xzf llama_cpp_python-$VERSION.tar.gz
SRC=$DEST/llama_cpp_python-$VERSION/vendor/llama.cpp
# Same defaults as the bindings' build (native CPU); the server's UI target would download assets.
nice cmake -S "$SRC" -B build -DCMAKE_BUILD_TYPE=Release -DBUILD_SHARED_LIBS=OFF \
  -DLLAMA_BUILD_SERVER=ON -DLLAMA_USE_PREBUILT_UI=OFF -DLLAMA_BUILD_UI=OFF \
  -DLLAMA_CURL=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF ${EXTRA_CMAKE_ARGS:-}
nice cmake --build build --target llama-bench llama-server -j"${JOBS:-2}"
mkdir -p bin && cp build/bin/llama-bench build/bin/llama-server bin/
touch READY
echo "built: $DEST/bin/llama-bench $DEST/bin/llama-server"
