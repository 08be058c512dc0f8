#!/bin/sh
# Image entrypoint (exec form in the Dockerfile): `evaluate ...`, `initial ...` and `leaderboard ...`
# run the evaluation package (python -m evaluation.evaluate / .initial / .leaderboard); anything else
# is a pipeline command (python -m pipeline COMMAND ...; also --help, --version). `exec` hands PID 1's
# signals to Python.
set -eu
case "${1:-}" in
    evaluate | initial | leaderboard)
        stage="$1"
        shift
        exec python -m "evaluation.${stage}" "$@"
        ;;
    *)
        exec python -m pipeline "$@"
        ;;
esac
