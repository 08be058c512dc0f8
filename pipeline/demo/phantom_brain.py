"""T1-like demo subject (CuRIOUS): brain MR (fixed, ``_0000``) and ultrasound (moving, ``_0001``).

One procedural brain (scalp, CSF, cortex with sulci, white matter, ventricles, falx, tumour) is
rendered twice with different physics: an MR-like image (FLAIR-ish contrast, bias field, Rician
noise) and an ultrasound-like image (echogenicity that does not follow MR contrast, bright
interfaces, speckle, depth attenuation, a fan-shaped field of view with zeros outside). The
US anatomy is displaced by a known pull field ``w`` (rigid motion + small brain shift), which
gives exact landmark correspondences. Grids and frames as in :mod:`pipeline.demo.phantoms`.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from learn2reg.contract import compose_affine, physical_to_voxel_affine, warp
from pipeline.demo.phantoms import (
    Grid,
    PhantomImage,
    PhantomSubject,
    bias_field,
    composite,
    correspondence_residual,
    ellipsoid,
    farthest_points,
    mix,
    occupancy,
    pull_points,
    random_diffeo,
    rician,
    rotation_matrix,
    smooth_noise,
    speckle,
)

log = logging.getLogger(__name__)

TISSUES = ("scalp", "csf", "gm", "wm", "sulci", "ventricle", "falx", "tumour")
MR_VALUES = {"scalp": 350.0, "csf": 60.0, "gm": 600.0, "wm": 500.0, "sulci": 60.0, "ventricle": 40.0, "falx": 150.0, "tumour": 900.0}
US_VALUES = {"scalp": 0.0, "csf": 0.05, "gm": 0.22, "wm": 0.32, "sulci": 0.9, "ventricle": 0.02, "falx": 1.0, "tumour": 0.65}
IMPEDANCE = {"scalp": 1.0, "csf": 1.0, "gm": 1.3, "wm": 1.4, "sulci": 1.0, "ventricle": 1.0, "falx": 1.8, "tumour": 1.7}
LANDMARK_TISSUES = ("sulci", "ventricle", "falx", "tumour")


@dataclass(frozen=True)
class Fan:
    """Ultrasound field of view: a cone from ``apex`` (mm) around unit ``axis``."""

    apex: np.ndarray  # (3,) mm, centred grid frame
    axis: np.ndarray  # (3,) unit vector
    half_angle: float  # radians
    depth: tuple[float, float]  # near and far limit, mm

    def polar(self, mm: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Depth from the apex (mm) and angle to the axis (radians) of ``... x 3`` mm points."""
        rel = mm - self.apex
        depth = np.linalg.norm(rel, axis=-1)
        cos = (rel @ self.axis) / np.maximum(depth, 1e-6)
        return depth, np.arccos(np.clip(cos, -1.0, 1.0))

    def contains(self, mm: np.ndarray, margin: float = 0.0) -> np.ndarray:
        """Boolean: the points (``... x 3`` mm) lie in the fan, ``margin`` mm inside its edges."""
        depth, angle = self.polar(mm)
        lateral = depth * np.sin(np.maximum(self.half_angle - angle, 0.0))
        return (depth >= self.depth[0] + margin) & (depth <= self.depth[1] - margin) & (angle < self.half_angle) & (lateral >= margin)


@dataclass(frozen=True)
class BrainAnatomy:
    """A subject's brain on the fixed grid: tissue fractions (``X x Y x Z``), texture, fan."""

    fractions: dict[str, np.ndarray]
    texture: np.ndarray  # X x Y x Z smooth noise (tumour heterogeneity)
    fan: Fan


def brain_anatomy(rng: np.random.Generator, grid: Grid) -> BrainAnatomy:
    """Procedural brain with random parameters, warped by a random smooth diffeomorphism."""
    x, y, z = grid.axes()
    s = rng.uniform(0.95, 1.03)
    top = -2.0 + 27.0 * s
    head = ellipsoid(grid, (0.0, 0.0, -2.0), (28.0 * s, 30.0 * s, 27.0 * s))
    brain = head + 3.0
    sulcus_sheet = (np.abs(smooth_noise(rng, grid.shape, 9)) - 0.12) * 6.0
    sulci = np.maximum(sulcus_sheet, np.maximum(brain + 1.0, -(brain + 7.0)))
    sv = rng.uniform(0.8, 1.2)
    wobble = 0.1 * smooth_noise(rng, grid.shape, 4)
    vent = np.minimum(
        ellipsoid(grid, (6.0, -2.0, 3.0), (3.5 * sv, 13.0 * sv, 5.0 * sv), wobble),
        ellipsoid(grid, (-6.0, -2.0, 3.0), (3.5 * sv, 13.0 * sv, 5.0 * sv), wobble),
    )
    falx = np.maximum(np.maximum(np.abs(x) - 0.8, brain + 2.0), -z)
    side = rng.choice([-1.0, 1.0])
    centre = np.array([side * rng.uniform(8.0, 14.0), rng.uniform(-10.0, 8.0), rng.uniform(4.0, 10.0)])
    radius = rng.uniform(6.0, 8.5)
    tumour = ellipsoid(grid, centre, (radius,) * 3, 0.15 * smooth_noise(rng, grid.shape, 5))
    wm = brain + 5.5 + 1.5 * smooth_noise(rng, grid.shape, 6)
    layers = [("scalp", head), ("csf", brain), ("gm", brain + 1.5), ("wm", wm), ("sulci", sulci), ("ventricle", vent), ("falx", falx), ("tumour", tumour)]
    fractions = composite([(name, occupancy(np.broadcast_to(sdf, grid.shape), 1.0)) for name, sdf in layers])
    phi = random_diffeo(rng, grid, 3.0, cells=4)
    fractions = {name: np.clip(warp(frac, phi), 0.0, 1.0) for name, frac in fractions.items()}
    apex = np.array([centre[0] * 0.5, centre[1] * 0.5, top + 1.0])
    axis = (centre - apex) / np.linalg.norm(centre - apex)
    fan = Fan(apex=apex, axis=axis, half_angle=np.deg2rad(38.0), depth=(2.0, 46.0))
    return BrainAnatomy(fractions=fractions, texture=smooth_noise(rng, grid.shape, 8), fan=fan)


def render_mr(rng: np.random.Generator, anatomy: BrainAnatomy) -> np.ndarray:
    """MR-like image (``X x Y x Z`` float32, arbitrary units): FLAIR-ish tissue values, tumour
    texture, a smooth multiplicative bias field and Rician noise."""
    clean = mix(anatomy.fractions, MR_VALUES) + 120.0 * anatomy.fractions["tumour"] * anatomy.texture
    clean *= bias_field(rng, clean.shape, 0.15)
    return rician(rng, clean, 15.0)


def echogenicity(anatomy: BrainAnatomy) -> np.ndarray:
    """Noise-free ultrasound reflectivity on the fixed grid (``X x Y x Z``, about [0, 1]):
    tissue echogenicity plus bright acoustic interfaces."""
    echo = mix(anatomy.fractions, US_VALUES) + 0.2 * anatomy.fractions["tumour"] * np.abs(anatomy.texture)
    edges = ndimage.gaussian_gradient_magnitude(mix(anatomy.fractions, IMPEDANCE, background=1.0), 0.8)
    return (echo + 0.35 * np.clip(edges / max(float(np.percentile(edges, 99.5)), 1e-6), 0.0, 1.0)).astype(np.float32)


def render_us(rng: np.random.Generator, grid: Grid, anatomy: BrainAnatomy, w: np.ndarray) -> np.ndarray:
    """Ultrasound-like image on the moving grid (``X x Y x Z`` float32 in [0, 255]): the
    echogenicity pulled by ``w`` (moving voxel ``z`` shows the fixed anatomy at ``z + w(z)``),
    speckle, depth attenuation, zero outside the fan."""
    echo = warp(echogenicity(anatomy), w)
    x, y, z = grid.axes()
    mm = np.stack(np.broadcast_arrays(x, y, z), axis=-1)
    depth, _ = anatomy.fan.polar(mm)
    inside = anatomy.fan.contains(mm)
    gain = 160.0 * np.exp(-0.012 * depth)
    us = echo * speckle(rng, grid.shape) * gain + 4.0 * np.abs(rng.standard_normal(grid.shape))
    return np.where(inside, np.clip(us, 0.0, 255.0), 0.0).astype(np.float32)


def brain_motion(rng: np.random.Generator, grid: Grid) -> np.ndarray:
    """Known pull field ``w`` (``X x Y x Z x 3`` voxels, moving grid): a small brain shift
    followed by a rigid motion of up to 4 degrees and 5 mm about the grid centre."""
    rot = rotation_matrix(np.deg2rad(rng.uniform(-4.0, 4.0, 3)))
    shift = rng.uniform(-5.0, 5.0, 3)
    rigid = np.eye(4)
    rigid[:3, :3], rigid[:3, 3] = rot, shift
    index_to_mm = np.eye(4)
    index_to_mm[:3, :3] = np.diag(grid.spacing)
    index_to_mm[:3, 3] = -(np.asarray(grid.shape) - 1) / 2.0 * np.asarray(grid.spacing)
    matrix = physical_to_voxel_affine(rigid, index_to_mm, index_to_mm)
    return compose_affine(random_diffeo(rng, grid, 2.0, cells=4), matrix)


def tissue_map(anatomy: BrainAnatomy) -> np.ndarray:
    """Dominant tissue per voxel: index into ``TISSUES`` plus one, 0 where mostly background."""
    stack = np.stack([anatomy.fractions[t] for t in TISSUES])
    labels = stack.argmax(axis=0).astype(np.uint8) + 1
    labels[stack.sum(axis=0) < 0.5] = 0
    return labels


def brain_landmarks(
    rng: np.random.Generator, grid: Grid, anatomy: BrainAnatomy, w: np.ndarray, count: int = 20
) -> tuple[np.ndarray, np.ndarray, float]:
    """Landmarks on distinctive structures (borders of tumour, ventricles, sulci, falx) whose
    moving position lies inside the fan. Returns fixed voxels (``N x 3``, integers), the exact
    moving points and the largest correspondence residual (voxels)."""
    labels = tissue_map(anatomy)
    distinct = np.isin(labels, [TISSUES.index(t) + 1 for t in LANDMARK_TISSUES])
    border = ndimage.maximum_filter(labels, 3) != ndimage.minimum_filter(labels, 3)
    candidates = np.argwhere(distinct & border).astype(np.float64)
    if len(candidates) > 4000:
        candidates = candidates[np.sort(rng.choice(len(candidates), 4000, replace=False))]
    moving, _ = pull_points(candidates, w)
    n = np.asarray(grid.shape)
    ok = anatomy.fan.contains(grid.to_mm(moving), margin=4.0) & np.all((moving >= 2) & (moving <= n - 3), axis=1)
    candidates, moving = candidates[ok], moving[ok]
    if len(candidates) < count:
        log.warning("only %d landmark candidates inside the fan (wanted %d)", len(candidates), count)
    pick = farthest_points(rng, candidates, count)
    fixed, moving = candidates[pick], moving[pick]
    return fixed, moving, correspondence_residual(fixed, moving, w)


def curious_subject(rng: np.random.Generator, grid: Grid) -> PhantomSubject:
    """One T1-like subject: MR (fixed, with landmarks) and US (moving, with landmarks)."""
    anatomy = brain_anatomy(rng, grid)
    w = brain_motion(rng, grid)
    mr = render_mr(rng, anatomy)
    us = render_us(rng, grid, anatomy, w)
    fixed, moving, residual = brain_landmarks(rng, grid, anatomy, w)
    images = (PhantomImage(mr, landmarks=fixed), PhantomImage(us, landmarks=moving))
    return PhantomSubject(images=images, pull=w, residual=residual)
