#!/bin/sh
# The image's Python dependencies (Dockerfile, stage `runtime`), installed into the active venv:
#
#   sh install-deps.sh DIR        DIR: the `install-files` stage (requirements*, .docker-wheels/)
#
# 1. torch: the wheel TORCH_WHEEL (a path inside .docker-wheels/ of the build context), else the pinned
#    version from the index TORCH_INDEX, else the base image's own torch is kept (the official PyTorch
#    images). Never a torch from PyPI (there it is the CUDA build, several GB).
# 2. requirements-docker.txt (requirements.txt without torch) and, when torch was installed here, torch's
#    own dependencies; every version from requirements-lock.txt (pip constraints), wheels only.
# 3. an import check.
set -eu
files=$1

fail() { printf 'install-deps: %s\n' "$*" >&2; exit 1; }
install() { python -m pip install --no-cache-dir --only-binary=:all: -c "$files/requirements-lock.txt" "$@"; }

pin=$(sed -n 's/^torch==\([^[:space:]#]*\).*/\1/p' "$files/requirements.txt")
with_torch=""
if [ -n "${TORCH_WHEEL:-}" ]; then
    case "$TORCH_WHEEL" in
        .docker-wheels/*.whl | ./.docker-wheels/*.whl) wheel="$files/${TORCH_WHEEL#./}" ;;
        *) fail "TORCH_WHEEL=$TORCH_WHEEL: the build sees only files inside its context; give the wheel's path" \
                "relative to it, inside .docker-wheels/ (docker/torch-wheel.sh puts the CPU wheel there and" \
                "prints the TORCH_WHEEL line)" ;;
    esac
    [ -f "$wheel" ] || fail "TORCH_WHEEL=$TORCH_WHEEL: no such file in the build context (docker/torch-wheel.sh puts it there)"
    install --no-deps "$wheel"
    with_torch="torch==$pin"
elif [ -n "${TORCH_INDEX:-}" ]; then
    install --no-deps --index-url "$TORCH_INDEX" "torch==$pin"
    with_torch="torch==$pin"
elif ! python -c "import torch" 2>/dev/null; then
    fail "the base image has no torch: build with TORCH_WHEEL (docker/torch-wheel.sh) or TORCH_INDEX"
fi
# shellcheck disable=SC2086  # $with_torch: nothing or one word
install -r "$files/requirements-docker.txt" $with_torch
python -c "import matplotlib, nibabel, numpy, pandas, scipy, SimpleITK, torch, tqdm; print('torch', torch.__version__)"
