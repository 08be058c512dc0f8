"""The LUMIR recipe's prediction path on the LUMIR-layout demo task, against the zero field.

Usage (from the repository root)::

    python bench/bench_lumir_demo.py                 # -> bench/results/lumir_demo_cpu.{json,md}

The demo task (``demo-data --layout lumir``: brain-like phantoms, 40x56x48 at 1 mm, [0, 255],
image-only training entries, 6 validation pairs with label maps and landmark volumes) is
generated per seed and scored under its own rule set (LUMIR 2025: Dice, HD95, the
non-diffeomorphic volume NDV, TRE on the landmark volumes). Every method runs the pipeline's own
commands in child processes:

* the zero field (``initial``);
* the published diffeomorphic LapIRN brain weights (``import-weights
  weights/LapIRN_diff_fea7.pth``), the network alone (``predict --run --instance-opt-steps 0``);
* ``configs/l2r_lumir.json``'s prediction before any fine-tuning: the same weights (the recipe's
  model and preprocessing are theirs) and its 50 steps of MIND-SSC instance optimisation;
* without a network: ``configs/l2r_lumir.json`` with ``predict.network`` "none", MIND-SSC
  instance optimisation from the zero field, 2 levels x 50 steps (the ReMIND2Reg recipe's).

The phantoms are not brains at the published weights' scale, so this measures the path and its
cost, not what a fine-tuned run reaches on LUMIR. Times: end-to-end per pair (``runtimes.json``,
median) with ``--threads`` torch threads; the load average is recorded around each method.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

from bench_lapirn import environment, pipeline_command, work_folder, write_report  # noqa: E402

RECIPE = REPO / "configs" / "l2r_lumir.json"
WEIGHTS = REPO / "weights" / "LapIRN_diff_fea7.pth"
TASK = "DemoLUMIR"
METRICS = ("DSC", "HD95", "Non-diffeomorphic Volumes", "TRE_lm")


def scores(result: Path, submission: Path | None) -> dict[str, Any]:
    """The evaluator's means over the pairs (its aggregates: the LUMIR rules' per-case entries
    hold only the first configuration's metrics) and the per-pair end-to-end seconds."""
    report = json.loads(result.read_text())
    out: dict[str, Any] = {m: report["aggregates"][m]["mean"] for m in METRICS}
    if submission is not None:
        out["seconds"] = [t["total_s"] for t in json.loads((submission / "runtimes.json").read_text())["runtimes"].values()]
    return out


def methods(work: Path) -> dict[str, list[str]]:
    """Method name -> the ``predict`` options (after ``--data/--out``) that make it."""
    free = json.loads(RECIPE.read_text())
    free["predict"] = {**free["predict"], "network": "none", "instance_opt_levels": 2}
    config = work / "network_free.json"
    config.write_text(json.dumps(free, indent=2))
    run = str(work / "published")
    return {
        "published weights, network alone": ["--run", run, "--instance-opt-steps", "0"],
        "recipe prediction: published weights + 50 MIND steps": ["--run", run, "--instance-opt-steps", "50"],
        "no network: MIND, 2 levels x 50 steps": ["--config", str(config)],
    }


def summary(seeds: dict[int, dict[str, Any]]) -> dict[str, float]:
    """Means over the seeds (the same number of pairs each) and the median seconds per pair."""
    out = {m: statistics.mean(s[m] for s in seeds.values()) for m in METRICS}
    seconds = [t for s in seeds.values() for t in s.get("seconds", [])]
    if seconds:
        out["seconds_median"] = statistics.median(seconds)
    return out


def markdown(report: dict[str, Any]) -> str:
    env = report["environment"]
    lines = [
        "# The LUMIR recipe's prediction path on the LUMIR-layout demo task",
        "",
        f"- CPU: {env['cpu']} ({env['cpu_count']} cores visible), torch threads {env['threads']} (OMP_NUM_THREADS),"
        f" torch {env['torch']}, Python {env['python']}; load average before / after: {env['load_average_before']} /"
        f" {env.get('load_average_after')}",
        f"- Task: `demo-data --layout lumir`, seeds {', '.join(map(str, report['seeds']))}: {report['pairs']} validation pairs,"
        " 40x56x48 at 1 mm; scored under the task's rule set (LUMIR 2025); means over the pairs",
        "- Seconds per pair: end to end from `runtimes.json` (median), one method at a time",
        "",
        "| method | Dice ↑ | HD95 ↓ | NDV % ↓ | TRE mm ↓ | s per pair | load average (1 min) before / after |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, row in report["methods"].items():
        s = row["summary"]
        seconds = "-" if "seconds_median" not in s else f"{s['seconds_median']:.1f}"
        load = f"{row['load_average_before'][0]:.1f} / {row['load_average_after'][0]:.1f}" if "load_average_before" in row else "-"
        lines.append(f"| {name} | {s['DSC']:.3f} | {s['HD95']:.2f} | {s['Non-diffeomorphic Volumes']:.4f} | {s['TRE_lm']:.2f}"
                     f" | {seconds} | {load} |")
    if report.get("notes"):
        lines += ["", *[f"- {n}" for n in report["notes"]]]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0], help="demo task seeds (6 pairs each)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads of the children (OMP_NUM_THREADS)")
    parser.add_argument("--work", type=Path, default=None, help="scratch folder (default: a temporary one, removed)")
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "lumir_demo_cpu", help="output stem")
    parser.add_argument("--note", action="append", default=[])
    args = parser.parse_args(argv)
    with work_folder(args.work, "bench_lumir_demo_") as work:
        report: dict[str, Any] = {"environment": environment("cpu", args.threads), "seeds": args.seeds, "methods": {}, "notes": args.note}
        if not (work / "published" / "imported.json").is_file():
            pipeline_command("import-weights", str(WEIGHTS), "--out", str(work / "published"), threads=args.threads)
        tasks = {}
        for seed in args.seeds:
            tasks[seed] = work / f"seed{seed}" / TASK
            if not tasks[seed].is_dir():
                pipeline_command("demo-data", "--out", str(work / f"seed{seed}"), "--layout", "lumir", "--seed", str(seed), threads=args.threads)
        zero: dict[int, dict[str, Any]] = {}
        for seed, task in tasks.items():
            result = work / f"seed{seed}" / "Initial.json"
            pipeline_command("initial", "-d", str(task), "-o", str(result), "--overwrite", threads=args.threads)
            zero[seed] = scores(result, None)
        report["methods"]["zero field (Initial)"] = {"seeds": zero, "summary": summary(zero)}
        report["pairs"] = sum(len(json.loads((work / f"seed{s}" / "Initial.json").read_text())["cases"]) for s in tasks)
        for i, (name, options) in enumerate(methods(work).items()):
            print(f"{name} ...", flush=True)
            load_before, started = os.getloadavg(), time.perf_counter()
            seeds: dict[int, dict[str, Any]] = {}
            for seed, task in tasks.items():
                sub, result = work / f"seed{seed}" / f"m{i}", work / f"seed{seed}" / f"m{i}.json"
                pipeline_command("predict", "--data", str(task), "--out", str(sub), *options, "--device", "cpu", "--overwrite", threads=args.threads)
                pipeline_command("evaluate", "-i", str(sub), "-d", str(task), "-o", str(result), "--overwrite", threads=args.threads)
                seeds[seed] = scores(result, sub)
            report["methods"][name] = {"predict": options, "seeds": seeds, "summary": summary(seeds), "load_average_before": list(load_before),
                                       "load_average_after": list(os.getloadavg()), "wall_s": time.perf_counter() - started}
            print(json.dumps({name: report["methods"][name]["summary"]}), flush=True)
        report["environment"]["load_average_after"] = list(os.getloadavg())
    write_report(report, args.out, markdown)
    print(markdown(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
