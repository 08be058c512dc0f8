#!/usr/bin/env bash
# Download the wheels of bench/gpu_wheels.txt for a CPython 3.12 x86-64 Linux machine (the GPU
# machines of bench/gpu_check.sh) into DIR (default .whl/, git-ignored), one version of each, and
# shrink the largest (SimpleITK: 53 MB zipped) by recompressing it (same files, LZMA) so the wheels
# and the working tree travel together under the device tool's 64 MiB.
#
#   bash bench/gpu_wheels.sh [DIR] [--dry-run]   # --dry-run: print the pip commands only
#
# PYTHON (default python3) runs pip here; any Python with pip and network access will do.
set -euo pipefail
cd "$(dirname "$0")/.."
dir=.whl
dry=0
for arg in "$@"; do
  case "$arg" in
    --dry-run) dry=1 ;;
    -h|--help) sed -n '2,9p' "$0"; exit 0 ;;
    -*) echo "unknown option $arg" >&2; exit 2 ;;
    *) dir=$arg ;;
  esac
done
py=${PYTHON:-python3}
platforms=(--platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64
           --platform manylinux2014_x86_64 --platform manylinux1_x86_64)
mapfile -t wanted < <(grep -v '^\s*#' bench/gpu_wheels.txt | sed 's/#.*//; s/\s//g' | grep .)
for spec in "${wanted[@]}"; do
  cmd=("$py" -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.12 --implementation cp
       "${platforms[@]}" -d "$dir" "$spec")
  if [ "$dry" = 1 ]; then echo "${cmd[*]}"; continue; fi
  if "$py" bench/gpu_wheels.py "$dir" --has "$spec"; then echo "have $spec"; continue; fi
  echo "downloading $spec"
  "${cmd[@]}"
done
[ "$dry" = 1 ] && exit 0
# drop other versions, recompress the large wheels, report the size against the 64 MiB limit
exec "$py" bench/gpu_wheels.py "$dir" --tidy
