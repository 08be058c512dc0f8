"""Cases of one or several configurations -> the result's ``cases`` and ``aggregates``, per rule set.

How each organiser merges and aggregates (``tests/fixtures/organisers/SPEC.md`` 2.7, 2.8, 7):

* ``l2r`` (MDL-UzL/L2R): one aggregate per configured method name, in config order (so the
  ``num_foldings`` that follows SDlogJ in every case is not aggregated); ``"30"`` is the 0.7
  quantile for the metrics sdlogj and tre, 0.3 for dice and hd95; our extras after them.
* ``remind2reg``: the metric names are the keys of the **third** case, ``num_foldings`` included,
  ``"30"`` the 0.3 quantile for every metric (their code fails below three pairs: so do we, with
  a clear message).
* ``lumir24`` / ``lumir25``: the configurations' cases are merged as ``{**c1, **c2, ...}`` (a case
  evaluated by a later configuration is replaced whole: its earlier metrics are lost), then every
  metric found in any case is aggregated, in sorted name order, over the cases that have it, with
  the 0.3 quantile (``lumir25``: 0.7 for the method named ``TRE_lm``); ``lumir25`` appends
  ``ID_dice`` / ``OOD_dice`` / ``MM_dice``: the ``DSC`` of the ``-s1`` / ``-s2`` / ``-s3`` cases,
  taken before the merge.

Aggregates are ``{"mean", "std" (population), "30"}`` with numpy's linear quantile, no NaN
handling: one NaN case makes them NaN, an ``inf`` mean makes std and ``"30"`` NaN, as theirs.

What is printed (the last part of this module):

What ``evaluate`` and ``initial`` print when they finish: the aggregates of a result, the
official metrics apart from our corrected ones, each with its unit or quirk, and one line on why
the two differ (the official ``+3`` inside SDlogJ's logarithm, HD95 in voxels).

Input is an evaluator result (``{name, aggregates: {metric: {mean, std, "30"}}, ...}``, see
:mod:`evaluation.evaluate`). Official metrics are the configured ones (any name); ours have fixed
names (:data:`CORRECTED`, ``<HD95 name>_mm``) and the runtimes come from the submission's
``runtimes.json`` (:data:`RUNTIMES`). Plain text for a terminal or a log, no colour.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

import numpy as np

from evaluation import metrics
from learn2reg.eval_config import EvalConfig
from learn2reg.io import DataError
from learn2reg.rules import Rules, quantile

# our extra per-case metrics (l2r rules) -> the kind that picks their quantile in metrics.aggregate
EXTRA_KINDS = {"SDlogJ_true": "sdlogj", "num_foldings_true": "folding", "folding_fraction": "folding"}
RUNTIME_KEYS = ("runtime", "runtime_network")


@dataclass(frozen=True)
class ConfigRun:
    """The cases one configuration produced: ``role`` is its flag (``c``, ``c1``, ``l1``, ``s2``, ...)."""

    role: str
    config: EvalConfig
    cases: dict[str, dict[str, Any]]


def merge(runs: Sequence[ConfigRun]) -> dict[str, dict[str, Any]]:
    """``{**c1, **c2, ...}``: case order of first appearance, a later configuration's case replaces
    an earlier one whole (LUMIR's ``to_json``; a single configuration is returned as it is)."""
    cases: dict[str, dict[str, Any]] = {}
    for run in runs:
        cases.update(run.cases)
    return cases


def summary(values: Sequence[float], q: float) -> dict[str, float]:
    """``{"mean", "std", "30"}`` exactly as the organisers' numpy calls (no NaN handling)."""
    arr = np.asarray(values, dtype=np.float64)
    with np.errstate(invalid="ignore", over="ignore"):
        return {"mean": float(arr.mean()), "std": float(arr.std()), "30": linear_quantile(arr, q)}


def linear_quantile(values: np.ndarray, q: float) -> float:
    """``np.quantile(values, q)`` of a 1-D float64 array (method ``linear``, numpy 1.26 to 2.x)
    by numpy's own steps, bit for bit (NaN if any value is NaN; bounds and the lerp as numpy's
    ``_get_indexes`` and ``_lerp``). numpy's first quantile imports ``numpy.ma`` (~8 ms CPU)."""
    arr = np.sort(values)  # NaN last
    n = arr.size
    if n == 0:
        return float(np.quantile(arr, q))  # numpy's own error
    virtual = np.float64((n - 1) * np.float64(q))
    if virtual >= n - 1:
        previous, following = -1, -1
    elif virtual < 0:
        previous, following = 0, 0
    else:
        previous = int(np.floor(virtual))
        following = previous + 1
    gamma = virtual - np.float64(previous)
    a, b = arr[previous], arr[following]
    diff = b - a
    value = b - diff * (1 - gamma) if gamma >= 0.5 else a + diff * gamma
    return float("nan") if np.isnan(arr[-1]) else float(value)


def aggregates(rules: Rules, runs: Sequence[ConfigRun], cases: Mapping[str, Mapping[str, Any]], variant: str = "l2r") -> dict[str, dict[str, float]]:
    """The result's ``aggregates`` under ``rules`` for the merged ``cases`` of ``runs``.
    ``variant``: the ``l2r`` rules' aggregate rule (``metrics.aggregate``: ``l2r`` or ``2020``)."""
    if not cases:
        return {}
    if rules.aggregate == "config":
        return _by_config(rules, runs, cases, variant)
    if rules.aggregate == "third-case":
        if len(cases) < 3:
            raise DataError(
                f"the {rules.name} rules take the aggregated metrics from the third case, and this run has "
                f"{len(cases)} pair(s): the organisers' evaluator fails here too (IndexError); use --rules l2r"
            )
        names = list(list(cases.values())[2])
        missing = [(n, k) for n in names for k, c in cases.items() if n not in c]
        if missing:
            raise DataError(f"the {rules.name} rules aggregate {missing[0][0]!r}, which case {missing[0][1]} lacks")
        return {n: summary([c[n]["mean"] for c in cases.values()], quantile(rules, n, "")) for n in names}
    out = {n: summary(_values(cases, n), quantile(rules, n, "")) for n in sorted({k for c in cases.values() for k in c})}
    for role, label in rules.dice_groups:
        for run in runs:
            if run.role == role:
                values = [c["DSC"]["mean"] for c in run.cases.values() if "DSC" in c]
                if not values:
                    raise DataError(f"-{role} config: no 'DSC' method; the {rules.name} rules aggregate {label} from its DSC (theirs fails: IndexError)")
                out[label] = summary(values, 0.3)
    return out


def _values(cases: Mapping[str, Mapping[str, Any]], name: str) -> list[float]:
    return [c[name]["mean"] for c in cases.values() if name in c]


def _by_config(rules: Rules, runs: Sequence[ConfigRun], cases: Mapping[str, Mapping[str, Any]], variant: str) -> dict[str, dict[str, float]]:
    """L2R's aggregates: one per method name (config order), then ours; runtime over known values."""
    kinds: dict[str, str] = {}
    for run in runs:
        for m in run.config.methods:
            if m.metric in rules.scored:
                kinds.setdefault(m.name, m.metric)
    present = {k for c in cases.values() for k in c}
    kinds.update({k: kind for k, kind in EXTRA_KINDS.items() if k in present})
    for run in runs:
        kinds.update({f"{m.name}_mm": "hd95" for m in run.config.methods if m.metric == "hd95" and f"{m.name}_mm" in present})
    kinds.update({k: "runtime" for k in RUNTIME_KEYS if k in present})
    methods = {m.name for run in runs for m in run.config.methods}
    out = {}
    for name, kind in kinds.items():
        values = [float(v) for v in _values(cases, name)]
        if kind == "runtime":
            values = [v for v in values if not np.isnan(v)]
        if variant == "l2r" and name in methods:
            out[name] = summary(values, quantile(rules, name, kind))
        else:  # ours (same quantile rule by kind), or the 2020 aggregate rule
            with np.errstate(invalid="ignore", over="ignore"):
                out[name] = metrics.aggregate(values, kind, variant)
    return out


# ---------------------------------------------------------------------- the printed summary


#: Our corrected metrics -> what they are.
CORRECTED = {
    "SDlogJ_true": "std of log det J, without the official +3",
    "num_foldings_true": "voxels with det J <= 0 (the official num_foldings, after the +3, is always 0)",
    "folding_fraction": "fraction of voxels with det J <= 0",
}
#: Runtimes of the submission's runtimes.json -> what they are.
RUNTIMES = {"runtime": "s per pair, end to end (the submission's runtimes.json)", "runtime_network": "s per pair, network only"}
DIFFERENCE = (
    "Official = the Learn2Reg evaluator's numbers, the ones the leaderboard ranks. Corrected = ours, for"
    " reading: SDlogJ_true leaves out the +3 the official code adds to det J before the log (the +3 makes"
    " the spread about 4x smaller near det J = 1 and hides folding), *_mm gives HD95 in mm where the official"
    " one is in voxels (spacing 1)."
)
QUANTILE = {  # rule set -> what its "30" column is
    "l2r": "30%: the worst 30 % of cases begin there (0.3 quantile for Dice/HD95, 0.7 for SDlogJ/TRE/runtime).",
    "lumir24": "30%: the 0.3 quantile of the per-case values for every metric (LUMIR 2024's rule, even where larger is worse).",
    "lumir25": "30%: the 0.7 quantile for TRE_lm, the 0.3 quantile for every other metric (LUMIR 2025's rule).",
    "remind2reg": "30%: the 0.3 quantile of the per-case values for every metric (ReMIND2Reg's rule, TRE included).",
}


def official_note(name: str, aggregates: Mapping[str, Any], rules: str = "l2r") -> str:
    """The unit or quirk of an official metric under a rule set, recognised by its name (empty when unknown)."""
    if f"{name}_mm" in aggregates:
        return f"voxels (official spacing 1; {name}_mm below is in mm)"
    lower = name.lower()
    if "logjacdet" in lower or lower.startswith("sdlogj"):
        return "std of log(det J + 3): the official +3 quirk" + ("; SDlogJ_true below is without it" if "SDlogJ_true" in aggregates else "")
    if lower.startswith("tre"):
        return "voxels (centroids of the landmark volumes; LUMIR applies no spacing)" if rules.startswith("lumir") else "mm"
    if lower.startswith("non-diffeomorphic") or lower == "ndv":
        return "% of the mask's voxels that are non-diffeomorphic (NDV, 10 finite-difference Jacobians)"
    if lower.startswith(("dsc", "dice")):
        return "Dice, mean over labels per case"
    return ""


def _line(name: str, agg: Mapping[str, Any], note: str) -> str:
    def num(key: str) -> str:
        value = agg.get(key)
        return "nan" if not isinstance(value, int | float) or math.isnan(value) else f"{value:.5f}"

    return f"  {name:<20} {num('mean')} +- {num('std')} | 30%: {num('30')}" + (f"   {note}" if note else "")


def summary_lines(result: Mapping[str, Any], output: str | Path | None = None, title: str = "") -> list[str]:
    """The console summary of one evaluator result (``output``: where it was written)."""
    aggregates: Mapping[str, Any] = result.get("aggregates") or {}
    corrected = set(CORRECTED) | {f"{n}_mm" for n in aggregates if f"{n}_mm" in aggregates}
    official = [n for n in aggregates if n not in corrected and n not in RUNTIMES]
    rules = str(result.get("rules", "l2r"))
    lines = [f"{title or 'Evaluation'} of {result.get('name', '?')}: {len(result.get('cases') or {})} pair(s), rules {rules}"]
    if official:
        lines.append("Official metrics (the Learn2Reg evaluator's; ranked on the leaderboard):")
        lines += [_line(n, aggregates[n], official_note(n, aggregates, rules)) for n in official]
    ours = [n for n in aggregates if n in corrected]
    if ours:
        lines.append("Corrected metrics (ours, for reading; not ranked):")
        lines += [_line(n, aggregates[n], CORRECTED.get(n, "HD95 in mm (the fixed image's spacing)")) for n in ours]
    times = [n for n in aggregates if n in RUNTIMES]
    if times:
        lines.append("Runtime (measured by predict, not by the evaluator):")
        lines += [_line(n, aggregates[n], RUNTIMES[n]) for n in times]
    if ours:
        lines.append(DIFFERENCE)
    if official:
        lines.append(QUANTILE.get(rules, QUANTILE["l2r"]))
    if output is not None:
        lines.append(f"Results saved to: {output}")
    return lines


def print_summary(result: Mapping[str, Any], output: str | Path | None = None, title: str = "", stream: TextIO | None = None) -> None:
    """Print :func:`summary_lines` (on stdout by default)."""
    print("\n".join(summary_lines(result, output, title)), file=sys.stdout if stream is None else stream)
