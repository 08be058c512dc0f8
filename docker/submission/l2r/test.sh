#!/bin/sh
# The L2R submission example's ./test.sh <dataset json> (MDL-UzL/L2R examples/submission_example/zerofield):
# register the json's registration_test pairs (else its registration_val) into /l2r/output
# (pipeline/container/entry.py). The image's own entry point does the same with `-c JSON`.
exec python -m pipeline.container.entry "$@"
