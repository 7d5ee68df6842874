#!/usr/bin/env bash
# Build and install llama-cpp-python from its source release with chatforge's patches applied
# (patches/llama-cpp-python-VERSION/*.patch, in name order), whatever is installed.
#
#   scripts/build-llama-cpp.sh PYTHON VERSION      (CMAKE_ARGS from the environment go to the build)
#
# The source comes from the package index pip is configured with, like any other package.
set -euo pipefail

python=${1:?usage: build-llama-cpp.sh PYTHON VERSION}
version=${2:?usage: build-llama-cpp.sh PYTHON VERSION}
root=$(cd "$(dirname "$0")/.." && pwd)
patches=$root/patches/llama-cpp-python-$version
[ -d "$patches" ] || { echo "build-llama-cpp: no patches for llama-cpp-python $version ($patches)" >&2; exit 1; }

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
echo "build-llama-cpp: fetching the llama-cpp-python $version source release"
"$python" -m pip download --quiet --disable-pip-version-check --no-deps --no-binary :all: \
    "llama-cpp-python==$version" -d "$work"
tar -xzf "$work"/llama_cpp_python-"$version".tar.gz -C "$work"
src=$work/llama_cpp_python-$version
for patch in "$patches"/*.patch; do
    echo "build-llama-cpp: applying $(basename "$patch")"
    if command -v patch > /dev/null; then
        patch --quiet --forward --strip=1 --directory="$src" < "$patch"
    else
        (cd "$src" && git apply -p1 "$patch")
    fi
done
echo "build-llama-cpp: building (about 4 minutes on 2 cores, 7 with the AMX kernels)"
"$python" -m pip install --quiet --disable-pip-version-check --no-cache-dir --force-reinstall --no-deps "$src"
