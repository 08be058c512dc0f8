"""Training log of a run folder: ``log.csv`` (one row per logged step or validation) and
``curves.png`` (loss per level and the validation metric against the zero-field baseline)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402

from evaluation.io import atomic_open, atomic_path  # noqa: E402

COLUMNS = [
    "global_step", "level", "step", "kind", "loss", "similarity", "smooth", "dice", "antifold",
    "lr", "steps_per_s", "val_dice", "val_tre_mm", "val_score", "elapsed_s",
]


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
    are dropped so the log matches the weights."""

    def __init__(self, run_dir: Path, resume_global_step: int | None = None) -> None:
        self.csv = run_dir / "log.csv"
        self.png = run_dir / "curves.png"
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
        fig, (ax_loss, ax_val) = plt.subplots(1, 2, figsize=(11, 4))
        train = frame[frame["kind"] == "train"]
        for level, part in train.groupby("level"):
            ax_loss.plot(part["global_step"], part["loss"], label=f"level {int(level)}")
        ax_loss.set(xlabel="step", ylabel="training loss", title="loss")
        if not train.empty:
            ax_loss.legend()
        val = frame[frame["kind"] == "val"]
        initial = frame[frame["kind"] == "initial"]
        for col, name in (("val_dice", "Dice"), ("val_tre_mm", "TRE (mm)")):
            if val[col].notna().any():
                ax_val.plot(val["global_step"], val[col], "o-", label=f"validation {name}")
                if initial[col].notna().any():
                    ax_val.axhline(float(initial[col].iloc[0]), ls="--", color="grey", label=f"zero field {name}")
        ax_val.set(xlabel="step", title="validation")
        if not val.empty:
            ax_val.legend()
        fig.tight_layout()
        with atomic_path(self.png) as tmp:
            fig.savefig(tmp, dpi=90, format="png")
        plt.close(fig)
