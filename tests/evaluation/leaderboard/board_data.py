"""Evaluator result JSONs with hand-chosen values for the leaderboard tests (written to tmp folders).

Three methods: ``Initial`` (zero field), ``Good`` and ``Bad``, on a landmark task ``LungCT``
(per-point TRE) and a label task ``OASIS`` (per-label DSC and HD95); :func:`brain_json` joins
both in a task ``BrainDev`` with labels and landmarks (ranked on TRE, TRE30, DSC, DSC30, HD95,
SDlogJ and runtime). Values are ``base + ramp``
so that means are easy to compute by hand; ``Good`` is better than ``Bad`` everywhere.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np

BASE = {"Initial": (10.0, 0.3, 9.0), "Good": (1.0, 0.8, 2.0), "Bad": (5.0, 0.6, 5.0)}  # TRE, DSC, HD95 offsets
#: folding_fraction per method (the zero field never folds).
FOLDING = {"Initial": 0.0, "Good": 0.0001, "Bad": 0.02}


def key(c: int) -> str:
    return f"{c + 1:04d}_0000<--{c + 11:04d}_0000"


def lung_json(method: str, cases: range = range(4), points: int = 5) -> dict:
    """TRE_lm = base + 0.1 c + 0.02 p; SDlogJ, folding and runtime per case (runtime a bare number for Bad)."""
    tre0 = BASE[method][0]
    out = {}
    for c in cases:
        tre = [tre0 + 0.1 * c + 0.02 * p for p in range(points)]
        metrics = {"TRE_lm": {"mean": float(np.mean(tre)), "detailed": tre}, "num_foldings": {"mean": 0}}
        metrics["folding_fraction"] = {"mean": FOLDING[method] * (1 + c), "detailed": FOLDING[method] * (1 + c)}
        if method != "Initial":
            metrics["LogJacDetStd"] = {"mean": (0.05 if method == "Good" else 0.2) + 0.001 * c}
            runtime = (1.0 if method == "Good" else 3.0) + 0.1 * c
            metrics["runtime"] = runtime if method == "Bad" else {"mean": runtime}
        else:
            metrics["LogJacDetStd"] = {"mean": 0.0}
        out[key(c)] = metrics
    return {"name": "LungCT", "aggregates": {}, "cases": out, "eval_version": "test"}


def oasis_json(method: str, n_cases: int = 5) -> dict:
    """DSC = base + 0.01 c + 0.02 l (label 2 of case 0 undefined: NaN), HD95 alike, SDlogJ per case."""
    _, dsc0, hd0 = BASE[method]
    out = {}
    for c in range(n_cases):
        dsc = [dsc0 + 0.01 * c + 0.02 * lab for lab in range(3)]
        hd = [hd0 + 0.1 * c + 0.2 * lab for lab in range(3)]
        if c == 0:
            dsc[2] = hd[2] = math.nan
        out[key(c)] = {
            "DSC": {"mean": float(np.nanmean(dsc)), "detailed": dsc},
            "HD95": {"mean": float(np.nanmean(hd)), "detailed": hd},
            "LogJacDetStd": {"mean": {"Initial": 0.0, "Good": 0.05, "Bad": 0.2}[method] + 0.001 * c},
        }
    return {"name": "OASIS", "aggregates": {"DSC": {"mean": -1.0}}, "cases": out, "eval_version": "test"}


def brain_json(method: str, n_cases: int = 4) -> dict:
    """Task ``BrainDev``: the LungCT cases (TRE_lm, SDlogJ, folding, runtime) with the OASIS cases'
    DSC and HD95 (labels and landmarks on every case)."""
    lung, labels = lung_json(method, cases=range(n_cases)), oasis_json(method, n_cases=n_cases)
    for case, other in zip(lung["cases"].values(), labels["cases"].values(), strict=True):
        case.update(DSC=other["DSC"], HD95=other["HD95"])
    return {**lung, "name": "BrainDev"}


def dump(path: Path, obj: dict) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj))  # NaN written as NaN, as Python's json does
    return path


def write_specs(root: Path) -> dict[str, Path]:
    """One folder per method under ``root``; file names deliberately differ from the task names."""
    folders = {}
    for method in BASE:
        folder = root / "results" / method
        dump(folder / "lung_val.json", lung_json(method))
        dump(folder / "abdomen_or_brain.json", oasis_json(method))
        folders[method] = folder
    return folders
