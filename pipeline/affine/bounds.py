"""Plausibility of an affine pre-alignment: stated bounds, a decomposition, and the checks.

A pre-alignment corrects a probe-tracking or positioning error: a few degrees and millimetres,
a few per cent of scale. :class:`Bounds` states how far a result may go from its start
(rotation in degrees, translation as a fraction of the fixed image's mean physical extent,
scale and shear as fractions); ``pipeline.affine.registration`` keeps the optimisation inside
them (L-BFGS-B box bounds) and :func:`check` reports, in words, a result that

* lies at a bound (within :data:`AT_BOUND` of it): the optimiser wanted to go further, so the
  answer is the bound, not a minimum of the similarity; or
* makes the similarity better only by shrinking the overlap: the part of the fixed image
  (its field of view) whose mapped point falls inside the moving image (its field of view)
  fell below ``min_overlap`` times what it was at the start. With a partial field of view
  (ultrasound) NGF can gain by moving structure out of the overlap; such a result is not an
  alignment.

Frames: matrices map fixed physical (LPS mm) to moving physical, ``T(x) = L x + o``;
rotations and translations are those about the centre ``c`` used by the registration
(``L (x - c) + c + t``).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.spatial.transform import Rotation

AT_BOUND = 0.97  # a value at or beyond this fraction of its bound counts as "at the bound"
ACTIONS = ("accepted", "fallback-translation", "fallback-initial", "warned")  # what became of a result


@dataclass(frozen=True)
class Bounds:
    """The plausible range of a pre-alignment around its start (see the module docstring).

    ``max_translation`` is per axis in mm; ``max_rotation_deg`` bounds the rotation angle
    (degrees; the optimiser's box holds each rotation-vector component to it, :func:`check`
    reports an angle at or beyond it); ``max_scale`` the singular values of ``L`` to
    ``[1 / (1 + s), 1 + s]``; ``max_shear`` the off-diagonal entries of the shear factor
    (unit-diagonal upper triangle of ``L``'s QR factorisation after scaling)."""

    max_rotation_deg: float
    max_translation: float
    max_scale: float
    max_shear: float


@dataclass(frozen=True)
class Decomposition:
    """``L = R S K``-like description of a 4x4: the rotation of its polar factor (degrees,
    rotation vector), the translation of the centre ``c`` (mm), the singular values of ``L``
    and its largest shear (QR of the symmetric factor)."""

    rotation_deg: np.ndarray  # (3,) rotation vector, degrees
    translation_mm: np.ndarray  # (3,) T(c) - c
    scales: np.ndarray  # (3,) singular values of L
    shear: float  # largest |off-diagonal| of the unit-diagonal shear factor

    def to_dict(self) -> dict[str, object]:
        return {
            "rotation_deg": [round(float(v), 4) for v in self.rotation_deg],
            "translation_mm": [round(float(v), 4) for v in self.translation_mm],
            "scales": [round(float(v), 5) for v in self.scales],
            "shear": round(float(self.shear), 5),
        }


def decompose(matrix: np.ndarray, center: np.ndarray) -> Decomposition:
    """Rotation, translation at ``center``, scales and shear of a physical 4x4 (module docstring)."""
    m = np.asarray(matrix, dtype=np.float64)
    linear = m[:3, :3]
    u, s, vt = np.linalg.svd(linear)
    rotation = u @ vt
    if np.linalg.det(rotation) < 0:  # a reflection: keep the rotation part proper
        u[:, -1] *= -1
        rotation = u @ vt
    symmetric = rotation.T @ linear  # L = R P, P symmetric positive (semi-)definite
    _, r = np.linalg.qr(symmetric)
    shear_factor = r / np.where(np.abs(np.diag(r)) > 1e-12, np.diag(r), 1.0)[:, None]
    shear = float(np.abs(np.triu(shear_factor, 1)).max())
    c = np.asarray(center, dtype=np.float64)
    return Decomposition(
        rotation_deg=Rotation.from_matrix(rotation).as_rotvec(degrees=True),
        translation_mm=linear @ c + m[:3, 3] - c,
        scales=s,
        shear=shear,
    )


def check(
    matrix: np.ndarray, start: np.ndarray, center: np.ndarray, bounds: Bounds, overlap: tuple[float, float], min_overlap: float
) -> list[str]:
    """Reasons (words, empty when plausible) why ``matrix`` is not a plausible pre-alignment
    from ``start`` (both physical 4x4, about ``center``); ``overlap`` = (at the start, at the
    result), fractions of the fixed field of view mapped inside the moving one."""
    reasons = []
    relative = np.asarray(matrix, dtype=np.float64) @ np.linalg.inv(np.asarray(start, dtype=np.float64))
    start_center = (np.asarray(start) @ np.append(center, 1.0))[:3]
    d = decompose(relative, start_center)
    rot = float(np.linalg.norm(d.rotation_deg))
    if rot >= AT_BOUND * bounds.max_rotation_deg:
        reasons.append(f"rotation {rot:.1f} deg at or beyond its bound ({bounds.max_rotation_deg:g} deg)")
    shift = float(np.abs(d.translation_mm).max())
    if shift >= AT_BOUND * bounds.max_translation:
        reasons.append(f"translation {shift:.1f} mm at its bound ({bounds.max_translation:.1f} mm per axis)")
    scale = float(np.abs(np.log(d.scales)).max())
    if scale >= AT_BOUND * np.log1p(bounds.max_scale):
        reasons.append(f"scale {d.scales.min():.3f}-{d.scales.max():.3f} at its bound (1 +- {bounds.max_scale:g})")
    if d.shear >= AT_BOUND * bounds.max_shear:
        reasons.append(f"shear {d.shear:.3f} at its bound ({bounds.max_shear:g})")
    before, after = overlap
    if before > 0 and after < min_overlap * before:
        reasons.append(f"the overlap shrank from {before:.0%} to {after:.0%} of the fixed field of view (limit: {min_overlap:g} x)")
    return reasons


class ImplausibleResult(ValueError):
    """An implausible result under ``on_implausible="refuse"``; ``reasons`` in words."""

    def __init__(self, reasons: tuple[str, ...]) -> None:
        super().__init__("implausible pre-alignment refused: " + "; ".join(reasons))
        self.reasons = reasons


def bounds_in_mm(max_rotation_deg: float, max_translation: float, max_scale: float, max_shear: float,
                 fixed_shape: tuple[int, ...], fixed_spacing: tuple[float, ...], search_radius: float = 0.0) -> Bounds:
    """The stated bounds in absolute units: translation in mm (``max_translation`` times the fixed
    image's mean extent, at least ``search_radius``)."""
    extent = float(np.mean((np.asarray(fixed_shape) - 1) * np.asarray(fixed_spacing)))
    return Bounds(max_rotation_deg, max(max_translation * extent, search_radius), max_scale, max_shear)


def parameter_box(x0: np.ndarray, bounds: Bounds, radius: float) -> list[tuple[float, float]]:
    """L-BFGS-B box around the start ``x0`` (``pipeline.affine.registration``'s 6 rigid or 12
    affine parameters): rotation-vector components (rigid; mm at ``radius``) or linear entries
    (affine: rotation + scale + shear per entry, about the identity), then translations."""
    angle = np.deg2rad(bounds.max_rotation_deg) * radius
    if len(x0) == 6:
        linear = [(v - angle, v + angle) for v in x0[:3]]
    else:
        entry = (np.sin(np.deg2rad(bounds.max_rotation_deg)) + bounds.max_scale + bounds.max_shear) * radius
        linear = [(-entry, entry)] * 9
    return linear + [(v - bounds.max_translation, v + bounds.max_translation) for v in x0[-3:]]


def decide(
    candidates: list[tuple[str, np.ndarray, list[str]]], policy: str
) -> tuple[str, np.ndarray, tuple[str, ...]]:
    """What becomes of a result: ``candidates`` are (name, matrix, reasons) of the found
    result, the translation stage's and the initial transform, in that order. Returns the
    action (:data:`ACTIONS`), the matrix used and the found result's reasons. Policy
    "fallback": the first plausible candidate; "warn": the found result; "refuse":
    :class:`ImplausibleResult`."""
    (_, found, reasons), *rest = candidates
    if not reasons:
        return "accepted", found, ()
    if policy == "refuse":
        raise ImplausibleResult(tuple(reasons))
    if policy == "warn":
        return "warned", found, tuple(reasons)
    for name, matrix, others in rest:
        if not others or name == "initial":
            return f"fallback-{name}", matrix, tuple(reasons)
    raise AssertionError("the initial transform is always a candidate")  # pragma: no cover
