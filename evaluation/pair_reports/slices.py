"""What the per-pair report shows, as plain arrays (numpy only; the drawing is in
``evaluation.pair_reports.page``): slice positions, planes of volumes and fields, intensity
normalisation, checkerboards, the deformation grid and folded voxels.

Frames: volumes are ``X x Y x Z`` on the fixed grid (nibabel array order), fields
``X x Y x Z x 3`` in voxels, pull direction (``learn2reg.contract``). A *plane* is the 2-D
array ``volume[index]`` along one array axis; its two in-plane axes are the remaining array
axes in increasing order (``IN_PLANE``), the first drawn horizontally.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

#: array axis of each plane -> its two in-plane array axes (horizontal, vertical when drawn)
IN_PLANE = {0: (1, 2), 1: (0, 2), 2: (0, 1)}


def slice_indices(shape: Sequence[int], labels: np.ndarray | None = None) -> tuple[int, int, int]:
    """Where to cut the three planes: through the centre of the nonzero voxels of ``labels``
    (rounded centre of mass, the labels' centre), else through the middle voxel ``n // 2``."""
    if labels is not None and labels.shape[:3] != tuple(shape[:3]):
        raise ValueError(f"labels grid {labels.shape[:3]} differs from the image grid {tuple(shape[:3])}")
    if labels is not None and np.any(labels):
        centre = np.argwhere(labels != 0).mean(axis=0)
        return tuple(int(np.clip(np.floor(c + 0.5), 0, n - 1)) for c, n in zip(centre, shape[:3], strict=True))  # type: ignore[return-value]
    return tuple(int(n) // 2 for n in shape[:3])  # type: ignore[return-value]


def plane(volume: np.ndarray, axis: int, index: int) -> np.ndarray:
    """The plane ``index`` along array ``axis`` (a field keeps its component axis last)."""
    return np.take(volume, index, axis=axis)


def in_plane_field(u: np.ndarray, axis: int, index: int) -> np.ndarray:
    """The in-plane displacement of a field plane: ``H x W x 2`` voxels, components along
    ``IN_PLANE[axis]`` (the out-of-plane component is left out)."""
    return plane(u, axis, index)[..., list(IN_PLANE[axis])]


def intensity_window(image: np.ndarray, low: float = 1.0, high: float = 99.0) -> tuple[float, float]:
    """The ``low`` and ``high`` percentiles of an image: the display window of :func:`normalise`."""
    img = np.asarray(image)
    if not img.size:
        return 0.0, 0.0
    lo, hi = np.percentile(img, [low, high])
    return float(lo), float(hi)


def normalise(image: np.ndarray, window: tuple[float, float] | None = None) -> np.ndarray:
    """Intensities mapped linearly from ``window`` (default: the image's own 1st-99th
    percentiles, :func:`intensity_window`) to [0, 1] and clipped, float32; an empty window gives
    zeros. Makes two modalities comparable in a checkerboard; a warped image shown with its
    moving image's window keeps the moving image's contrast."""
    img = np.asarray(image, dtype=np.float32)
    lo, hi = intensity_window(img) if window is None else window
    if not hi > lo:
        return np.zeros_like(img)
    return np.clip((img - lo) / (hi - lo), 0.0, 1.0).astype(np.float32)


def checkerboard(a: np.ndarray, b: np.ndarray, tile: int) -> np.ndarray:
    """Tiles of ``tile`` x ``tile`` pixels taken alternately from ``a`` (the tile at the
    origin) and ``b``; the two planes must have one shape."""
    if a.shape != b.shape or a.ndim != 2:
        raise ValueError(f"checkerboard needs two planes of one shape, got {a.shape} and {b.shape}")
    if tile < 1:
        raise ValueError(f"tile must be >= 1, got {tile}")
    i, j = np.indices(a.shape)
    return np.where(((i // tile) + (j // tile)) % 2 == 0, a, b)


def grid_lines(u2: np.ndarray, step: int) -> list[np.ndarray]:
    """The deformation grid of a field plane: the fixed grid lines through every ``step``-th
    voxel, each point ``x`` moved to ``x + u(x)`` (in-plane components, ``u2`` = ``H x W x 2``
    from :func:`in_plane_field`). Returns ``N x 2`` arrays of (horizontal, vertical) voxel
    coordinates: where the fixed grid lands in the moving image (pull direction)."""
    if u2.ndim != 3 or u2.shape[-1] != 2:
        raise ValueError(f"in-plane field must be H x W x 2, got {u2.shape}")
    if step < 1:
        raise ValueError(f"grid step must be >= 1, got {step}")
    h, w = u2.shape[:2]
    rows, cols = np.meshgrid(np.arange(h, dtype=np.float64), np.arange(w, dtype=np.float64), indexing="ij")
    pos = np.stack([rows + u2[..., 0], cols + u2[..., 1]], axis=-1)
    return [pos[i, :, :] for i in range(0, h, step)] + [pos[:, j, :] for j in range(0, w, step)]


def grid_step(shape: Sequence[int], lines: int = 12) -> int:
    """A grid spacing giving about ``lines`` lines along the longer side of a plane."""
    return max(int(round(max(shape) / lines)), 1)


def folded(det: np.ndarray) -> np.ndarray:
    """Folded voxels: where the Jacobian determinant is ``<= 0`` (the map folds space there)."""
    return np.asarray(det) <= 0


def plane_slab(size: int, fraction: float = 0.05, least: int = 2) -> int:
    """Half-thickness in voxels of the slab around a plane whose points are drawn on it:
    ``fraction`` of the axis, at least ``least`` (2 voxels on a 40-voxel axis, 13 on 256)."""
    return max(int(least), int(round(fraction * size)))


def points_near(points: np.ndarray, axis: int, index: int, slab: int) -> np.ndarray:
    """Which of the ``N x 3`` voxel ``points`` lie within ``slab`` voxels of the plane ``index``
    along array ``axis`` (boolean ``N``)."""
    points = np.asarray(points, dtype=np.float64).reshape(-1, 3)
    return np.abs(points[:, axis] - index) <= slab


def densest_plane(points: np.ndarray, axis: int, size: int, slab: int) -> int:
    """The plane along ``axis`` (of ``size`` planes) with the most ``points`` within ``slab``
    voxels (the lowest such index on a tie; the middle plane without points)."""
    points = np.asarray(points, dtype=np.float64).reshape(-1, 3)
    if not points.shape[0]:
        return int(size) // 2
    counts = [int(points_near(points, axis, i, slab).sum()) for i in range(int(size))]
    return int(np.argmax(counts))


def richest_plane(volumes: Sequence[np.ndarray], axis: int, ids: Sequence[int]) -> int:
    """The plane along ``axis`` that cuts the most of the labels ``ids`` in the label maps
    ``volumes`` together (e.g. fixed and warped: both outlines show), then the most of their
    voxels; the lowest index on a tie: where contours of those labels can be seen at all."""
    wanted = np.asarray(list(ids))
    present = np.zeros(volumes[0].shape[axis], np.int64)
    voxels = np.zeros(volumes[0].shape[axis], np.int64)
    for volume in volumes:
        moved = np.moveaxis(np.asarray(volume), axis, 0).reshape(volume.shape[axis], -1)
        chosen = np.isin(moved, wanted)
        present += [len(np.unique(moved[i][chosen[i]])) for i in range(moved.shape[0])]
        voxels += chosen.sum(axis=1)
    return int(np.lexsort((-voxels, -present))[0])
