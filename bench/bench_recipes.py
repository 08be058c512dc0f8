"""What each recipe (``configs/l2r_*.json``) costs: counted, measured on this CPU, estimated for a GPU.

Usage (from the repository root)::

    python bench/bench_recipes.py                      # -> bench/results/recipes_cpu.{json,md}
    python bench/bench_recipes.py --only NLST --measure-max-voxels 0   # counts and estimates only

For every recipe, on its network grid (the task's image shape, halved when the recipe says
``half_resolution``, padded to a multiple of 2^levels inside the network):

* **counted** (exact, on torch's ``meta`` device, no memory used): forward FLOPs, FLOPs of one
  level-3 training step as ``pipeline.training.train`` runs it (forward, the configured loss:
  NCC pyramid, smoothness, Dice on one-hot labels with the task's number of classes, mask;
  backward), and the bytes of the tensors autograd saves for the backward pass (activations);
* **measured** (grids up to ``--measure-max-voxels``): one such training step on this CPU in a
  child process (bench_lapirn's timing and peak-RSS conventions), random images and labels;
* **estimated**: peak training memory = saved activations + one-hot labels + 1.1 GB (the gap
  between the counted activations and the measured peak RSS of the measured recipes, see the
  report), and GPU training time of the recipe's whole schedule (``train.steps_per_level``) at
  two assumed effective throughputs. These are estimates, not measurements.

Recipes that register at prediction time (instance optimisation, or no network at all:
``predict.network`` "none") also get one **prediction** measured on this CPU at the task's image
grid (up to ``--predict-max-voxels``), in a child: the network's forward pass on its grid (random
weights: the cost is the trained one's) and the instance optimisation on the image grid, on a
synthetic pair (smooth random texture, the moving one shifted by 1.5 voxels); wall and CPU
seconds, peak RSS. A network-free recipe has no training row.
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
from unittest import mock

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

from bench_lapirn import _rss_mb, _timed, environment, run_child  # noqa: E402

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
MEMORY_OFFSET_GB = 1.1  # peak RSS minus counted activations of the measured recipes (see the report)


def _load(config_file: str) -> Any:
    from pipeline.config import load_config

    return load_config(REPO / "configs" / config_file)


def network_grid(cfg: Any, shape: tuple[int, int, int]) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """The recipe's network grid and the grid padded to 2^levels inside the network."""
    from pipeline.data.preprocess import network_shape

    grid = network_shape(shape, cfg.preprocess)
    m = 2**cfg.model.levels
    return grid, tuple(-(-n // m) * m for n in grid)


def training_step(cfg: Any, grid: tuple[int, ...], num_classes: int, level: int, device: str) -> Any:
    """``(model, step)``: one training step at ``level`` as ``pipeline.training.train`` runs it
    (no augmentation), on random inputs on ``device`` (``meta``: shapes only)."""
    import torch

    from pipeline.model.field import full_resolution_field
    from pipeline.model.lapirn import LapIRN, LapIRNConfig
    from pipeline.model.losses import level_loss

    torch.manual_seed(0)
    m = cfg.model
    model = LapIRN(LapIRNConfig(levels=m.levels, start_channel=m.start_channel, diffeomorphic=m.diffeomorphic,
                                range_flow=m.range_flow, ss_steps=m.ss_steps, align_corners=m.align_corners,
                                warp_padding=m.warp_padding)).to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=cfg.train.lr)

    def rand(*shape: int) -> torch.Tensor:
        return torch.rand(*shape, device=device) if device != "meta" else torch.empty(*shape, device=device)

    fixed, moving = rand(1, 1, *grid), rand(1, 1, *grid)
    dice = cfg.loss.dice > 0 and num_classes > 1
    onehots = (rand(1, num_classes, *grid), rand(1, num_classes, *grid)) if dice else None

    def step() -> None:
        out = model(moving, fixed, level=level)
        lv = out.final
        extra: dict[str, Any] = {}
        if cfg.loss.use_mask:
            extra["mask"] = model.pyramid(torch.ones_like(fixed))[level - 1]
        if onehots is not None:
            extra.update(fixed_onehot=onehots[0], moving_onehot=onehots[1], dice_field=full_resolution_field(model, out).float())
        parts = level_loss(cfg.loss, level, m.levels, lv.warped.float(), lv.fixed.float(), lv.field.float(), **extra)
        optimizer.zero_grad(set_to_none=True)
        parts["total"].backward()
        if device != "meta":
            optimizer.step()

    return model, step, (2 * num_classes * fixed.numel() * 4 if dice else 0)


def count(cfg: Any, grid: tuple[int, ...], num_classes: int) -> dict[str, Any]:
    """Exact FLOPs (forward; training step per level) and saved-activation bytes (level 3), on ``meta``."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from pipeline.model import losses

    def soft_dice(pred: torch.Tensor, target: torch.Tensor, present: Any = None, eps: float = 1e-5) -> torch.Tensor:
        """``losses.soft_dice`` without its data-dependent selection of present labels (meta
        tensors hold no values); the same tensors are made and saved."""
        dims = (2, 3, 4)
        return 1.0 - (2.0 * (pred * target).sum(dims) / (pred.sum(dims) + target.sum(dims) + eps))[:, 1:].mean()

    out: dict[str, Any] = {"train_step_flops": []}
    for level in range(1, cfg.model.levels + 1):
        model, step, onehot_bytes = training_step(cfg, grid, num_classes, level, "meta")
        saved: dict[int, int] = {}

        def pack(t: torch.Tensor, saved: dict[int, int] = saved) -> torch.Tensor:
            saved[id(t)] = t.numel() * t.element_size()
            return t

        with (mock.patch.object(losses, "soft_dice", soft_dice), FlopCounterMode(display=False) as flops,
              torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t)):
            step()
        out["train_step_flops"].append(flops.get_total_flops())
        if level == cfg.model.levels:
            out["saved_bytes"], out["onehot_bytes"] = sum(saved.values()), onehot_bytes
            x = torch.empty(1, 1, *grid, device="meta")
            with FlopCounterMode(display=False) as fwd, torch.no_grad():
                model(x, x)
            out["forward_flops"] = fwd.get_total_flops()
    return out


def child(spec: dict[str, Any]) -> dict[str, Any]:
    """Measure one recipe's level-3 training step on the CPU (in this child process)."""
    import torch

    torch.set_num_threads(spec["threads"])
    cfg = _load(spec["config"])
    base = _rss_mb()
    model, step, _ = training_step(cfg, tuple(spec["grid"]), spec["num_classes"], cfg.model.levels, "cpu")
    model.train()
    wall, cpu, first = _timed(step, spec["warmup"], spec["repeats"], "cpu")
    return {"base_rss_mb": base, "train_step_s": wall, "train_step_cpu_s": cpu, "first_s": first,
            "train_step_median_s": statistics.median(wall), "train_step_cpu_median_s": statistics.median(cpu),
            "train_peak_rss_mb": _rss_mb()}


def predict_child(spec: dict[str, Any]) -> dict[str, Any]:
    """Measure one prediction of a recipe on the CPU (in this child process): network, then
    instance optimisation on the image grid (module docstring)."""
    import numpy as np
    import torch
    from scipy import ndimage

    from learn2reg.contract import field_on_grid
    from pipeline.data.preprocess import on_grid, prediction_shape
    from pipeline.model.contract import field_from_numpy, field_to_numpy
    from pipeline.model.field import predict_field
    from pipeline.model.instance_opt import InstanceOptSettings, refine_field
    from pipeline.model.lapirn import LapIRN, LapIRNConfig

    torch.set_num_threads(spec["threads"])
    cfg, shape = _load(spec["config"]), tuple(spec["shape"])
    texture = ndimage.gaussian_filter(np.random.default_rng(0).random(shape, dtype=np.float32), 2.0)
    fixed = ((texture - texture.min()) / (texture.max() - texture.min())).astype(np.float32)
    moving = ndimage.shift(fixed, 1.5, order=1, mode="nearest")
    base = _rss_mb()
    out: dict[str, Any] = {"base_rss_mb": base, "network_s": 0.0, "network_cpu_s": 0.0}
    u = np.zeros((*shape, 3), np.float32)
    if cfg.predict.uses_network:
        m = cfg.model
        model = LapIRN(LapIRNConfig(levels=m.levels, start_channel=m.start_channel, diffeomorphic=m.diffeomorphic,
                                    align_corners=m.align_corners, warp_padding=m.warp_padding)).eval()
        grid = prediction_shape(shape, (1.0, 1.0, 1.0), cfg)
        f, mv = (torch.from_numpy(on_grid(x, grid))[None, None] for x in (fixed, moving))
        wall, cpu = time.perf_counter(), time.process_time()
        u = field_on_grid(field_to_numpy(predict_field(model, mv, f, torch.device("cpu"), cfg.predict.amp)), shape, shape)
        out.update(network_s=time.perf_counter() - wall, network_cpu_s=time.process_time() - cpu)
    f, mv = (torch.from_numpy(x)[None, None] for x in (fixed, moving))
    wall, cpu = time.perf_counter(), time.process_time()
    refine_field(field_from_numpy(u, torch.device("cpu")), mv, f, InstanceOptSettings.from_predict(cfg.predict))
    out.update(instance_opt_s=time.perf_counter() - wall, instance_opt_cpu_s=time.process_time() - cpu, peak_rss_mb=_rss_mb())
    return out


def spawn(spec: dict[str, Any], timeout_s: float) -> dict[str, Any]:
    return run_child(Path(__file__), spec, spec["threads"], timeout_s)


def estimate(cfg: Any, counted: dict[str, Any]) -> dict[str, Any]:
    """Schedule FLOPs, GPU hours at the assumed throughputs, estimated peak training memory."""
    total = sum(steps * flops for steps, flops in zip(cfg.train.steps_per_level, counted["train_step_flops"], strict=True))
    return {
        "schedule_flops": total,
        "gpu_hours": {name: total / rate / 3600 for name, rate in THROUGHPUTS.items()},
        "peak_memory_gb": (counted["saved_bytes"] + counted["onehot_bytes"]) / 2**30 + MEMORY_OFFSET_GB,
    }


def _g(x: float | None, digits: int = 1) -> str:
    return "-" if x is None else f"{x:.{digits}f}"


def _training_row(r: dict[str, Any]) -> str:
    c, e, meas = r["counted"], r["estimated"], r.get("measured") or {}
    grid = "x".join(map(str, r["grid"])) + ("" if r["grid"] == r["padded"] else f" ({'x'.join(map(str, r['padded']))})")
    measured = "not measured" if not meas else ("error" if "error" in meas else
               f"{_g(meas['train_step_median_s'])} ({_g(meas['train_step_cpu_median_s'])})")
    rss = _g(meas["train_peak_rss_mb"] / 1024, 2) if meas and "error" not in meas else "-"
    hours = " / ".join(_g(h, 1 if h < 10 else 0) for h in e["gpu_hours"].values())
    return (f"| {r['config']} | {r['task']} | {grid} | {r['start_channel']} | {c['forward_flops'] / 1e12:.2f}"
            f" | {c['train_step_flops'][-1] / 1e12:.2f} | {(c['saved_bytes'] + c['onehot_bytes']) / 2**30:.2f} | {measured}"
            f" | {rss} | {e['peak_memory_gb']:.1f} | {'/'.join(str(s) for s in r['steps'])} | {hours} |")


def _predict_row(r: dict[str, Any]) -> str:
    p = r["predict"]
    if "error" in p:
        return f"| {r['config']} | {r['task']} | {'x'.join(map(str, r['shape']))} | error: {p['error'][:80]} | | | | |"
    network = "none" if not r.get("uses_network", True) else f"{_g(p['network_s'])} ({_g(p['network_cpu_s'])})"
    total = p["network_s"] + p["instance_opt_s"]
    load = _g(p["load_average"][0]) if "load_average" in p else "-"
    return (f"| {r['config']} | {r['task']} | {'x'.join(map(str, r['shape']))} | {r['instance_opt']} | {network}"
            f" | {_g(p['instance_opt_s'])} ({_g(p['instance_opt_cpu_s'])}) | {_g(total)} | {_g(p['peak_rss_mb'] / 1024, 2)} | {load} |")


def markdown(report: dict[str, Any]) -> str:
    env = report["environment"]
    lines = [
        "# Recipes: cost per configuration (configs/l2r_*.json)",
        "",
        f"- CPU: {env['cpu']} ({env['cpu_count']} cores visible), torch threads {env['threads']}, torch {env['torch']},"
        f" Python {env['python']}; load average before / after: {env['load_average_before']} / {env.get('load_average_after')}",
        "- **counted** (exact, torch meta device): FLOPs (multiply-add = 2) of the forward pass and of one level-3 training"
        " step as the trainer runs it (loss as configured, backward), activations autograd saves for the backward pass",
        "- **measured**: that training step on this CPU, fp32, median wall s (CPU s in brackets), peak RSS of the child",
        f"- **estimated**: peak training memory = activations + one-hot labels + {MEMORY_OFFSET_GB} GB; GPU hours for the"
        " whole schedule at an assumed effective throughput (2 TFLOP/s: at least what the seed paper's RTX 2080 Ti"
        " inference implies; 20 TFLOP/s: an assumption for A100/H100-class GPUs with bf16). Estimates, not measurements.",
        *([f"- Rows measured later (`--merge`): {env['merged']['cpu']}, torch threads {env['merged']['threads']}; load average"
           f" before / after: {env['merged']['load_average_before']} / {env['merged'].get('load_average_after')}"] if "merged" in env else []),
        "",
        "| recipe | task | network grid (padded) | sc | forward TFLOP | train step TFLOP | activations GB (counted)"
        " | CPU train step s (CPU s) | CPU peak RSS GB (measured) | peak memory GB (estimated) | schedule steps"
        " | GPU h @ 2 / 20 TFLOP/s (estimated) |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
        *[_training_row(r) for r in report["recipes"] if "counted" in r],
    ]
    predicted = [r for r in report["recipes"] if "predict" in r]
    if predicted:
        lines += [
            "",
            "Prediction of one pair on this CPU (**measured**, fp32, a synthetic pair at the task's image grid): the network's"
            " forward pass (random weights, same cost) and the instance optimisation (MIND-SSC, on the image grid), wall s"
            " (CPU s in brackets), peak RSS of the child; reading, preprocessing and writing the files come on top.",
            "",
            "| recipe | task | image grid | instance optimisation | network s (CPU s) | instance optimisation s (CPU s)"
            " | total s | peak RSS GB | load average (1 min) |",
            "|---|---|---|---|---|---|---|---|---|",
            *[_predict_row(r) for r in predicted],
        ]
    if report.get("notes"):
        lines += ["", *[f"- {n}" for n in report["notes"]]]
    return "\n".join(lines) + "\n"


def measure_recipe(config_file: str, task: str, shape: tuple[int, int, int], classes: int, args: argparse.Namespace) -> dict[str, Any]:
    """One recipe's row: counted, estimated and (where it fits) measured training; its prediction."""
    cfg = _load(config_file)
    row: dict[str, Any] = {"config": config_file, "task": task, "shape": shape, "num_classes": classes,
                           "start_channel": cfg.model.start_channel, "uses_network": cfg.predict.uses_network}
    if cfg.predict.uses_network:
        grid, padded = network_grid(cfg, shape)
        counted = count(cfg, grid, classes)
        row.update(grid=grid, padded=padded, steps=list(cfg.train.steps_per_level), counted=counted, estimated=estimate(cfg, counted))
        if padded[0] * padded[1] * padded[2] <= args.measure_max_voxels:
            spec = {"config": config_file, "grid": grid, "num_classes": classes, "threads": args.threads, "warmup": 1, "repeats": args.repeats}
            print(f"measuring {config_file} at {grid} ...", flush=True)
            started = time.perf_counter()
            row["measured"] = spawn(spec, args.timeout)
            row["measured"].update(wall_s=time.perf_counter() - started, load_average=list(os.getloadavg()))
    p = cfg.predict
    if p.instance_opt_steps > 0 or not p.uses_network:
        row["instance_opt"] = (f"{p.instance_opt_steps} steps x {p.instance_opt_levels} level(s)" if p.instance_opt_steps else "none")
        if shape[0] * shape[1] * shape[2] <= args.predict_max_voxels:
            print(f"measuring the prediction of {config_file} at {shape} ...", flush=True)
            load = list(os.getloadavg())
            row["predict"] = spawn({"kind": "predict", "config": config_file, "shape": shape, "threads": args.threads}, args.timeout)
            row["predict"]["load_average"] = load
    return row


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", default=None, help="recipes whose task or file name contains this")
    parser.add_argument("--measure-max-voxels", type=float, default=4.5e6, help="measure on the CPU up to this padded grid size")
    parser.add_argument("--predict-max-voxels", type=float, default=1.7e7, help="measure a prediction up to this image grid size (0: none)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=1, help="timed training steps (after one untimed warm-up step)")
    parser.add_argument("--timeout", type=float, default=900.0, help="seconds per child")
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "recipes_cpu", help="output stem")
    parser.add_argument("--merge", action="store_true", help="keep the other recipes' rows of the existing --out JSON")
    parser.add_argument("--note", action="append", default=[])
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child is not None:
        spec = json.loads(args.child)
        print(json.dumps(predict_child(spec) if spec.get("kind") == "predict" else child(spec)))
        return 0
    report: dict[str, Any] = {"environment": environment("cpu", args.threads), "recipes": [], "notes": args.note}
    kept: dict[str, Any] = {}
    if args.merge and args.out.with_suffix(".json").is_file():
        earlier = json.loads(args.out.with_suffix(".json").read_text())
        kept = {r["config"]: r for r in earlier["recipes"]}
        report["environment"] = {**earlier["environment"], "merged": report["environment"]}
        report["notes"] = earlier.get("notes", []) + args.note
    for config_file, task, shape, classes in RECIPES:
        if args.only and args.only not in task and args.only not in config_file:
            if config_file in kept:
                report["recipes"].append(kept[config_file])
            continue
        row = measure_recipe(config_file, task, shape, classes, args)
        print(json.dumps(row), flush=True)
        report["recipes"].append(row)
    target = report["environment"].get("merged", report["environment"])
    target["load_average_after"] = list(os.getloadavg())
    from learn2reg.io import atomic_open, write_json

    write_json(args.out.with_suffix(".json"), report)
    with atomic_open(args.out.with_suffix(".md")) as fh:
        fh.write(markdown(report))
    print(markdown(report))
    failed = [r for r in report["recipes"] if "error" in (r.get("measured") or {}) or "error" in (r.get("predict") or {})]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
