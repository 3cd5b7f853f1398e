#!/usr/bin/env bash
# Build llama.cpp's real `llama-server` (parallel slots, continuous batching) from the llama.cpp source
# vendored in the llama-cpp-python sdist of the version installed here, CPU only, Release, only the
# server target, into a cache folder. Idempotent: a second call prints the path of the binary it already
# built and exits at once. Concurrent calls wait for each other (flock).
#
#   scripts/build_llama_server.sh            # prints the path of llama-server as its last line
#
# Environment:
#   PYTHON                   interpreter whose llama-cpp-python version is built (default: .venv/bin/python)
#   LLAMA_CPP_PYTHON_VERSION build this version instead of the installed one
#   LLAMA_CPP_SDIST          an already downloaded llama_cpp_python-<version>.tar.gz (offline builds)
#   SYNTH_ASSETS_CACHE       cache root (default ~/.cache/synth_assets); the binary lands in
#                            $SYNTH_ASSETS_CACHE/llama-server/<version>/llama-server
#   JOBS                     parallel compile jobs (default: the CPUs this process may use)
#
# Measured here (2-core AMD EPYC, shared): `pip download` of the 76 MB sdist ~3 min (pip prepares its
# metadata), compile 26 min under `nice -n 19 ... JOBS=2` next to other jobs (206 build steps); a
# second call returns in 0.2 s.
set -euo pipefail

repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
python="${PYTHON:-}"
if [[ -z "$python" ]]; then
    if [[ -x "$repo_root/.venv/bin/python" ]]; then python="$repo_root/.venv/bin/python"; else python=python3; fi
fi

version="${LLAMA_CPP_PYTHON_VERSION:-}"
if [[ -z "$version" ]]; then
    if ! version="$("$python" -c 'import importlib.metadata as m; print(m.version("llama_cpp_python"))' 2>/dev/null)"; then
        echo "build_llama_server: llama-cpp-python is not installed in $python; set LLAMA_CPP_PYTHON_VERSION" >&2
        exit 2
    fi
fi

cache_root="${SYNTH_ASSETS_CACHE:-$HOME/.cache/synth_assets}"
dest="$cache_root/llama-server/$version"
binary="$dest/llama-server"
mkdir -p "$dest"

# One build at a time per version; the second caller finds the binary when the first is done.
exec 9>"$dest/.lock"
flock 9

if [[ -x "$binary" ]] && "$binary" --version >/dev/null 2>&1; then
    echo "$binary"
    exit 0
fi

for tool in cmake c++; do
    command -v "$tool" >/dev/null || { echo "build_llama_server: $tool not found (install a C++ toolchain and cmake)" >&2; exit 2; }
done

work="$dest/build-work"
mkdir -p "$work"
sdist="${LLAMA_CPP_SDIST:-$work/llama_cpp_python-$version.tar.gz}"
if [[ ! -f "$sdist" ]]; then
    echo "build_llama_server: downloading the llama-cpp-python $version sdist" >&2
    "$python" -m pip download --quiet --no-deps --no-binary :all: "llama-cpp-python==$version" -d "$work"
    sdist="$(ls "$work"/llama_cpp_python-"$version".tar.gz)"
fi

src="$work/src"
if [[ ! -f "$src/vendor/llama.cpp/CMakeLists.txt" ]]; then
    rm -rf "$src" "$src.tmp"
    mkdir -p "$src.tmp"
    tar -xzf "$sdist" -C "$src.tmp" --strip-components=1
    mv "$src.tmp" "$src"
fi

generator=()
if command -v ninja >/dev/null; then generator=(-G Ninja); fi
jobs="${JOBS:-$(nproc)}"
# - GGML_NATIVE: tuned for this CPU (the binary stays in this machine's cache).
# - static libraries: one self-contained binary, nothing to find at run time.
# - no web UI (LLAMA_USE_PREBUILT_UI would download it from the Hugging Face hub), no HTTPS, no curl
#   (models are loaded from a local path), no tests/examples.
cmake -S "$src/vendor/llama.cpp" -B "$work/build" "${generator[@]}" \
    -DCMAKE_BUILD_TYPE=Release \
    -DBUILD_SHARED_LIBS=OFF \
    -DGGML_NATIVE=ON \
    -DGGML_CUDA=OFF -DGGML_METAL=OFF -DGGML_VULKAN=OFF \
    -DLLAMA_BUILD_SERVER=ON -DLLAMA_BUILD_TOOLS=ON \
    -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_APP=OFF \
    -DLLAMA_BUILD_UI=OFF -DLLAMA_USE_PREBUILT_UI=OFF \
    -DLLAMA_OPENSSL=OFF -DLLAMA_CURL=OFF >&2
cmake --build "$work/build" --target llama-server -j "$jobs" >&2

# Publish atomically: a reader sees no binary or the whole binary, never half of one.
cp "$work/build/bin/llama-server" "$binary.tmp"
chmod 755 "$binary.tmp"
mv "$binary.tmp" "$binary"
"$binary" --version >&2
# The source and objects (~1 GB) are not needed to run the server.
if [[ -z "${KEEP_BUILD:-}" ]]; then rm -rf "$work"; fi
echo "$binary"
