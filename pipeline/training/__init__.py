"""The training stage: the loop, training pairs, augmentation, validation during training, the log;
and ``import-weights``, which writes a run folder from the LapIRN authors' published weights.

May import ``pipeline.training``, ``pipeline.model``, ``pipeline.data``, the top-level helpers and ``evaluation``; never prediction or the demo.
"""
