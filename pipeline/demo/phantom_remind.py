"""ReMIND2Reg-like demo patients: intra-operative 3D ultrasound (fixed) and pre-operative ceT1 / T2 MR.

Each patient is one procedural brain with a tumour (:func:`pipeline.demo.phantom_brain.brain_anatomy`,
in the MR frame) rendered three times on the same grid, as ReMIND2Reg resamples its ultrasound
into MR space:

* ``_0000`` ultrasound (:func:`pipeline.demo.phantom_brain.render_us`: echogenicity that does not
  follow MR contrast, bright interfaces, speckle, depth attenuation, zero outside the cone-shaped
  field of view), showing the anatomy displaced by the known pull field ``w``;
* ``_0001`` contrast-enhanced T1 (bright white matter, dark CSF, ring-enhancing tumour);
* ``_0002`` T2 (bright CSF and tumour, dark white matter).

``w`` (``X x Y x Z x 3`` voxels, on the ultrasound grid) is a small smooth brain shift followed by
the probe-tracking error, a rigid motion of a few degrees and a few millimetres about the grid
centre: ultrasound voxel ``x`` shows the MR anatomy at ``x + w(x)``, so ``w`` is exactly the
evaluator's true field of both pairs (fixed ``_0000`` <- moving ``_0001`` / ``_0002``). The
translation is scaled so that the mean landmark error before registration is a drawn target
between :data:`TRE_RANGE` mm. Landmarks: voxels of the ultrasound cone on distinctive borders;
their MR positions ``x + w(x)`` are exact (the field is read at voxel centres, no interpolation).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from learn2reg.contract import compose_affine, warp_labels
from pipeline.demo.phantom_brain import (
    LANDMARK_TISSUES,
    TISSUES,
    BrainAnatomy,
    Fan,
    brain_anatomy,
    render_us,
    tissue_map,
)
from pipeline.demo.phantoms import Grid, bias_field, farthest_points, mix, random_diffeo, rician, rotation_matrix

T1_VALUES = {"scalp": 420.0, "csf": 70.0, "gm": 380.0, "wm": 520.0, "sulci": 70.0, "ventricle": 50.0, "falx": 260.0, "tumour": 230.0}
T2_VALUES = {"scalp": 260.0, "csf": 900.0, "gm": 520.0, "wm": 340.0, "sulci": 900.0, "ventricle": 950.0, "falx": 200.0, "tumour": 760.0}
TRE_RANGE = (6.0, 8.0)  # mm: the mean landmark error before registration lies in this range
MAX_ROTATION = 4.0  # degrees, per axis
SHIFT_MM = 2.5  # peak brain shift, mm
LANDMARKS = 15


@dataclass(frozen=True)
class RemindPatient:
    """One patient's images (float32) and ground truth.

    ``rigid`` maps an ultrasound voxel (after the brain shift) to the MR voxel (4x4, voxels: the
    probe-tracking error); ``rotation_deg`` / ``translation_mm`` are its parameters (rotation about
    the grid centre, ``Rz Ry Rx``). ``fixed`` (ultrasound) and ``moving`` (MR) landmarks are
    ``N x 3`` voxels, ``moving = fixed + w(fixed)``; ``initial_tre_mm`` their mean distance."""

    us: np.ndarray
    t1: np.ndarray
    t2: np.ndarray
    w: np.ndarray
    rigid: np.ndarray
    rotation_deg: tuple[float, float, float]
    translation_mm: tuple[float, float, float]
    fixed: np.ndarray
    moving: np.ndarray
    initial_tre_mm: float
    shift_max_mm: float  # largest brain-shift displacement
    fan: Fan  # the ultrasound's field of view (centred mm frame of the grid): zero outside


def _rigid(grid: Grid, rotation_deg: np.ndarray, translation_mm: np.ndarray) -> np.ndarray:
    """Voxel-space matrix of a rotation about the grid centre followed by a translation (mm)."""
    spacing = np.asarray(grid.spacing)
    centre = (np.asarray(grid.shape) - 1) / 2.0
    scale = np.diag(spacing)
    rot = np.linalg.inv(scale) @ rotation_matrix(np.deg2rad(rotation_deg)) @ scale
    matrix = np.eye(4)
    matrix[:3, :3] = rot
    matrix[:3, 3] = centre - rot @ centre + translation_mm / spacing
    return matrix


def _landmarks(rng: np.random.Generator, grid: Grid, anatomy: BrainAnatomy, w: np.ndarray) -> np.ndarray:
    """Ultrasound voxels (``N x 3``) on borders of distinctive structures as the ultrasound shows
    them, inside the cone (4 mm margin), whose MR position stays 2 voxels inside the grid."""
    labels = warp_labels(tissue_map(anatomy), w)
    distinct = np.isin(labels, [TISSUES.index(t) + 1 for t in LANDMARK_TISSUES])
    border = ndimage.maximum_filter(labels, 3) != ndimage.minimum_filter(labels, 3)
    candidates = np.argwhere(distinct & border).astype(np.float64)
    moving = candidates + w[tuple(candidates.astype(np.int64).T)]
    n = np.asarray(grid.shape)
    ok = anatomy.fan.contains(grid.to_mm(candidates), margin=4.0) & np.all((moving >= 2) & (moving <= n - 3), axis=1)
    candidates = candidates[ok]
    return candidates[farthest_points(rng, candidates, LANDMARKS)]


def _mean_error(fixed: np.ndarray, shift: np.ndarray, rigid: np.ndarray, spacing: np.ndarray) -> float:
    """Mean landmark distance (mm) before registration, ``|w(x)|`` at the fixed voxels, with
    ``w = compose_affine(shift, rigid)`` evaluated at those voxels only."""
    if not len(fixed):
        return 0.0
    y = fixed + shift[tuple(fixed.astype(np.int64).T)]
    w = y @ rigid[:3, :3].T + rigid[:3, 3] - fixed
    return float(np.linalg.norm(w * spacing, axis=1).mean())


def _solve_translation(shift: np.ndarray, grid: Grid, rot_deg: np.ndarray, direction: np.ndarray, fixed: np.ndarray, target: float) -> float:
    """Translation length (mm) along ``direction`` that makes the mean landmark error ``target``
    mm (bisection; the error grows with the length once it dominates)."""
    spacing = np.asarray(grid.spacing)

    def error(length: float) -> float:
        return _mean_error(fixed, shift, _rigid(grid, rot_deg, length * direction), spacing)

    lo, hi = 0.0, 4.0 * target
    if error(lo) >= target:
        return lo
    for _ in range(50):
        mid = 0.5 * (lo + hi)
        lo, hi = (mid, hi) if error(mid) < target else (lo, mid)
    return 0.5 * (lo + hi)


def render_mr(rng: np.random.Generator, anatomy: BrainAnatomy, values: dict[str, float], enhancing_rim: float) -> np.ndarray:
    """MR image in the anatomy's frame (float32, arbitrary units): tissue values, tumour texture,
    an enhancing rim of ``enhancing_rim`` at the tumour border, bias field and Rician noise."""
    tumour = anatomy.fractions["tumour"]
    rim = ndimage.gaussian_gradient_magnitude(tumour, 1.0)
    rim = rim / max(float(rim.max()), 1e-6)
    clean = mix(anatomy.fractions, values) + 80.0 * tumour * anatomy.texture + enhancing_rim * rim
    return rician(rng, clean * bias_field(rng, clean.shape, 0.12), 12.0)


def remind_patient(rng: np.random.Generator, grid: Grid) -> RemindPatient:
    """One patient: ultrasound (fixed), ceT1 and T2 (moving), the true field and landmarks."""
    anatomy = brain_anatomy(rng, grid)
    shift = random_diffeo(rng, grid, SHIFT_MM, cells=4)
    rot_deg = rng.uniform(-MAX_ROTATION, MAX_ROTATION, 3)
    direction = rng.standard_normal(3)
    direction /= np.linalg.norm(direction)
    target = float(rng.uniform(TRE_RANGE[0] + 0.3, TRE_RANGE[1] - 0.3))
    length = 0.75 * target  # first guess; two rounds of landmark choice and translation solve
    for _ in range(2):
        w = compose_affine(shift, _rigid(grid, rot_deg, length * direction))
        fixed = _landmarks(rng, grid, anatomy, w)
        length = _solve_translation(shift, grid, rot_deg, direction, fixed, target)
    rigid = _rigid(grid, rot_deg, length * direction)
    w = compose_affine(shift, rigid)
    moving = fixed + w[tuple(fixed.astype(np.int64).T)]
    us = render_us(rng, grid, anatomy, w)
    t1 = render_mr(rng, anatomy, T1_VALUES, enhancing_rim=650.0)
    t2 = render_mr(rng, anatomy, T2_VALUES, enhancing_rim=0.0)
    return RemindPatient(
        us=us, t1=t1, t2=t2, w=w, rigid=rigid,
        rotation_deg=(float(rot_deg[0]), float(rot_deg[1]), float(rot_deg[2])),
        translation_mm=(float(length * direction[0]), float(length * direction[1]), float(length * direction[2])),
        fixed=fixed, moving=moving, initial_tre_mm=float(np.linalg.norm((moving - fixed) * np.asarray(grid.spacing), axis=1).mean()),
        shift_max_mm=float(np.linalg.norm(shift * np.asarray(grid.spacing), axis=-1).max()), fan=anatomy.fan,
    )
