"""What each recipe (``configs/l2r_*.json``) costs: counted, estimated, measured on this CPU.

Usage (from the repository root)::

    python bench/bench_recipes.py                      # -> bench/results/recipes_cpu.{json,md}
    python bench/bench_recipes.py --only NLST --measure-max-voxels 0   # counts and estimates only

For every recipe, on its network grid (the task's image shape, halved when the recipe says
``half_resolution``, padded to a multiple of 2^levels inside the network):

* **counted** (exact, on torch's ``meta`` device, no memory used; ``pipeline.model.memory``):
  forward FLOPs, FLOPs of one training step per level as ``pipeline.training.train`` runs it
  (forward, the configured loss: NCC pyramid, smoothness, Dice on one-hot labels with the
  task's number of classes, mask; backward), and the peak tensor memory of a level-3 step;
* **estimated** (``pipeline.model.memory``, what ``train`` and ``predict`` check before they
  start): the peak memory of that training step on the CPU (the child's Python and torch + the
  counted tensors + the allocator allowance) and on a GPU (fp32 and bf16 autocast), the peak of
  predicting one pair, and the GPU time of the recipe's whole schedule at two assumed effective
  throughputs (not measurements);
* **measured** (one recipe at a time, each in a child process, when the estimate fits in what
  this machine has free): the training step on this CPU (bench_lapirn's timing and peak-RSS
  conventions; random images and labels, one-hot made per step as the trainer does), and
  ``python -m pipeline register`` on two random images of the task's shape with random weights
  of the recipe's network (its ``register.json`` holds the stage's own estimate and peak).

A network-free recipe (``predict.network`` "none": registration by instance optimisation from the
zero field, no training) has nothing to count or train: its row is the prediction alone, the
stage's estimate and ``register`` measured as above (a run folder holding only the
configuration), with the instance optimisation's seconds.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

from bench_lapirn import _rss_mb, _timed, environment, run_child, write_report  # noqa: E402

# recipe file, task, the task's image shape (full resolution), label classes incl. background (1: no labels)
RECIPES = (
    ("l2r_hippocampusmr.json", "HippocampusMR", (64, 64, 64), 3),
    ("l2r_lungct.json", "LungCT", (192, 192, 208), 1),
    ("l2r_nlst.json", "NLST", (224, 192, 224), 1),
    ("l2r_abdomenctct.json", "AbdomenCTCT", (192, 160, 256), 14),
    ("l2r_thoraxcbct.json", "ThoraxCBCT", (390, 280, 300), 1),
    ("l2r_oasis.json", "OASIS", (160, 224, 192), 36),
    ("l2r_lumir.json", "LUMIR", (160, 224, 192), 1),
    ("l2r_oncoreg.json", "OncoReg", (256, 192, 192), 1),
    ("l2r_remind2reg.json", "ReMIND2Reg", (256, 256, 256), 1),
)
# Effective training throughputs for the GPU estimates (FLOP/s). 2e12: what the seed paper's RTX
# 2080 Ti inference time implies at least (task 3: 3.4 TFLOP forward in 1.83 s per pair, I/O
# included). 2e13: an assumption for an A100/H100-class GPU with bf16 autocast. Not measured.
THROUGHPUTS = {"2 TFLOP/s": 2e12, "20 TFLOP/s": 2e13}
BASE_GB = 0.33  # Python + torch before any work (measured in the children: 0.30-0.34 GB); when not measured
GB = 2**30


def _load(config_file: str) -> Any:
    from pipeline.config import load_config

    return load_config(REPO / "configs" / config_file)


def _model_config(cfg: Any) -> Any:
    from pipeline.model.lapirn import LapIRNConfig

    return LapIRNConfig(**vars(cfg.model))


def network_grid(cfg: Any, shape: tuple[int, int, int]) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """The recipe's network grid and the grid padded to 2^levels inside the network."""
    from pipeline.data.preprocess import network_shape

    grid = network_shape(shape, cfg.preprocess)
    m = 2**cfg.model.levels
    return grid, tuple(-(-n // m) * m for n in grid)


def count(cfg: Any, grid: tuple[int, ...], num_classes: int) -> dict[str, Any]:
    """Exact FLOPs (forward; training step per level) and peak tensor bytes of a level-3 step, on ``meta``."""
    from torch.utils.flop_counter import FlopCounterMode

    from pipeline.model import memory

    model, mask = _model_config(cfg), cfg.loss.use_mask
    out: dict[str, Any] = {"train_step_flops": []}
    for level in range(1, cfg.model.levels + 1):
        with FlopCounterMode(display=False) as flops:
            memory.meta_train_step(model, cfg.loss, grid, num_classes, mask, level=level)
        out["train_step_flops"].append(flops.get_total_flops())
    with FlopCounterMode(display=False) as fwd:
        memory.meta_inference(model, grid)
    out["forward_flops"] = fwd.get_total_flops()
    out["train_step_bytes"] = memory.train_step_bytes(model, cfg.loss, grid, num_classes, mask)
    out["inference_bytes"] = memory.inference_bytes(model, grid)
    return out


def estimate(cfg: Any, grid: tuple[int, ...], num_classes: int, counted: dict[str, Any], base_gb: float) -> dict[str, Any]:
    """Estimated peak memory of the training step (CPU: ``base_gb`` + counted + allowance; GPU
    fp32 / bf16: counted + allowance, the CUDA context not included), schedule FLOPs, GPU hours."""
    from pipeline.model import memory

    model, mask = _model_config(cfg), cfg.loss.use_mask
    work = counted["train_step_bytes"]
    gpu = {amp: memory.train_step_bytes(model, cfg.loss, grid, num_classes, mask, amp, on_gpu=True) for amp in ("none", "bf16")}
    total = sum(steps * flops for steps, flops in zip(cfg.train.steps_per_level, counted["train_step_flops"], strict=True))
    return {
        "train_cpu_gb": base_gb + (work + memory.allowance(work, False, "train")) / GB,
        "train_gpu_gb": {"fp32" if amp == "none" else amp: (b + memory.allowance(b, True, "train")) / GB for amp, b in gpu.items()},
        "schedule_flops": total,
        "gpu_hours": {name: total / rate / 3600 for name, rate in THROUGHPUTS.items()},
    }


# ---------------------------------------------------------------------- children


def child(spec: dict[str, Any]) -> dict[str, Any]:
    """Measure one recipe's level-3 training step on the CPU (in this child process), as the
    trainer runs it: random images and uint8 labels, one-hot per step, configured loss, Adam."""
    import torch

    from pipeline.model.field import full_resolution_field
    from pipeline.model.lapirn import LapIRN
    from pipeline.model.losses import level_loss, one_hot

    torch.set_num_threads(spec["threads"])
    cfg = _load(spec["config"])
    grid, k = tuple(spec["grid"]), spec["num_classes"]
    base = _rss_mb()
    torch.manual_seed(0)
    model = LapIRN(_model_config(cfg)).train()
    optimizer = torch.optim.Adam(model.parameters(), lr=cfg.train.lr)
    fixed, moving = torch.rand(1, 1, *grid), torch.rand(1, 1, *grid)
    labels = [torch.randint(0, k, (1, 1, *grid), dtype=torch.uint8) for _ in range(2)] if cfg.loss.dice > 0 and k > 1 else None
    mask = torch.ones(1, 1, *grid) if cfg.loss.use_mask else None

    def step() -> None:
        out = model(moving, fixed)
        extra: dict[str, Any] = {}
        if mask is not None:
            extra["mask"] = model.pyramid(mask)[-1]
        if labels is not None:
            extra.update(fixed_onehot=one_hot(labels[0], k), moving_onehot=one_hot(labels[1], k),
                         dice_field=full_resolution_field(model, out))
        parts = level_loss(cfg.loss, 3, 3, out.final.warped, out.final.fixed, out.final.field, **extra)
        optimizer.zero_grad(set_to_none=True)
        parts["total"].backward()
        optimizer.step()

    wall, cpu, first = _timed(step, spec["warmup"], spec["repeats"], "cpu")
    return {"base_rss_mb": base, "train_step_s": wall, "train_step_cpu_s": cpu, "first_s": first,
            "train_step_median_s": statistics.median(wall), "train_step_cpu_median_s": statistics.median(cpu),
            "train_peak_rss_mb": _rss_mb()}


def random_run(cfg: Any, config_file: str, run_dir: Path) -> None:
    """A run folder with the recipe's configuration and random weights (``best.pt``; only the
    configuration for a network-free recipe)."""
    import torch

    from learn2reg.io import write_json
    from pipeline.model.checkpoint import save_checkpoint
    from pipeline.model.lapirn import LapIRN

    write_json(run_dir / "config.json", cfg.to_dict())
    if not cfg.predict.uses_network:
        return
    torch.manual_seed(0)
    model = LapIRN(_model_config(cfg))
    save_checkpoint(run_dir / "checkpoints" / "best.pt", {
        "model_config": model.config.to_dict(), "run_config": cfg.to_dict(), "model": model.state_dict(),
        "optimizer": None, "state": {"level": 3, "step": 0, "global_step": 0}, "source": f"bench: random weights, {config_file}"})


def measure_predict(cfg: Any, config_file: str, shape: tuple[int, int, int], threads: int, timeout_s: float) -> dict[str, Any]:
    """``python -m pipeline register`` on two random images of ``shape`` with random weights: its
    ``register.json`` memory record (the stage's estimate and the child's peak) and its runtimes."""
    import numpy as np

    from learn2reg.io import Geometry, save_nifti

    with tempfile.TemporaryDirectory(prefix="bench_recipes_") as tmp:
        root = Path(tmp)
        rng = np.random.default_rng(0)
        images = []
        for name in ("fixed", "moving"):
            path = root / f"{name}.nii.gz"
            save_nifti(path, rng.uniform(-1000, 1000, shape).astype(np.float32), Geometry.identity(shape))
            images.append(path)
        random_run(cfg, config_file, root / "run")
        env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS=str(threads))
        env.setdefault("OMP_WAIT_POLICY", "PASSIVE")
        cmd = [sys.executable, "-m", "pipeline", "register", "--fixed", str(images[0]), "--moving", str(images[1]),
               "--run", str(root / "run"), "--out", str(root / "out"), "--no-report", "--device", "cpu"]
        started = time.perf_counter()
        try:
            proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout_s, check=False)
        except subprocess.TimeoutExpired:
            return {"error": f"timed out after {timeout_s:.0f} s"}
        if proc.returncode != 0:
            return {"error": f"register exited {proc.returncode}: {proc.stderr.strip()[-2000:]}"}
        record = json.loads((root / "out" / "register.json").read_text())
        return {**record["memory"], "runtimes": record["runtimes"], "wall_s": time.perf_counter() - started}


def predict_estimate(cfg: Any, shape: tuple[int, int, int]) -> float:
    """The stage's estimate of the work of predicting one pair of ``shape`` on the CPU (GB),
    without the process's own memory (for deciding whether to measure)."""
    from learn2reg.io import Geometry
    from pipeline.model.memory import allowance, peaks
    from pipeline.prediction.memory import pair_phases

    geometry = Geometry.identity(shape)
    top, _ = peaks(pair_phases(cfg, geometry, geometry, shape, False, ["warped"]), False)
    return (top.device + allowance(top.device, False, "predict")) / GB


# ---------------------------------------------------------------------- report


def _g(x: float | None, digits: int = 1) -> str:
    return "-" if x is None else f"{x:.{digits}f}"


def _pair(estimated: float, measured: float | None, why_not: str | None) -> str:
    """``estimated / measured``, or why it was not measured."""
    return f"{estimated:.2f} / {_g(measured, 2) if measured is not None else why_not or 'not measured'}"


def _measured(result: dict[str, Any] | None, key: str, scale: float = 1.0) -> tuple[float | None, str | None]:
    if not result:
        return None, None
    if "error" in result:
        return None, "error"
    return result[key] * scale, None


def markdown(report: dict[str, Any]) -> str:
    env = report["environment"]
    lines = [
        "# Recipes: cost per configuration (configs/l2r_*.json)",
        "",
        f"- CPU: {env['cpu']} ({env['cpu_count']} cores visible), torch threads {env['threads']}, torch {env['torch']},"
        f" Python {env['python']}; load average before / after: {env['load_average_before']} / {env.get('load_average_after')}",
        "- **counted** (exact, torch meta device, `pipeline.model.memory`): FLOPs (multiply-add = 2) of the forward pass and"
        " of one level-3 training step as the trainer runs it (loss as configured, backward), the peak tensor memory of that step",
        "- **estimated** peak memory (GB = 2^30 bytes), as `train` and `predict` estimate it before they start: CPU = the"
        " process's Python and torch + counted tensors + modelled arrays + allocator allowance; GPU = counted tensors"
        " + 10 % + 0.25 GB (not measured; add about 0.5 GB of CUDA context); GPU hours for the whole schedule at an assumed"
        " effective throughput (2 TFLOP/s: at least what the seed paper's RTX 2080 Ti inference implies; 20 TFLOP/s: an"
        " assumption for A100/H100-class GPUs with bf16). Estimates, not measurements.",
        "- **measured**, one recipe at a time in a child process: the training step on this CPU, fp32, median wall s (CPU s"
        " in brackets), peak RSS; `python -m pipeline register` of one pair (random images of the task's shape, random"
        " weights), the peak RSS in its `register.json` beside the stage's own estimate",
        "",
        "| recipe | task | network grid (padded) | sc | forward TFLOP | train step TFLOP | CPU train step s (CPU s)"
        " | CPU train peak GB, estimated / measured | CPU predict peak GB, estimated / measured"
        " | GPU train memory GB, fp32 / bf16 (estimated) | GPU h @ 2 / 20 TFLOP/s (estimated) |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    free = [r for r in report["recipes"] if not r.get("uses_network", True)]
    for r in report["recipes"]:
        if r in free:
            continue
        c, e, meas, pred = r["counted"], r["estimated"], r.get("measured"), r.get("predict")
        grid = "x".join(map(str, r["grid"])) + ("" if r["grid"] == r["padded"] else f" ({'x'.join(map(str, r['padded']))})")
        timed = "not measured" if not meas else ("error" if "error" in meas else
                f"{_g(meas['train_step_median_s'])} ({_g(meas['train_step_cpu_median_s'])})")
        skipped = r.get("not_measured", {})
        peak, why = _measured(meas, "train_peak_rss_mb", 1 / 1024)
        train = _pair(e["train_cpu_gb"], peak, why or skipped.get("train"))
        peak, why = _measured(pred, "peak_gb")
        predicted = _pair(pred["estimate_gb"] if pred and "estimate_gb" in pred else r["predict_estimate_gb"], peak,
                          why or skipped.get("predict"))
        hours = " / ".join(_g(h, 1 if h < 10 else 0) for h in e["gpu_hours"].values())
        lines.append(
            f"| {r['config']} | {r['task']} | {grid} | {r['start_channel']} | {c['forward_flops'] / 1e12:.2f}"
            f" | {c['train_step_flops'][-1] / 1e12:.2f} | {timed} | {train} | {predicted}"
            f" | {e['train_gpu_gb']['fp32']:.1f} / {e['train_gpu_gb']['bf16']:.1f} | {hours} |"
        )
    if free:
        lines += ["", "Network-free recipes (`predict.network` \"none\": no training; `register` of one pair of random images"
                  " of the task's shape with the recipe's configuration):", "",
                  "| recipe | task | image grid | instance optimisation | CPU predict s (instance optimisation s)"
                  " | CPU predict peak GB, estimated / measured |", "|---|---|---|---|---|---|"]
        for r in free:
            pred = r.get("predict")
            peak, why = _measured(pred, "peak_gb")
            predicted = _pair(pred["estimate_gb"] if pred and "estimate_gb" in pred else r["predict_estimate_gb"], peak,
                              why or r.get("not_measured", {}).get("predict"))
            timed = "not measured" if not pred else ("error" if "error" in pred else
                    f"{_g(pred['runtimes']['total_s'])} ({_g(pred['runtimes']['instance_opt_s'])})")
            lines.append(f"| {r['config']} | {r['task']} | {'x'.join(map(str, r['shape']))} | {r['instance_opt']} | {timed} | {predicted} |")
    if report.get("notes"):
        lines += ["", *[f"- {n}" for n in report["notes"]]]
    return "\n".join(lines) + "\n"


def fits(work_gb: float) -> bool:
    """Whether a measurement needing ``work_gb`` beyond Python and torch fits in 80 % of what is free now."""
    from pipeline.model.memory_check import WARN_FRACTION, system_free

    return work_gb <= WARN_FRACTION * system_free() / GB


def instance_opt(cfg: Any) -> str:
    p = cfg.predict
    return f"{p.instance_opt_steps} steps x {p.instance_opt_levels} level(s)" if p.instance_opt_steps else "none"


def measure_predict_row(row: dict[str, Any], cfg: Any, config_file: str, shape: tuple[int, int, int], args: argparse.Namespace) -> None:
    """``row["predict"]``: ``register`` measured when its estimate fits this machine, else why not."""
    if not fits(row["predict_estimate_gb"] - BASE_GB):
        row["not_measured"]["predict"] = "not measured (memory)"
    else:
        print(f"measuring register on {config_file} at {shape} ...", flush=True)
        row["predict"] = measure_predict(cfg, config_file, shape, args.threads, args.timeout)


def run_network_free(cfg: Any, config_file: str, task: str, shape: tuple[int, int, int], args: argparse.Namespace) -> dict[str, Any]:
    """A network-free recipe's row: the prediction's estimate, and ``register`` measured when it fits."""
    row: dict[str, Any] = {"config": config_file, "task": task, "shape": shape, "uses_network": False,
                           "instance_opt": instance_opt(cfg), "predict_estimate_gb": BASE_GB + predict_estimate(cfg, shape),
                           "not_measured": {}}
    if shape[0] * shape[1] * shape[2] > args.measure_max_voxels:
        row["not_measured"]["predict"] = "not measured (size)"
    else:
        measure_predict_row(row, cfg, config_file, shape, args)
    return row


def run_recipe(config_file: str, task: str, shape: tuple[int, int, int], classes: int, args: argparse.Namespace) -> dict[str, Any]:
    cfg = _load(config_file)
    if not cfg.predict.uses_network:
        return run_network_free(cfg, config_file, task, shape, args)
    grid, padded = network_grid(cfg, shape)
    counted = count(cfg, grid, classes)
    row: dict[str, Any] = {"config": config_file, "task": task, "shape": shape, "grid": grid, "padded": padded,
                           "num_classes": classes, "start_channel": cfg.model.start_channel, "uses_network": True,
                           "instance_opt": instance_opt(cfg),
                           "steps": list(cfg.train.steps_per_level), "counted": counted,
                           "estimated": estimate(cfg, grid, classes, counted, BASE_GB),
                           "predict_estimate_gb": BASE_GB + predict_estimate(cfg, shape)}
    voxels = padded[0] * padded[1] * padded[2]
    if voxels > args.measure_max_voxels:
        row["not_measured"] = {"train": "not measured (size)", "predict": "not measured (size)"}
        return row
    row["not_measured"] = {}
    if not fits(row["estimated"]["train_cpu_gb"] - BASE_GB):
        row["not_measured"]["train"] = "not measured (memory)"
    else:
        spec = {"config": config_file, "grid": grid, "num_classes": classes, "threads": args.threads, "warmup": 1,
                "repeats": args.repeats}
        print(f"measuring a training step of {config_file} at {grid} ...", flush=True)
        row["measured"] = run_child(Path(__file__), spec, args.threads, args.timeout)
        if "base_rss_mb" in row["measured"]:  # the estimate on the child's own Python and torch
            row["estimated"].update(estimate(cfg, grid, classes, counted, row["measured"]["base_rss_mb"] / 1024))
    measure_predict_row(row, cfg, config_file, shape, args)
    return row


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", action="append", default=None, help="recipes whose task or file name contains this (repeatable)")
    parser.add_argument("--measure-max-voxels", type=float, default=8e6, help="measure on the CPU up to this padded grid size")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=1, help="timed training steps (after one untimed warm-up step)")
    parser.add_argument("--timeout", type=float, default=1800.0, help="seconds per child")
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "recipes_cpu", help="output stem")
    parser.add_argument("--note", action="append", default=[])
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child is not None:
        print(json.dumps(child(json.loads(args.child))))
        return 0
    report: dict[str, Any] = {"environment": environment("cpu", args.threads), "recipes": [], "notes": args.note}
    for config_file, task, shape, classes in RECIPES:
        if args.only and not any(o in task or o in config_file for o in args.only):
            continue
        row = run_recipe(config_file, task, shape, classes, args)
        print(json.dumps(row), flush=True)
        report["recipes"].append(row)
    report["environment"]["load_average_after"] = list(os.getloadavg())
    write_report(report, args.out, markdown)
    print(markdown(report))
    failed = [r for r in report["recipes"] for k in ("measured", "predict") if "error" in (r.get(k) or {})]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
