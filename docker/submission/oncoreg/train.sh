#!/bin/sh
# OncoReg's ./train.sh <task> (MDL-UzL/OncoReg examples/VoxelMorph++/train.sh): train the image's
# configuration on /oncoreg/data/<task>_dataset.json into /oncoreg/model (pipeline/container/entry.py).
exec python -m pipeline.container.entry train "$@"
