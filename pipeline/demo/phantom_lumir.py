"""LUMIR-like demo subjects: inter-subject T1-weighted brain MR in [0, 255], labels, landmark volumes.

One procedural, skull-stripped template brain per task (cortex with sulci, white matter, lateral
ventricles, two deep grey nuclei, CSF), built from the shapes of :mod:`pipeline.demo.phantoms`.
Subject ``s`` is the template pulled by a known smooth diffeomorphism ``phi_s`` (``X x Y x Z x 3``
voxels): ``subject(x) = template(x + phi_s(x))``, rendered with T1 contrast, a bias field and
Rician noise, then scaled to [0, 255] (uint8, as LUMIR ships its images).

Landmarks (LUMIR's are label *volumes*, AFIDs-like blobs): ``K`` template points ``p_k`` on
distinctive borders. In subject ``s`` landmark ``k`` is the voxel ``z`` with ``z + phi_s(z) = p_k``:
``phi_s`` is corrected by a smooth Gaussian term (:func:`snap_landmarks`) so that the solution is a
voxel centre, where the field is exact (no interpolation), and the blob (id ``k``, a 19-voxel
ball) is centred there, so its centroid is ``z`` exactly. A fixed landmark ``z_F`` and the moving
``z_M`` of the same id therefore map to the same template point, ``z_F + phi_F(z_F) = z_M +
phi_M(z_M) = p_k``; the evaluator's true field of the pair is ``compose(phi_F, inverse(phi_M))``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from learn2reg.contract import warp
from pipeline.demo.phantoms import (
    Grid,
    bias_field,
    composite,
    ellipsoid,
    farthest_points,
    mix,
    occupancy,
    pull_points,
    random_diffeo,
    rician,
    smooth_noise,
)

# Label id -> structure; 0 = background (LUMIR's DSC counts it too).
LABELS = {1: "cerebral cortex", 2: "cerebral white matter", 3: "lateral ventricles", 4: "left deep grey matter",
          5: "right deep grey matter", 6: "CSF"}
TISSUES = ("csf", "gm", "wm", "sulci", "ventricle", "deep_left", "deep_right")
TISSUE_LABEL = {"csf": 6, "gm": 1, "wm": 2, "sulci": 6, "ventricle": 3, "deep_left": 4, "deep_right": 5}
T1_VALUES = {"csf": 45.0, "gm": 105.0, "wm": 165.0, "sulci": 45.0, "ventricle": 35.0, "deep_left": 125.0, "deep_right": 125.0}
LANDMARK_LABELS = (3, 4, 5)  # borders of these structures with their neighbours carry the landmarks
BALL = np.argwhere(np.sum((np.indices((3, 3, 3)) - 1) ** 2, axis=0) <= 2) - 1  # 19 offsets, centroid 0
SNAP_SIGMA = 2.5  # voxels: width of the landmark correction bumps


@dataclass(frozen=True)
class Template:
    """The task's template brain: tissue fractions (``X x Y x Z`` each) and landmark points."""

    fractions: dict[str, np.ndarray]
    points: np.ndarray  # K x 3 voxel coordinates (integers) of the template landmarks


@dataclass(frozen=True)
class LumirSubject:
    """One subject: image (uint8, [0, 255]), labels and landmark volume (uint8), the field
    ``phi`` (template -> subject pull, voxels) and the landmark voxels (``K x 3``, integers)."""

    image: np.ndarray
    label: np.ndarray
    landmark_volume: np.ndarray
    phi: np.ndarray
    landmarks: np.ndarray
    residual: float  # largest |z + phi(z) - p| over the landmarks (voxels)


def template_brain(rng: np.random.Generator, grid: Grid, landmarks: int = 12) -> Template:
    """Skull-stripped template brain filling most of ``grid`` (centred mm frame), with
    ``landmarks`` points spread over the borders of the ventricles and deep nuclei."""
    half = (np.asarray(grid.shape) - 1) / 2.0 * np.asarray(grid.spacing)
    radii = half * np.array([0.86, 0.84, 0.8])
    brain = ellipsoid(grid, (0.0, 0.0, -0.05 * half[2]), radii, 0.04 * smooth_noise(rng, grid.shape, 4))
    x, _, z = grid.axes()
    size = float(min(radii))
    sulci = np.maximum((np.abs(smooth_noise(rng, grid.shape, 7)) - 0.15) * 6.0, np.maximum(brain + 0.8, -(brain + 4.5)))
    fissure = np.maximum(np.maximum(np.abs(x) - 0.7, brain + 1.0), -(z - 0.1 * half[2]))
    wm = brain + 0.3 * size + 1.2 * smooth_noise(rng, grid.shape, 5)
    wobble = 0.08 * smooth_noise(rng, grid.shape, 4)
    vent_r = (0.12 * radii[0], 0.42 * radii[1], 0.22 * radii[2])
    ventricles = np.minimum(ellipsoid(grid, (0.17 * radii[0], -0.05 * radii[1], 0.12 * radii[2]), vent_r, wobble),
                            ellipsoid(grid, (-0.17 * radii[0], -0.05 * radii[1], 0.12 * radii[2]), vent_r, wobble))
    deep_r = (0.2 * radii[0], 0.22 * radii[1], 0.2 * radii[2])
    deep = {side: ellipsoid(grid, (sign * 0.36 * radii[0], 0.05 * radii[1], -0.12 * radii[2]), deep_r) for side, sign in (("left", 1.0), ("right", -1.0))}
    layers = [("csf", brain), ("gm", brain + 1.5), ("wm", wm), ("sulci", np.minimum(sulci, fissure)), ("ventricle", ventricles),
              ("deep_left", deep["left"]), ("deep_right", deep["right"])]
    fractions = composite([(name, occupancy(np.broadcast_to(sdf, grid.shape), 1.0)) for name, sdf in layers])
    labels = label_map(fractions)
    distinct = np.isin(labels, LANDMARK_LABELS)
    border = ndimage.maximum_filter(labels, 3) != ndimage.minimum_filter(labels, 3)
    candidates = np.argwhere(distinct & border)
    points = candidates[farthest_points(rng, candidates, landmarks)].astype(np.float64)
    return Template(fractions=fractions, points=points)


def label_map(fractions: dict[str, np.ndarray]) -> np.ndarray:
    """Dominant tissue per voxel as :data:`LABELS` ids (uint8), 0 where mostly background."""
    stack = np.stack([fractions[t] for t in TISSUES])
    ids = np.array([TISSUE_LABEL[t] for t in TISSUES], dtype=np.uint8)
    labels = ids[stack.argmax(axis=0)]
    labels[stack.sum(axis=0) < 0.5] = 0
    return labels


def snap_landmarks(phi: np.ndarray, points: np.ndarray, sigma: float = SNAP_SIGMA) -> tuple[np.ndarray, np.ndarray]:
    """Correct the pull field ``phi`` so that every template point ``p_k`` (``K x 3`` voxels) is
    reached from a voxel centre: returns ``(phi', z)`` with ``z`` (``K x 3``, integers) and
    ``z + phi'(z) = p`` exactly at those voxels. The correction is a sum of Gaussian bumps (width
    ``sigma`` voxels) centred on ``z``, with weights solved so that it interpolates the needed
    change (at most about half a voxel per axis) exactly."""
    solved, _ = pull_points(points, phi)
    z = np.round(solved).astype(np.int64)
    need = points - z - phi[tuple(z.T)]  # K x 3: change of phi needed at each z
    gram = np.exp(-np.sum((z[:, None] - z[None]) ** 2, axis=-1) / (2.0 * sigma**2))
    weights = np.linalg.solve(gram, need)  # K x 3
    out = phi.astype(np.float64)
    for centre, weight in zip(z, weights, strict=True):
        lo = np.maximum(centre - int(4 * sigma), 0)
        hi = np.minimum(centre + int(4 * sigma) + 1, phi.shape[:3])
        axes = [np.arange(a, b) - c for a, b, c in zip(lo, hi, centre, strict=True)]
        bump = np.exp(-(axes[0][:, None, None] ** 2 + axes[1][None, :, None] ** 2 + axes[2][None, None, :] ** 2) / (2.0 * sigma**2))
        out[lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]] += bump[..., None] * weight
    return out.astype(np.float32), z


def landmark_volume(shape: tuple[int, ...], landmarks: np.ndarray) -> np.ndarray:
    """Label volume (uint8): a 19-voxel ball of id ``k + 1`` around each voxel ``landmarks[k]``."""
    volume = np.zeros(shape, dtype=np.uint8)
    for k, centre in enumerate(np.asarray(landmarks, dtype=np.int64)):
        idx = centre + BALL
        volume[tuple(idx.T)] = k + 1
    return volume


def lumir_subject(rng: np.random.Generator, grid: Grid, template: Template, max_mm: float = 3.5) -> LumirSubject:
    """One subject: the template pulled by a random smooth diffeomorphism (peak ``max_mm``),
    corrected so the landmarks sit on voxel centres, rendered as T1 MR in [0, 255]."""
    phi, z = snap_landmarks(random_diffeo(rng, grid, max_mm, cells=4), template.points)
    fractions = {name: np.clip(warp(frac, phi), 0.0, 1.0) for name, frac in template.fractions.items()}
    gain = rng.uniform(0.92, 1.08)
    clean = mix(fractions, {k: v * gain for k, v in T1_VALUES.items()}) + 6.0 * smooth_noise(rng, grid.shape, 8) * (sum(fractions.values()) > 0.5)
    image = rician(rng, clean * bias_field(rng, grid.shape, 0.1), 3.0)
    image[sum(fractions.values()) < 0.05] = 0.0  # skull-stripped: zero outside the brain
    image = np.clip(np.rint(image * (255.0 / max(float(np.percentile(image, 99.9)), 1e-6))), 0, 255).astype(np.uint8)
    residual = float(np.abs(z + phi[tuple(z.T)] - template.points).max())
    return LumirSubject(image=image, label=label_map(fractions), landmark_volume=landmark_volume(grid.shape, z),
                        phi=phi, landmarks=z.astype(np.float64), residual=residual)
