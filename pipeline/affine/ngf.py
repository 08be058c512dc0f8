"""Normalised Gradient Field (NGF) similarity (Haber & Modersitzki 2006), torch, differentiable.

With an edge parameter ``eps_I`` per image (``eps_relative`` times the image's mean gradient
norm, :func:`edge_parameter`) the normalised gradient is
``n_I(x) = grad I(x) / sqrt(|grad I(x)|^2 + eps_I^2)`` (norm < 1; gradients well below
``eps_I`` count as noise). With ``c(x) = <n_F(x), n_M(x)>^2`` (squared cosine: contrast
inversions cost nothing, which is what makes NGF multi-modal) two forms are offered:

* ``"ngf"`` (the classical one): ``D = mean_x w (1 - c) / mean_x w``;
* ``"ngf-normalized"``: ``D = 1 - sum w c / sqrt(sum w |n_F|^4 * sum w |n_M|^4)``. By
  Cauchy-Schwarz ``D`` is in ``[0, 1]``, 0 when the edge maps agree in direction *and*
  strength. The classical form rewards a moving image whose edges get broader or stronger (it
  never pays for moving edges where the fixed image is flat), so with 12 DoF it drifts towards
  magnifying the moving image (about 10 % in volume on our phantoms); the normalisation
  removes that drift. Its price: the moving sum depends on the overlap, so with a partial
  field of view (ultrasound) it can gain by moving structure out of the overlap. Hence
  ``pipeline.affine.registration`` uses this form by default and the classical one with a field of view.

Gradients are in intensity per mm in the physical (LPS) frame. For registration the metric is
evaluated at stratified random points of the fixed grid (:class:`NGFProblem`): the warped
moving gradient is ``L^T grad M(T x)`` by the chain rule (``L`` the linear part of ``T``), read
from the moving gradient volume by trilinear interpolation. Random sub-voxel positions keep
the interpolation from favouring grid-aligned transforms (on a shared grid the identity is
a cusp of the dense metric, where its gradient points the wrong way).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage

from learn2reg.contract import grid_scale, resize_image
from learn2reg.io import Geometry, float3, int3

METRICS = ("ngf-normalized", "ngf")


def spatial_gradient(image: torch.Tensor, spacing: Sequence[float]) -> torch.Tensor:
    """Central-difference gradient of ``image`` (``1 x 1 x X x Y x Z``) in intensity per mm.

    Returns ``1 x 3 x X x Y x Z``; component ``k`` is the derivative along array axis ``k``
    (grid spacing ``spacing[k]`` mm). Edge-replicated padding: half differences on the faces.
    """
    if image.ndim != 5 or image.shape[1] != 1:
        raise ValueError(f"image must be 1 x 1 x X x Y x Z, got {tuple(image.shape)}")
    padded = F.pad(image, (1, 1, 1, 1, 1, 1), mode="replicate")
    gx = (padded[:, :, 2:, 1:-1, 1:-1] - padded[:, :, :-2, 1:-1, 1:-1]) / (2.0 * spacing[0])
    gy = (padded[:, :, 1:-1, 2:, 1:-1] - padded[:, :, 1:-1, :-2, 1:-1]) / (2.0 * spacing[1])
    gz = (padded[:, :, 1:-1, 1:-1, 2:] - padded[:, :, 1:-1, 1:-1, :-2]) / (2.0 * spacing[2])
    return torch.cat([gx, gy, gz], dim=1)


def edge_parameter(gradient: torch.Tensor, relative: float, weight: torch.Tensor | None = None) -> float:
    """``eps = relative * mean |grad I|`` over the voxels (weighted by ``weight``, ``1 x 1 x ...``).

    Same units as the gradient; a tiny positive number for a constant image.
    """
    norm = gradient.norm(dim=1, keepdim=True)
    mean = (norm * weight).sum() / weight.sum().clamp_min(1e-12) if weight is not None else norm.mean()
    return max(float(relative * mean), 1e-12)


def normalized_gradient(gradient: torch.Tensor, eps: float | torch.Tensor) -> torch.Tensor:
    """``grad I / sqrt(|grad I|^2 + eps^2)`` (``1 x 3 x ...``, unitless, norm < 1)."""
    return gradient / torch.sqrt((gradient * gradient).sum(dim=1, keepdim=True) + eps * eps)


def ngf_distance(
    normalized_fixed: torch.Tensor, normalized_moving: torch.Tensor, weight: torch.Tensor | None = None, metric: str = "ngf-normalized"
) -> torch.Tensor:
    """NGF distance (scalar tensor in ``[0, 1]``) of two normalised gradient fields.

    ``normalized_*``: ``1 x 3 x ...`` at the same points (grid voxels or samples); ``weight``:
    optional non-negative ``1 x 1 x ...``; ``metric``: one of :data:`METRICS` (module docstring).
    """
    c2 = (normalized_fixed * normalized_moving).sum(dim=1, keepdim=True) ** 2
    w = torch.ones_like(c2) if weight is None else weight
    if metric == "ngf":
        return 1.0 - (c2 * w).sum() / w.sum().clamp_min(1e-12)
    if metric != "ngf-normalized":
        raise ValueError(f"metric must be one of {METRICS}, got {metric!r}")
    f4 = (normalized_fixed * normalized_fixed).sum(dim=1, keepdim=True) ** 2
    m4 = (normalized_moving * normalized_moving).sum(dim=1, keepdim=True) ** 2
    return 1.0 - (c2 * w).sum() / torch.sqrt((f4 * w).sum() * (m4 * w).sum()).clamp_min(1e-30)


def ngf(
    fixed: torch.Tensor, moving: torch.Tensor, spacing: Sequence[float], eps_relative: float, metric: str = "ngf-normalized"
) -> torch.Tensor:
    """Dense NGF distance of two images (``1 x 1 x X x Y x Z``) on one grid (``spacing`` mm)."""
    g_f, g_m = spatial_gradient(fixed, spacing), spatial_gradient(moving, spacing)
    n_f = normalized_gradient(g_f, edge_parameter(g_f, eps_relative))
    n_m = normalized_gradient(g_m, edge_parameter(g_m, eps_relative))
    return ngf_distance(n_f, n_m, None, metric)


# ------------------------------------------------------------------------- image levels


@dataclass(frozen=True, eq=False)
class ImageLevel:
    """One image at one resolution: ``image`` ``1 x 1 x n`` (float32), its index -> LPS mm 4x4,
    spacing (mm) and optional field-of-view weights ``fov`` (``1 x 1 x n``, 1 inside)."""

    image: torch.Tensor
    index_to_physical: np.ndarray
    spacing: tuple[float, float, float]
    fov: torch.Tensor | None = None


def level_shapes(shape: Sequence[int], levels: int, max_voxels: int, min_size: int) -> list[tuple[int, int, int]]:
    """Pyramid grid sizes, coarse to fine: the finest has at most about ``max_voxels`` voxels
    (the image's own size if smaller), each coarser one about half as many per axis; no axis
    shorter than ``min(min_size, its size)``."""
    base = max(1.0, (float(np.prod(shape)) / max_voxels) ** (1.0 / 3.0))
    return [
        int3(max(min(n, min_size), int(round((n - 1) / (base * 2.0**level))) + 1) for n in shape)
        for level in reversed(range(levels))
    ]


def make_level(
    image: np.ndarray, geom: Geometry, shape: Sequence[int], smoothing: float, fov: np.ndarray | None = None, margin: float = 2.0
) -> ImageLevel:
    """Gaussian smoothing (sigma ``smoothing`` level voxels) and corner-aligned resampling to ``shape``.

    With a field-of-view mask ``fov`` (bool, image grid) the smoothing is a normalised
    convolution inside it (the zeros outside do not bleed in) and the level carries the mask,
    eroded by ``margin`` image voxels, at least one level voxel (where gradients are not
    trustworthy; counted in image voxels so that coarse levels keep most of a small field of view).
    """
    shape = tuple(int(n) for n in shape)
    scale = grid_scale(shape, image.shape)  # image voxels per level voxel
    data = image
    if smoothing > 0:
        sigma = smoothing * scale
        data = ndimage.gaussian_filter(image if fov is None else image * fov, sigma, mode="nearest", truncate=3.0)
        if fov is not None:
            support = ndimage.gaussian_filter(fov.astype(np.float32), sigma, mode="nearest", truncate=3.0)
            data = np.where(fov, data / np.maximum(support, 1e-6), 0.0)
    if shape != image.shape:
        data = resize_image(data, shape, order=1)
    level_fov = None
    if fov is not None:
        inside = resize_image(fov.astype(np.float32), shape, order=1) > 0.999
        level_margin = max(1.0, margin / float(np.mean(scale))) if margin > 0 else 0.0
        inside = ndimage.distance_transform_edt(inside) > level_margin if level_margin > 0 else inside
        level_fov = torch.from_numpy(inside.astype(np.float32))[None, None]
    to_phys = geom.index_to_physical @ np.diag([*scale, 1.0])
    tensor = torch.from_numpy(np.ascontiguousarray(data, dtype=np.float32))[None, None]
    return ImageLevel(tensor, to_phys, float3(np.asarray(geom.spacing) * scale), level_fov)


def physical_gradient(level: ImageLevel) -> torch.Tensor:
    """Gradient of a level image in the physical (LPS) frame, ``1 x 3 x n`` (intensity per mm)."""
    along_axes = spatial_gradient(level.image, level.spacing)
    linear = level.index_to_physical[:3, :3]
    direction = torch.from_numpy(linear / np.linalg.norm(linear, axis=0)).to(along_axes.dtype)
    return torch.einsum("ij,bjxyz->bixyz", direction, along_axes)


def sample_volume(volume: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """Trilinear values of ``volume`` (``1 x C x n``) at voxel points ``index`` (``N x 3``, array
    order, any float dtype) -> ``1 x C x N``; zero outside the grid. Differentiable in ``index``."""
    shape = volume.shape[2:]
    scale = torch.tensor([2.0 / (n - 1) for n in shape], dtype=index.dtype)
    grid = (index * scale - 1.0).flip(-1).to(volume.dtype).view(1, 1, 1, -1, 3)
    out = F.grid_sample(volume, grid, mode="bilinear", padding_mode="zeros", align_corners=True)
    return out.view(1, volume.shape[1], -1)


def stratified_points(shape: Sequence[int], count: int, rng: np.random.Generator, where: np.ndarray | None = None) -> np.ndarray:
    """One uniform random point in each voxel's cell (at most ``count`` cells, drawn at random;
    only cells where ``where`` (bool, ``shape``) is true, if given and not empty), clipped to the
    grid: ``N x 3`` voxel coordinates (float64)."""
    index = np.indices(tuple(shape)).reshape(3, -1).T.astype(np.float64)
    if where is not None and where.any():
        index = index[where.reshape(-1)]
    if len(index) > count:
        index = index[np.sort(rng.choice(len(index), count, replace=False))]
    index += rng.uniform(-0.5, 0.5, index.shape)
    return np.clip(index, 0.0, np.asarray(shape, dtype=np.float64) - 1.0)


class NGFProblem:
    """NGF of ``moving`` transformed onto ``fixed``, as a function of a physical 4x4 matrix.

    ``matrix`` maps fixed mm to moving mm (LPS, ITK's resampling direction). The fixed side
    (sample points, their normalised gradients and weights) is computed once; each
    :meth:`loss` reads the moving gradient at the mapped points (see module docstring).
    ``fixed_weight`` (``1 x 1 x n`` on the fixed level grid, optional) weights the samples,
    as does the fixed level's field of view; outside the moving field of view the moving
    image has no edges.
    """

    def __init__(
        self,
        fixed: ImageLevel,
        moving: ImageLevel,
        eps: float,
        metric: str,
        samples: int,
        rng: np.random.Generator,
        fixed_weight: torch.Tensor | None = None,
    ) -> None:
        self.metric, self.moving_fov = metric, moving.fov
        weight = fixed_weight if fixed.fov is None else (fixed.fov if fixed_weight is None else fixed_weight * fixed.fov)
        # samples where the weight is not zero (the whole grid without one)
        inside = None if weight is None else (weight[0, 0] > 0).numpy()
        index = torch.from_numpy(stratified_points(fixed.image.shape[2:], samples, rng, inside))
        g_fixed = physical_gradient(fixed)
        self.weight = sample_volume(weight, index) if weight is not None else None
        self.n_fixed = normalized_gradient(sample_volume(g_fixed, index), edge_parameter(g_fixed, eps, weight))
        to_phys = torch.from_numpy(fixed.index_to_physical)
        self.points = index @ to_phys[:3, :3].T + to_phys[:3, 3]  # N x 3 mm, float64
        self.g_moving = physical_gradient(moving)
        self.eps_moving = edge_parameter(self.g_moving, eps, moving.fov)
        self.to_moving = torch.from_numpy(np.linalg.inv(moving.index_to_physical))

    def loss(self, matrix: torch.Tensor) -> torch.Tensor:
        """NGF distance (scalar) at the physical 4x4 ``matrix`` (float64; differentiable)."""
        linear = matrix[:3, :3]
        to_index = self.to_moving @ matrix
        index = self.points @ to_index[:3, :3].T + to_index[:3, 3]
        g_m = torch.einsum("ji,bjn->bin", linear.to(torch.float32), sample_volume(self.g_moving, index))
        # The moving edge parameter follows the scaling of the gradients by the linear part.
        eps_m = self.eps_moving * torch.abs(torch.linalg.det(linear)).to(torch.float32) ** (1.0 / 3.0)
        n_m = normalized_gradient(g_m, eps_m)
        if self.moving_fov is not None:
            n_m = n_m * sample_volume(self.moving_fov, index)
        return ngf_distance(self.n_fixed, n_m, self.weight, self.metric)

    def overlap(self, matrix: torch.Tensor) -> float:
        """Fraction of the (weighted) fixed samples whose mapped point lies inside the moving
        field of view, or the moving grid when it has none (physical 4x4 ``matrix``)."""
        with torch.no_grad():
            to_index = self.to_moving @ matrix
            index = self.points @ to_index[:3, :3].T + to_index[:3, 3]
            support = self.moving_fov if self.moving_fov is not None else torch.ones_like(self.g_moving[:, :1])
            inside = (sample_volume(support, index) > 0.5).to(torch.float32)
            w = torch.ones_like(inside) if self.weight is None else self.weight
            return float((inside * w).sum() / w.sum().clamp_min(1e-12))
