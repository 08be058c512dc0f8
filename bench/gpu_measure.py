"""The measuring parts of ``bench/gpu_check.py`` (run through ``bench/gpu_parts.py``):

* ``lapirn``: LapIRN forward (inference) and one level-3 training step as
  ``pipeline.training.train`` runs it (autocast around the forward only, the recipe's loss with
  random one-hot labels where it has Dice, backward, Adam), median wall seconds (GPU-synchronised)
  and peak GPU memory (``max_memory_allocated``), fp32 and bf16 autocast, at the network grids of
  ``configs/l2r_abdomenctct.json`` (AbdomenCTCT / 2020 task 3: 192x160x256 at half resolution,
  96x80x128, start_channel 28) and of LUMIR (160x224x192 brain MR at full resolution,
  ``configs/l2r_oasis.json``'s network, start_channel 7; no labels); random weights and images
  (time and memory do not depend on them). Then the bf16 field (``predict_field``, the function
  prediction uses) against the fp32 one: max |difference| within 3 % of max |u| (the tolerance of
  tests/pipeline/model/test_precision.py).
* ``predict``: ``python -m pipeline predict --device cuda`` on the demo task T4 with the LapIRN
  authors' weights; per-pair runtimes from ``runtimes.json`` (the challenge's), then ``evaluate``.
* ``instance_opt``: the same with ``--instance-opt-steps 50``, and ``refine_field`` alone on the
  task-3 image grid (192x160x256, 50 steps; fold repair on the CPU included, as in prediction).

Times are medians over the timed repeats after warm-up calls (``bench_lapirn._timed``).
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import gc
import json
import shutil
import statistics
from collections.abc import Iterator
from typing import Any

from bench_lapirn import _rss_mb, _timed
from gpu_parts import REPO, Recorder, Status, authors_run, cli, demo_task, runtimes

# (name, recipe, network grid, label classes with background: random one-hot labels for Dice; 1: no labels)
LAPIRN_CASES = (
    ("AbdomenCTCT (2020 task 3)", "l2r_abdomenctct.json", (96, 80, 128), 14),
    ("LUMIR", "l2r_oasis.json", (160, 224, 192), 1),
)
QUICK_GRID = (16, 16, 24)
FIELD_TOLERANCE = 0.03  # max |u_bf16 - u_fp32| <= 3 % of max |u_fp32| (tests/pipeline/model/test_precision.py)
IO_GRID, IO_STEPS = (192, 160, 256), 50  # instance optimisation: the task-3 image grid, the demo job's steps
VARIANTS = {"fp32": "none", "bf16": "bf16"}


def _device(args: argparse.Namespace) -> Any:
    import torch

    return torch.device(args.device)


def _reset_peak(device: Any) -> None:
    import torch

    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def _peak(device: Any) -> dict[str, float]:
    """Peak memory since :func:`_reset_peak`: GPU allocated and reserved (MiB), else the process's max RSS."""
    import torch

    if device.type == "cuda":
        return {"peak_gpu_mb": torch.cuda.max_memory_allocated(device) / 2**20,
                "peak_gpu_reserved_mb": torch.cuda.max_memory_reserved(device) / 2**20}
    return {"peak_rss_mb": _rss_mb()}


def _model(cfg: Any, device: Any) -> Any:
    import torch

    from pipeline.model.lapirn import LapIRN, LapIRNConfig

    torch.manual_seed(0)
    return LapIRN(LapIRNConfig(**vars(cfg.model))).to(device)


def _images(grid: tuple[int, ...], device: Any, count: int = 2) -> list[Any]:
    import torch

    gen = torch.Generator().manual_seed(0)
    return [torch.rand(1, 1, *grid, generator=gen).to(device) for _ in range(count)]


def workload(cfg: Any, grid: tuple[int, ...], classes: int, device: Any, amp: str) -> tuple[Any, Any, Any]:
    """``(model, forward, train_step)`` of a recipe on random images (and labels, with Dice)."""
    import torch

    from pipeline.model.field import full_resolution_field
    from pipeline.model.losses import level_loss, one_hot
    from pipeline.model.precision import autocast

    model, levels = _model(cfg, device), cfg.model.levels
    optimizer = torch.optim.Adam(model.parameters(), lr=cfg.train.lr)
    moving, fixed = _images(grid, device)
    loss_cfg = cfg.loss if classes > 1 else dataclasses.replace(cfg.loss, dice=0.0)  # no labels: no Dice term
    extra: dict[str, Any] = {}
    if loss_cfg.dice > 0:
        gen = torch.Generator().manual_seed(1)
        labels = [torch.randint(0, classes, (1, 1, *grid), generator=gen).to(device) for _ in range(2)]
        extra = {"fixed_onehot": one_hot(labels[0], classes), "moving_onehot": one_hot(labels[1], classes)}

    def forward() -> None:
        with torch.inference_mode(), autocast(device, amp):
            model(moving, fixed)

    def train_step() -> None:
        with autocast(device, amp):  # convolutions only; fields and losses in float32, as the trainer
            out = model(moving, fixed, level=levels)
        lv = out.final
        dice = {"dice_field": full_resolution_field(model, out)} if extra else {}
        parts = level_loss(loss_cfg, levels, levels, lv.warped, lv.fixed, lv.field, reg_field=lv.velocity_field, **extra, **dice)
        optimizer.zero_grad(set_to_none=True)
        parts["total"].backward()
        optimizer.step()

    return model, forward, train_step


def measure(cfg: Any, grid: tuple[int, ...], classes: int, device: Any, amp: str, quick: bool) -> dict[str, Any]:
    """Forward and training-step times (s) and peak memory of one variant."""
    _reset_peak(device)
    model, forward, train_step = workload(cfg, grid, classes, device, amp)
    warmup, repeats = (0, 1) if quick else (2, 5)
    out: dict[str, Any] = {}
    for phase, fn, set_mode in (("forward", forward, model.eval), ("train_step", train_step, model.train)):
        set_mode()
        _reset_peak(device)
        wall, _, first = _timed(fn, warmup, repeats, str(device))
        out[phase] = {"median_s": statistics.median(wall), "times_s": wall, "first_s": first, **_peak(device)}
    return out


def compare_fields(cfg: Any, grid: tuple[int, ...], device: Any) -> dict[str, Any]:
    """The bf16 field against the fp32 one, both as ``predict_field`` computes them (on the CPU,
    where prediction never uses autocast, the forward under CPU bf16 autocast as the precision test does)."""
    import torch

    from pipeline.model.field import full_resolution_field, predict_field

    model = _model(cfg, device).eval()
    moving, fixed = _images(grid, device)
    with torch.inference_mode():
        ref = predict_field(model, moving, fixed, device, "none")
        if device.type == "cuda":
            low = predict_field(model, moving, fixed, device, "bf16")
        else:  # predict_field switches autocast off on the CPU
            with torch.autocast("cpu", dtype=torch.bfloat16):
                low = full_resolution_field(model, model(moving, fixed))
    size, err = ref.abs().max().item(), (low - ref).abs().max().item()
    return {"max_abs_u_fp32": size, "max_abs_diff": err, "relative": err / size if size else None,
            "tolerance": FIELD_TOLERANCE, "dtype": str(low.dtype).replace("torch.", ""), "ok": err <= FIELD_TOLERANCE * size}


def lapirn_case(cfg: Any, grid: tuple[int, ...], classes: int, device: Any, quick: bool) -> Iterator[tuple[str, dict[str, Any]]]:
    """One case's measurements, one at a time: ``(variant, times and memory)`` for fp32 and bf16,
    then ``("field_check", ...)``; a step that runs out of GPU memory gives ``{"error": ...}``."""
    import torch

    steps = [(v, functools.partial(measure, cfg, grid, classes, device, amp, quick)) for v, amp in VARIANTS.items()]
    steps.append(("field_check", functools.partial(compare_fields, cfg, grid, device)))
    for key, step in steps:
        try:
            value = step()
        except torch.cuda.OutOfMemoryError as exc:
            value = {"error": f"out of memory: {str(exc)[:300]}"}
        _reset_peak(device)
        yield key, value


def lapirn(args: argparse.Namespace, rec: Recorder) -> Status:
    import torch

    from pipeline.config import load_config

    device = _device(args)
    rec.put(backend={"cudnn_allow_tf32": torch.backends.cudnn.allow_tf32, "matmul_allow_tf32": torch.backends.cuda.matmul.allow_tf32,
                     "cudnn_benchmark": torch.backends.cudnn.benchmark, "cpu_threads": torch.get_num_threads()})
    cases, problems = [], []
    for name, recipe, full_grid, classes in LAPIRN_CASES:
        cfg = load_config(REPO / "configs" / recipe)
        grid = QUICK_GRID if args.quick else full_grid
        case: dict[str, Any] = {"case": name, "recipe": recipe, "grid": list(grid), "start_channel": cfg.model.start_channel,
                                "label_classes": classes, "variants": {}}
        cases.append(case)
        for key, value in lapirn_case(cfg, grid, classes, device, args.quick):
            (case if key == "field_check" else case["variants"])[key] = value
            if "error" in value:
                problems.append(f"{name} {key}: {value['error']}")
            elif key == "field_check" and not value["ok"]:
                problems.append(f"{name}: bf16 field differs from fp32 by {value['relative']:.3g} of max |u| (> {FIELD_TOLERANCE})")
            rec.put(cases=cases)
    return ("failed", "; ".join(problems)) if problems else ("ok", "")


def predict(args: argparse.Namespace, rec: Recorder) -> Status:
    """``pipeline predict`` end to end on the demo task, then ``evaluate`` (official metrics)."""
    task, run = demo_task(args.work), authors_run(args.work)
    out = args.work / "predict"
    shutil.rmtree(out, ignore_errors=True)
    code = cli(["predict", "--data", task, "--run", run, "--out", out, "--device", args.device])
    if code != 0:
        return "failed", f"predict exited {code}"
    rec.put(task=task.name, run="import-weights weights/LapIRN_disp_fea7.pth", runtimes=runtimes(out))
    scores = args.work / "predict_scores.json"
    if cli(["evaluate", "-i", out, "-d", task, "-o", scores]) != 0:
        return "failed", "evaluate of the prediction failed"
    aggregates = json.loads(scores.read_text())["aggregates"]
    rec.put(evaluation={k: aggregates[k]["mean"] for k in ("DSC", "HD95", "LogJacDetStd", "runtime") if k in aggregates})
    return "ok", ""


def _smooth_images(grid: tuple[int, ...], device: Any) -> list[Any]:
    import torch.nn.functional as F

    images = []
    for x in _images(grid, device):
        for _ in range(2):
            x = F.avg_pool3d(x, 5, stride=1, padding=2, count_include_pad=False)
        images.append((x - x.min()) / (x.max() - x.min()))
    return images


def instance_opt(args: argparse.Namespace, rec: Recorder) -> Status:
    """Instance optimisation: in ``predict`` on the demo task, and alone on the task-3 image grid."""
    import torch

    from pipeline.model.instance_opt import InstanceOptSettings, refine_field

    steps = 3 if args.quick else IO_STEPS
    task, run = demo_task(args.work), authors_run(args.work)
    out = args.work / "predict_io"
    shutil.rmtree(out, ignore_errors=True)
    code = cli(["predict", "--data", task, "--run", run, "--out", out, "--device", args.device, "--instance-opt-steps", steps])
    if code != 0:
        return "failed", f"predict --instance-opt-steps {steps} exited {code}"
    rec.put(demo={"task": task.name, "steps": steps, **runtimes(out)})
    device, grid = _device(args), QUICK_GRID if args.quick else IO_GRID
    moving, fixed = _smooth_images(grid, device)
    field = torch.zeros(1, 3, *grid, device=device)
    settings = InstanceOptSettings(steps=steps)
    _reset_peak(device)
    wall, _, first = _timed(lambda: refine_field(field, moving, fixed, settings), 0 if args.quick else 1, 1 if args.quick else 3, str(device))
    rec.put(direct={"grid": list(grid), "settings": dataclasses.asdict(settings), "median_s": statistics.median(wall), "times_s": wall,
                    "first_s": first, **_peak(device)})
    return "ok", ""
