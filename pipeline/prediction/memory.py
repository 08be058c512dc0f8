"""The memory check of ``predict`` and ``register``: before any output exists, the peak memory of
the largest pair (``pipeline.model.memory.prediction_phases`` on the grids the pair will use:
the images' headers, the network grid of ``prediction_shape``, the output grid) against what
the device has free (``pipeline.model.memory_check``)."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from pathlib import Path

import torch

from learn2reg.io import Geometry, read_nifti_header
from learn2reg.submission import submission_shape
from learn2reg.task import Pair, Task
from pipeline.config import RunConfig
from pipeline.data.preprocess import prediction_shape
from pipeline.model.instance_opt import InstanceOptSettings
from pipeline.model.lapirn import LapIRNConfig
from pipeline.model.memory import Grid, Phase, allowance, peaks, prediction_phases
from pipeline.model.memory_check import MemoryCheck, Need, check, in_use
from pipeline.prediction.outputs import Outputs

GridRule = Callable[[Sequence[int], Sequence[float]], Grid]  # a fixed image's (shape, spacing mm) -> the network's grid


def network_what(cfg: RunConfig, grid: Sequence[int]) -> str:
    """``the network grid 2351x2351x2351 (input scale 50)``: the grid and the option that made it."""
    text = "the network grid " + "x".join(map(str, grid))
    p = cfg.predict
    if p.target_spacing is not None:
        return f"{text} (target spacing {p.target_spacing:g} mm)"
    return f"{text} (input scale {p.input_scale:g})" if p.input_scale != 1 else text


def pair_phases(cfg: RunConfig, fixed: Geometry, moving: Geometry, output: Grid, on_gpu: bool,
                outputs: Sequence[str] = (), grid_of: GridRule | None = None) -> list[Phase]:
    """The phases of one pair (``pipeline.model.memory.prediction_phases``) under ``cfg``; ``grid_of``:
    the network grid for a fixed image's shape and spacing (default: the configuration's,
    ``prediction_shape``; ``predict`` and ``register`` pass the run's, ``pipeline.prediction.scale``)."""
    p = cfg.predict
    model = LapIRNConfig(**vars(cfg.model)) if p.uses_network else None
    grid = (grid_of or (lambda shape, spacing: prediction_shape(shape, spacing, cfg)))(fixed.shape, fixed.spacing)
    io = InstanceOptSettings.from_predict(p) if p.instance_opt_steps > 0 else None
    return prediction_phases(model, fixed.shape, moving.shape, grid, output, network_what=network_what(cfg, grid),
                             amp=p.amp if on_gpu else "none", io=io, affine=p.affine != "none", outputs=outputs,
                             on_gpu=on_gpu)


def hints(stage: str, device: torch.device, top: Phase) -> list[str]:
    """The options that would make a prediction fit, the largest part first (``register`` takes
    the grid from the run's configuration, ``predict`` also from its options)."""
    found = []
    if top.name in ("network", "resample"):
        grid = "--input-scale / --target-spacing" if stage == "predict" else "predict.input_scale / predict.target_spacing"
        found += [f"a smaller {grid}", "a run with fewer channels (model.start_channel)"]
    elif top.name in ("instance_opt", "fold repair"):
        found += ["--instance-opt-steps 0", "a coarser predict.instance_opt_grid"]
    else:
        found.append("fewer --save-warped / --save-jacobian / --report outputs" if top.name == "outputs" else "a machine with more memory")
    if device.type == "cuda":
        found.append("--device cpu")
    elif torch.cuda.is_available():
        found.append("--device cuda")
    return found


def check_prediction(stage: str, cfg: RunConfig, pairs: Sequence[tuple[Path, Path]], device: torch.device,
                     output_grid: Callable[[Grid], Grid] | None = None, outputs: Sequence[str] = (),
                     skip: bool = False, grid_of: GridRule | None = None) -> MemoryCheck:
    """Check the largest of ``pairs`` (fixed, moving image paths) before anything is written:
    ``DataError`` when it cannot fit (unless ``skip``), a warning when it is close. Returns the
    check, whose :meth:`~pipeline.model.memory_check.MemoryCheck.record` goes beside the outputs.
    ``output_grid``: the grid the field is written on for a fixed grid (default: the fixed grid);
    ``grid_of``: the network's grid (:func:`pair_phases`).
    An unreadable header, or a grid the stage refuses, is left to the stage, which names it."""
    started = time.perf_counter()
    on_gpu = device.type == "cuda"
    headers: dict[Path, Geometry] = {}
    for path in {p for pair in pairs for p in pair}:
        try:
            headers[path] = read_nifti_header(path)
        except (OSError, ValueError):
            continue
    seen: dict[tuple, tuple[Phase, Phase | None]] = {}
    for fixed, moving in pairs:
        if fixed not in headers or moving not in headers:
            continue
        f, m = headers[fixed], headers[moving]
        key = (f.shape, f.spacing, m.shape)
        if key not in seen:
            out = output_grid(f.shape) if output_grid is not None else f.shape
            try:
                seen[key] = peaks(pair_phases(cfg, f, m, out, on_gpu, outputs, grid_of), on_gpu)
            except ValueError:  # a grid the stage refuses for this pair (e.g. collapsed by the scale): it names it
                continue
    if not seen:
        return check(stage, [], [], skip, started=started)
    top, host = max(seen.values(), key=lambda v: v[0].device)
    needs = [Need(device, top.device + allowance(top.device, on_gpu, "predict"), in_use(device), top.what)]
    if host is not None:
        worst = max((v[1] for v in seen.values() if v[1] is not None), key=lambda p: p.host)
        cpu = torch.device("cpu")
        needs.append(Need(cpu, worst.host + allowance(worst.host, False, "predict"), in_use(cpu), worst.what))
    return check(stage, needs, hints(stage, device, top), skip, started=started)



def check_task_prediction(task: Task, pairs: Sequence[Pair], cfg: RunConfig, device: torch.device, outputs: Outputs,
                          skip: bool = False, grid_of: GridRule | None = None) -> MemoryCheck:
    """:func:`check_prediction` for a task's ``pairs`` as ``predict`` writes them (the task's
    submission grid, the requested extra outputs); pairs naming unknown cases are left to the stage."""
    images = [(task.cases[p.fixed].image, task.cases[p.moving].image) for p in pairs if p.fixed in task.cases and p.moving in task.cases]
    kinds = [k for k in ("warped", "jacobian", "report") if getattr(outputs, k)]
    return check_prediction("predict", cfg, images, device, lambda shape: submission_shape(task, shape), kinds, skip, grid_of)
