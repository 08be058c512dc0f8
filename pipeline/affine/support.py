"""Where an image has data: its support, found from the image itself.

An ultrasound volume (and any image cut to a field of view) is constant, usually exactly zero,
outside the region its probe saw: a cone, a fan, a box, any shape. :func:`support` finds that
region as the complement of the voxels that hold the image's lowest value and are connected to
the grid's border (6-connectivity), so constant voxels enclosed by the support (an anechoic
cyst, a clipped dark region) stay inside it. Pure numpy/scipy; arrays are ``X x Y x Z``.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage


def outside_region(image: np.ndarray) -> np.ndarray:
    """Bool ``X x Y x Z``: voxels at the image's lowest value connected to the grid border."""
    image = np.asarray(image)
    lowest = image == image.min()
    if not lowest.any():  # pragma: no cover - an array always holds its minimum
        return lowest
    labels, count = ndimage.label(lowest)
    if count == 0:
        return np.zeros(image.shape, bool)
    faces = [labels[0], labels[-1], labels[:, 0], labels[:, -1], labels[:, :, 0], labels[:, :, -1]]
    touching = np.unique(np.concatenate([f.ravel() for f in faces]))
    touching = touching[touching > 0]
    return np.isin(labels, touching)


def support(image: np.ndarray) -> np.ndarray:
    """Bool ``X x Y x Z``: the image's support (everything but :func:`outside_region`)."""
    return ~outside_region(image)


def coverage(inner: np.ndarray, inner_to_physical: np.ndarray, outer: np.ndarray, outer_to_physical: np.ndarray, points: int = 20_000) -> float:
    """Fraction of the ``outer`` support (bool, its grid) whose voxel centres fall inside the
    ``inner`` support (bool, its grid; nearest voxel, outside the grid counts as outside), both
    placed by their index -> physical 4x4 (the identity transform between them). At most
    ``points`` voxels of ``outer`` are used (an even subsample)."""
    index = np.argwhere(outer)
    if len(index) == 0:
        return 1.0
    index = index[:: max(1, len(index) // points)].astype(np.float64)
    to_inner = np.linalg.inv(inner_to_physical) @ outer_to_physical
    mapped = np.rint(index @ to_inner[:3, :3].T + to_inner[:3, 3]).astype(np.int64)
    shape = np.asarray(inner.shape)
    valid = np.all((mapped >= 0) & (mapped < shape), axis=1)
    inside = np.zeros(len(mapped), bool)
    inside[valid] = inner[tuple(mapped[valid].T)]
    return float(inside.mean())
