"""The spacing a run's network works at, and the grid prediction runs it on (no scale trap).

A run knows the voxel spacing its network was trained at (:func:`trained_spacing`):

* a run imported from the LapIRN authors' weights (``imported.json``): their training data's
  1 mm (``pipeline.model.authors.AUTHORS_SPACING_MM``; recorded as ``network_spacing_mm``);
* a trained run (``dataset.json``, ``network_spacing_mm``): the spacing of its task's network
  grid (``preprocess.half_resolution`` / ``preprocess.target_spacing`` included). Runs trained
  before the key existed have no recorded spacing: they predict as before, on the preprocessing
  grid scaled by ``predict.input_scale``.

:func:`network_grid` chooses the grid of one pair (``predict`` and ``register`` alike):

* no scale given (neither ``--input-scale`` nor ``--target-spacing``, nor a value other than the
  default in the run's configuration): the preprocessing grid brought to the trained spacing,
  i.e. scaled per axis by (preprocessing grid spacing / trained spacing), or left as it is when
  the two agree within :data:`SAME_SPACING` (a trained run on its own task: unchanged, bit for
  bit). A 2 mm task with an imported run therefore runs at 1 mm, as ``--input-scale 2`` does;
  the choice is logged once per grid;
* a scale given: that grid, with a warning (once per grid) when its spacing differs from the
  trained spacing by more than :data:`SAME_SPACING`, naming both spacings.

Each choice is returned as a record (rule, trained spacing, grid, its spacing in mm, and
``scale``: the image's spacing over the grid's, per axis) that ``runtimes.json`` and
``register.json`` keep.
"""

from __future__ import annotations

import argparse
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from learn2reg.io import DataError, read_json
from pipeline.config import RunConfig
from pipeline.data.preprocess import network_shape, prediction_shape, scaled_shape
from pipeline.model.authors import AUTHORS_SPACING_MM

log = logging.getLogger(__name__)
#: relative difference of two spacings below which they count as the same (half-resolution grids
#: of even sizes are 1-2 % coarser than twice the spacing)
SAME_SPACING = 0.05


@dataclass(frozen=True)
class TrainedSpacing:
    """``spacing``: mm per axis the network was trained at; ``source``: where that is known from."""

    spacing: tuple[float, float, float]
    source: str

    def describe(self) -> str:
        return "x".join(f"{s:g}" for s in self.spacing) + " mm"


def trained_spacing(run_dir: Path | None) -> TrainedSpacing | None:
    """The spacing of a run folder's network (module docstring); ``None`` when it is not recorded."""
    if run_dir is None:
        return None
    for name, fallback in (("imported.json", AUTHORS_SPACING_MM), ("dataset.json", None)):
        path = run_dir / name
        if not path.is_file():
            continue
        record = read_json(path)
        value = record.get("network_spacing_mm", fallback) if isinstance(record, dict) else None
        if value is None:
            return None
        try:
            spacing = tuple(float(v) for v in value)
        except (TypeError, ValueError) as exc:
            raise DataError(f"{path}: network_spacing_mm {value!r} is not three numbers") from exc
        if len(spacing) != 3 or not all(s > 0 for s in spacing):
            raise DataError(f"{path}: network_spacing_mm {value!r} is not three numbers > 0")
        return TrainedSpacing((spacing[0], spacing[1], spacing[2]), path.name)
    return None


def grid_spacing(image_shape: Sequence[int], spacing: Sequence[float], grid: Sequence[int]) -> tuple[float, ...]:
    """Spacing (mm) of a corner-aligned ``grid`` over an image of ``image_shape`` and ``spacing``."""
    return tuple(s * (n - 1) / (m - 1) if m > 1 else s for n, s, m in zip(image_shape[:3], spacing, grid, strict=True))


def _differs(a: Sequence[float], b: Sequence[float]) -> bool:
    return any(abs(x / y - 1.0) > SAME_SPACING for x, y in zip(a, b, strict=True))


@dataclass
class GridPolicy:
    """How a predictor chooses its network grid: the run's ``trained`` spacing (or ``None``) and
    the scale the user gave (``explicit``, e.g. ``"--input-scale 2"``; ``None``: none given).
    ``last`` is the record of the latest grid chosen (for the runtimes of its pair)."""

    trained: TrainedSpacing | None
    explicit: str | None = None
    last: dict[str, Any] | None = None
    quiet: bool = False  # no log lines (quiet_grid)
    _told: set = field(default_factory=set)

    def stamp(self) -> str:
        """What enters the configuration hash beside the configuration itself."""
        if self.trained is None or self.explicit is not None:
            return ""
        return "|network at the trained spacing " + ",".join(f"{s:g}" for s in self.trained.spacing)

    def summary(self) -> dict[str, Any]:
        """The policy as ``runtimes.json`` / ``register.json`` record it."""
        return {"rule": self.explicit or ("the run's trained spacing" if self.trained else "the configuration"),
                "trained_spacing_mm": list(self.trained.spacing) if self.trained else None,
                "trained_spacing_from": self.trained.source if self.trained else None}

    def once(self, key: tuple, level: int, message: str, *args: Any) -> None:
        if key not in self._told and not self.quiet:
            self._told.add(key)
            log.log(level, message, *args)


def quiet_grid(trained: TrainedSpacing | None, scale: str | None, cfg: RunConfig) -> Callable[[Sequence[int], Sequence[float]], tuple[int, int, int]]:
    """:func:`network_grid` under the policy a predictor will have (``trained``, the ``scale`` given),
    without its log lines: what a check made before the predictor exists (the memory estimate) needs."""
    policy = GridPolicy(trained, scale)
    policy.quiet = True
    return lambda shape, spacing: network_grid(policy, shape, spacing, cfg)


def network_grid(policy: GridPolicy | None, shape: Sequence[int], spacing: Sequence[float], cfg: RunConfig) -> tuple[int, int, int]:
    """The grid the network runs on for a fixed image of ``shape`` and ``spacing`` (mm): see the
    module docstring. Sets ``policy.last`` to the record of the choice."""
    grid = prediction_shape(shape, spacing, cfg)
    if policy is None or policy.trained is None:
        if policy is not None:
            policy.last = _record(policy, shape, spacing, grid)
        return grid
    trained = policy.trained.spacing
    if policy.explicit is None:
        base = network_shape(shape, cfg.preprocess, spacing)
        base_spacing = grid_spacing(shape, spacing, base)
        if _differs(base_spacing, trained):
            grid = scaled_shape(base, [b / t for b, t in zip(base_spacing, trained, strict=True)])
            policy.once(("auto", tuple(shape), tuple(spacing)), logging.INFO,
                        "the network runs at %s, the spacing it was trained at (%s), on a %s grid of this "
                        "%s image (as --input-scale/--target-spacing would; give one of them to choose another grid)",
                        policy.trained.describe(), policy.trained.source, "x".join(map(str, grid)),
                        "x".join(f"{s:g}" for s in spacing) + " mm")
    else:
        used = grid_spacing(shape, spacing, grid)
        if _differs(used, trained):
            policy.once(("explicit", tuple(shape), tuple(spacing)), logging.WARNING,
                        "%s: the network runs at %s mm, but it was trained at %s (%s): expect lower accuracy "
                        "(leave out --input-scale/--target-spacing to run it at its trained spacing)",
                        policy.explicit, "x".join(f"{s:.3g}" for s in used), policy.trained.describe(), policy.trained.source)
    policy.last = _record(policy, shape, spacing, grid)
    return grid


def _record(policy: GridPolicy, shape: Sequence[int], spacing: Sequence[float], grid: Sequence[int]) -> dict[str, Any]:
    used = grid_spacing(shape, spacing, grid)
    return {**policy.summary(), "grid": [int(n) for n in grid], "spacing_mm": [round(s, 6) for s in used],
            "scale": [round(s / u, 6) for s, u in zip(spacing, used, strict=True)]}


def explicit_scale(overrides: dict, cfg: RunConfig) -> str | None:
    """The network scale the user gave, in words (``None``: none; the run's trained spacing
    applies, ``pipeline.prediction.scale``): ``--input-scale`` / ``--target-spacing`` among the
    command line's ``overrides``, else a value other than the default in the configuration."""
    for key in ("input_scale", "target_spacing"):
        if overrides.get(key) is not None:
            return f"--{key.replace('_', '-')} {overrides[key]:g}"
    if cfg.predict.target_spacing is not None:
        return f"predict.target_spacing {cfg.predict.target_spacing:g} (configuration)"
    if cfg.predict.input_scale != 1:
        return f"predict.input_scale {cfg.predict.input_scale:g} (configuration)"
    return None


def record_grid(manifest: dict, policy: GridPolicy | None, key: str) -> None:
    """Keep the network grid of pair ``key`` (the latest :func:`network_grid` choice of ``policy``)
    in a ``runtimes.json`` manifest's ``network_grid``."""
    if policy is None or policy.last is None:
        return
    per_pair = {k: v for k, v in policy.last.items() if k in ("grid", "spacing_mm", "scale")}
    pairs = manifest.get("network_grid", {}).get("pairs", {})
    manifest["network_grid"] = {**policy.summary(), "pairs": {**pairs, key: per_pair}}


def add_scale_arguments(parser: argparse.ArgumentParser) -> None:
    """``--input-scale`` / ``--target-spacing`` (one of the two), shared with ``register``."""
    scale = parser.add_mutually_exclusive_group()
    scale.add_argument("--input-scale", type=float, default=None, metavar="S",
                       help="override predict.input_scale: run the network on a grid S times as fine as the preprocessing "
                            "grid (2: a 2 mm task at 1 mm); default: the spacing the run was trained at (imported "
                            "weights: 1 mm), a warning when S departs from it")
    scale.add_argument("--target-spacing", type=float, default=None, metavar="MM",
                       help="override predict.target_spacing: run the network at MM spacing per axis of the fixed image "
                            "(default: the spacing the run was trained at)")
