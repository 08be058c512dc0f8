"""The displacement-field contract: the single source of truth (numpy/scipy; no torch).

A *field* ``u`` is defined on the **fixed** image grid, shape ``X x Y x Z x 3`` (nibabel array
order), in **voxel** units, component ``k`` along array axis ``k``, **pull** direction: the
warped moving image is ``moving(x + u(x))`` and a fixed point ``x`` corresponds to the moving
point ``x + u(x)`` (``scipy.ndimage.map_coordinates(moving, identity + u)``).

Grid resampling is corner-aligned everywhere (``scipy.ndimage.zoom`` with its default
``grid_mode=False``, torch ``align_corners=True``): voxel ``i`` of an ``n``-grid sits at
``i * (N - 1) / (n - 1)`` of an ``N``-grid. Images, labels, points and fields all follow it.

``pipeline.model.contract`` adds the torch counterparts; the evaluator and the pipeline agree
because both use the rules written here.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import numpy as np

# scipy.ndimage is imported inside the functions that use it: its import costs ~0.2 CPU s, and
# the evaluator (which imports this module) needs it only for some metrics.
Shape = Sequence[int]


def identity_grid(shape: Shape, dtype: type = np.float32) -> np.ndarray:
    """Voxel coordinates of a grid, ``3 x X x Y x Z`` (channels first)."""
    return np.stack(np.meshgrid(*[np.arange(n, dtype=dtype) for n in shape], indexing="ij"))


def check_field(u: np.ndarray, shape: Shape | None = None) -> None:
    """Raise ``ValueError`` unless ``u`` is an ``X x Y x Z x 3`` field (on ``shape``, if given)."""
    if u.ndim != 4 or u.shape[-1] != 3:
        raise ValueError(f"field must be X x Y x Z x 3, got shape {u.shape}")
    if shape is not None and tuple(u.shape[:3]) != tuple(shape):
        raise ValueError(f"field grid {u.shape[:3]} differs from the fixed image grid {tuple(shape)}")


def memory_order(arr: np.ndarray) -> Literal["C", "F"]:
    """``"F"`` for a Fortran-ordered array (NIfTI data, fields and label maps alike), else ``"C"``."""
    return "F" if arr.flags.f_contiguous and not arr.flags.c_contiguous else "C"


def walk_order(arr: np.ndarray) -> tuple[int, int, int]:
    """The three spatial axes, slowest in memory first: reversed for Fortran-ordered (NIfTI) arrays.
    Voxel-wise loops go plane by plane along the first, so that each plane is contiguous."""
    return (2, 1, 0) if memory_order(arr) == "F" else (0, 1, 2)


def warp(moving: np.ndarray, u: np.ndarray, order: int = 1, cval: float = 0.0) -> np.ndarray:
    """Warp ``moving`` (``X' x Y' x Z'``) by ``u`` (on the fixed grid): ``moving(x + u(x))``.

    ``order`` 1 = linear (images), 0 = nearest (labels; dtype kept). Constant ``cval`` outside.
    """
    from scipy import ndimage

    check_field(u)
    coords = identity_grid(u.shape[:3], np.float64 if order == 0 else np.float32) + np.moveaxis(u, -1, 0)
    out_dtype = moving.dtype if order == 0 else np.float32
    return ndimage.map_coordinates(moving, coords, order=order, mode="constant", cval=cval, output=out_dtype, prefilter=order > 1)


def warp_labels(labels: np.ndarray, u: np.ndarray) -> np.ndarray:
    """Nearest-neighbour warp of a label map (the official evaluator's rule); dtype kept."""
    return warp(labels, u, order=0)


def sample_field(u: np.ndarray, points: np.ndarray, order: int = 3) -> np.ndarray:
    """Field values at voxel ``points`` (``N x 3``) -> ``N x 3``.

    Default: cubic B-spline with prefilter, as the official TRE does (``map_coordinates``
    defaults, i.e. ``mode='constant'``).
    """
    from scipy import ndimage

    check_field(u)
    pts = np.asarray(points, dtype=np.float64).T
    return np.stack([ndimage.map_coordinates(u[..., k], pts, order=order) for k in range(3)], axis=1)


def compose(u_first: np.ndarray, u_then: np.ndarray) -> np.ndarray:
    """Field of "follow ``u_first``, then ``u_then``": ``w(x) = u_first(x) + u_then(x + u_first(x))``.

    Use: ``u_then`` pre-warps the moving image (e.g. the affine part) and ``u_first`` registers
    the fixed image to that pre-warped image; warping by ``w`` equals warping by ``u_then`` and
    then by ``u_first``. ``u_then`` is interpolated linearly, extended by its edge values.
    """
    from scipy import ndimage

    check_field(u_first)
    coords = identity_grid(u_first.shape[:3]) + np.moveaxis(u_first, -1, 0)
    sampled = np.stack(
        [ndimage.map_coordinates(u_then[..., k], coords, order=1, mode="nearest") for k in range(3)], axis=-1
    )
    return (u_first + sampled).astype(np.float32)


def compose_affine(u_first: np.ndarray, matrix: np.ndarray, step: Sequence[float] | np.ndarray | None = None) -> np.ndarray:
    """``compose(u_first, affine_to_field(matrix))`` evaluated exactly (no interpolation).

    ``step``: when ``u_first`` is sampled on a coarser lattice of the fixed grid (a 2020
    half-resolution field: values in fixed-grid voxels, lattice point ``i`` at fixed voxel
    ``i * step``), the per-axis spacing of that lattice in fixed voxels; default 1 (the fixed grid).
    """
    check_field(u_first)
    a = _as_4x4(matrix)
    x = np.moveaxis(identity_grid(u_first.shape[:3], np.float64), 0, -1)
    y = (x if step is None else x * np.asarray(step, dtype=np.float64)) + u_first
    return (u_first + y @ a[:3, :3].T + a[:3, 3] - y).astype(np.float32)


def _as_4x4(matrix: np.ndarray) -> np.ndarray:
    m = np.asarray(matrix, dtype=np.float64)
    if m.shape == (3, 4):
        m = np.vstack([m, [0, 0, 0, 1]])
    if m.shape != (4, 4):
        raise ValueError(f"affine must be 3x4 or 4x4, got {m.shape}")
    return m


def affine_to_field(matrix: np.ndarray, shape: Shape) -> np.ndarray:
    """Field of a voxel-space affine ``matrix`` (fixed voxel -> moving voxel, 4x4 or 3x4):
    ``u(x) = A x + t - x``."""
    a = _as_4x4(matrix)
    x = np.moveaxis(identity_grid(shape, np.float64), 0, -1)
    return (x @ a[:3, :3].T + a[:3, 3] - x).astype(np.float32)


def physical_to_voxel_affine(matrix: np.ndarray, fixed_index_to_physical: np.ndarray, moving_index_to_physical: np.ndarray) -> np.ndarray:
    """Voxel-space matrix of a physical-space affine.

    ``matrix`` maps a fixed physical point (mm) to the corresponding moving physical point
    (ITK's resampling-transform direction); the ``*_index_to_physical`` 4x4 matrices are
    ``Geometry.index_to_physical`` (spacing, direction, origin) of the two images. Result maps
    fixed voxel -> moving voxel: ``G_moving^-1 @ A @ G_fixed``.
    """
    return np.linalg.inv(moving_index_to_physical) @ _as_4x4(matrix) @ np.asarray(fixed_index_to_physical, dtype=np.float64)


def normalized_scale(shape: Shape) -> np.ndarray:
    """Per array axis, voxels per normalised unit under ``align_corners=True``: ``(N - 1) / 2``."""
    return (np.asarray(shape, dtype=np.float64) - 1.0) / 2.0


def normalized_to_voxel(flow: np.ndarray) -> np.ndarray:
    """grid_sample-style flow (``X x Y x Z x 3``, normalised units, components in reversed axis
    order: last = axis 0) -> contract field (voxel units, component k = axis k)."""
    check_field(flow)
    return (flow[..., ::-1] * normalized_scale(flow.shape[:3])).astype(np.float32)


def voxel_to_normalized(u: np.ndarray) -> np.ndarray:
    """Inverse of :func:`normalized_to_voxel`."""
    check_field(u)
    return (u / normalized_scale(u.shape[:3]))[..., ::-1].astype(np.float32)


def resize_image(image: np.ndarray, shape: Shape, order: int = 1) -> np.ndarray:
    """Resample a 3-D array to ``shape`` on the corner-aligned grid (order 0 for labels)."""
    from scipy import ndimage

    factors = [n / o for n, o in zip(shape, image.shape[:3], strict=True)]
    out = ndimage.zoom(image, factors, order=order, mode="nearest", grid_mode=False, prefilter=order > 1)
    if out.shape != tuple(shape):  # zoom rounds; never expected, but never silently wrong
        raise ValueError(f"resize to {tuple(shape)} gave {out.shape}")
    return out


def grid_scale(old_shape: Shape, new_shape: Shape) -> np.ndarray:
    """Per axis, how many new-grid voxels one old-grid voxel spans: ``(N_new - 1) / (N_old - 1)``."""
    return (np.asarray(new_shape, dtype=np.float64) - 1.0) / (np.asarray(old_shape, dtype=np.float64) - 1.0)


def scale_points(points: np.ndarray, old_shape: Shape, new_shape: Shape) -> np.ndarray:
    """Voxel coordinates on ``old_shape`` -> the same physical points on ``new_shape``."""
    return np.asarray(points, dtype=np.float64) * grid_scale(old_shape, new_shape)


def resample_field(u: np.ndarray, shape: Shape, order: int = 1) -> np.ndarray:
    """The same deformation expressed on another grid: components resampled to ``shape``
    and vectors scaled to the new grid's voxel units."""
    check_field(u)
    scale = grid_scale(u.shape[:3], shape)
    return np.stack([resize_image(u[..., k], shape, order) * scale[k] for k in range(3)], axis=-1).astype(np.float32)


def field_on_grid(u: np.ndarray, shape: Shape, full_shape: Shape) -> np.ndarray:
    """A field in the voxel units of its own grid -> sampled on the corner-aligned grid
    ``shape`` with values in voxels of ``full_shape`` (the fixed image's grid).

    Exact (values rescaled, no resampling) when ``u`` already lies on ``shape``: a network run
    at half resolution gives the 2020 half-resolution field directly. Otherwise the field is
    resampled to ``full_shape`` and, if ``shape`` is coarser, sampled down as :func:`to_2020` does.
    """
    check_field(u)
    if tuple(u.shape[:3]) == tuple(shape):
        return (u * grid_scale(u.shape[:3], full_shape)).astype(np.float32)
    full = resample_field(u, full_shape)
    if tuple(shape) == tuple(full_shape):
        return full
    return np.stack([resize_image(full[..., k], shape, order=2) for k in range(3)], axis=-1).astype(np.float32)


def to_2020(u: np.ndarray) -> np.ndarray:
    """Full-resolution field -> 2020 submission array: ``3 x X/2 x Y/2 x Z/2`` float16,
    channels first, values still in **full-resolution** voxels (the 2020 evaluator upsamples
    each component with ``zoom(c, 2, order=2)`` and does not rescale)."""
    check_field(u)
    if any(n % 2 for n in u.shape[:3]):
        raise ValueError(f"2020 half-resolution format needs even sizes, got {u.shape[:3]}")
    half = [n // 2 for n in u.shape[:3]]
    return np.stack([resize_image(u[..., k], half, order=2) for k in range(3)]).astype(np.float16)


def from_2020(disp: np.ndarray, full_resolution: bool = False) -> np.ndarray:
    """2020 submission array (``3 x ...``) -> contract field at full resolution, exactly as the
    2020 evaluator: float32, each component ``zoom(c, 2, order=2)``. With
    ``full_resolution=True`` (task 4) no upsampling is done."""
    from scipy import ndimage

    if disp.ndim != 4 or disp.shape[0] != 3:
        raise ValueError(f"2020 field must be 3 x X x Y x Z, got shape {disp.shape}")
    disp = disp.astype(np.float32)
    comps = list(disp) if full_resolution else [ndimage.zoom(c, 2, order=2) for c in disp]
    return np.stack(comps, axis=-1).astype(np.float32)


def jacobian_determinant(u: np.ndarray) -> np.ndarray:
    """det(I + grad u) on the whole grid (``X x Y x Z``), central differences inside and
    one-sided at the faces (``np.gradient``). The official SDlogJ uses its own stencil (see
    ``evaluation.jacobian``); this is the plain mathematical quantity."""
    check_field(u)
    grads = [np.gradient(u[..., k].astype(np.float64)) for k in range(3)]  # grads[k][j] = du_k/dx_j
    j = np.empty(u.shape[:3] + (3, 3))
    for k in range(3):
        for m in range(3):
            j[..., k, m] = grads[k][m] + (1.0 if k == m else 0.0)
    return np.linalg.det(j)


def disp_filename_l2r(fixed_id: str, moving_id: str) -> str:
    """Current-layout file name ``disp_{fixS}_{fixM}_{movS}_{movM}.nii.gz`` from case ids ``SSSS_MMMM``."""
    return f"disp_{fixed_id}_{moving_id}.nii.gz"


def disp_filename_2020(fixed_id: str, moving_id: str) -> str:
    """2020 file name ``disp_{fixed:04d}_{moving:04d}.npz`` (subject ids)."""
    return f"disp_{fixed_id.split('_')[0]}_{moving_id.split('_')[0]}.npz"
