"""``python -m pipeline demo``: the main job on the embedded demo tasks, end to end.

demo-data -> validate -> (preprocess, inside training) -> align/train -> predict -> evaluate ->
leaderboard, for the four demo tasks, with the task configurations in ``configs/demo_*.json``.
Everything lands under ``--out``::

    data/                     the four generated task folders
    runs/<task>/              training runs (config, dataset description, checkpoints, log, curves)
    submissions/<method>/<task>/   challenge-format fields + runtimes.json
    results/<method>/<task>.json   evaluator output (official schema)
    leaderboard/              leaderboard.md / .csv / .html

A second call reuses finished runs (and resumes interrupted ones).
"""

from __future__ import annotations

import argparse
import logging
import time
from pathlib import Path

from evaluation.evaluate import evaluate
from evaluation.initial import evaluate_initial
from evaluation.leaderboard.stage import load_results, write_leaderboard
from learn2reg.io import DataError, check_output_path, write_json
from learn2reg.task import load_task
from learn2reg.writers import hold_folder
from pipeline.config import load_config
from pipeline.data.summary import format_summary, summarize
from pipeline.data.validate import validate_task
from pipeline.demo.tasks import write_demo
from pipeline.distributed import add_device_argument
from pipeline.prediction.predict import predict
from pipeline.training.train import train

log = logging.getLogger(__name__)
CONFIGS = Path(__file__).resolve().parents[2] / "configs"
DEMO_CONFIGS = {"T1": "demo_t1_curious.json", "T2": "demo_t2_lung.json", "T3": "demo_t3_abdomen.json", "T4": "demo_t4_hippocampus.json"}
INSTANCE_OPT_STEPS = 50


def build_parser(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", type=Path, default=Path("demo_out"), help="output folder")
    parser.add_argument("--seed", type=int, default=0, help="seed of the demo data")
    parser.add_argument("--layout", choices=("l2r", "l2r2020"), default="l2r", help="task folder layout")
    parser.add_argument("--tasks", default="T1,T2,T3,T4", help="comma-separated demo tasks")
    parser.add_argument("--data-only", action="store_true", help="stop after generating and validating the data")
    parser.add_argument("--no-instance-opt", action="store_true", help="skip the instance-optimisation method")
    add_device_argument(parser)


def _train_once(data: Path, config: Path, run_dir: Path, device: str) -> None:
    """Train, or reuse a finished run, or resume an interrupted one."""
    if (run_dir / "final.json").exists():
        log.info("reusing the finished run %s", run_dir)
        return
    resume = (run_dir / "checkpoints" / "last.pt").exists()
    code = train(data, load_config(config), run_dir, resume=resume, device=device)
    if code != 0:
        raise DataError(f"{run_dir}: training stopped with exit code {code}")


def _score(method: str, sub: Path, data: Path, results: Path) -> None:
    write_json(results / method / f"{data.name}.json", evaluate(sub, data))


def run_task(key: str, data: Path, out: Path, device: str, instance_opt: bool) -> None:
    """Every stage for one demo task; results land in ``out/results/<method>/<task>.json``."""
    config = CONFIGS / DEMO_CONFIGS[key]
    results, subs = out / "results", out / "submissions"
    write_json(results / "Initial" / f"{data.name}.json", evaluate_initial(data))
    if not load_config(config).predict.uses_network:
        code = predict(data, subs / "LapIRN" / data.name, None, device=device, report=True, config_file=config)
    else:
        run_dir = out / "runs" / data.name
        _train_once(data, config, run_dir, device)
        code = predict(data, subs / "LapIRN" / data.name, run_dir, device=device, report=True)
        if instance_opt and code in (0, 3):
            code = predict(data, subs / "LapIRN+IO" / data.name, run_dir, device=device, report=True,
                           instance_opt_steps=INSTANCE_OPT_STEPS)
            _score("LapIRN+IO", subs / "LapIRN+IO" / data.name, data, results)
    if code not in (0, 3):  # 3: every field written, some pre-alignment implausible (named by predict): scored anyway
        raise DataError(f"{data}: prediction failed (exit code {code})")
    _score("LapIRN", subs / "LapIRN" / data.name, data, results)


def run_demo(out: Path, seed: int = 0, layout: str = "l2r", tasks: tuple[str, ...] = tuple(DEMO_CONFIGS),
             data_only: bool = False, instance_opt: bool = True, device: str = "auto") -> int:
    """Run the demo job into ``out``; returns the exit code."""
    start = time.perf_counter()
    task_dirs = write_demo(out / "data", seed=seed, layout=layout, tasks=tasks)
    problems = [str(p) for d in task_dirs for p in validate_task(d) if p.is_error]
    if problems:
        print("\n".join(problems))
        print(f"demo: {len(problems)} problem(s) in the generated data")
        return 1
    print(format_summary([summarize(load_task(d)) for d in task_dirs]))
    print(f"demo: {len(task_dirs)} tasks generated and validated -> {out / 'data'}")
    if data_only:
        return 0
    for key, data in zip(tasks, task_dirs, strict=True):
        t0 = time.perf_counter()
        run_task(key, data, out, device, instance_opt)
        print(f"demo: {key} {data.name} done in {time.perf_counter() - t0:.0f} s")
    methods = [m for m in ("LapIRN", "LapIRN+IO") if (out / "results" / m).is_dir()]
    results = load_results([f"{m}={out / 'results' / m}" for m in methods], initial=[str(out / "results" / "Initial")])
    reports = {m: out / "submissions" / m for m in methods}  # per-pair reports, linked from the page
    print(write_leaderboard(results, out / "leaderboard", reports=reports))
    print(f"demo: finished in {time.perf_counter() - start:.0f} s; leaderboard in {out / 'leaderboard'}")
    return 0


def run(args: argparse.Namespace) -> int:
    tasks = tuple(t.strip() for t in args.tasks.split(",") if t.strip())
    unknown = sorted(set(tasks) - set(DEMO_CONFIGS))
    if unknown:
        raise DataError(f"--tasks: unknown demo task(s) {unknown}; choose from {sorted(DEMO_CONFIGS)}")
    with hold_folder(check_output_path(args.out, folder=True)):  # one demo job per folder
        return run_demo(args.out, args.seed, args.layout, tasks, args.data_only, not args.no_instance_opt, args.device)
