"""Rigid (6 DoF) and affine (12 DoF) pre-alignment: NGF similarity, L-BFGS, multi-resolution.

The seed paper's task-1 method. Frames:

* the transform ``T`` maps a **fixed physical** point (LPS mm) to the **moving physical**
  point (ITK's resampling direction): ``T(x) = L (x - c) + c + t`` with the centre ``c`` at the
  fixed image centre;
* it is optimised in physical units that are well scaled for L-BFGS: translation ``t`` in
  mm, the linear part as the displacement (mm) it causes at a radius ``r`` (half the fixed
  image's mean extent): rigid ``L = exp([w / r]_x)`` (rotation vector), affine
  ``L = I + D / r``; affine mode optimises the coarsest level(s) rigidly, then all 12
  parameters with a bound on how far the linear part may move per level;
* results leave as a SimpleITK transform (``Euler3DTransform`` / ``AffineTransform``) and as the
  contract's voxel matrix (fixed voxel -> moving voxel, ``physical_to_voxel_affine``).

Each level (Gaussian smoothing + corner-aligned downsampling, coarse to fine) scores the
transform with :class:`pipeline.affine.ngf.NGFProblem` (NGF at random points of the fixed grid, the
moving gradient by the chain rule); scipy's L-BFGS-B drives the parameters with autograd
gradients. Options: an initial translation from the image or foreground centres, an
exhaustive translation search before L-BFGS (for starts far from the answer), fields of view
(ultrasound fans: zeros outside) and a fixed mask. SimpleITK is used for what it is best at:
transforms (:func:`make_transform`); ``.tfm`` files and a resampling that cross-checks the
contract live in :mod:`pipeline.affine.align`.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import asdict, dataclass, fields
from typing import Any

import numpy as np
import SimpleITK as sitk
import torch
from scipy import ndimage, optimize

from learn2reg.contract import affine_to_field, physical_to_voxel_affine, resize_image
from learn2reg.io import Geometry, float3, int3
from pipeline.affine.ngf import METRICS, NGFProblem, level_shapes, make_level

log = logging.getLogger(__name__)

MODES = ("rigid", "affine")
INITS = ("none", "center", "com")
SEARCH_SAMPLES = 32_768  # sample points per evaluation during the translation search
ToMatrix = Callable[[torch.Tensor], torch.Tensor]  # parameters (6 or 12) -> physical 4x4


@dataclass(frozen=True)
class AffineConfig:
    """Settings of one affine/rigid registration (all levels)."""

    mode: str = "rigid"  # "rigid" (6 DoF) | "affine" (12 DoF)
    levels: int = 3  # resolution levels, each half the previous one's size
    iterations: tuple[int, ...] = (60, 40, 20)  # L-BFGS iterations per level, coarse to fine
    metric: str = "auto"  # "ngf" | "ngf-normalized" (pipeline.affine.ngf) | "auto" (see resolved_metric)
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
    threads: int = 1  # torch CPU threads while registering (0 = leave as is); the ops are small, and
    # more threads only add synchronisation, which stalls badly when other processes share the cores
    use_fixed_mask: bool = False  # stage only: weight the NGF by the fixed mask when a task has one

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {self.mode!r}")
        if self.init not in INITS:
            raise ValueError(f"init must be one of {INITS}, got {self.init!r}")
        if self.metric not in ("auto", *METRICS):
            raise ValueError(f"metric must be 'auto' or one of {METRICS}, got {self.metric!r}")
        if self.levels < 1 or len(self.iterations) != self.levels:
            raise ValueError(f"need one iteration count per level: levels={self.levels}, iterations={self.iterations}")
        if any(int(i) < 1 for i in self.iterations) or self.eps <= 0 or self.smoothing < 0:
            raise ValueError("iterations must be >= 1, eps > 0, smoothing >= 0")
        if self.max_voxels < 64 or self.min_size < 2 or self.samples < 64:
            raise ValueError("max_voxels and samples must be >= 64, min_size >= 2")
        if min(self.search_radius, self.search_level, self.fov_margin, self.rigid_levels) < 0:
            raise ValueError("search_radius, search_level, fov_margin and rigid_levels must be >= 0")
        if self.threads < 0:
            raise ValueError("threads must be >= 0")
        if self.search_step <= 0 or self.max_linear_step <= 0:
            raise ValueError("search_step and max_linear_step must be > 0")

    def resolved_metric(self) -> str:
        """The NGF form used: ``auto`` is the normalised form, except with a field of view (a
        partial overlap by design), where the classical form is used: the normalised one can
        gain there by moving structure out of the overlap (see :mod:`pipeline.affine.ngf`)."""
        if self.metric != "auto":
            return self.metric
        return "ngf" if self.moving_fov or self.fixed_fov else "ngf-normalized"

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
    metric: str  # the NGF form used ("ngf" | "ngf-normalized")
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
            "metric": self.metric,
            "matrix_physical": self.matrix.tolist(),
            "center_physical": list(self.center),
            "voxel_matrix": self.voxel_matrix.tolist(),
            "fixed_shape": list(self.fixed_shape),
            "metric_initial": self.metric_initial,
            "metric_final": self.metric_final,
            "runtime_s": self.runtime_s,
            "evaluations": list(self.evaluations),
        }


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


def _to_affine_params(x: np.ndarray, to_matrix: ToMatrix, radius: float) -> np.ndarray:
    """Rigid parameters (6) -> the affine parameters (12) of the same transform; affine ones unchanged."""
    if len(x) == 12:
        return x
    linear = to_matrix(torch.from_numpy(x)).numpy()[:3, :3]
    return np.concatenate([((linear - np.eye(3)) * radius).ravel(), x[-3:]])


def _center(image: np.ndarray, geom: Geometry, foreground: bool = False) -> np.ndarray:
    """Physical (mm) centre of the grid or, with ``foreground``, of the voxels above the image mean."""
    mask = image > image.mean()
    index = ndimage.center_of_mass(mask) if foreground and mask.any() else (np.asarray(image.shape) - 1) / 2.0
    return (geom.index_to_physical @ np.append(index, 1.0))[:3]


def _initial_translation(fixed: np.ndarray, moving: np.ndarray, fixed_geom: Geometry, moving_geom: Geometry, init: str) -> np.ndarray:
    """Translation (mm) that maps the fixed centre onto the moving centre, per ``init``."""
    if init == "none":
        return np.zeros(3)
    return _center(moving, moving_geom, init == "com") - _center(fixed, fixed_geom, init == "com")


# ------------------------------------------------------------------------- driver


def _optimize(
    problem: NGFProblem, to_matrix: ToMatrix, x0: np.ndarray, iterations: int, ftol: float, bounds: list | None = None
) -> tuple[np.ndarray, int]:
    """L-BFGS-B on one level (optional ``(low, high)`` bounds per parameter); returns the best
    parameters and the number of evaluations."""

    def objective(x: np.ndarray) -> tuple[float, np.ndarray]:
        p = torch.tensor(x, dtype=torch.float64, requires_grad=True)
        value = problem.loss(to_matrix(p))
        value.backward()
        assert p.grad is not None  # p requires grad and the loss depends on it
        return float(value.detach()), p.grad.numpy().copy()

    res = optimize.minimize(
        objective, x0, jac=True, method="L-BFGS-B", bounds=bounds, options={"maxiter": iterations, "ftol": ftol, "gtol": 1e-10}
    )
    log.debug("level with %d samples: NGF %.5f after %d evaluations (%s)", problem.points.shape[0], res.fun, res.nfev, res.message)
    return np.asarray(res.x, dtype=np.float64), int(res.nfev)


def _translation_search(problem: NGFProblem, to_matrix: ToMatrix, x0: np.ndarray, radius: float, step: float) -> np.ndarray:
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


def _levels(
    fixed: np.ndarray, moving: np.ndarray, fixed_geom: Geometry, moving_geom: Geometry, config: AffineConfig, fixed_mask: np.ndarray | None
) -> Iterator[tuple[Any, Any, torch.Tensor | None, int]]:
    """Yield ``(fixed level, moving level, fixed weight on the level grid, iterations)``, coarse to
    fine; ``(None, None, None, 0)`` for levels skipped because of the translation search."""
    fov_f = fixed != 0 if config.fixed_fov else None
    fov_m = moving != 0 if config.moving_fov else None
    plan = [level_shapes(img.shape, config.levels, config.max_voxels, config.min_size) for img in (fixed, moving)]
    shapes = zip(*plan, config.iterations, strict=True)
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


def _check_inputs(
    fixed: np.ndarray, moving: np.ndarray, fixed_geom: Geometry, moving_geom: Geometry, fixed_mask: np.ndarray | None
) -> None:
    """``ValueError`` for arrays that cannot be registered (dimension, size, geometry, NaN, mask)."""
    for name, img, geom in (("fixed", fixed, fixed_geom), ("moving", moving, moving_geom)):
        if img.ndim != 3 or min(img.shape) < 4:
            raise ValueError(f"{name} image must be 3-D with every axis >= 4 voxels, got shape {img.shape}")
        if tuple(img.shape) != tuple(geom.shape):
            raise ValueError(f"{name} image shape {img.shape} differs from its geometry {geom.shape}")
        if not np.all(np.isfinite(img)):
            raise ValueError(f"{name} image contains NaN or Inf")
    if fixed_mask is not None and tuple(fixed_mask.shape) != tuple(fixed.shape):
        raise ValueError(f"fixed mask shape {fixed_mask.shape} differs from the fixed image {fixed.shape}")


@contextlib.contextmanager
def _torch_threads(count: int) -> Iterator[None]:
    """Run the block with ``count`` torch CPU threads (0: unchanged), then restore the setting."""
    previous = torch.get_num_threads()
    if count > 0 and count != previous:
        torch.set_num_threads(count)
    try:
        yield
    finally:
        if torch.get_num_threads() != previous:
            torch.set_num_threads(previous)


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
    with _torch_threads(config.threads):
        return _register(fixed, moving, fixed_geom, moving_geom, config, fixed_mask)


def _register(
    fixed: np.ndarray, moving: np.ndarray, fixed_geom: Geometry, moving_geom: Geometry, config: AffineConfig, fixed_mask: np.ndarray | None
) -> AffineResult:
    start = time.perf_counter()
    _check_inputs(fixed, moving, fixed_geom, moving_geom, fixed_mask)
    fixed, moving = np.asarray(fixed, np.float32), np.asarray(moving, np.float32)
    center_np = _center(fixed, fixed_geom)
    radius = float(np.mean((np.asarray(fixed.shape) - 1) * np.asarray(fixed_geom.spacing))) / 2.0
    center = torch.from_numpy(center_np)

    def to_matrix(p: torch.Tensor) -> torch.Tensor:
        return _physical_matrix(p, "rigid" if len(p) == 6 else "affine", center, radius)

    x = np.zeros(6)
    x[-3:] = _initial_translation(fixed, moving, fixed_geom, moving_geom, config.init)
    levels = _levels(fixed, moving, fixed_geom, moving_geom, config, fixed_mask)
    x, problem, evaluations = _run_levels(levels, config, to_matrix, x, radius)
    with torch.no_grad():
        matrix = to_matrix(torch.from_numpy(x)).numpy()
        metric_initial = float(problem.loss(torch.eye(4, dtype=torch.float64)))
        metric_final = float(problem.loss(torch.from_numpy(matrix)))
    runtime = time.perf_counter() - start
    log.info("%s registration: NGF %.4f -> %.4f in %.2f s", config.mode, metric_initial, metric_final, runtime)
    return AffineResult(
        mode=config.mode,
        metric=config.resolved_metric(),
        matrix=matrix,
        center=float3(center_np),
        voxel_matrix=physical_to_voxel_affine(matrix, fixed_geom.index_to_physical, moving_geom.index_to_physical),
        fixed_shape=int3(fixed.shape),
        metric_initial=metric_initial,
        metric_final=metric_final,
        runtime_s=runtime,
        evaluations=tuple(evaluations),
    )


def _run_levels(
    levels: Iterator, config: AffineConfig, to_matrix: ToMatrix, x: np.ndarray, radius: float
) -> tuple[np.ndarray, NGFProblem, list[int]]:
    """Coarse to fine: optional translation search, then L-BFGS per level (rigid, then affine in
    affine mode). Returns the parameters, the finest level's problem and evaluations per level."""
    evaluations: list[int] = []
    problem: NGFProblem | None = None
    metric, first = config.resolved_metric(), _first_level(config)
    for index, (level_f, level_m, weight, iters) in enumerate(levels):
        if level_f is None:  # coarser than the translation search: skipped
            evaluations.append(0)
            continue
        rng = np.random.default_rng([config.seed, index])
        if index == first and config.search_radius > 0:
            coarse = NGFProblem(level_f, level_m, config.eps, metric, min(config.samples, SEARCH_SAMPLES), rng, weight)
            x = _translation_search(coarse, to_matrix, x, config.search_radius, config.search_step)
        bounds = None
        if config.mode == "affine" and (index - first >= config.rigid_levels or index == config.levels - 1):
            x = _to_affine_params(x, to_matrix, radius)
            step = config.max_linear_step * radius
            bounds = [(v - step, v + step) for v in x[:9]] + [(None, None)] * 3
        problem = NGFProblem(level_f, level_m, config.eps, metric, config.samples, rng, weight)
        x, nfev = _optimize(problem, to_matrix, x, int(iters), config.tolerance, bounds)
        evaluations.append(nfev)
    if problem is None:
        raise ValueError("no pyramid level was registered (every level is coarser than the translation search)")
    return x, problem, evaluations


# ------------------------------------------------------------------------- SimpleITK


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
        transform.SetMatrix(linear.ravel().tolist(), 1e-6)  # type: ignore[call-arg]  # Euler3DTransform's overload takes a tolerance; the stubs know only the base's
    else:
        transform.SetMatrix(linear.ravel().tolist())
    transform.SetTranslation(translation.tolist())
    return transform
