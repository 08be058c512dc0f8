#!/usr/bin/env bash
# The prepared GPU check (bench/gpu_check.py says what it measures), e.g. from the repository root:
#
#   bash bench/gpu_check.sh --wheels .whl --out "$OUT"   # the workplace's device machine (carry .whl)
#   bash bench/gpu_check.sh --out /tmp/gpu               # a machine whose Python has the requirements
#   bash bench/gpu_check.sh --quick --out /tmp/smoke     # tiny sizes; without a GPU a CPU smoke run
#
# PYTHON (default python3) runs it; it installs nothing but the listed wheels (never torch), into a
# scratch folder put first on PYTHONPATH. Exit code 0: no part failed; 1: some part failed.
set -uo pipefail
exec "${PYTHON:-python3}" "$(dirname "$0")/gpu_check.py" "$@"
