#!/bin/sh
# OncoReg's ./test.sh <task> <Val|Ts> (MDL-UzL/OncoReg examples/VoxelMorph++/test.sh): register the
# task's registration_val (Val) or registration_test (Ts) pairs into /oncoreg/results with the model
# train.sh left in /oncoreg/model, else the one built into the image (pipeline/container/entry.py).
exec python -m pipeline.container.entry test "$@"
