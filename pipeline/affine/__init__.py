"""Affine pre-alignment: NGF similarity, rigid/affine registration (L-BFGS), fields of view, and the ``align`` stage.

May import ``pipeline.affine``, ``pipeline.config`` and ``evaluation``; prediction may use its registration, not its ``align`` stage.
"""
