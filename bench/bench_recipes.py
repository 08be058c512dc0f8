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
        "",
        "| recipe | task | network grid (padded) | sc | forward TFLOP | train step TFLOP | activations GB (counted)"
        " | CPU train step s (CPU s) | CPU peak RSS GB (measured) | peak memory GB (estimated) | schedule steps"
        " | GPU h @ 2 / 20 TFLOP/s (estimated) |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in report["recipes"]:
        c, e, meas = r["counted"], r["estimated"], r.get("measured") or {}
        grid = "x".join(map(str, r["grid"])) + ("" if r["grid"] == r["padded"] else f" ({'x'.join(map(str, r['padded']))})")
        measured = "not measured" if not meas else ("error" if "error" in meas else
                   f"{_g(meas['train_step_median_s'])} ({_g(meas['train_step_cpu_median_s'])})")
        rss = _g(meas["train_peak_rss_mb"] / 1024, 2) if meas and "error" not in meas else "-"
        hours = " / ".join(_g(h, 1 if h < 10 else 0) for h in e["gpu_hours"].values())
        lines.append(
            f"| {r['config']} | {r['task']} | {grid} | {r['start_channel']} | {c['forward_flops'] / 1e12:.2f}"
            f" | {c['train_step_flops'][-1] / 1e12:.2f} | {(c['saved_bytes'] + c['onehot_bytes']) / 2**30:.2f} | {measured}"
            f" | {rss} | {e['peak_memory_gb']:.1f} | {'/'.join(str(s) for s in r['steps'])} | {hours} |"
        )
    if report.get("notes"):
        lines += ["", *[f"- {n}" for n in report["notes"]]]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", default=None, help="recipes whose task or file name contains this")
    parser.add_argument("--measure-max-voxels", type=float, default=4.5e6, help="measure on the CPU up to this padded grid size")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=1, help="timed training steps (after one untimed warm-up step)")
    parser.add_argument("--timeout", type=float, default=900.0, help="seconds per child")
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "recipes_cpu", help="output stem")
    parser.add_argument("--note", action="append", default=[])
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child is not None:
        print(json.dumps(child(json.loads(args.child))))
        return 0
    report: dict[str, Any] = {"environment": environment("cpu", args.threads), "recipes": [], "notes": args.note}
    for config_file, task, shape, classes in RECIPES:
        if args.only and args.only not in task and args.only not in config_file:
            continue
        cfg = _load(config_file)
        grid, padded = network_grid(cfg, shape)
        counted = count(cfg, grid, classes)
        row = {"config": config_file, "task": task, "shape": shape, "grid": grid, "padded": padded, "num_classes": classes,
               "start_channel": cfg.model.start_channel, "steps": list(cfg.train.steps_per_level), "counted": counted,
               "estimated": estimate(cfg, counted)}
        voxels = padded[0] * padded[1] * padded[2]
        if voxels <= args.measure_max_voxels:
            spec = {"config": config_file, "grid": grid, "num_classes": classes, "threads": args.threads, "warmup": 1, "repeats": args.repeats}
            print(f"measuring {config_file} at {grid} ...", flush=True)
            started = time.perf_counter()
            row["measured"] = spawn(spec, args.timeout)
            row["measured"]["wall_s"] = time.perf_counter() - started
        print(json.dumps(row), flush=True)
        report["recipes"].append(row)
    report["environment"]["load_average_after"] = list(os.getloadavg())
    from learn2reg.io import atomic_open, write_json

    write_json(args.out.with_suffix(".json"), report)
    with atomic_open(args.out.with_suffix(".md")) as fh:
        fh.write(markdown(report))
    print(markdown(report))
    return 1 if any("error" in (r.get("measured") or {}) for r in report["recipes"]) else 0


if __name__ == "__main__":
    sys.exit(main())
