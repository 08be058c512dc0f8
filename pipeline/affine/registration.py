"""Rigid (6 DoF) and affine (12 DoF) pre-alignment: NGF similarity, L-BFGS, multi-resolution.

The seed paper's task-1 method. Frames:

* the transform ``T`` maps a **fixed physical** point (LPS mm) to the **moving physical**
  point (ITK's resampling direction): ``T(x) = L (x - c) + c + t`` with the centre ``c`` at the
  fixed image centre (the centroid of a field of view when there is one);
* it is optimised in physical units that are well scaled for L-BFGS: translation ``t`` in
  mm, the linear part as the displacement (mm) it causes at a radius ``r`` (half the fixed
  image's mean extent): rigid ``L = exp([w / r]_x)`` (rotation vector), affine
  ``L = I + D / r``; affine mode optimises the coarsest level(s) rigidly, then all 12
  parameters with a bound on how far the linear part may move per level;
* results leave as a SimpleITK transform (``Euler3DTransform`` / ``AffineTransform``) and as the
  contract's voxel matrix (fixed voxel -> moving voxel, ``physical_to_voxel_affine``).

Each level (Gaussian smoothing + corner-aligned downsampling, coarse to fine) scores the
transform with :class:`pipeline.affine.ngf.NGFProblem` (NGF at random points of the fixed grid,
inside its field of view or mask; the moving gradient by the chain rule); scipy's L-BFGS-B
drives the parameters with autograd gradients, in stages as elastix and ANTs do: per level a
translation stage (rotation held), then the rigid stage (from ``rotation_level`` on: by default
every level, the finest only with a field of view, whose coarse levels keep few samples), then
affine. The start (:mod:`pipeline.affine.search`): the identity or an initial translation from
the image or foreground centres, optionally an exhaustive translation search, then on the
first level a grid of translations within the bounds and L-BFGS from the best few. With a field
of view the rotation centre is the centroid of the field of view (:mod:`pipeline.affine.support`).

Plausibility (:mod:`pipeline.affine.bounds`): every stage stays within stated bounds around the
start (rotation, translation as a fraction of the fixed extent, scale, shear); a result at a
bound, or one that shrinks the overlap of the fields of view, is implausible and handled per
``on_implausible`` (fall back to the translation stage's result or the initial transform, warn,
or refuse); the result carries the reasons. SimpleITK is used for what it is best at:
transforms (:func:`make_transform`); ``.tfm`` files and a resampling that cross-checks the
contract live in :mod:`pipeline.affine.align`.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import SimpleITK as sitk
import torch
from scipy import ndimage, optimize

from learn2reg.contract import affine_to_field, physical_to_voxel_affine, resize_image
from learn2reg.io import Geometry, float3, int3
from pipeline.affine.bounds import Bounds, bounds_in_mm, check, decide, decompose, parameter_box
from pipeline.affine.ngf import NGFProblem, level_shapes, make_level
from pipeline.affine.search import start_search, translation_search
from pipeline.affine.settings import INITS, MODES, POLICIES, AffineConfig
from pipeline.affine.support import support

__all__ = ["INITS", "MODES", "POLICIES", "AffineConfig", "AffineResult", "make_transform", "register_affine"]

log = logging.getLogger(__name__)

SEARCH_SAMPLES = 32_768  # sample points per evaluation during the translation search
ToMatrix = Callable[[torch.Tensor], torch.Tensor]  # parameters (6 or 12) -> physical 4x4


@dataclass(frozen=True, eq=False)
class AffineResult:
    """Outcome of :func:`register_affine`."""

    mode: str
    metric: str  # the NGF form used ("ngf" | "ngf-normalized")
    matrix: np.ndarray  # 4x4: fixed physical (LPS mm) -> moving physical
    center: tuple[float, float, float]  # centre of rotation (fixed image centre or field-of-view centroid, LPS mm)
    voxel_matrix: np.ndarray  # 4x4: fixed voxel (array order) -> moving voxel
    fixed_shape: tuple[int, int, int]
    metric_initial: float  # NGF at the identity transform, finest level
    metric_final: float  # NGF at the result, finest level
    runtime_s: float
    evaluations: tuple[int, ...]  # objective evaluations per level, coarse to fine
    initial_matrix: np.ndarray  # 4x4: the start (identity or the initial translation)
    found_matrix: np.ndarray  # 4x4: what the optimisation found (== matrix unless it fell back)
    overlap: tuple[float, float]  # fixed field of view inside the moving one: at the start, at the found result
    # ((1, 1) when neither image has a field of view: the overlap is not checked then)
    implausible: tuple[str, ...] = ()  # reasons (pipeline.affine.bounds.check); empty: plausible
    action: str = "accepted"  # pipeline.affine.bounds.ACTIONS: accepted, fallback-translation/-initial, warned

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
            "initial_matrix": self.initial_matrix.tolist(),
            "found_matrix": self.found_matrix.tolist(),
            "found": decompose(self.found_matrix, np.asarray(self.center)).to_dict(),
            "overlap_initial": self.overlap[0],
            "overlap_found": self.overlap[1],
            "implausible": list(self.implausible),
            "action": self.action,
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


def _support_center(image: np.ndarray, geom: Geometry) -> np.ndarray:
    """Physical (mm) centroid of a field of view (:func:`pipeline.affine.support.support`)."""
    inside = support(image)
    index = ndimage.center_of_mass(inside) if inside.any() else (np.asarray(image.shape) - 1) / 2.0
    return (geom.index_to_physical @ np.append(index, 1.0))[:3]


def _rotation_center(fixed: np.ndarray, moving: np.ndarray, fixed_geom: Geometry, moving_geom: Geometry, config: AffineConfig, t0: np.ndarray) -> np.ndarray:
    """Centre of rotation (fixed mm): the centroid of the field of view that limits the overlap
    (the fixed one, else the moving one brought back by the initial translation ``t0``), else the
    fixed grid centre. Rotations about it keep that field of view in place."""
    if config.fixed_fov:
        return _support_center(fixed, fixed_geom)
    if config.moving_fov:
        return _support_center(moving, moving_geom) - t0
    return _center(fixed, fixed_geom)


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

    if bounds is not None:
        x0 = np.clip(x0, [b[0] for b in bounds], [b[1] for b in bounds])
    res = optimize.minimize(
        objective, x0, jac=True, method="L-BFGS-B", bounds=bounds, options={"maxiter": iterations, "ftol": ftol, "gtol": 1e-10}
    )
    log.debug("level with %d samples: NGF %.5f after %d evaluations (%s)", problem.points.shape[0], res.fun, res.nfev, res.message)
    return np.asarray(res.x, dtype=np.float64), int(res.nfev)


def _level_optimiser(
    problem: NGFProblem, x0: np.ndarray, *, to_matrix: ToMatrix, iterations: int, ftol: float, bounds: list
) -> tuple[np.ndarray, int]:
    """:func:`_optimize` with the problem and start first (for :func:`pipeline.affine.search.start_search`)."""
    return _optimize(problem, to_matrix, x0, iterations, ftol, bounds)


def _first_level(config: AffineConfig) -> int:
    """Index (0 = coarsest) of the first level that is optimised."""
    return min(config.search_level, config.levels - 1) if config.search_radius > 0 else 0


def _levels(
    fixed: np.ndarray, moving: np.ndarray, fixed_geom: Geometry, moving_geom: Geometry, config: AffineConfig, fixed_mask: np.ndarray | None
) -> Iterator[tuple[Any, Any, torch.Tensor | None, int]]:
    """Yield ``(fixed level, moving level, fixed weight on the level grid, iterations)``, coarse to
    fine; ``(None, None, None, 0)`` for levels skipped because of the translation search."""
    fov_f = support(fixed) if config.fixed_fov else None
    fov_m = support(moving) if config.moving_fov else None
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
    transform fixed physical -> moving physical, its voxel matrix and metrics. The search stays
    within :func:`bounds_of` the config around the start; a result at a bound or one that
    shrinks the overlap (:func:`pipeline.affine.bounds.check`) is handled per
    ``config.on_implausible``: "fallback" returns the initial transform, "warn" the result,
    both with the reasons in ``implausible``; "refuse" raises :class:`ImplausibleResult`.
    """
    with _torch_threads(config.threads):
        return _register(fixed, moving, fixed_geom, moving_geom, config, fixed_mask)


def _register(
    fixed: np.ndarray, moving: np.ndarray, fixed_geom: Geometry, moving_geom: Geometry, config: AffineConfig, fixed_mask: np.ndarray | None
) -> AffineResult:
    start = time.perf_counter()
    _check_inputs(fixed, moving, fixed_geom, moving_geom, fixed_mask)
    fixed, moving = np.asarray(fixed, np.float32), np.asarray(moving, np.float32)
    t0 = _initial_translation(fixed, moving, fixed_geom, moving_geom, config.init)
    center_np = _rotation_center(fixed, moving, fixed_geom, moving_geom, config, t0)
    radius = float(np.mean((np.asarray(fixed.shape) - 1) * np.asarray(fixed_geom.spacing))) / 2.0
    center = torch.from_numpy(center_np)
    bounds = bounds_in_mm(config.max_rotation_deg, config.max_translation, config.max_scale, config.max_shear,
                          fixed.shape, fixed_geom.spacing, config.search_radius)

    def to_matrix(p: torch.Tensor) -> torch.Tensor:
        return _physical_matrix(p, "rigid" if len(p) == 6 else "affine", center, radius)

    x = np.zeros(6)
    x[-3:] = t0
    initial = to_matrix(torch.from_numpy(x)).numpy()
    levels = _levels(fixed, moving, fixed_geom, moving_geom, config, fixed_mask)
    x, x_translation, problem, evaluations = _run_levels(levels, config, to_matrix, x, radius, bounds)
    candidates, overlap = [], (0.0, 0.0)
    partial = config.fixed_fov or config.moving_fov  # the overlap is checked where a field of view makes it partial
    for name, params in (("found", x), ("translation", x_translation)):
        with torch.no_grad():
            matrix = to_matrix(torch.from_numpy(params)).numpy()
            shared = (problem.overlap(torch.from_numpy(initial)), problem.overlap(torch.from_numpy(matrix))) if partial else (1.0, 1.0)
        candidates.append((name, matrix, check(matrix, initial, center_np, bounds, shared, config.min_overlap)))
        overlap = shared if name == "found" else overlap
    found = candidates[0][1]
    action, matrix, reasons = decide([*candidates, ("initial", initial, [])], config.on_implausible)
    with torch.no_grad():
        metric_initial = float(problem.loss(torch.eye(4, dtype=torch.float64)))
        metric_final = float(problem.loss(torch.from_numpy(matrix)))
    runtime = time.perf_counter() - start
    if reasons:
        log.warning("implausible %s result (%s): %s", config.mode, "; ".join(reasons), action)
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
        initial_matrix=initial,
        found_matrix=found,
        overlap=overlap,
        implausible=reasons,
        action=action,
    )


def _run_levels(
    levels: Iterator, config: AffineConfig, to_matrix: ToMatrix, x: np.ndarray, radius: float, bounds: Bounds
) -> tuple[np.ndarray, np.ndarray, NGFProblem, list[int]]:
    """Coarse to fine, staged as elastix/ANTs do: per level a translation stage (rotation held),
    then, from level ``rotation_level`` on, the rigid stage, then affine in affine mode, each
    L-BFGS-B within the bounds. On the first level the start search (translations within the
    bound) and the optional translation search come first. Returns the parameters, those of the
    last translation stage before any rotation was freed (the fallback), the finest level's
    problem and evaluations per level."""
    evaluations: list[int] = []
    problem: NGFProblem | None = None
    metric, first, x_start = config.resolved_metric(), _first_level(config), x.copy()
    rotation_level = config.resolved_rotation_level()
    x_translation = x.copy()
    for index, (level_f, level_m, weight, iters) in enumerate(levels):
        if level_f is None:  # coarser than the translation search: skipped
            evaluations.append(0)
            continue
        rng = np.random.default_rng([config.seed, index])
        problem = NGFProblem(level_f, level_m, config.eps, metric, config.samples, rng, weight)
        if index == first and config.search_radius > 0:
            coarse = NGFProblem(level_f, level_m, config.eps, metric, min(config.samples, SEARCH_SAMPLES), rng, weight)
            x = translation_search(coarse, to_matrix, x, config.search_radius, config.search_step)
        box = parameter_box(x_start, bounds, radius)
        nfev = 0
        if len(x) == 6:  # translation stage: the rotation held where it is
            held = [(v, v) for v in x[:3]] + box[3:]
            optimise = functools.partial(_level_optimiser, to_matrix=to_matrix, iterations=int(iters), ftol=config.tolerance, bounds=held)
            if index == first and config.start_search:
                x, nfev = start_search(problem, to_matrix, x, bounds.max_translation, optimise)
            else:
                x, nfev = optimise(problem, x)
            if np.array_equal(x[:3], x_start[:3]):  # no rotation freed yet: a translation-only result
                x_translation = x.copy()
        if config.mode == "affine" and (index - first >= config.rigid_levels or index == config.levels - 1):
            x = _to_affine_params(x, to_matrix, radius)
            step = config.max_linear_step * radius  # and no further per level than max_linear_step
            linear = parameter_box(np.zeros(12), bounds, radius)[:9]
            box = [(max(lo, v - step), min(hi, v + step)) for (lo, hi), v in zip(linear, x[:9], strict=True)] + box[-3:]
        if len(x) == 12 or index >= rotation_level:
            x, more = _optimize(problem, to_matrix, x, int(iters), config.tolerance, box)
            nfev += more
        evaluations.append(nfev)
    if problem is None:
        raise ValueError("no pyramid level was registered (every level is coarser than the translation search)")
    return x, x_translation, problem, evaluations


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
