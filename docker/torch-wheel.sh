#!/bin/sh
# The CPU build of the pinned torch (requirements.txt) as a wheel inside the build context, for an image
# whose base has no torch (docker/local-base.sh, python:3.11-slim):
#
#   docker/torch-wheel.sh >> .env      -> .docker-wheels/torch-VERSION+cpu-cp311-...whl, and prints
#                                         TORCH_WHEEL=.docker-wheels/torch-...whl (the build argument)
#
# The wheel is for the image's Python (CPython 3.11, x86_64 Linux), whatever the host's Python is. pip
# downloads it from PyTorch's CPU wheel index (TORCH_INDEX, default https://download.pytorch.org/whl/cpu),
# or takes it from a folder of wheels it already knows at the same version (find-links in pip's
# configuration or PIP_FIND_LINKS: on machines without that index it warns about the index and uses them).
# Docker builds see only files inside the build context, so a wheel elsewhere must be copied in: this does it.
# PYTHON (default python3) is the interpreter whose pip is used.
set -eu
cd "$(dirname "$0")/.."

pin=$(sed -n 's/^torch==\([^[:space:]#]*\).*/\1/p' requirements.txt)
[ -n "$pin" ] || { echo "torch-wheel: no torch==VERSION pin in requirements.txt" >&2; exit 1; }
mkdir -p .docker-wheels
"${PYTHON:-python3}" -m pip download --quiet --no-deps --only-binary=:all: \
    --python-version 3.11 --implementation cp --abi cp311 --platform manylinux_2_28_x86_64 \
    --retries 2 --index-url "${TORCH_INDEX:-https://download.pytorch.org/whl/cpu}" --dest .docker-wheels "torch==$pin" >&2
# pip names no file; the newest matching wheel is the one it just saved (or found already there)
wheel=$(ls -t .docker-wheels/torch-"$pin"[+-]*cp311-*x86_64.whl 2>/dev/null | head -n 1)
[ -n "$wheel" ] || { echo "torch-wheel: pip left no torch-$pin cp311 x86_64 wheel in .docker-wheels/" >&2; exit 1; }
echo "TORCH_WHEEL=$wheel"
