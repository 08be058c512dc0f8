"""Training log of a run folder: ``log.csv`` (one row per logged step or validation) and
``curves.png``: the training loss and its components (similarity, smooth, dice, antifold; the
unweighted terms as logged), raw and smoothed, the level boundaries as vertical lines, the best
checkpoint marked, the validation metric against the zero-field baseline, the run's name in
the title. What is drawn is computed by :func:`curve_data`, a pure function of the log."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from learn2reg.io import atomic_open, atomic_path

COLUMNS = [
    "global_step", "level", "step", "kind", "loss", "similarity", "smooth", "dice", "antifold",
    "lr", "steps_per_s", "val_dice", "val_tre_mm", "val_score", "elapsed_s",
]
SERIES = ("loss", "similarity", "smooth", "dice", "antifold")  # training curves, in panel order
VALIDATION = (("val_dice", "Dice"), ("val_tre_mm", "TRE (mm)"))


@dataclass(frozen=True)
class Curves:
    """What ``curves.png`` shows (train rows in log order).

    ``raw[name]`` / ``smoothed[name]`` per :data:`SERIES` name: the logged values and their
    trailing mean over the last ``window`` rows of the same level (fewer at a level's start; NaN
    entries skipped); ``boundaries``: x positions of the vertical lines between levels, half-way
    between the last step of one level and the first of the next; ``best_step``: the global step
    of the best checkpoint (``None``: not known yet); ``validation`` and ``baseline``: per
    :data:`VALIDATION` column, the (global step, value) pairs of the validation rows and the
    zero-field value (``kind == "initial"``), when logged.
    """

    steps: np.ndarray
    raw: dict[str, np.ndarray]
    smoothed: dict[str, np.ndarray]
    window: int
    boundaries: tuple[float, ...]
    best_step: int | None
    validation: dict[str, tuple[np.ndarray, np.ndarray]]
    baseline: dict[str, float]


def smoothing_window(rows: int) -> int:
    """The default window: about 1/25 of the training rows, at least 1."""
    return max(1, rows // 25)


def best_checkpoint_step(frame: pd.DataFrame, levels: int | None = None) -> int | None:
    """The trainer's rule for ``best.pt`` read back from a log: among the validation rows of
    the last level (``levels``, default the highest level in the log), the first with the highest
    finite ``val_score``; without a finite score the last of those rows (best = last); ``None``
    when the last level has no validation row yet."""
    val = frame[frame["kind"] == "val"]
    top = levels if levels is not None else (int(frame["level"].max()) if len(frame) else None)
    rows = val[val["level"] == top] if top is not None else val.iloc[:0]
    if rows.empty:
        return None
    scores = pd.to_numeric(rows["val_score"], errors="coerce").to_numpy(dtype=np.float64)
    finite = np.isfinite(scores)
    if not finite.any():
        return int(rows["global_step"].iloc[-1])
    return int(rows["global_step"].iloc[int(np.argmax(np.where(finite, scores, -np.inf)))])


def curve_data(frame: pd.DataFrame, window: int | None = None, levels: int | None = None, best_step: int | None = None) -> Curves:
    """The curves of a log (``log.csv`` as a frame): see :class:`Curves`. ``best_step`` as the
    trainer knows it, else :func:`best_checkpoint_step` (``levels``: the run's number of levels)."""
    train = frame[frame["kind"] == "train"]
    window = smoothing_window(len(train)) if window is None else int(window)
    if window < 1:
        raise ValueError(f"smoothing window must be >= 1, got {window}")
    raw, smoothed = {}, {}
    for name in SERIES:
        values = pd.to_numeric(train[name], errors="coerce").astype(np.float64)
        raw[name] = values.to_numpy()
        smoothed[name] = values.groupby(train["level"].to_numpy()).transform(
            lambda s: s.rolling(window, min_periods=1).mean()).to_numpy()
    level = train["level"].to_numpy()
    step = train["global_step"].to_numpy(dtype=np.float64)
    change = np.flatnonzero(level[1:] != level[:-1])
    boundaries = tuple(float((step[i] + step[i + 1]) / 2) for i in change)
    validation, baseline = {}, {}
    val, initial = frame[frame["kind"] == "val"], frame[frame["kind"] == "initial"]
    for col, _ in VALIDATION:
        values = pd.to_numeric(val[col], errors="coerce")
        if values.notna().any():
            validation[col] = (val["global_step"].to_numpy(dtype=np.float64), values.to_numpy(dtype=np.float64))
            first = pd.to_numeric(initial[col], errors="coerce").dropna()
            if not first.empty:
                baseline[col] = float(first.iloc[0])
    best = best_step if best_step is not None else best_checkpoint_step(frame, levels)
    return Curves(step, raw, smoothed, window, boundaries, best, validation, baseline)


def plot_curves(curves: Curves, title: str) -> Figure:
    """The figure of :func:`curve_data`: one panel per training series, one for validation."""
    fig = Figure(figsize=(13, 7), dpi=90, layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(2, 3).ravel()
    for ax, name in zip(axes, SERIES, strict=False):
        if curves.steps.size and np.isfinite(curves.raw[name]).any():
            ax.plot(curves.steps, curves.raw[name], color="tab:blue", alpha=0.25, linewidth=0.8, label="logged")
            ax.plot(curves.steps, curves.smoothed[name], color="tab:blue", linewidth=1.5, label=f"trailing mean of {curves.window} steps")
        else:
            ax.text(0.5, 0.5, "not logged", ha="center", va="center", transform=ax.transAxes, color="grey")
        ax.set(xlabel="step", title="training loss (total)" if name == "loss" else f"{name} (unweighted)")
    ax_val = axes[len(SERIES)]
    for col, label in VALIDATION:
        if col in curves.validation:
            ax_val.plot(*curves.validation[col], "o-", label=f"validation {label}")
            if col in curves.baseline:
                ax_val.axhline(curves.baseline[col], ls="--", color="grey", label=f"zero field {label}")
    ax_val.set(xlabel="step", title="validation")
    for ax in axes:
        for x in curves.boundaries:
            ax.axvline(x, color="black", linewidth=0.8, alpha=0.5)
        if curves.best_step is not None:
            ax.axvline(curves.best_step, color="tab:green", ls=":", linewidth=1.5, label="best checkpoint")
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7)
    fig.suptitle(f"{title}  (vertical lines: level boundaries; dotted green: best checkpoint)")
    return fig


def format_validation(metrics: dict[str, float]) -> str:
    """``Dice 0.7123, TRE 2.31 mm, score 0.7123`` from :func:`~pipeline.training.validation.validate_pairs`
    (only what the validation pairs give)."""
    parts = []
    for key, name, fmt in (("val_dice", "Dice", "{:.4f}"), ("val_tre_mm", "TRE", "{:.2f} mm"), ("val_score", "score", "{:.4f}")):
        value = metrics.get(key)
        if value is not None and math.isfinite(value):
            parts.append(f"{name} {fmt.format(value)}")
    return ", ".join(parts) or "no metric (no validation pair with labels or points)"


class TrainingLog:
    """Rows kept in memory and rewritten atomically; on resume, rows after the checkpoint
    are dropped so the log matches the weights. ``levels`` and ``best_step`` (kept up to date
    by the trainer) go into the curves."""

    def __init__(self, run_dir: Path, resume_global_step: int | None = None, levels: int | None = None,
                 best_step: int | None = None) -> None:
        self.csv = run_dir / "log.csv"
        self.png = run_dir / "curves.png"
        self.name = run_dir.resolve().name
        self.levels, self.best_step = levels, best_step
        self.rows: list[dict[str, Any]] = []
        if resume_global_step is not None and self.csv.exists():
            old = pd.read_csv(self.csv)
            self.rows = old[old["global_step"] <= resume_global_step].to_dict("records")

    def add(self, **row: Any) -> None:
        self.rows.append({c: row.get(c) for c in COLUMNS})

    def write(self) -> None:
        frame = pd.DataFrame(self.rows, columns=COLUMNS)
        with atomic_open(self.csv) as fh:
            frame.to_csv(fh, index=False)
        self.plot(frame)

    def plot(self, frame: pd.DataFrame) -> None:
        best = self.best_step if self.best_step is not None and self.best_step >= 0 else None
        fig = plot_curves(curve_data(frame, levels=self.levels, best_step=best), f"run {self.name}")
        with atomic_path(self.png) as tmp:
            fig.savefig(tmp, format="png")

