"""The prediction stage: challenge-format fields and runtimes for a task's pairs.

May import ``pipeline.prediction``, ``pipeline.model``, ``pipeline.data``, the affine registration, the top-level helpers and ``evaluation``; never training or the demo.
"""
