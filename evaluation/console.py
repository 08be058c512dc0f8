"""What ``evaluate`` and ``initial`` print when they finish: the aggregates of a result, the
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
from collections.abc import Mapping
from pathlib import Path
from typing import Any, TextIO

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
