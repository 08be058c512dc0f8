"""Settings of one rigid/affine registration (:class:`AffineConfig`), checked on construction.

Read by :mod:`pipeline.affine.registration` (which re-exports them), the ``align`` stage and
prediction's pre-alignment; files carry them as JSON objects (:meth:`AffineConfig.from_dict`,
unknown keys rejected).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields
from typing import Any

from pipeline.affine.ngf import METRICS

MODES = ("rigid", "affine")
INITS = ("none", "center", "com")
POLICIES = ("fallback", "warn", "refuse")  # what becomes of an implausible result (pipeline.affine.bounds)


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
    moving_fov: bool = False  # the moving image's border-connected constant region lies outside its field of
    # view (pipeline.affine.support; ultrasound); set per image by pipeline.affine.fov.choose_fov
    fixed_fov: bool = False  # the same for the fixed image (e.g. an ultrasound fixed image)
    fov_margin: float = 2.0  # level voxels inside a field-of-view border left out of the metric
    tolerance: float = 1e-9  # L-BFGS-B relative function tolerance (ftol)
    seed: int = 0  # sample points
    threads: int = 1  # torch CPU threads while registering (0 = leave as is); the ops are small, and
    # more threads only add synchronisation, which stalls badly when other processes share the cores
    use_fixed_mask: bool = False  # stage only: weight the NGF by the fixed mask when a task has one
    # plausibility (pipeline.affine.bounds): the optimisation stays within these bounds around its start
    max_rotation_deg: float = 15.0  # each rotation-vector component, degrees
    max_translation: float = 0.2  # per axis, fraction of the fixed image's mean extent (at least search_radius)
    max_scale: float = 0.2  # affine: singular values within [1 / (1 + s), 1 + s]
    max_shear: float = 0.15  # affine: shear entries
    min_overlap: float = 0.8  # the result keeps at least this fraction of the start's overlap
    start_search: bool = True  # first level: a grid of translations within the bound, L-BFGS from the best starts
    rotation_level: int | None = None  # first level (0 = coarsest, -1 = finest) whose rigid stage frees the
    # rotation; None: the coarsest, or with a field of view the finest (a small field of view keeps few
    # samples on coarse levels, where the rotation wanders)
    on_implausible: str = "fallback"  # "fallback" (translation stage, else initial) | "warn" (keep) | "refuse" (error)

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
        if not 0 < self.max_rotation_deg <= 90 or min(self.max_translation, self.max_scale, self.max_shear) <= 0:
            raise ValueError("max_rotation_deg must be in (0, 90], max_translation, max_scale and max_shear > 0")
        if not 0 <= self.min_overlap <= 1:
            raise ValueError(f"min_overlap must be in [0, 1], got {self.min_overlap}")
        if self.on_implausible not in POLICIES:
            raise ValueError(f"on_implausible must be one of {POLICIES}, got {self.on_implausible!r}")

    def resolved_metric(self) -> str:
        """The NGF form used: ``auto`` is the normalised form, except with a field of view (a
        partial overlap by design), where the classical form is used: the normalised one can
        gain there by moving structure out of the overlap (see :mod:`pipeline.affine.ngf`)."""
        if self.metric != "auto":
            return self.metric
        return "ngf" if self.moving_fov or self.fixed_fov else "ngf-normalized"

    def resolved_rotation_level(self) -> int:
        """Index (0 = coarsest) of the first level whose rigid stage frees the rotation."""
        if self.rotation_level is None:
            return self.levels - 1 if self.moving_fov or self.fixed_fov else 0
        return self.rotation_level % self.levels

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any]) -> AffineConfig:
        """Build from a parsed config file; unknown keys and values of the wrong type (a
        string for a number, ...) are rejected (``ValueError`` naming the key)."""
        known = {f.name: f.default for f in fields(cls)}
        unknown = sorted(set(raw) - set(known))
        if unknown:
            raise ValueError(f"unknown affine config keys {unknown}; known: {sorted(known)}")
        for key, value in raw.items():
            default = known[key]
            want: tuple[type, ...] = (bool,) if isinstance(default, bool) else (int,) if isinstance(default, int) else \
                (int, float) if isinstance(default, float) else (str,) if isinstance(default, str) else ()
            if key == "rotation_level":
                want = (int, type(None))
            if want and (not isinstance(value, want) or (isinstance(value, bool) and bool not in want)):
                raise ValueError(f"{key} must be {' or '.join(t.__name__ for t in want)}, got {value!r}")
        values = dict(raw)
        if "iterations" in values:
            values["iterations"] = tuple(int(i) for i in values["iterations"])
        return cls(**values)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready resolved config."""
        out = asdict(self)
        out["iterations"] = list(self.iterations)
        return out
