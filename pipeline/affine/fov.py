"""Fields of view per image: found from the image, the task's modality table only a hint.

An image has a field of view when a part of its grid holds no data: the image is constant
(usually zero) there, in a region connected to the grid's border of any shape
(:func:`pipeline.affine.support.support`). The registration then leaves that region and a
margin along its border out of the metric (the cut is no edge of the anatomy) and rotates
about its centre (:class:`pipeline.affine.registration.AffineConfig`, ``fixed_fov`` /
``moving_fov``). With ``--fov auto`` each image is decided by :func:`choose_fov`:

* no constant region at the border of at least :data:`MIN_OUTSIDE` of the grid
  (:data:`MIN_OUTSIDE_NAMED` when the modality's name says ultrasound): no field of view;
* otherwise, when the modality's name says ultrasound (free text: "3D iUS", "iUS", "US
  (intra-op)", "Ultrasound", ...; :func:`names_ultrasound`): a field of view;
* otherwise when the support leaves out part of the other image's data: less than
  :data:`MAX_COVERAGE` of the other image's support lies inside it (a partial view, as an
  ultrasound cone of a whole-head MR): a field of view; when it covers the other image's
  support (two skull-stripped brains: a masked image, whose outline is anatomy) none.

``--fov on`` / ``off`` force it for both images. Each choice is logged with its reason and
recorded in the align summary. Used by the ``align`` stage and prediction's pre-alignment.
"""

from __future__ import annotations

import dataclasses
import logging
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from learn2reg.io import Geometry
from learn2reg.task import Case, Pair, Task
from pipeline.affine.registration import AffineConfig
from pipeline.affine.support import coverage, outside_region

log = logging.getLogger(__name__)

FOV_CHOICES = ("auto", "on", "off")
ULTRASOUND = {"US", "IUS", "ULTRASOUND", "3DUS", "3DIUS", "ULTRASONOGRAPHY", "SONOGRAPHY", "TRUS", "IVUS", "ECHO"}
MIN_OUTSIDE = 0.05  # fraction of the grid outside the support before an unnamed image has a field of view
MIN_OUTSIDE_NAMED = 0.005  # the same for an image whose modality name says ultrasound
MAX_COVERAGE = 0.8  # a support holding less of the other image's support than this is a partial view


def names_ultrasound(name: str) -> bool:
    """Whether a free-text modality name says ultrasound: one of its words (letters and digits;
    case, spaces, hyphens, underscores and brackets ignored), or the whole name without them,
    is in :data:`ULTRASOUND`, or it contains "ULTRASOUND"/"SONOGRAPH"."""
    upper = name.upper()
    words = set(re.findall(r"[A-Z0-9]+", upper))
    joined = re.sub(r"[^A-Z0-9]", "", upper)
    return bool(words & ULTRASOUND) or joined in ULTRASOUND or "ULTRASOUND" in joined or "SONOGRAPH" in joined


def modality_name(table: Mapping[str, Any], case: Case) -> str:
    """A modality table's entry (a task's ``modality``, keyed ``"0"`` as the json or ``"0000"``)
    for the case's modality id (``""`` when there is none); ``predict`` and the submission images
    look names up here."""
    key = str(int(case.modality)) if str(case.modality).isdigit() else str(case.modality)
    return str(table.get(key, table.get(case.modality, "")))


def is_ultrasound(task: Task, case: Case) -> bool:
    """Whether the task's ``modality`` entry for the case's modality id names ultrasound."""
    return names_ultrasound(modality_name(task.modality, case))


@dataclass(frozen=True)
class FovChoice:
    """Whether one image gets a field of view, and why (words, for logs and summaries)."""

    has_fov: bool
    reason: str
    outside: float  # fraction of the grid outside the image's support
    coverage: float | None = None  # fraction of the other image's support inside this one's (when computed)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _choose_one(
    image: np.ndarray, geom: Geometry, other: np.ndarray, other_geom: Geometry, name: str, fov: str
) -> FovChoice:
    """:func:`choose_fov` for one image (``other``: the other image of the pair)."""
    outside = outside_region(image)
    fraction = float(outside.mean())
    where = f"{fraction:.0%} of the grid outside its support"
    if fov != "auto":
        return FovChoice(fov == "on", f"--fov {fov} ({where})", fraction)
    named = names_ultrasound(name)
    label = f"modality {name!r}" if name else "no modality name"
    if fraction < (MIN_OUTSIDE_NAMED if named else MIN_OUTSIDE):
        return FovChoice(False, f"no field of view: {where} ({label})", fraction)
    if named:
        return FovChoice(True, f"field of view: {where}, {label} says ultrasound", fraction)
    held = coverage(~outside, geom.index_to_physical, ~outside_region(other), other_geom.index_to_physical)
    if held < MAX_COVERAGE:
        return FovChoice(True, f"field of view: {where}, holding {held:.0%} of the other image's support ({label})", fraction, held)
    return FovChoice(False, f"no field of view: {where} but holding {held:.0%} of the other image's support, "
                            f"a masked image ({label})", fraction, held)


def choose_fov(
    fixed: np.ndarray, moving: np.ndarray, fixed_geom: Geometry, moving_geom: Geometry,
    names: tuple[str, str] = ("", ""), fov: str = "auto",
) -> tuple[FovChoice, FovChoice]:
    """Fields of view of a pair's images (``X x Y x Z`` arrays on their geometries), per ``fov``
    ("auto", "on", "off") and the modality ``names`` (fixed, moving; hints): module docstring."""
    if fov not in FOV_CHOICES:
        raise ValueError(f"fov must be one of {FOV_CHOICES}, got {fov!r}")
    return (
        _choose_one(fixed, fixed_geom, moving, moving_geom, names[0], fov),
        _choose_one(moving, moving_geom, fixed, fixed_geom, names[1], fov),
    )


def with_fov(config: AffineConfig, choices: tuple[FovChoice, FovChoice], where: str = "") -> AffineConfig:
    """``config`` with the fields of view of ``choices`` (fixed, moving); logs each choice."""
    for side, choice in zip(("fixed", "moving"), choices, strict=True):
        log.info("%s%s image: %s", f"{where}: " if where else "", side, choice.reason)
    return dataclasses.replace(config, fixed_fov=choices[0].has_fov, moving_fov=choices[1].has_fov)


def pair_names(task: Task, pair: Pair) -> tuple[str, str]:
    """Modality names (fixed, moving) of a pair, from the task's modality table."""
    return modality_name(task.modality, task.case(pair.fixed)), modality_name(task.modality, task.case(pair.moving))


def pair_config(task: Task, pair: Pair, config: AffineConfig, fov: str) -> AffineConfig:
    """``config`` with the fields of view of the modality names alone ("auto": named
    ultrasound; "on"/"off": forced). The ``align`` stage and prediction decide from the images
    with :func:`choose_fov`; this is the hint."""
    if fov == "auto":
        moving_fov, fixed_fov = is_ultrasound(task, task.case(pair.moving)), is_ultrasound(task, task.case(pair.fixed))
    else:
        moving_fov = fixed_fov = fov == "on"
    return dataclasses.replace(config, moving_fov=moving_fov, fixed_fov=fixed_fov)
