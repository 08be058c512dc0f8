"""Building blocks of the synthetic demo tasks: grids, shapes, deformations, intensity models.

Frames: a :class:`Grid` places voxel ``i`` of an axis with ``n`` voxels at
``(i - (n - 1) / 2) * spacing`` millimetres (centred, array axis order, no rotation; with the
identity direction of ``learn2reg.io.Geometry`` the axes are LPS: ``+x`` = patient left,
``+y`` = posterior, ``+z`` = superior). Shapes are signed distances in mm (negative inside).
Fields follow ``learn2reg.contract``: ``X x Y x Z x 3``, voxel units, pull direction; all
warping and composition goes through that module. numpy/scipy only (no torch).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from learn2reg.contract import compose, resample_field, resize_image, sample_field


def make_rng(seed: int, *keys: int) -> np.random.Generator:
    """Independent, reproducible stream for ``(seed, *keys)`` (e.g. task, subject)."""
    return np.random.default_rng(np.random.SeedSequence([int(seed), *map(int, keys)]))


@dataclass(frozen=True)
class Grid:
    """Voxel grid: ``shape`` (X, Y, Z) and ``spacing`` (mm per voxel along each array axis)."""

    shape: tuple[int, int, int]
    spacing: tuple[float, float, float]

    def axes(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Open, broadcastable mm coordinates: ``X x 1 x 1``, ``1 x Y x 1``, ``1 x 1 x Z`` (float32)."""
        out = []
        for k, (n, s) in enumerate(zip(self.shape, self.spacing, strict=True)):
            view = [1, 1, 1]
            view[k] = n
            out.append(((np.arange(n, dtype=np.float32) - (n - 1) / 2.0) * s).reshape(view))
        return out[0], out[1], out[2]

    def to_voxel(self, mm: np.ndarray) -> np.ndarray:
        """Centred mm coordinates (``N x 3``) -> voxel coordinates (``N x 3``)."""
        return np.asarray(mm, dtype=np.float64) / self.spacing + (np.asarray(self.shape) - 1) / 2.0

    def to_mm(self, voxels: np.ndarray) -> np.ndarray:
        """Voxel coordinates (``N x 3``) -> centred mm coordinates (``N x 3``)."""
        return (np.asarray(voxels, dtype=np.float64) - (np.asarray(self.shape) - 1) / 2.0) * self.spacing

    def mm_to_voxel_vector(self, mm: Sequence[float] | np.ndarray) -> np.ndarray:
        """A displacement in mm -> the same displacement in voxels, per axis."""
        return np.asarray(mm, dtype=np.float64) / np.asarray(self.spacing)


# ----------------------------------------------------------------------------------------- shapes


def ellipsoid(grid: Grid, centre: Sequence[float] | np.ndarray, radii: Sequence[float] | np.ndarray,
              wobble: np.ndarray | None = None) -> np.ndarray:
    """Approximate signed distance (mm, ``X x Y x Z``) to an axis-aligned ellipsoid.

    ``wobble`` (optional ``X x Y x Z``, dimensionless) scales the radii locally by ``1 + wobble``,
    for irregular organ-like outlines.
    """
    x, y, z = grid.axes()
    scale = 1.0 if wobble is None else 1.0 + wobble
    q = [(c - c0) / (r * scale) for c, c0, r in zip((x, y, z), centre, radii, strict=True)]
    k0 = np.sqrt(q[0] ** 2 + q[1] ** 2 + q[2] ** 2)
    return ((k0 - 1.0) * min(radii) * scale).astype(np.float32)


def tube(grid: Grid, points: np.ndarray, radii: Sequence[float] | np.ndarray, margin: float = 4.0) -> tuple[np.ndarray, np.ndarray]:
    """Signed distance (mm) to a tapered tube along a polyline, and the nearest curve parameter.

    ``points``: ``K x 3`` mm; ``radii``: ``K`` mm at the points (linear in between). Returns
    ``(sdf, t)``, both ``X x Y x Z`` float32; ``t`` in ``[0, 1]`` is the arc position (by
    vertex index) of the nearest point. See :func:`segments` for ``margin``.
    """
    points = np.asarray(points, dtype=np.float64)
    radii = np.asarray(radii, dtype=np.float64)
    sdf, index, t = segments(grid, points[:-1], points[1:], radii[:-1], radii[1:], margin)
    return sdf, ((index + t) / (len(points) - 1)).astype(np.float32)


def segments(
    grid: Grid, starts: np.ndarray, ends: np.ndarray, r_start: np.ndarray, r_end: np.ndarray, margin: float = 4.0
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Signed distance (mm) to a union of tapered segments (``S x 3`` mm ends, ``S`` radii).

    Returns ``(sdf, index, t)`` on the grid (``X x Y x Z``): distance, the nearest segment's
    index (int32) and the parameter ``t`` in [0, 1] along it. Only voxels within ``margin`` mm
    of a segment's surface are computed: elsewhere ``sdf = +inf``, ``index = S - 1``, ``t = 1``.
    """
    sdf = np.full(grid.shape, np.inf, dtype=np.float32)
    index = np.full(grid.shape, len(starts) - 1, dtype=np.int32)
    tpar = np.ones(grid.shape, dtype=np.float32)
    axes = [a.ravel() for a in grid.axes()]
    for i, (p0, p1, r0, r1) in enumerate(zip(np.asarray(starts, float), np.asarray(ends, float), r_start, r_end, strict=True)):
        reach = max(r0, r1) + margin
        lo, hi = np.minimum(p0, p1) - reach, np.maximum(p0, p1) + reach
        box = tuple(slice(int(np.searchsorted(a, lo[k])), int(np.searchsorted(a, hi[k], side="right"))) for k, a in enumerate(axes))
        if any(b.start >= b.stop for b in box):
            continue
        seg_sdf, seg_t = _segment([a[b] for a, b in zip(axes, box, strict=True)], p0, p1, float(r0), float(r1))
        closer = seg_sdf < sdf[box]
        sdf[box][closer] = seg_sdf[closer]
        index[box][closer] = i
        tpar[box][closer] = seg_t[closer]
    return sdf, index, tpar


def _segment(axes: Sequence[np.ndarray], p0: np.ndarray, p1: np.ndarray, r0: float, r1: float) -> tuple[np.ndarray, np.ndarray]:
    """Tapered segment on the block spanned by 1-D mm ``axes``: signed distance (mm) and the
    segment parameter ``t`` in [0, 1] of the nearest point."""
    x, y, z = axes[0][:, None, None], axes[1][None, :, None], axes[2][None, None, :]
    d = p1 - p0
    length2 = max(float(d @ d), 1e-12)
    rel = (x - p0[0], y - p0[1], z - p0[2])
    t = np.clip((rel[0] * d[0] + rel[1] * d[1] + rel[2] * d[2]) / length2, 0.0, 1.0)
    dist = np.sqrt(sum((r - t * dk) ** 2 for r, dk in zip(rel, d, strict=True)))
    return (dist - (r0 + t * (r1 - r0))).astype(np.float32), t.astype(np.float32)


def occupancy(sdf: np.ndarray, width: float) -> np.ndarray:
    """Soft partial-volume occupancy in [0, 1] of a signed distance (mm); edge ``width`` mm."""
    return np.clip(0.5 - sdf / width, 0.0, 1.0).astype(np.float32)


def paint(labels: np.ndarray, sdf: np.ndarray, value: int, within: np.ndarray | None = None) -> None:
    """Set ``labels`` to ``value`` where ``sdf < 0`` (and ``within``, if given); in place."""
    inside = sdf < 0
    if within is not None:
        inside &= within
    labels[inside] = value


def composite(layers: Sequence[tuple[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """Stack soft occupancies (``X x Y x Z`` in [0, 1]) in order, each layer covering the ones
    before it. Returns tissue name -> volume fraction (the fractions sum to at most 1)."""
    fractions: dict[str, np.ndarray] = {}
    for name, occ in layers:
        for key in fractions:
            fractions[key] = fractions[key] * (1.0 - occ)
        fractions[name] = fractions.get(name, 0.0) + occ
    return fractions


def mix(fractions: dict[str, np.ndarray], values: dict[str, float], background: float = 0.0) -> np.ndarray:
    """Partial-volume intensity: ``sum_t fraction_t * value_t`` plus ``background`` for the rest."""
    total = sum(fractions.values())
    out = background * (1.0 - total)
    for name, frac in fractions.items():
        out = out + frac * values[name]
    return np.asarray(out, dtype=np.float32)


# ------------------------------------------------------------------------------------ deformations


def smooth_noise(rng: np.random.Generator, shape: Sequence[int], cells: int | Sequence[int]) -> np.ndarray:
    """Smooth random scalar field (``X x Y x Z`` float32): standard normal values on a coarse
    grid of ``cells`` control points per axis, interpolated by cubic splines on the
    corner-aligned grid (``resize_image``'s rule, applied as one 1-D matrix per axis)."""
    cells = (cells,) * 3 if isinstance(cells, int) else tuple(cells)
    coarse = rng.standard_normal(cells)
    mx, my, mz = (resize_image(np.eye(c), (n, c), order=3) for n, c in zip(shape, cells, strict=True))
    return np.einsum("ia,jb,kc,abc->ijk", mx, my, mz, coarse, optimize=True).astype(np.float32)


def exp_velocity(velocity: np.ndarray, steps: int = 6) -> np.ndarray:
    """Scaling and squaring: the pull field of the flow of a stationary ``velocity``
    (``X x Y x Z x 3``, voxels), composed with ``learn2reg.contract.compose``."""
    u = (velocity / 2.0**steps).astype(np.float32)
    for _ in range(steps):
        u = compose(u, u)
    return u


def random_velocity(rng: np.random.Generator, grid: Grid, max_mm: float | Sequence[float], cells: int | Sequence[int]) -> np.ndarray:
    """Smooth random velocity, ``X x Y x Z x 3`` voxels: each component is scaled to peak at
    ``max_mm`` millimetres (a scalar or one value per axis), then multiplied by
    :func:`border_taper` so that it vanishes at the faces of the grid."""
    max_vox = grid.mm_to_voxel_vector(np.broadcast_to(np.asarray(max_mm, dtype=np.float64), (3,)))
    taper = border_taper(grid.shape)
    comps = []
    for k in range(3):
        c = smooth_noise(rng, grid.shape, cells)
        comps.append(c * (max_vox[k] / max(float(np.abs(c).max()), 1e-6)) * taper)
    return np.stack(comps, axis=-1).astype(np.float32)


def border_taper(shape: Sequence[int], width: float = 0.2) -> np.ndarray:
    """Smooth window (``X x Y x Z`` float32): 1 inside, falling to 0 at the faces over the
    outer ``width`` fraction of each axis, so random motion never pulls from outside the grid."""
    out = np.ones(tuple(shape), dtype=np.float32)
    for k, n in enumerate(shape):
        pos = np.linspace(0.0, 1.0, n)
        ramp = np.clip(np.minimum(pos, 1.0 - pos) / width, 0.0, 1.0)
        view = [1, 1, 1]
        view[k] = n
        out = out * (0.5 - 0.5 * np.cos(np.pi * ramp)).reshape(view).astype(np.float32)
    return out


def half_grid(grid: Grid) -> Grid:
    """The corner-aligned grid with half as many voxels per axis over the same extent."""
    sx, sy, sz = (max(n // 2, 2) for n in grid.shape)
    shape = (sx, sy, sz)
    px, py, pz = (s * (n - 1) / (h - 1) for n, h, s in zip(grid.shape, shape, grid.spacing, strict=True))
    return Grid(shape, (px, py, pz))


def exp_to_grid(velocity_half: np.ndarray, grid: Grid) -> np.ndarray:
    """Exponentiate a velocity given on :func:`half_grid` (voxels of that grid) and resample
    the resulting pull field to ``grid`` (``learn2reg.contract.resample_field``, linear)."""
    return resample_field(exp_velocity(velocity_half), grid.shape)


def random_diffeo(rng: np.random.Generator, grid: Grid, max_mm: float | Sequence[float], cells: int | Sequence[int] = 5) -> np.ndarray:
    """Random smooth diffeomorphic pull field (``X x Y x Z x 3``, voxels of ``grid``): the
    exponential of :func:`random_velocity`, computed on the half-resolution grid."""
    return exp_to_grid(random_velocity(rng, half_grid(grid), max_mm, cells), grid)


def invert_field(w: np.ndarray, iterations: int = 50, tol: float = 1e-6) -> np.ndarray:
    """Inverse of the pull field ``w`` on the same grid by fixed-point iteration
    ``v <- -w(x + v)`` (``w`` sampled linearly via ``compose``), until the largest update is
    below ``tol`` voxels. ``X x Y x Z x 3`` voxels."""
    v = -w.astype(np.float32)
    for _ in range(iterations):
        update = compose(v, w)  # v + w(x + v): zero at the solution
        v = v - update
        if float(np.abs(update).max()) < tol:
            break
    return v


def pull_points(points: np.ndarray, w: np.ndarray, iterations: int = 100, tol: float = 1e-6) -> tuple[np.ndarray, float]:
    """Solve ``z + w(z) = x`` for every point ``x`` (``N x 3`` voxels), ``w`` sampled linearly.

    With ``w`` the pull field that forms image B from image A (``B(z) = A(z + w(z))``), the
    point ``x`` of A corresponds to ``z`` of B. Returns ``(z, max residual in voxels)``.
    """
    x = np.asarray(points, dtype=np.float64)
    z = x.copy()
    for _ in range(iterations):
        z_new = x - sample_field(w, z, order=1)
        step = float(np.abs(z_new - z).max()) if len(z) else 0.0
        z = z_new
        if step < tol:
            break
    residual = float(np.abs(z + sample_field(w, z, order=1) - x).max()) if len(z) else 0.0
    return z, residual


def correspondence_residual(fixed: np.ndarray, moving: np.ndarray, w: np.ndarray) -> float:
    """Largest ``|z + w(z) - x|`` (voxels, ``w`` linear) over point pairs ``x`` (fixed, ``N x 3``)
    and ``z`` (moving, ``N x 3``); 0 for no points."""
    if not len(fixed):
        return 0.0
    return float(np.abs(np.asarray(moving) + sample_field(w, moving, order=1) - np.asarray(fixed)).max())


def rotation_matrix(angles_rad: Sequence[float] | np.ndarray) -> np.ndarray:
    """3x3 rotation ``Rz @ Ry @ Rx`` from angles about the x, y, z axes (radians)."""
    ax, ay, az = angles_rad
    rx = np.array([[1, 0, 0], [0, np.cos(ax), -np.sin(ax)], [0, np.sin(ax), np.cos(ax)]])
    ry = np.array([[np.cos(ay), 0, np.sin(ay)], [0, 1, 0], [-np.sin(ay), 0, np.cos(ay)]])
    rz = np.array([[np.cos(az), -np.sin(az), 0], [np.sin(az), np.cos(az), 0], [0, 0, 1]])
    return rz @ ry @ rx


# ------------------------------------------------------------------------------- intensity models


def bias_field(rng: np.random.Generator, shape: Sequence[int], strength: float, cells: int = 3) -> np.ndarray:
    """Smooth multiplicative bias ``exp(strength * n)`` with ``n`` smooth noise scaled to
    ``[-1, 1]``; ``X x Y x Z`` float32 around 1."""
    n = smooth_noise(rng, shape, cells)
    return np.exp(strength * n / max(float(np.abs(n).max()), 1e-6)).astype(np.float32)


def speckle(rng: np.random.Generator, shape: Sequence[int], correlation_vox: float = 0.7) -> np.ndarray:
    """Multiplicative ultrasound speckle: the magnitude of a spatially correlated complex
    Gaussian field (Rayleigh distributed), normalised to mean 1; ``X x Y x Z`` float32."""
    re = ndimage.gaussian_filter(rng.standard_normal(shape), correlation_vox)
    im = ndimage.gaussian_filter(rng.standard_normal(shape), correlation_vox)
    mag = np.hypot(re, im)
    return (mag / mag.mean()).astype(np.float32)


def rician(rng: np.random.Generator, image: np.ndarray, sigma: float) -> np.ndarray:
    """Magnitude-MR noise: ``|image + n1 + i n2|`` with Gaussian ``n1, n2`` of std ``sigma``."""
    n1 = rng.normal(0.0, sigma, image.shape)
    n2 = rng.normal(0.0, sigma, image.shape)
    return np.hypot(image + n1, n2).astype(np.float32)


def farthest_points(rng: np.random.Generator, candidates: np.ndarray, count: int, exclude: np.ndarray | None = None) -> np.ndarray:
    """Indices of ``count`` well-spread rows of ``candidates`` (``N x 3``) by greedy farthest-point
    sampling (random start), away from the ``exclude`` points too. Fewer if ``N < count``."""
    candidates = np.asarray(candidates, dtype=np.float64)
    if len(candidates) == 0 or count <= 0:
        return np.zeros(0, dtype=np.int64)
    dist = np.full(len(candidates), np.inf)
    for p in np.asarray(exclude if exclude is not None else np.zeros((0, 3)), dtype=np.float64):
        dist = np.minimum(dist, np.linalg.norm(candidates - p, axis=1))
    chosen = [int(rng.integers(len(candidates))) if exclude is None or not len(exclude) else int(np.argmax(dist))]
    for _ in range(min(count, len(candidates)) - 1):
        dist = np.minimum(dist, np.linalg.norm(candidates - candidates[chosen[-1]], axis=1))
        chosen.append(int(np.argmax(dist)))
    return np.asarray(chosen, dtype=np.int64)


# ---------------------------------------------------------------------------------------- results


@dataclass(frozen=True)
class PhantomImage:
    """One synthetic image and what belongs to it, all on the image's own grid."""

    image: np.ndarray  # X x Y x Z: int16 (CT, HU) or float32 (MR/US, arbitrary units)
    label: np.ndarray | None = None  # X x Y x Z uint8, 0 = background
    mask: np.ndarray | None = None  # X x Y x Z uint8 in {0, 1}
    keypoints: np.ndarray | None = None  # N x 3 voxel coordinates (array order)
    landmarks: np.ndarray | None = None  # N x 3 voxel coordinates (array order)


@dataclass(frozen=True)
class PhantomSubject:
    """A subject's images (index = modality / time point id: 0 -> ``_0000``, 1 -> ``_0001``).

    Intra-patient subjects also carry the known ground truth ``pull`` (``X x Y x Z x 3``,
    voxels, on image 1's grid): image 1 shows image 0's anatomy at ``z + pull(z)``, so the
    evaluator's field (fixed = image 0) is its inverse, and fixed point ``x`` corresponds to
    moving point ``z`` with ``z + pull(z) = x`` (``pull`` linearly interpolated);
    ``residual`` is the largest ``|z + pull(z) - x|`` of the written points (voxels).
    """

    images: tuple[PhantomImage, ...]
    pull: np.ndarray | None = None
    residual: float = 0.0
