"""The method: LapIRN, its losses, the torch side of the field contract, checkpoints, instance optimisation,
the LapIRN authors' checkpoints (``authors``: recognise, load safely, map onto our keys), peak-memory
estimates and the check against what a device has free (``memory``, ``memory_check``).

May import ``pipeline.model``, ``pipeline.config`` and ``evaluation``; never a stage (data, affine, training, prediction, demo).
"""
