"""Fields of view per pair: which images of a task get one (ultrasound, by the task's modality table).

An ultrasound image is zero outside its field of view; :func:`pair_config` turns that on for
the affine registration of a pair (:class:`pipeline.affine.registration.AffineConfig`).
Used by the ``align`` stage and by prediction's affine pre-alignment.
"""

from __future__ import annotations

import dataclasses

from learn2reg.task import Case, Pair, Task
from pipeline.affine.registration import AffineConfig

FOV_CHOICES = ("auto", "on", "off")
ULTRASOUND = {"US", "IUS", "ULTRASOUND", "3DUS", "3DIUS"}  # upper case, without spaces, hyphens, underscores


def is_ultrasound(task: Task, case: Case) -> bool:
    """Whether the task's ``modality`` entry for the case's modality id names ultrasound
    (``US``, ``iUS``, ``3D iUS`` as ReMIND2Reg names it, ``3D-US``, ...)."""
    name = task.modality.get(str(int(case.modality)), task.modality.get(case.modality, ""))
    return "".join(name.upper().replace("-", " ").replace("_", " ").split()) in ULTRASOUND


def pair_config(task: Task, pair: Pair, config: AffineConfig, fov: str) -> AffineConfig:
    """``config`` with the fields of view set per ``fov``: "on", "off", or "auto" (on for
    ultrasound images, per the task's modality table)."""
    if fov == "auto":
        moving_fov, fixed_fov = is_ultrasound(task, task.case(pair.moving)), is_ultrasound(task, task.case(pair.fixed))
    else:
        moving_fov = fixed_fov = fov == "on"
    return dataclasses.replace(config, moving_fov=moving_fov, fixed_fov=fixed_fov)
