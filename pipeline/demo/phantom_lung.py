"""T2-like demo subject (lung CT): exhale (fixed, ``_0000``) and inhale (moving, ``_0001``).

A procedural chest in Hounsfield units (air -1000 outside, fat, soft tissue, spine, ribs,
heart, trachea, abdomen below the diaphragm, lungs about -850 with branching vessel trees
of about +180 inside). The inhale image is the exhale anatomy pulled by a known breathing
field ``w`` (mostly cranio-caudal, largest at the lung bases, chest-wall expansion), with
the lung density lowered by the local volume change (mass conservation). Lung masks for both
images; keypoints and landmarks on vessels with exact correspondences. Frames as in
:mod:`pipeline.demo.phantoms` (axis 2 = cranio-caudal, ``+z`` superior; ``+y`` posterior).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from learn2reg.contract import jacobian_determinant, warp, warp_labels
from pipeline.demo.phantoms import (
    Grid,
    PhantomImage,
    PhantomSubject,
    bias_field,
    correspondence_residual,
    ellipsoid,
    exp_to_grid,
    farthest_points,
    half_grid,
    occupancy,
    pull_points,
    random_diffeo,
    random_velocity,
    segments,
    smooth_noise,
)

log = logging.getLogger(__name__)

AIR = -1000.0


@dataclass(frozen=True)
class Chest:
    """Noise-free exhale chest on its grid: HU image, lung mask, vessel points (voxels)."""

    hu: np.ndarray  # X x Y x Z float32, HU
    lung: np.ndarray  # X x Y x Z uint8
    vessel_points: np.ndarray  # N x 3 voxels, on vessel centre lines
    bifurcations: np.ndarray  # M x 3 voxels, vessel branching points
    base_mm: float  # height of the lung bases (diaphragm domes), mm
    lungs_xy: tuple[tuple[float, float], tuple[float, float]]  # (x, y) of the lung centres, mm


def _blend(image: np.ndarray, occ: np.ndarray, value: float | np.ndarray) -> None:
    """Partial-volume paint in place: ``image += occ * (value - image)``."""
    image += occ * (value - image)


def _rotate(v: np.ndarray, axis: np.ndarray, angle: float) -> np.ndarray:
    """Rodrigues rotation of ``v`` about the unit ``axis`` by ``angle`` radians."""
    return v * np.cos(angle) + np.cross(axis, v) * np.sin(angle) + axis * (axis @ v) * (1.0 - np.cos(angle))


def vessel_tree(
    rng: np.random.Generator, grid: Grid, lung_sdf: np.ndarray, root: np.ndarray, directions: list[np.ndarray], generations: int = 5
) -> np.ndarray:
    """Branching tree inside a lung: rows ``(x0, y0, z0, x1, y1, z1, r0, r1, terminal)`` in mm.

    Each segment splits into two children turned by 20-40 degrees to either side, 0.75 times
    as long and 0.75 times as thick; segments are shortened to stay inside the lung."""
    def inside(p: np.ndarray) -> bool:
        v = grid.to_voxel(p[None])[0]
        return bool(ndimage.map_coordinates(lung_sdf, v[:, None], order=1, cval=10.0)[0] < -1.0)

    rows = []
    stack = [(root, d / np.linalg.norm(d), 24.0, 3.0, 0) for d in directions]
    while stack:
        start, direction, length, radius, gen = stack.pop()
        while length > 3.0 and not inside(start + direction * length):
            length *= 0.7
        if length <= 3.0:
            continue
        end = start + direction * length
        rows.append([*start, *end, radius, radius * 0.85, float(gen == generations)])
        if gen == generations:
            continue
        perp = rng.standard_normal(3)
        perp -= direction * (perp @ direction)
        perp /= np.linalg.norm(perp)
        for sign in (1.0, -1.0):
            child = _rotate(direction, perp, sign * np.deg2rad(rng.uniform(20.0, 40.0)))
            stack.append((end, child, length * 0.75, radius * 0.75, gen + 1))
    return np.asarray(rows, dtype=np.float64).reshape(-1, 9)


def _lungs(rng: np.random.Generator, grid: Grid, outside: np.ndarray) -> tuple[np.ndarray, float, list[tuple[float, float]]]:
    """Signed distance (mm) of both lungs, kept out of the ``outside`` region (its sdf < 0);
    also the height of the bases (mm) and the lung centres ``(x, y)`` (mm)."""
    x, y, z = grid.axes()
    base = rng.uniform(-40.0, -30.0)
    sdf = np.full(grid.shape, np.inf, dtype=np.float32)
    centres = []
    for side in (-1.0, 1.0):
        cx, cy = side * rng.uniform(20.0, 24.0), rng.uniform(-2.0, 4.0)
        r = np.array([rng.uniform(15.0, 18.0), rng.uniform(24.0, 29.0), rng.uniform(60.0, 68.0)])
        shape = ellipsoid(grid, (cx, cy, base - 25.0 + r[2]), r, 0.06 * smooth_noise(rng, grid.shape, 4))
        dome = base - 14.0 * ((x - cx) ** 2 / r[0] ** 2 + (y - cy) ** 2 / r[1] ** 2) - z
        sdf = np.minimum(sdf, np.maximum(shape, dome))
        centres.append((cx, cy))
    return np.maximum(sdf, -outside), base, centres


def chest_anatomy(rng: np.random.Generator, grid: Grid) -> Chest:
    """Procedural exhale chest with random proportions (see the module docstring)."""
    x, y, z = grid.axes()
    ax, ay, fat = rng.uniform(46.0, 52.0), rng.uniform(34.0, 40.0), rng.uniform(3.0, 6.0)
    body = np.broadcast_to((np.sqrt((x / ax) ** 2 + (y / ay) ** 2) - 1.0) * min(ax, ay), grid.shape)
    heart = ellipsoid(grid, (4.0, -12.0, rng.uniform(-25.0, -15.0)), (17.0, 15.0, 22.0))
    spine = np.broadcast_to(np.sqrt(x**2 + (y - (ay - 12.0)) ** 2) - 8.0, grid.shape)
    # lungs stay 2 mm clear of heart and spine and 8 mm inside the skin (ribs lie outside them)
    lung, base, centres = _lungs(rng, grid, np.minimum(np.minimum(heart, spine) - 2.0, -(body + fat + 8.0)))
    hu = np.full(grid.shape, AIR, dtype=np.float32)
    _blend(hu, occupancy(body, 1.5), -100.0)
    _blend(hu, occupancy(body + fat, 1.5), 40.0)
    abdomen = np.maximum(body + fat + 3.0, z - (base + 4.0 - 10.0 * ((x / ax) ** 2 + (y / ay) ** 2)))
    _blend(hu, occupancy(abdomen, 1.5), 55.0)
    _blend(hu, occupancy(heart, 1.5), 45.0)
    _blend(hu, occupancy(spine, 1.5), 250.0 + 250.0 * (0.5 + 0.5 * np.cos(2 * np.pi * z / 25.0)))
    ring = (np.sqrt((x / (ax - fat - 4.0)) ** 2 + (y / (ay - fat - 4.0)) ** 2) - 1.0) * (ay - fat - 4.0)
    phase = rng.uniform(0.0, 22.0)
    rib_z = np.mod(z - 0.25 * y - phase, 22.0) - 11.0
    ribs = np.maximum(np.sqrt(ring**2 + rib_z**2) - 2.5, -(y + 0.6 * ay))
    _blend(hu, occupancy(ribs, 1.5), 700.0)
    trachea = np.broadcast_to(np.sqrt(x**2 + (y + 6.0) ** 2) - 6.0 + np.maximum(10.0 - z, 0.0) * 10.0, grid.shape)
    _blend(hu, occupancy(trachea, 1.5), AIR)
    lung_occ = occupancy(lung, 1.5)
    _blend(hu, lung_occ, -850.0 + 15.0 * smooth_noise(rng, grid.shape, 8))
    tree = np.concatenate([_tree(rng, grid, lung, (cx, cy)) for cx, cy in centres])
    vessels, _, _ = segments(grid, tree[:, 0:3], tree[:, 3:6], tree[:, 6], tree[:, 7])
    _blend(hu, occupancy(vessels, 1.5) * lung_occ, 180.0)
    return Chest(
        hu=hu,
        lung=(lung < 0).astype(np.uint8),
        vessel_points=grid.to_voxel(_centre_line(tree)),
        bifurcations=grid.to_voxel(tree[tree[:, 8] == 0, 3:6]),
        base_mm=base,
        lungs_xy=(centres[0], centres[1]),
    )


def _tree(rng: np.random.Generator, grid: Grid, lung: np.ndarray, centre: tuple[float, float]) -> np.ndarray:
    """The vessel tree of one lung, rooted at its hilum (medial, mid-height)."""
    side = np.sign(centre[0])
    root = np.array([centre[0] - side * 9.0, centre[1], 5.0])
    dirs = [np.array([0.3 * side, 0.0, 1.0]), np.array([side, 0.2, 0.0]), np.array([0.3 * side, 0.1, -1.0]), np.array([0.2 * side, 1.0, -0.3])]
    return vessel_tree(rng, grid, lung, root, dirs)


def _centre_line(tree: np.ndarray, step: float = 1.0, min_radius: float = 0.5) -> np.ndarray:
    """Points every ``step`` mm along the segments thicker than ``min_radius`` mm (``N x 3`` mm)."""
    points = []
    for row in tree[tree[:, 6] >= min_radius]:
        p0, p1 = row[0:3], row[3:6]
        n = max(int(np.linalg.norm(p1 - p0) / step), 1)
        points.append(p0 + np.linspace(0.0, 1.0, n + 1)[:, None] * (p1 - p0))
    return np.concatenate(points) if points else np.zeros((0, 3))


def breathing_velocity(rng: np.random.Generator, grid: Grid, chest: Chest) -> np.ndarray:
    """Stationary velocity (``X x Y x Z x 3`` voxels, inhale grid) whose flow maps an inhale
    point to its exhale position: upwards (``+z``) by up to 15-22 mm at the lung bases, fading
    towards the apices and the chest wall, and a 5-9 % inward pull of the chest wall."""
    x, y, z = grid.axes()
    top = (grid.shape[2] - 1) / 2.0 * grid.spacing[2]
    ramp = np.clip((top - z) / (top - chest.base_mm), 0.0, 1.0) ** 1.5
    bump = sum(np.exp(-((x - cx) ** 2) / (2 * 16.0**2) - (y - cy) ** 2 / (2 * 22.0**2)) for cx, cy in chest.lungs_xy)
    amplitude, expansion = rng.uniform(15.0, 22.0), rng.uniform(0.05, 0.09)
    vz = amplitude * ramp * np.minimum(bump, 1.0)
    vx = -0.6 * expansion * x * ramp
    vy = -expansion * y * ramp
    v = np.stack([np.broadcast_to(c, grid.shape) / s for c, s in zip((vx, vy, vz), grid.spacing, strict=True)], axis=-1)
    return (v + random_velocity(rng, grid, 1.0, 4)).astype(np.float32)


def inhale_image(chest_hu: np.ndarray, lung: np.ndarray, w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Noise-free inhale HU image and lung mask on the moving grid: the exhale image pulled by
    ``w``; lung parenchyma density scaled by ``det(I + grad w)`` (mass conservation)."""
    hu = warp(chest_hu, w, order=1, cval=AIR)
    mask = warp_labels(lung, w)
    parenchyma = (mask > 0) & (hu < -400.0)
    det = jacobian_determinant(w).astype(np.float32)
    hu[parenchyma] = (hu[parenchyma] - AIR) * det[parenchyma] + AIR
    return hu, mask


def _to_ct(rng: np.random.Generator, hu: np.ndarray, noise: float = 12.0) -> np.ndarray:
    """Apply a 2 % smooth multiplicative bias to the attenuation (``HU + 1000``), add Gaussian
    noise (HU) and store as int16 in the CT range [-1024, 3071]."""
    hu = (hu - AIR) * bias_field(rng, hu.shape, 0.02) + AIR + rng.normal(0.0, noise, hu.shape)
    return np.clip(np.round(hu), -1024, 3071).astype(np.int16)


def lung_points(
    rng: np.random.Generator, chest_lung: np.ndarray, candidates: np.ndarray, bifurcations: np.ndarray, w: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Fixed (integer voxel) and exact moving keypoints (100) and landmarks (30) on vessels
    well inside the lung: ``(kp_fixed, kp_moving, lm_fixed, lm_moving)``."""
    inner = ndimage.binary_erosion(chest_lung > 0, iterations=2)
    n = np.asarray(chest_lung.shape)

    def usable(points: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        points = np.unique(np.round(points), axis=0)
        points = points[np.all((points >= 0) & (points <= n - 1), axis=1)]
        points = points[inner[tuple(points.astype(int).T)]]
        moving, _ = pull_points(points, w)
        ok = np.all((moving >= 1) & (moving <= n - 2), axis=1)
        return points[ok], moving[ok]

    lm_cand, lm_mov = usable(np.concatenate([bifurcations, candidates]) if len(bifurcations) else candidates)
    pick = farthest_points(rng, lm_cand, 30)
    lm_fixed, lm_moving = lm_cand[pick], lm_mov[pick]
    kp_cand, kp_mov = usable(candidates)
    keep = ~np.any(np.all(kp_cand[:, None, :] == lm_fixed[None], axis=2), axis=1)
    pick = farthest_points(rng, kp_cand[keep], 100, exclude=lm_fixed)
    return kp_cand[keep][pick], kp_mov[keep][pick], lm_fixed, lm_moving


def lung_subject(rng: np.random.Generator, grid: Grid) -> PhantomSubject:
    """One T2-like subject: exhale (fixed) and inhale (moving) CT, lung masks, points."""
    chest = chest_anatomy(rng, grid)
    phi = random_diffeo(rng, grid, 3.0, cells=4)
    hu = warp(chest.hu, phi, order=1, cval=AIR)
    lung = warp_labels(chest.lung, phi)
    vessels, _ = pull_points(chest.vessel_points, phi)
    forks, _ = pull_points(chest.bifurcations, phi)
    w = exp_to_grid(breathing_velocity(rng, half_grid(grid), chest), grid)
    inhale, inhale_lung = inhale_image(hu, lung, w)
    kp_f, kp_m, lm_f, lm_m = lung_points(rng, lung, vessels, forks, w)
    residual = max(correspondence_residual(kp_f, kp_m, w), correspondence_residual(lm_f, lm_m, w))
    images = (
        PhantomImage(_to_ct(rng, hu), mask=lung, keypoints=kp_f, landmarks=lm_f),
        PhantomImage(_to_ct(rng, inhale), mask=inhale_lung, keypoints=kp_m, landmarks=lm_m),
    )
    return PhantomSubject(images=images, pull=w, residual=residual)
