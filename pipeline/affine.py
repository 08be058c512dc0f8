"""Rigid (6 DoF) and affine (12 DoF) pre-alignment: NGF similarity, L-BFGS, multi-resolution.

The seed paper's task-1 method. Frames:

* the transform ``T`` maps a **fixed physical** point (LPS mm) to the **moving physical**
  point (ITK's resampling direction): ``T(x) = L (x - c) + c + t`` with the centre ``c`` at the
  fixed image centre;
* it is optimised in physical units that are well scaled for L-BFGS: translation ``t`` in
  mm, the linear part as the displacement (mm) it causes at a radius ``r`` (half the fixed
  image's mean extent): rigid ``L = exp([w / r]_x)`` (rotation vector), affine
  ``L = I + D / r``;
* results leave as a SimpleITK transform (``Euler3DTransform`` / ``AffineTransform``) and as the
  contract's voxel matrix (fixed voxel -> moving voxel, ``physical_to_voxel_affine``).

Each level (Gaussian smoothing + corner-aligned downsampling, coarse to fine) scores the
transform with :class:`pipeline.ngf.NGFProblem` (NGF at random points of the fixed grid, the
moving gradient by the chain rule); scipy's L-BFGS-B drives the parameters with autograd
gradients. Options: an initial translation from the image or foreground centres, an
exhaustive translation search before L-BFGS (for starts far from the answer), fields of view
(ultrasound fans: zeros outside) and a fixed mask. SimpleITK is used for what it is best at:
transforms, ``.tfm`` files and a resampling that cross-checks the contract (end of module).
"""

from __future__ import annotations

import itertools
import logging
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np
import SimpleITK as sitk
import torch
from scipy import ndimage, optimize

from evaluation.contract import affine_to_field, physical_to_voxel_affine, resize_image
from evaluation.io import DataError, Geometry, atomic_path
from pipeline.ngf import METRICS, NGFProblem, make_level

log = logging.getLogger(__name__)

MODES = ("rigid", "affine")
INITS = ("none", "center", "com")
SEARCH_SAMPLES = 32_768  # sample points per evaluation during the translation search


@dataclass(frozen=True)
class AffineConfig:
    """Settings of one affine/rigid registration (all levels)."""

    mode: str = "rigid"  # "rigid" (6 DoF) | "affine" (12 DoF)
    levels: int = 3  # resolution levels, each half the previous one's size
    iterations: tuple[int, ...] = (60, 40, 20)  # L-BFGS iterations per level, coarse to fine
    metric: str = "ngf-normalized"  # "ngf-normalized" | "ngf" (see pipeline.ngf)
    eps: float = 4.0  # NGF edge parameter, relative to each image's mean gradient norm
    smoothing: float = 0.7  # Gaussian sigma (level voxels) before sampling each level
    samples: int = 200_000  # random sample points per level (one per voxel if fewer voxels)
    max_voxels: int = 1_500_000  # finest level size cap; larger images register on a coarser grid
    min_size: int = 8  # no level axis shorter than this (or than the image)
    init: str = "none"  # initial translation: "none" | "center" (grid centres) | "com" (foreground)
    search_radius: float = 0.0  # mm; > 0: exhaustive translation search before L-BFGS (0 = off)
    search_step: float = 2.0  # mm, grid step of that search
    search_level: int = 1  # level (0 = coarsest) of the search; coarser levels are then skipped
    rigid_levels: int = 1  # affine mode: the first levels optimised stay rigid (then 12 DoF)
    max_linear_step: float = 0.25  # affine levels: bound on the change of each linear entry per level
    moving_fov: bool = False  # exact zeros of the moving image lie outside its field of view (US)
    fixed_fov: bool = False  # the same for the fixed image (e.g. an ultrasound fixed image)
    fov_margin: float = 2.0  # level voxels inside a field-of-view border left out of the metric
    tolerance: float = 1e-9  # L-BFGS-B relative function tolerance (ftol)
    seed: int = 0  # sample points
    use_fixed_mask: bool = False  # stage only: weight the NGF by the fixed mask when a task has one

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {self.mode!r}")
        if self.init not in INITS:
            raise ValueError(f"init must be one of {INITS}, got {self.init!r}")
        if self.metric not in METRICS:
            raise ValueError(f"metric must be one of {METRICS}, got {self.metric!r}")
        if self.levels < 1 or len(self.iterations) != self.levels:
            raise ValueError(f"need one iteration count per level: levels={self.levels}, iterations={self.iterations}")
        if any(int(i) < 1 for i in self.iterations) or self.eps <= 0 or self.smoothing < 0:
            raise ValueError("iterations must be >= 1, eps > 0, smoothing >= 0")
        if self.max_voxels < 64 or self.min_size < 2 or self.samples < 64:
            raise ValueError("max_voxels and samples must be >= 64, min_size >= 2")
        if min(self.search_radius, self.search_level, self.fov_margin, self.rigid_levels) < 0:
            raise ValueError("search_radius, search_level, fov_margin and rigid_levels must be >= 0")
        if self.search_step <= 0 or self.max_linear_step <= 0:
            raise ValueError("search_step and max_linear_step must be > 0")

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any]) -> AffineConfig:
        """Build from a parsed config file; unknown keys are rejected (``ValueError``)."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(raw) - known)
        if unknown:
            raise ValueError(f"unknown affine config keys {unknown}; known: {sorted(known)}")
        values = dict(raw)
        if "iterations" in values:
            values["iterations"] = tuple(int(i) for i in values["iterations"])
        return cls(**values)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready resolved config."""
        out = asdict(self)
        out["iterations"] = list(self.iterations)
        return out


@dataclass(frozen=True, eq=False)
class AffineResult:
    """Outcome of :func:`register_affine`."""

    mode: str
    matrix: np.ndarray  # 4x4: fixed physical (LPS mm) -> moving physical
    center: tuple[float, float, float]  # centre of rotation (fixed image centre, LPS mm)
    voxel_matrix: np.ndarray  # 4x4: fixed voxel (array order) -> moving voxel
    fixed_shape: tuple[int, int, int]
    metric_initial: float  # NGF at the identity transform, finest level
    metric_final: float  # NGF at the result, finest level
    runtime_s: float
    evaluations: tuple[int, ...]  # objective evaluations per level, coarse to fine

    @property
    def transform(self) -> Any:
        """SimpleITK ``Euler3DTransform`` (rigid) or ``AffineTransform`` (affine), fixed -> moving mm."""
        return make_transform(self.matrix, self.center, self.mode)

    def field(self) -> np.ndarray:
        """Contract field (``X x Y x Z x 3`` voxels, pull, fixed grid) of the voxel matrix."""
        return affine_to_field(self.voxel_matrix, self.fixed_shape)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready summary (matrices as nested lists)."""
        return {
            "mode": self.mode,
            "matrix_physical": self.matrix.tolist(),
            "center_physical": list(self.center),
            "voxel_matrix": self.voxel_matrix.tolist(),
            "fixed_shape": list(self.fixed_shape),
            "metric_initial": self.metric_initial,
            "metric_final": self.metric_final,
            "runtime_s": self.runtime_s,
            "evaluations": list(self.evaluations),
        }


# ------------------------------------------------------------------------- levels


def _level_shapes(shape: tuple[int, ...], config: AffineConfig) -> list[tuple[int, int, int]]:
    """Grid sizes, coarse to fine: the finest is capped at ``max_voxels``, each coarser one halves."""
    base = max(1.0, (float(np.prod(shape)) / config.max_voxels) ** (1.0 / 3.0))
    out = []
    for level in reversed(range(config.levels)):
        factor = base * 2.0**level
        out.append(tuple(max(min(n, config.min_size), int(round((n - 1) / factor)) + 1) for n in shape))
    return out


# ------------------------------------------------------------------------- parameters


def _physical_matrix(params: torch.Tensor, mode: str, center: torch.Tensor, radius: float) -> torch.Tensor:
    """Parameters -> 4x4 physical matrix (float64, differentiable); see the module docstring."""
    if mode == "rigid":
        w = params[:3] / radius
        zero = torch.zeros((), dtype=params.dtype)
        skew = torch.stack(
            [torch.stack([zero, -w[2], w[1]]), torch.stack([w[2], zero, -w[0]]), torch.stack([-w[1], w[0], zero])]
        )
        linear = torch.linalg.matrix_exp(skew)
    else:
        linear = torch.eye(3, dtype=params.dtype) + params[:9].reshape(3, 3) / radius
    offset = center + params[-3:] - linear @ center
    top = torch.cat([linear, offset[:, None]], dim=1)
    return torch.cat([top, torch.tensor([[0.0, 0.0, 0.0, 1.0]], dtype=params.dtype)], dim=0)


def _to_affine_params(x: np.ndarray, to_matrix, center: np.ndarray, radius: float) -> np.ndarray:
    """Rigid parameters (6) -> the affine parameters (12) of the same transform; affine ones unchanged."""
    if len(x) == 12:
        return x
    linear = to_matrix(torch.from_numpy(x)).numpy()[:3, :3]
    return np.concatenate([((linear - np.eye(3)) * radius).ravel(), x[-3:]])


def _foreground_center(image: np.ndarray, geom: Geometry) -> np.ndarray:
    """Physical centre (mm) of the voxels brighter than the image mean (grid centre if none)."""
    mask = image > image.mean()
    index = np.array(ndimage.center_of_mass(mask)) if mask.any() else (np.asarray(image.shape) - 1) / 2.0
    return (geom.index_to_physical @ np.append(index, 1.0))[:3]


def _initial_translation(fixed, moving, fixed_geom, moving_geom, init: str) -> np.ndarray:
    """Translation (mm) that maps the fixed centre onto the moving centre, per ``init``."""
    if init == "none":
        return np.zeros(3)
    if init == "center":
        c_f = (fixed_geom.index_to_physical @ np.append((np.asarray(fixed.shape) - 1) / 2.0, 1.0))[:3]
        c_m = (moving_geom.index_to_physical @ np.append((np.asarray(moving.shape) - 1) / 2.0, 1.0))[:3]
        return c_m - c_f
    return _foreground_center(moving, moving_geom) - _foreground_center(fixed, fixed_geom)


# ------------------------------------------------------------------------- driver


def _optimize(
    problem: NGFProblem, to_matrix, x0: np.ndarray, iterations: int, ftol: float, bounds: list | None = None
) -> tuple[np.ndarray, int]:
    """L-BFGS-B on one level (optional ``(low, high)`` bounds per parameter); returns the best
    parameters and the number of evaluations."""

    def objective(x: np.ndarray) -> tuple[float, np.ndarray]:
        p = torch.tensor(x, dtype=torch.float64, requires_grad=True)
        value = problem.loss(to_matrix(p))
        value.backward()
        return float(value.detach()), p.grad.numpy().copy()

    res = optimize.minimize(
        objective, x0, jac=True, method="L-BFGS-B", bounds=bounds, options={"maxiter": iterations, "ftol": ftol, "gtol": 1e-10}
    )
    log.debug("level with %d samples: NGF %.5f after %d evaluations (%s)", problem.points.shape[0], res.fun, res.nfev, res.message)
    return np.asarray(res.x, dtype=np.float64), int(res.nfev)


def _translation_search(problem: NGFProblem, to_matrix, x0: np.ndarray, radius: float, step: float) -> np.ndarray:
    """Exhaustive search of translations ``x0 + d`` (``d`` on a cubic grid, ``|d_k| <= radius`` mm);
    returns the parameters with the lowest NGF."""
    offsets = np.arange(-radius, radius + 1e-9, step)
    best, best_x = np.inf, x0
    with torch.no_grad():
        for shift in itertools.product(offsets, repeat=3):
            x = x0.copy()
            x[-3:] += shift
            value = float(problem.loss(to_matrix(torch.from_numpy(x))))
            if value < best:
                best, best_x = value, x
    log.debug("translation search: best shift %s mm, NGF %.5f", np.round(best_x[-3:] - x0[-3:], 2), best)
    return best_x


def _first_level(config: AffineConfig) -> int:
    """Index (0 = coarsest) of the first level that is optimised."""
    return min(config.search_level, config.levels - 1) if config.search_radius > 0 else 0


def _levels(fixed, moving, fixed_geom, moving_geom, config: AffineConfig, fixed_mask: np.ndarray | None):
    """Yield ``(fixed level, moving level, fixed weight on the level grid, iterations)``, coarse to
    fine; ``(None, None, None, 0)`` for levels skipped because of the translation search."""
    fov_f = fixed != 0 if config.fixed_fov else None
    fov_m = moving != 0 if config.moving_fov else None
    shapes = zip(_level_shapes(fixed.shape, config), _level_shapes(moving.shape, config), config.iterations, strict=True)
    for index, (shape_f, shape_m, iters) in enumerate(shapes):
        if index < _first_level(config):
            yield None, None, None, 0
            continue
        weight = None
        if fixed_mask is not None:
            weight = torch.from_numpy(resize_image((fixed_mask > 0).astype(np.float32), shape_f, order=1))[None, None]
        yield (
            make_level(fixed, fixed_geom, shape_f, config.smoothing, fov_f, config.fov_margin),
            make_level(moving, moving_geom, shape_m, config.smoothing, fov_m, config.fov_margin),
            weight,
            iters,
        )


def _check_inputs(fixed: np.ndarray, moving: np.ndarray, fixed_geom: Geometry, moving_geom: Geometry) -> None:
    for name, img, geom in (("fixed", fixed, fixed_geom), ("moving", moving, moving_geom)):
        if img.ndim != 3 or min(img.shape) < 4:
            raise ValueError(f"{name} image must be 3-D with every axis >= 4 voxels, got shape {img.shape}")
        if tuple(img.shape) != tuple(geom.shape):
            raise ValueError(f"{name} image shape {img.shape} differs from its geometry {geom.shape}")
        if not np.all(np.isfinite(img)):
            raise ValueError(f"{name} image contains NaN or Inf")


def register_affine(
    fixed: np.ndarray,
    moving: np.ndarray,
    fixed_geom: Geometry,
    moving_geom: Geometry,
    config: AffineConfig,
    fixed_mask: np.ndarray | None = None,
) -> AffineResult:
    """Register ``moving`` to ``fixed`` (arrays ``X x Y x Z`` with their LPS geometries).

    ``fixed_mask`` (optional, fixed grid, nonzero = inside) weights the NGF. Returns the
    transform fixed physical -> moving physical, its voxel matrix and metrics.
    """
    start = time.perf_counter()
    _check_inputs(fixed, moving, fixed_geom, moving_geom)
    if fixed_mask is not None and tuple(fixed_mask.shape) != tuple(fixed.shape):
        raise ValueError(f"fixed mask shape {fixed_mask.shape} differs from the fixed image {fixed.shape}")
    fixed, moving = np.asarray(fixed, np.float32), np.asarray(moving, np.float32)
    g_f = fixed_geom.index_to_physical
    center_np = (g_f @ np.append((np.asarray(fixed.shape) - 1) / 2.0, 1.0))[:3]
    radius = float(np.mean((np.asarray(fixed.shape) - 1) * np.asarray(fixed_geom.spacing))) / 2.0
    center = torch.from_numpy(center_np)

    def to_matrix(p: torch.Tensor) -> torch.Tensor:
        return _physical_matrix(p, "rigid" if len(p) == 6 else "affine", center, radius)

    x = np.zeros(6)
    x[-3:] = _initial_translation(fixed, moving, fixed_geom, moving_geom, config.init)
    evaluations: list[int] = []
    problem = None
    first = _first_level(config)
    for index, (level_f, level_m, weight, iters) in enumerate(_levels(fixed, moving, fixed_geom, moving_geom, config, fixed_mask)):
        if level_f is None:  # coarser than the translation search: skipped
            evaluations.append(0)
            continue
        rng = np.random.default_rng([config.seed, index])
        if index == first and config.search_radius > 0:
            coarse = NGFProblem(level_f, level_m, config.eps, config.metric, min(config.samples, SEARCH_SAMPLES), rng, weight)
            x = _translation_search(coarse, to_matrix, x, config.search_radius, config.search_step)
        bounds = None
        if config.mode == "affine" and (index - first >= config.rigid_levels or index == config.levels - 1):
            x = _to_affine_params(x, to_matrix, center_np, radius)
            step = config.max_linear_step * radius
            bounds = [(v - step, v + step) for v in x[:9]] + [(None, None)] * 3
        problem = NGFProblem(level_f, level_m, config.eps, config.metric, config.samples, rng, weight)
        x, nfev = _optimize(problem, to_matrix, x, int(iters), config.tolerance, bounds)
        evaluations.append(nfev)
    with torch.no_grad():
        matrix = to_matrix(torch.from_numpy(x)).numpy()
        metric_initial = float(problem.loss(torch.eye(4, dtype=torch.float64)))
        metric_final = float(problem.loss(torch.from_numpy(matrix)))
    voxel = physical_to_voxel_affine(matrix, g_f, moving_geom.index_to_physical)
    runtime = time.perf_counter() - start
    log.info("%s registration: NGF %.4f -> %.4f in %.2f s", config.mode, metric_initial, metric_final, runtime)
    return AffineResult(
        mode=config.mode,
        matrix=matrix,
        center=tuple(float(c) for c in center_np),
        voxel_matrix=voxel,
        fixed_shape=tuple(int(n) for n in fixed.shape),
        metric_initial=metric_initial,
        metric_final=metric_final,
        runtime_s=runtime,
        evaluations=tuple(evaluations),
    )


# ------------------------------------------------------------------------- SimpleITK bridge


def make_transform(matrix: np.ndarray, center: tuple[float, ...], mode: str) -> sitk.Transform:
    """SimpleITK transform of a physical 4x4 (fixed mm -> moving mm) with centre ``center`` (mm).

    ITK's form is ``y = L (x - c) + c + t``; rigid gives an ``Euler3DTransform`` (``L`` must be
    a rotation), affine an ``AffineTransform``.
    """
    m = np.asarray(matrix, dtype=np.float64)
    c = np.asarray(center, dtype=np.float64)
    linear = m[:3, :3]
    translation = m[:3, 3] - c + linear @ c
    transform = sitk.Euler3DTransform() if mode == "rigid" else sitk.AffineTransform(3)
    transform.SetCenter(c.tolist())
    if mode == "rigid":
        transform.SetMatrix(linear.ravel().tolist(), 1e-6)
    else:
        transform.SetMatrix(linear.ravel().tolist())
    transform.SetTranslation(translation.tolist())
    return transform


def transform_matrix(transform: sitk.Transform) -> np.ndarray:
    """Physical 4x4 of any linear SimpleITK transform (read off by mapping the origin and unit vectors)."""
    origin = np.asarray(transform.TransformPoint((0.0, 0.0, 0.0)))
    m = np.eye(4)
    for axis in range(3):
        m[:3, axis] = np.asarray(transform.TransformPoint(tuple(float(v) for v in np.eye(3)[axis]))) - origin
    m[:3, 3] = origin
    return m


def write_transform(path: str | Path, transform: sitk.Transform) -> None:
    """``sitk.WriteTransform`` to ``path`` (``.tfm``), atomically."""
    with atomic_path(path) as tmp:
        sitk.WriteTransform(transform, str(tmp))


def read_transform(path: str | Path) -> sitk.Transform:
    """``sitk.ReadTransform``; ``DataError`` naming the file if it is missing or unreadable."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: file not found")
    try:
        return sitk.ReadTransform(str(path))
    except RuntimeError as exc:
        raise DataError(f"{path}: unreadable transform file ({exc})") from exc


def to_sitk_image(array: np.ndarray, geom: Geometry) -> sitk.Image:
    """SimpleITK image of an ``X x Y x Z`` array with its LPS geometry (sitk index ``(i, j, k)`` = array order)."""
    image = sitk.GetImageFromArray(np.ascontiguousarray(np.asarray(array).transpose(2, 1, 0)))
    image.SetSpacing(tuple(float(s) for s in geom.spacing))
    image.SetOrigin(tuple(float(o) for o in geom.origin))
    image.SetDirection(tuple(float(d) for d in geom.direction))
    return image


def resample_sitk(
    moving: np.ndarray, moving_geom: Geometry, fixed_geom: Geometry, transform: sitk.Transform, default: float = 0.0
) -> np.ndarray:
    """Moving image resampled by SimpleITK (linear) on the fixed grid -> ``X x Y x Z`` float32."""
    reference = sitk.Image([int(n) for n in fixed_geom.shape], sitk.sitkFloat32)
    reference.SetSpacing(tuple(float(s) for s in fixed_geom.spacing))
    reference.SetOrigin(tuple(float(o) for o in fixed_geom.origin))
    reference.SetDirection(tuple(float(d) for d in fixed_geom.direction))
    source = to_sitk_image(np.asarray(moving, dtype=np.float32), moving_geom)
    out = sitk.Resample(source, reference, transform, sitk.sitkLinear, default, sitk.sitkFloat32)
    return sitk.GetArrayFromImage(out).transpose(2, 1, 0)
