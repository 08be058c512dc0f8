"""What prediction writes besides the fields, on request: warped moving images and label maps,
Jacobian determinant maps, per-pair reports (numpy only; shared by ``predict`` and ``register``).

Every output lies on the **fixed** grid with the fixed image's geometry and is computed from the
field exactly as the evaluator reads it (``learn2reg.submission.load_field``: a 2020
half-resolution field upsampled as the 2020 evaluator does), through the contract:

* warped image: ``contract.warp(moving, u)`` (linear, 0 outside), float32;
* warped labels: ``contract.warp_labels(moving_labels, u)`` (nearest, the official rule), the
  label map's integer dtype;
* Jacobian determinant: ``jacobian.determinant_map(u)`` = det(I + grad u)
  (``contract.jacobian_determinant``), float32; folded voxels are those with det <= 0.

In a submission folder ``OUT`` (``predict``): ``OUT/warped/{fixed}_{moving}_moving_warped.nii.gz``,
``OUT/warped/{fixed}_{moving}_moving_labels_warped.nii.gz``,
``OUT/jacobian/{fixed}_{moving}_jacobian_det.nii.gz`` and ``OUT/report/{fixed}_{moving}.html``
(``evaluation.pair_reports.stage``). All written atomically.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from evaluation.jacobian import determinant_map
from evaluation.pair_reports.stage import (
    REPORT_DIR,
    read_image,
    read_labels,
    report_name,
    submission_format,
    task_pair_report,
)
from learn2reg.contract import warp, warp_labels
from learn2reg.io import Geometry, read_nifti_header, save_nifti
from learn2reg.submission import load_field
from learn2reg.task import Pair, Task

WARPED_DIR = "warped"
JACOBIAN_DIR = "jacobian"


@dataclass(frozen=True)
class Outputs:
    """Which extra outputs to write per pair."""

    warped: bool = False  # warped moving image, and labels when the moving case has them
    jacobian: bool = False  # Jacobian determinant map
    report: bool = False  # per-pair HTML report

    def any(self) -> bool:
        return self.warped or self.jacobian or self.report


def write_warped_image(path: Path, u: np.ndarray, geometry: Geometry, moving_image: Path) -> Path:
    """The moving image warped by ``u`` (``X x Y x Z x 3`` on the fixed grid) -> ``path``."""
    save_nifti(path, warp(read_image(moving_image)[0], u), geometry)
    return path


def write_warped_labels(path: Path, u: np.ndarray, geometry: Geometry, moving_image: Path, moving_label: Path) -> Path:
    """The moving label map (checked against its image's grid) warped by nearest neighbour -> ``path``."""
    shape = read_nifti_header(moving_image).shape
    save_nifti(path, warp_labels(read_labels(moving_label, shape), u), geometry)
    return path


def write_jacobian(path: Path, u: np.ndarray, geometry: Geometry) -> Path:
    """det(I + grad u) on the fixed grid -> ``path`` (float32)."""
    save_nifti(path, determinant_map(u).astype(np.float32), geometry)
    return path


def pair_paths(out_dir: Path, pair: Pair) -> dict[str, Path]:
    """The extra outputs of a pair in a submission folder, by kind."""
    stem = f"{pair.fixed}_{pair.moving}"
    return {
        "warped": out_dir / WARPED_DIR / f"{stem}_moving_warped.nii.gz",
        "warped_labels": out_dir / WARPED_DIR / f"{stem}_moving_labels_warped.nii.gz",
        "jacobian": out_dir / JACOBIAN_DIR / f"{stem}_jacobian_det.nii.gz",
        "report": out_dir / REPORT_DIR / report_name(pair.fixed, pair.moving),
    }


def missing(out_dir: Path, task: Task, pair: Pair, outputs: Outputs) -> bool:
    """Whether a requested output of the pair is not written yet."""
    paths = pair_paths(out_dir, pair)
    wanted = [k for k in ("warped", "jacobian", "report") if getattr(outputs, k)]
    if outputs.warped and task.case(pair.moving).label is not None:
        wanted.append("warped_labels")
    return not all(paths[k].is_file() for k in wanted)


def write_pair_outputs(out_dir: Path, task: Task, pair: Pair, field: Path, outputs: Outputs) -> None:
    """The requested outputs of one pair, from the field file just written in ``out_dir``."""
    fixed, moving = task.case(pair.fixed), task.case(pair.moving)
    geometry = read_nifti_header(fixed.image)
    fmt = submission_format(task)
    u = load_field(field, fmt, (*geometry.shape, 3))  # what the evaluator reads
    paths = pair_paths(out_dir, pair)
    if outputs.warped:
        write_warped_image(paths["warped"], u, geometry, moving.image)
        if moving.label is not None:
            write_warped_labels(paths["warped_labels"], u, geometry, moving.image, moving.label)
    if outputs.jacobian:
        write_jacobian(paths["jacobian"], u, geometry)
    if outputs.report:
        task_pair_report(task, pair, out_dir, out_dir / REPORT_DIR, fmt)
