"""Real-anatomy benchmark: the published LapIRN weights zero-shot and with instance optimisation
on the BrainDev task (``bench/make_brain_task.py``), against Initial and ANTs SyNCC.

Usage (from the repository root, on a quiet machine: the runtimes are the point)::

    python bench/make_brain_task.py --out WORK/BrainDev --cache WORK/cache
    WORK/ants-venv/bin/python bench/ants_baseline.py --task WORK/BrainDev --out WORK/ants_syncc   # optional
    python bench/bench_brain.py --task WORK/BrainDev --work WORK/bench [--ants "ANTs SyNCC=WORK/ants_syncc"]
        [--run "LapIRN diff fine-tuned (60 steps)=WORK/runs/ft_diff"] [--name brain_cpu]

For each method the pipeline's own commands run end to end: ``import-weights`` (both published
files), ``predict`` (the network at the weights' 1 mm on the task's 2 mm grid: the run's trained
spacing, no option needed) with and without ``--instance-opt-steps``, the same for every
``--run`` (e.g. a ``train --init`` fine-tuning; its training steps and time from its log),
``evaluate`` (official metrics plus the folding fraction) and ``initial``. Runtimes are the ``runtimes.json`` of each submission: end to end per pair (read,
preprocess, network, instance optimisation, write), on this machine's CPU with torch's threads.
Writes ``bench/results/brain_cpu.{md,json}`` (``--out``).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
WEIGHTS = {"disp": REPO / "weights" / "LapIRN_disp_fea7.pth", "diff": REPO / "weights" / "LapIRN_diff_fea7.pth"}
METRICS = (("DSC", "Dice", 3), ("TRE_lm", "TRE (mm)", 2), ("LogJacDetStd", "SDlogJ", 3), ("folding_fraction", "folded voxels (%)", 4))


def pipeline(*args: str) -> None:
    """``python -m pipeline ARGS`` from the repository root; stops the benchmark on failure."""
    cmd = [sys.executable, "-m", "pipeline", *args]
    print("+", " ".join(cmd), flush=True)
    subprocess.run(cmd, cwd=REPO, check=True, env={**os.environ, "L2R_PROGRESS_SECONDS": "60"})


def methods(steps: int, runs: dict[str, Path], work: Path, lncc: bool = False) -> dict[str, tuple[Path, list[str]]]:
    """Method name -> (run folder, extra predict arguments); ``lncc``: also instance optimisation
    with the local NCC similarity (``--instance-opt-similarity lncc``) for every run."""
    io = ["--instance-opt-steps", str(steps)]
    found: dict[str, tuple[Path, list[str]]] = {}
    for variant in WEIGHTS:
        found[f"LapIRN {variant} (zero-shot)"] = (work / "runs" / variant, [])
    for variant in WEIGHTS:
        found[f"LapIRN {variant} + IO ({steps} steps)"] = (work / "runs" / variant, io)
    for name, run_dir in runs.items():
        found[name] = (run_dir, [])
        found[f"{name} + IO ({steps} steps)"] = (run_dir, io)
    if lncc:
        for name, (run_dir, _) in list(found.items()):
            if "+ IO" not in name:
                found[f"{name.replace(' (zero-shot)', '')} + IO lncc ({steps} steps)"] = (run_dir, [*io, "--instance-opt-similarity", "lncc"])
    return found


def training_cost(run_dir: Path) -> dict[str, float]:
    """Steps and wall time of a training run, from its ``log.csv`` (the last train row)."""
    import pandas as pd

    log = pd.read_csv(run_dir / "log.csv")
    train = log[log["kind"] == "train"]
    return {"train_steps": float(train["global_step"].max()), "train_s": float(train["elapsed_s"].max())} if len(train) else {}


def summarise(result: Path, submission: Path | None) -> dict[str, float]:
    """Aggregate means of an evaluator output and the median runtimes of its submission."""
    aggregates = json.loads(result.read_text())["aggregates"]
    row = {name: aggregates[name]["mean"] for name, _, _ in METRICS if name in aggregates}
    if "folding_fraction" in row:
        row["folding_fraction"] *= 100.0
    manifest = submission / "runtimes.json" if submission is not None else None
    if manifest is not None and manifest.is_file():
        runtimes = json.loads(manifest.read_text())["runtimes"].values()
        for key in ("total_s", "network_s", "instance_opt_s"):
            values = [r[key] for r in runtimes if key in r]
            if values:
                row[key] = statistics.median(values)
    return row


def run(task: Path, work: Path, ants: dict[str, Path], ants_timing: Path | None, steps: int, reuse: bool,
        runs: dict[str, Path], lncc: bool = False) -> dict[str, dict[str, float]]:
    """Every method's row; ``reuse``: keep submissions and scores already in ``work`` (tables only)."""
    work.mkdir(parents=True, exist_ok=True)
    rows: dict[str, dict[str, float]] = {}
    if not (reuse and (work / "Initial.json").is_file()):
        pipeline("initial", "-d", str(task), "-o", str(work / "Initial.json"))
    rows["Initial"] = summarise(work / "Initial.json", None)
    for variant, source in WEIGHTS.items():
        if not (work / "runs" / variant / "checkpoints" / "best.pt").exists():
            pipeline("import-weights", str(source), "--out", str(work / "runs" / variant))
    for name, (run_dir, extra) in methods(steps, runs, work, lncc).items():
        sub = work / "submissions" / name.replace(" ", "_").replace("(", "").replace(")", "")
        if not (reuse and sub.with_suffix(".json").is_file()):
            shutil.rmtree(sub, ignore_errors=True)  # fresh runtimes: predict would resume a finished folder
            pipeline("predict", "--data", str(task), "--run", str(run_dir), "--out", str(sub), "--device", "cpu", *extra)
            pipeline("evaluate", "-i", str(sub), "-d", str(task), "-o", str(sub.with_suffix(".json")))
        rows[name] = summarise(sub.with_suffix(".json"), sub)
        if (run_dir / "log.csv").is_file():
            rows[name].update(training_cost(run_dir))
    for name, folder in ants.items():
        result = work / (name.replace(" ", "_").replace("[", "").replace("]", "").replace(",", "_") + ".json")
        if not (reuse and result.is_file()):
            pipeline("evaluate", "-i", str(folder), "-d", str(task), "-o", str(result))
        rows[name] = summarise(result, ants_timing or folder)
    return rows


def device() -> str:
    name = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                name = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{name} ({torch.get_num_threads()} threads), torch {torch.__version__}"


def markdown(rows: dict[str, dict[str, float]], task: Path, meta: dict) -> str:
    head = ["Method", *(label for _, label, _ in METRICS), "s per pair (median)", "network s", "IO s", "training"]
    lines = [
        f"# Real-anatomy benchmark ({task.name}, CPU)", "",
        f"{meta['device']}, {meta['date']}, load average before {meta['load']}. Task `{task.name}`: "
        f"{meta['pairs']} val pairs, 80x96x80 at 2 mm, 120 AAL2 labels, 100 landmarks per image "
        "(`bench/make_brain_task.py`). Official metrics of our evaluator; folded voxels = det(I + grad u) <= 0.",
        "", "| " + " | ".join(head) + " |", "|" + "---|" * len(head),
    ]
    for name, row in rows.items():
        cells = [f"{row[key]:.{digits}f}" if key in row else "-" for key, _, digits in METRICS]
        cells += [f"{row[key]:.1f}" if key in row else "-" for key in ("total_s", "network_s", "instance_opt_s")]
        cells.append(f"{row['train_steps']:.0f} steps, {row['train_s'] / 60:.0f} min" if "train_s" in row else "-")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    lines += ["", "Zero-shot and IO rows: `import-weights` + `predict [--instance-opt-steps N]` (the network at the weights' "
              "1 mm), end to end per pair (read, preprocess, network, instance optimisation, write); fine-tuned rows: "
              "`train --init` (training steps and wall time on the same CPU in the last column) + `predict`. ANTs: "
              "`bench/ants_baseline.py`, its registration time per pair (median; `--ants-timing`: of a quiet rerun on some "
              "pairs, see the json)."]
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--task", type=Path, required=True, help="BrainDev task folder (bench/make_brain_task.py)")
    parser.add_argument("--work", type=Path, required=True, help="scratch folder for runs, submissions, results")
    parser.add_argument("--ants", action="append", default=[], metavar="NAME=DIR",
                        help="an ANTs submission (bench/ants_baseline.py) and its row name; repeat for several")
    parser.add_argument("--run", action="append", default=[], metavar="NAME=RUN",
                        help="another run folder (e.g. train --init) predicted with and without instance optimisation")
    parser.add_argument("--name", default="brain_cpu", help="results file stem (bench/results/NAME.{md,json})")
    parser.add_argument("--lncc", action="store_true", help="also rows with instance optimisation by local NCC")
    parser.add_argument("--ants-timing", type=Path, default=None,
                        help="an ANTs submission (some pairs) timed on a quiet machine: its runtimes replace --ants's")
    parser.add_argument("--steps", type=int, default=50, help="instance optimisation steps")
    parser.add_argument("--reuse", action="store_true", help="keep the submissions and scores already in --work")
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results", help="where brain_cpu.{md,json} go")
    args = parser.parse_args()
    meta = {"device": device(), "date": time.strftime("%Y-%m-%d %H:%M"), "load": [round(x, 2) for x in os.getloadavg()]}
    previous = args.out / f"{args.name}.json"
    if args.reuse and previous.is_file():  # the runs are the earlier ones: so are their date and load
        meta = json.loads(previous.read_text())["meta"]
    pairs = {name: Path(path) for name, _, path in (item.partition("=") for item in args.ants)}
    runs = {name: Path(path) for name, _, path in (item.partition("=") for item in args.run)}
    rows = run(args.task, args.work, pairs, args.ants_timing, args.steps, args.reuse, runs, args.lncc)
    meta["ants_timing"] = str(args.ants_timing) if args.ants_timing else None
    meta["pairs"] = len(json.loads((args.work / "Initial.json").read_text())["cases"])
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"{args.name}.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=2) + "\n")
    (args.out / f"{args.name}.md").write_text(markdown(rows, args.task, meta))
    print(markdown(rows, args.task, meta))
    return 0


if __name__ == "__main__":
    sys.exit(main())
