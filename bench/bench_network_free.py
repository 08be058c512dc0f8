"""Registration without a trained network (``predict --config``, ``predict.network`` "none") on the
ReMIND2Reg-like demo task: landmark error, folding and time per pair, against the zero field.

Usage (from the repository root)::

    python bench/bench_network_free.py                      # -> bench/results/network_free_cpu.{json,md}
    python bench/bench_network_free.py --seeds 0 --only recipe   # one seed, one method (quick look)

The demo task (``demo-data --layout remind2reg``: fixed ultrasound, moving ceT1 and T2, the true
field known: a rigid probe-tracking error of a few degrees and millimetres plus a brain shift of
up to about 3 mm) is generated per seed (2 validation patients, 4 pairs each). Every method runs
the pipeline's own commands end to end in a child process: ``predict --config`` (a configuration
derived from ``configs/l2r_remind2reg.json``) and ``evaluate`` under the ReMIND2Reg rules (TRE on
the landmarks); SDlogJ and the folded voxels (det J <= 0) from the written fields themselves
(``learn2reg.contract.jacobian_determinant``); ``initial`` gives the zero field. Times are the
end-to-end per-pair times of ``runtimes.json`` (read, affine stage, instance optimisation, write)
with ``--threads`` torch threads (``OMP_NUM_THREADS``); the load average is recorded around each
method, since the machine is shared.

The ultrasound's field of view (the fan; zero outside) is recognised from the task's modality
table (``pipeline.affine.fov``: "3D iUS"); the instance optimisation then leaves the fan's border
out of its similarity. "field of view not recognised" runs the recipe on a copy of the task whose
ultrasound modality is named "unknown", to show what that border costs.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

from bench_lapirn import environment, pipeline_command, work_folder, write_report  # noqa: E402

RECIPE = REPO / "configs" / "l2r_remind2reg.json"
TASK = "DemoReMIND2Reg"
# method -> (predict-section overrides of the recipe, task variant): "unknown" = ultrasound not named so
METHODS: dict[str, tuple[dict[str, Any], str]] = {
    "NGF rigid alone": ({"affine": "rigid", "instance_opt_steps": 0}, "demo"),
    "MIND IO, 1 level": ({"instance_opt_levels": 1}, "demo"),
    "recipe: MIND IO, 2 levels": ({}, "demo"),
    "NGF rigid + recipe IO": ({"affine": "rigid"}, "demo"),
    "recipe, field of view not recognised": ({}, "unknown"),
}


def make_tasks(work: Path, seed: int, threads: int) -> dict[str, Path]:
    """The demo task of ``seed`` and its copy whose ultrasound modality is named "unknown"."""
    root = work / f"seed{seed}"
    demo = root / "data" / TASK
    if not demo.is_dir():
        pipeline_command("demo-data", "--out", str(root / "data"), "--layout", "remind2reg", "--seed", str(seed), threads=threads)
    unknown = root / "unknown" / TASK
    if not unknown.is_dir():
        shutil.copytree(demo, unknown)
        meta_path = unknown / f"{TASK}_dataset.json"
        meta = json.loads(meta_path.read_text())
        meta["modality"] = {**meta["modality"], "0": "unknown"}
        meta_path.write_text(json.dumps(meta, indent=2))
    return {"demo": demo, "unknown": unknown}


def field_stats(path: Path) -> tuple[float, int]:
    """SDlogJ over the voxels with det J > 0 (NaN without any) and the number of folded voxels (det J <= 0) of a
    written field, from ``learn2reg.contract.jacobian_determinant`` (the ReMIND2Reg rules'
    ``num_foldings`` is 0 by construction, their SDlogJ has the official +3 stencil quirk)."""
    import numpy as np

    from learn2reg.contract import jacobian_determinant
    from learn2reg.io import load_nifti

    det = jacobian_determinant(load_nifti(path)[0])
    positive = det[det > 0]
    return float(np.log(positive).std()) if positive.size else float("nan"), int((det <= 0).sum())


def pair_rows(result: Path, submission: Path | None) -> dict[str, dict[str, float]]:
    """Per pair: TRE (mm, the evaluator's), SDlogJ and folded voxels (:func:`field_stats`) and
    the end-to-end seconds."""
    from learn2reg.rules import disp_name

    cases = json.loads(result.read_text())["cases"]
    runtimes = json.loads((submission / "runtimes.json").read_text())["runtimes"] if submission else {}
    rows = {}
    for key, metrics in cases.items():
        row = {"tre_mm": metrics["TRE_lm"]["mean"]}
        if submission is not None:
            sdlogj, folded = field_stats(submission / disp_name("remind2reg", *key.split("<--")))
            row.update(sdlogj=sdlogj, folded=folded, seconds=runtimes[key]["total_s"])
        rows[key] = row
    return rows


def run_method(name: str, overrides: dict[str, Any], tasks: dict[int, dict[str, Path]], variant: str, work: Path,
               threads: int) -> dict[str, Any]:
    slug = name.lower().replace(" ", "_").replace(",", "").replace(":", "").replace("+", "and")
    recipe = json.loads(RECIPE.read_text())
    recipe["predict"] = {**recipe["predict"], **overrides}
    config = work / f"{slug}.json"
    config.write_text(json.dumps(recipe, indent=2))
    load_before, started = os.getloadavg(), time.perf_counter()
    pairs: dict[str, dict[str, float]] = {}
    for seed, task in tasks.items():
        sub, result = work / f"seed{seed}" / "sub" / slug, work / f"seed{seed}" / f"{slug}.json"
        pipeline_command("predict", "--config", str(config), "--data", str(task[variant]), "--out", str(sub), "--overwrite", threads=threads)
        pipeline_command("evaluate", "-i", str(sub), "-d", str(task[variant]), "-o", str(result), "--overwrite", threads=threads)
        pairs.update({f"seed{seed}:{k}": v for k, v in pair_rows(result, sub).items()})
    return {"predict": recipe["predict"], "task": variant, "pairs": pairs, "load_average_before": list(load_before),
            "load_average_after": list(os.getloadavg()), "wall_s": time.perf_counter() - started}


def summary(pairs: dict[str, dict[str, float]]) -> dict[str, float]:
    tre = [p["tre_mm"] for p in pairs.values()]
    out = {"tre_mm": statistics.mean(tre), "tre_worst_mm": max(tre), "pairs": len(tre)}
    if all("seconds" in p for p in pairs.values()):
        out.update(sdlogj=statistics.mean(p["sdlogj"] for p in pairs.values()), folded=sum(p["folded"] for p in pairs.values()),
                   seconds_median=statistics.median(p["seconds"] for p in pairs.values()))
    return out


def markdown(report: dict[str, Any]) -> str:
    env = report["environment"]
    lines = [
        "# Registration without a network: ReMIND2Reg-like demo task (ultrasound fixed, ceT1/T2 moving)",
        "",
        f"- CPU: {env['cpu']} ({env['cpu_count']} cores visible), torch threads {env['threads']} (OMP_NUM_THREADS),"
        f" torch {env['torch']}, Python {env['python']}; load average before / after: {env['load_average_before']} /"
        f" {env.get('load_average_after')}",
        f"- Task: `demo-data --layout remind2reg`, seeds {', '.join(map(str, report['seeds']))}: {report['pairs']} validation"
        " pairs (2 patients x ceT1, T2 per seed), 64^3 at 1 mm; evaluated with the ReMIND2Reg rules",
        "- Every method: `predict --config` (the recipe `configs/l2r_remind2reg.json` with the overrides shown) then"
        " `evaluate`; seconds per pair end to end from `runtimes.json` (median), under the load average shown per row",
        "",
        "| method | predict overrides | TRE mm (mean) | worst pair mm | SDlogJ | folded voxels (all pairs) | s per pair | load average (1 min) before / after |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, row in report["methods"].items():
        s = row["summary"]
        overrides = ", ".join(f"{k} {json.dumps(v)}" for k, v in row.get("overrides", {}).items()) or "-"
        if row.get("task") == "unknown":
            overrides += " (task copy: ultrasound modality named \"unknown\")"
        folded = "-" if "folded" not in s else f"{s['folded']:.0f}"
        sdlogj = "-" if "sdlogj" not in s else f"{s['sdlogj']:.3f}"
        seconds = "-" if "seconds_median" not in s else f"{s['seconds_median']:.1f}"
        load = (f"{row['load_average_before'][0]:.1f} / {row['load_average_after'][0]:.1f}" if "load_average_before" in row else "-")
        lines.append(f"| {name} | {overrides} | {s['tre_mm']:.2f} | {s['tre_worst_mm']:.2f} | {sdlogj} | {folded} | {seconds} | {load} |")
    lines += ["", "Per pair TRE (mm):", "", "| pair | " + " | ".join(report["methods"]) + " |",
              "|---|" + "---|" * len(report["methods"])]
    keys = list(next(iter(report["methods"].values()))["pairs"])
    for key in keys:
        lines.append(f"| {key} | " + " | ".join(f"{m['pairs'][key]['tre_mm']:.2f}" for m in report["methods"].values()) + " |")
    if report.get("notes"):
        lines += ["", *[f"- {n}" for n in report["notes"]]]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1], help="demo task seeds (4 pairs each)")
    parser.add_argument("--only", default=None, help="methods whose name contains this (and the zero field)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads of the children (OMP_NUM_THREADS)")
    parser.add_argument("--work", type=Path, default=None, help="scratch folder (default: a temporary one, removed)")
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "network_free_cpu", help="output stem")
    parser.add_argument("--note", action="append", default=[])
    args = parser.parse_args(argv)
    with work_folder(args.work, "bench_network_free_") as work:
        report: dict[str, Any] = {"environment": environment("cpu", args.threads), "seeds": args.seeds, "methods": {}, "notes": args.note}
        tasks = {seed: make_tasks(work, seed, args.threads) for seed in args.seeds}
        zero: dict[str, dict[str, float]] = {}
        for seed, task in tasks.items():
            result = work / f"seed{seed}" / "Initial.json"
            pipeline_command("initial", "-d", str(task["demo"]), "-o", str(result), "--overwrite", threads=args.threads)
            zero.update({f"seed{seed}:{k}": v for k, v in pair_rows(result, None).items()})
        report["methods"]["zero field (Initial)"] = {"pairs": zero, "summary": summary(zero)}
        report["pairs"] = len(zero)
        for name, (overrides, variant) in METHODS.items():
            if args.only and args.only not in name:
                continue
            print(f"{name} ...", flush=True)
            row = run_method(name, overrides, tasks, variant, work, args.threads)
            row.update(overrides=overrides, summary=summary(row["pairs"]))
            report["methods"][name] = row
            print(json.dumps({name: row["summary"]}), flush=True)
        report["environment"]["load_average_after"] = list(os.getloadavg())
    write_report(report, args.out, markdown)
    print(markdown(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
