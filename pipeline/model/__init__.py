"""The method: LapIRN, its losses, the torch side of the field contract, checkpoints, instance optimisation.

May import ``pipeline.model``, ``pipeline.config`` and ``evaluation``; never a stage (data, affine, training, prediction, demo).
"""
