"""Peak memory of the pipeline's work, known before it runs: counted for torch, modelled for numpy.

**Counted** (exact for the tensors, no memory used): the work runs on torch's ``meta`` device
(shapes and dtypes, no data) under :class:`LiveBytes`, a dispatch mode that adds up the storage
of every tensor an operator creates and subtracts it when Python frees the storage. Its
high-water mark is the most tensor memory alive at once: what a device allocator must hold for
the forward pass, the loss, the tensors autograd saves and the backward pass.

* :func:`train_step_bytes`: one training step at the finest level as ``pipeline.training.train``
  runs it: every level trainable (the most memory), the configured loss (NCC pyramid,
  smoothness, the fixed mask, Dice on one-hot labels of ``num_classes`` made as
  ``losses.one_hot`` makes them), backward, plus Adam's two moments; under ``amp`` (GPU) the
  CRN convolutions in 16 bits, as ``pipeline.model.precision.autocast`` runs them.
* :func:`inference_bytes`: ``predict_field`` (no gradients) at a network grid.
* :func:`instance_opt_bytes`: ``instance_opt.refine_field``; its tensors are tracked on a tiny
  real problem (MIND-SSC and ``torch.nonzero`` need values) and scaled: the larger of the
  features' bytes per fixed voxel and a step's (per voxel, plus per sampled point); its fold
  repair (numpy) is modelled.

Counting time does not grow with the grid: up to :data:`EXACT_VOXELS` padded voxels the grid
is counted itself (0.2-0.5 s on the demo grids); above, two grids scaled down with the same
aspect ratio are counted and the line through them is evaluated (tensor memory is affine in the
voxel count, ``parameters + k * voxels``: see ``tests/pipeline/model/test_memory.py``), so a
2351^3 grid costs what a 64^3 one costs. Counts are cached per configuration and grid.

**Modelled**: the numpy arrays the stages hold (images, fields, resampling temporaries) are
bytes per voxel read from the code, phase by phase: :func:`prediction_phases` (images, network,
field back on the fixed grid, instance optimisation, writing, extra outputs) and
:func:`training_phases` (the preprocessed cases held in memory, the step, validation,
checkpoints). :func:`peaks` finds the largest phase per device (on the CPU the tensors and
arrays add up); :func:`allowance` adds what the allocator holds beyond them.

Units: bytes; ``GB`` in messages means 2^30 bytes, as in ``bench/results``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import math
import weakref
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any
from unittest import mock

import torch
import torch.nn.functional as F
from torch.nn.modules.conv import _ConvNd
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from pipeline.config import LossConfig
from pipeline.model import losses
from pipeline.model.field import full_resolution_field
from pipeline.model.instance_opt import InstanceOptSettings, refine_field
from pipeline.model.lapirn import CRN, LapIRN, LapIRNConfig

Grid = tuple[int, int, int]
EXACT_VOXELS = 64**3  # padded network grids up to this size are counted as they are
_SECOND_GRID = 0.75  # the second, smaller grid of a scaled count: each axis times this
_REDUCED = {"bf16": torch.bfloat16, "fp16": torch.float16}


class LiveBytes(TorchDispatchMode):
    """Tensor memory alive under this mode: ``now`` and its high-water mark ``peak`` (bytes).

    Every storage an operator returns is added once (views share their storage) and removed
    when Python frees it (a weak reference on the storage); tensors made before the mode
    started are not seen. Works on any device, ``meta`` included."""

    @classmethod
    def _should_skip_dynamo(cls) -> bool:
        """No ``torch._dynamo.disable`` wrapper around :meth:`__torch_dispatch__`: counting never
        runs under ``torch.compile``, and the wrapper's first call imports the compiler (3 s)."""
        return False

    def __init__(self) -> None:
        super().__init__()
        self.now = 0
        self.peak = 0
        self._live: dict[int, tuple[int, weakref.ref]] = {}

    def _add(self, t: torch.Tensor) -> None:
        storage = t.untyped_storage()
        key = id(storage)
        if key in self._live:
            return
        size = storage.nbytes()

        def gone(_ref: weakref.ref, key: int = key) -> None:
            entry = self._live.pop(key, None)
            if entry is not None:
                self.now -= entry[0]

        self._live[key] = (size, weakref.ref(storage, gone))
        self.now += size
        self.peak = max(self.peak, self.now)

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        out = func(*args, **(kwargs or {}))
        for t in tree_flatten(out)[0]:
            if isinstance(t, torch.Tensor):
                self._add(t)
        return out


def peak_of(work: Callable[[], Any]) -> int:
    """The most tensor memory alive at once while ``work()`` runs (bytes; :class:`LiveBytes`).
    The caller's random generators are left as they were."""
    with torch.random.fork_rng(devices=[]), LiveBytes() as live:
        work()
    return live.peak


@contextlib.contextmanager
def reduced_precision_convolutions(amp: str) -> Iterator[None]:
    """What CUDA autocast does to LapIRN, on any device (``meta`` has no autocast): the CRN
    convolutions take their inputs and weights cast to ``amp``'s 16-bit dtype and return it;
    everything after them follows the inputs' dtype (LapIRN casts its fields back to float32).
    ``amp`` "none": nothing changes."""
    dtype = _REDUCED.get(amp)
    if dtype is None:
        yield
        return

    def cast(t: Any) -> Any:
        return t.to(dtype) if isinstance(t, torch.Tensor) and t.is_floating_point() else t

    def conv(original: Callable[..., torch.Tensor]) -> Callable[..., torch.Tensor]:
        return lambda *args, **kwargs: original(*(cast(a) for a in args), **{k: cast(v) for k, v in kwargs.items()})

    with mock.patch.object(F, "conv3d", conv(F.conv3d)), mock.patch.object(F, "conv_transpose3d", conv(F.conv_transpose3d)):
        yield


@contextlib.contextmanager
def cpu_layout(on: bool = True) -> Iterator[None]:
    """What LapIRN does on the CPU only, on any device: each CRN copies its input into oneDNN's
    ``channels_last_3d`` layout first (one more tensor of the level's input)."""
    if not on:
        yield
        return
    original = CRN.forward

    def forward(self: CRN, x: torch.Tensor, skip: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        return original(self, x.contiguous(memory_format=torch.channels_last_3d), skip)

    with mock.patch.object(CRN, "forward", forward):
        yield


def _meta_model(config: LapIRNConfig) -> LapIRN:
    """LapIRN on ``meta``, built without initialising its weights (no time, no random numbers;
    ``with torch.device("meta")`` would import torch's compiler, seconds on first use)."""
    with mock.patch.object(_ConvNd, "reset_parameters", lambda self: None):
        return LapIRN(config).to("meta")


def _meta_soft_dice(pred: torch.Tensor, target: torch.Tensor, present: Any = None, eps: float = 1e-6) -> torch.Tensor:
    """``losses.soft_dice`` without its selection of the labels present (meta tensors hold no
    values to select by); it makes and saves the same full-size tensors."""
    dims = (2, 3, 4)
    return 1.0 - (2.0 * (pred * target).sum(dims) / (pred.sum(dims) + target.sum(dims) + eps))[:, 1:].mean()


def _meta_one_hot(grid: Grid, num_classes: int) -> torch.Tensor:
    """``losses.one_hot`` of a uint8 label map on ``meta``: the same tensors (int64 one-hot, then float)."""
    labels = torch.empty((1, 1, *grid), dtype=torch.uint8, device="meta").long()
    return F.one_hot(labels[:, 0], num_classes).permute(0, 4, 1, 2, 3).float()


def meta_train_step(config: LapIRNConfig, loss: LossConfig, grid: Grid, num_classes: int = 1, mask: bool = False,
                    amp: str = "none", level: int | None = None, cpu: bool = True) -> None:
    """One training step at ``level`` (default: the finest) on ``meta``, as ``Trainer.train_step``
    runs it without augmentation: every level trainable, the configured loss (the mask, Dice on
    one-hot labels of ``num_classes``), backward; ``cpu``: with the CPU's input layout
    (:func:`cpu_layout`). Also what ``bench/bench_recipes.py`` counts FLOPs of (``FlopCounterMode``)."""
    level = config.levels if level is None else level
    model = _meta_model(config)
    fixed, moving = (torch.empty((1, 1, *grid), device="meta") for _ in range(2))
    with reduced_precision_convolutions(amp), cpu_layout(cpu):
        out = model(moving, fixed, level=level)
    lv = out.final
    extra: dict[str, torch.Tensor] = {}
    if mask:
        extra["mask"] = model.pyramid(torch.empty((1, 1, *grid), device="meta"))[level - 1]
    if loss.dice > 0 and num_classes > 1:
        extra["fixed_onehot"], extra["moving_onehot"] = _meta_one_hot(grid, num_classes), _meta_one_hot(grid, num_classes)
        extra["dice_field"] = full_resolution_field(model, out)
    else:
        loss = dataclasses.replace(loss, dice=0.0)
    with mock.patch.object(losses, "soft_dice", _meta_soft_dice):
        parts = losses.level_loss(loss, level, config.levels, lv.warped, lv.fixed, lv.field,
                                  reg_field=lv.velocity_field, **extra)
    parts["total"].backward()


def meta_inference(config: LapIRNConfig, grid: Grid, amp: str = "none", cpu: bool = True) -> None:
    """``predict_field`` on ``meta``: the forward pass without gradients and the full-resolution
    field; ``cpu``: with the CPU's input layout (:func:`cpu_layout`)."""
    model = _meta_model(config)
    fixed, moving = (torch.empty((1, 1, *grid), device="meta") for _ in range(2))
    with torch.no_grad(), reduced_precision_convolutions(amp), cpu_layout(cpu):
        full_resolution_field(model, model(moving, fixed))


def padded_voxels(grid: Sequence[int], multiple: int) -> int:
    """Voxels of ``grid`` padded to a multiple of ``multiple`` per axis (what the network holds)."""
    return math.prod(-(-int(n) // multiple) * multiple for n in grid)


def _scaled_grid(grid: Sequence[int], multiple: int, voxels: float) -> Grid:
    """``grid`` scaled (aspect ratio kept) to about ``voxels`` padded voxels, each axis a
    multiple of ``multiple`` and at least two of them."""
    factor = (voxels / math.prod(grid)) ** (1 / 3)
    a, b, c = (max(2, round(n * factor / multiple)) * multiple for n in grid)
    return a, b, c


def _linear(count: Callable[[Grid], int], grid: Grid, multiple: int) -> int:
    """``count(grid)``, exactly when small; else from two smaller grids of the same aspect ratio
    and the line through them in padded voxels (tensor memory is affine in the voxel count)."""
    voxels = padded_voxels(grid, multiple)
    if voxels <= EXACT_VOXELS:
        return count(grid)
    big = _scaled_grid(grid, multiple, EXACT_VOXELS)
    small = _scaled_grid(grid, multiple, EXACT_VOXELS * _SECOND_GRID**3)
    v_big, v_small = padded_voxels(big, multiple), padded_voxels(small, multiple)
    if v_big == v_small:  # a degenerate (very flat) grid: scale from one count through the origin
        return math.ceil(count(big) * voxels / v_big)
    c_big, c_small = count(big), count(small)
    slope = (c_big - c_small) / (v_big - v_small)
    return math.ceil(c_big + slope * (voxels - v_big))


@functools.lru_cache(maxsize=256)
def _train_count(config: LapIRNConfig, loss: LossConfig, grid: Grid, num_classes: int, mask: bool, amp: str, cpu: bool) -> int:
    return peak_of(lambda: meta_train_step(config, loss, grid, num_classes, mask, amp, cpu=cpu))


@functools.lru_cache(maxsize=256)
def _inference_count(config: LapIRNConfig, grid: Grid, amp: str, cpu: bool) -> int:
    return peak_of(lambda: meta_inference(config, grid, amp, cpu))


def parameter_bytes(config: LapIRNConfig) -> int:
    """Bytes of the network's parameters (float32)."""
    return sum(p.numel() * p.element_size() for p in _meta_model(config).parameters())


def train_step_bytes(config: LapIRNConfig, loss: LossConfig, grid: Sequence[int], num_classes: int = 1,
                     mask: bool = False, amp: str = "none", on_gpu: bool = False) -> int:
    """Peak tensor bytes on the training device for one step at the finest level on the network
    grid ``grid`` (module docstring): parameters, gradients, Adam's moments, activations.
    ``amp``: "bf16" | "fp16" | "none" as it applies on that device (CPU: "none")."""
    g = tuple(int(n) for n in grid)
    counted = _linear(lambda h: _train_count(config, loss, h, num_classes, mask, amp, not on_gpu), g,  # type: ignore[arg-type]
                      config.pad_multiple)
    return counted + 2 * parameter_bytes(config)


def inference_bytes(config: LapIRNConfig, grid: Sequence[int], amp: str = "none", on_gpu: bool = False) -> int:
    """Peak tensor bytes on the prediction device for ``predict_field`` at the network grid
    ``grid``: parameters, both input images, the activations alive at once, the field."""
    g = tuple(int(n) for n in grid)
    return _linear(lambda h: _inference_count(config, h, amp, not on_gpu), g, config.pad_multiple)  # type: ignore[arg-type]


# ---------------------------------------------------------------------- instance optimisation

_IO_GRID = (24, 20, 28)  # the tiny real problem whose tracked peaks give the costs per voxel and per point
REPAIR_BYTES_PER_VOXEL = 200  # repair_folds (numpy): the field, 9 float64 gradients, the 3x3 float64 Jacobians, det


@functools.lru_cache(maxsize=32)
def _io_costs(radius: int, dilation: int, grid_spacing: int) -> tuple[float, float, float]:
    """``refine_field``'s tensor peak is ``max(a V, c V + b P)`` for ``V`` fixed voxels and ``P``
    points sampled per step: the MIND-SSC features (``a`` per voxel) or an optimisation step
    (``c`` per voxel: features, control grid, coordinates of the structure voxels; ``b`` per
    point). Returns ``(a, c, b)`` in bytes, from one step on a random image (every voxel has
    structure: the most points) with ``P`` = 64, ``V / 2`` and ``V``."""
    gen = torch.Generator().manual_seed(0)
    fixed, moving = (torch.rand((1, 1, *_IO_GRID), generator=gen) for _ in range(2))
    field = torch.zeros((1, 3, *_IO_GRID))
    voxels = math.prod(_IO_GRID)
    highs = []
    for points in (64, voxels // 2, voxels):
        settings = InstanceOptSettings(steps=1, max_points=points, radius=radius, dilation=dilation,
                                       grid_spacing=grid_spacing, unfold=False)
        highs.append(peak_of(functools.partial(refine_field, field, moving, fixed, settings)))
    per_point = 2 * (highs[2] - highs[1]) / voxels
    return highs[0] / voxels, highs[2] / voxels - per_point, per_point


def instance_opt_bytes(shape: Sequence[int], settings: InstanceOptSettings) -> tuple[int, int]:
    """``(device bytes, host bytes)`` of instance optimisation on the fixed grid ``shape``: its
    tensors (every voxel taken as structure, the most points; :func:`_io_costs`) on the
    prediction device, the fold repair's numpy arrays on the host (when ``settings.unfold``)."""
    voxels = math.prod(int(n) for n in shape)
    features, step, per_point = _io_costs(settings.radius, settings.dilation, settings.grid_spacing)
    device = max(features * voxels, step * voxels + per_point * min(voxels, settings.max_points))
    return math.ceil(device), REPAIR_BYTES_PER_VOXEL * voxels if settings.unfold else 0


# ---------------------------------------------------------------------- a stage's phases


@dataclass(frozen=True)
class Phase:
    """One phase of a stage at its peak: ``device`` bytes of tensors on the stage's device and
    ``host`` bytes of numpy arrays (host memory) alive at the same time; ``what`` names it."""

    name: str
    what: str
    device: int = 0
    host: int = 0


# What the process holds beyond the tensors and arrays alive: (fraction of the counted bytes, at
# most this many bytes, plus this many). CPU, measured (README, "Memory: the check before the
# work"): glibc keeps freed blocks below its mmap threshold (at most 32 MB each) in its heap, which
# a training step's many mid-sized tensors fragment (about half the counted bytes on small grids,
# 0.15-0.35 GB on the recipes' grids), inference less; libraries loaded after the check add a
# little (matplotlib for the training curves). GPU, an assumption (not measured here): the
# caching allocator's rounding and fragmentation, cuDNN workspaces.
MB = 2**20
ALLOWANCES = {
    ("cpu", "train"): (0.5, 384 * MB, 64 * MB),
    ("cpu", "predict"): (0.25, 256 * MB, 32 * MB),
    ("cuda", "train"): (0.1, float("inf"), 256 * MB),
    ("cuda", "predict"): (0.1, float("inf"), 256 * MB),
}


def allowance(counted: int, on_gpu: bool, work: str) -> int:
    """Bytes to add to ``counted`` tensor and array bytes of ``work`` ("train" or "predict") for
    what the process holds beyond them (:data:`ALLOWANCES`)."""
    fraction, cap, fixed = ALLOWANCES[("cuda" if on_gpu else "cpu", work)]
    return math.ceil(min(fraction * counted, cap) + fixed)


def peaks(phases: Sequence[Phase], on_gpu: bool) -> tuple[Phase, Phase | None]:
    """The peak phase on the stage's device (on the CPU device and host bytes add up) and, on a
    GPU, the host's peak phase (``None`` on the CPU)."""
    if not on_gpu:
        top = max(phases, key=lambda p: p.device + p.host)
        return Phase(top.name, top.what, device=top.device + top.host), None
    device = max(phases, key=lambda p: p.device)
    host = max(phases, key=lambda p: p.host)
    return Phase(device.name, device.what, device=device.device), Phase(host.name, host.what, host=host.host)


# Host arrays of one pair's prediction, bytes per voxel of the fixed (f), moving (m), network (n)
# and output (o) grids, read from ``predict.register_images`` and the writers (float32: 4, a
# field: 12, float64 twice that). Through every phase: both images as read (4 f + 4 m) and, from
# the network on, both normalised on the fixed grid (8 f).
OUTPUT_PER_VOXEL = {"warped": 12 + 24 + 12 + 8, "jacobian": 12 + REPAIR_BYTES_PER_VOXEL, "report": 12 + 64}


def prediction_phases(config: LapIRNConfig | None, fixed: Grid, moving: Grid, network: Grid, output: Grid, *,
                      network_what: str, amp: str = "none", io: InstanceOptSettings | None = None,
                      affine: bool = False, outputs: Sequence[str] = (), on_gpu: bool = False) -> list[Phase]:
    """The phases of predicting one pair (``predict.register_images`` and writing the field):
    images on the fixed grid ``fixed`` and the moving grid ``moving``, the network on ``network``
    (``config`` ``None``: no network), the field written on ``output``; instance optimisation
    with ``io`` (``None``: off; from the zero field without a network), affine pre-alignment, extra ``outputs`` ("warped", "jacobian",
    "report"). ``network_what`` describes the network grid for messages."""
    f, m, n, o = (math.prod(g) for g in (fixed, moving, network, output))
    shape = "x".join(map(str, fixed))
    pair = f"the arrays of a pair on the grid {shape}"
    images = 4 * f + 4 * m
    phases = [Phase("normalise", pair, host=images + 4 * f + 16 * f)]
    if affine:
        phases.append(Phase("affine", f"affine pre-alignment on the grid {shape}", host=images + 40 * f))
    if config is not None:
        base = images + 8 * f
        if n != f:  # on_grid: zoom, clip and astype per image, the first result kept
            phases.append(Phase("resample", network_what, host=base + 16 * n))
        phases.append(Phase("network", network_what, device=inference_bytes(config, network, amp, on_gpu),
                            host=base + (8 * n if on_gpu else 0)))
        phases.append(Phase("field", pair, host=base + 12 * n + 48 * f))
    if io is not None and io.steps > 0:  # after the network, or from the zero field without one
        base = images + 8 * f
        io_device, io_host = instance_opt_bytes(fixed, io)
        phases.append(Phase("instance_opt", f"instance optimisation on the fixed grid {shape}", device=io_device,
                            host=base + 24 * f))
        phases.append(Phase("fold repair", f"instance optimisation on the fixed grid {shape}", host=base + 12 * f + io_host))
    written = images + 12 * o
    if affine:
        phases.append(Phase("compose", pair, host=written + 84 * o))
    phases.append(Phase("write", pair, host=written + 24 * o))
    if outputs:
        phases.append(Phase("outputs", pair, host=images + sum(OUTPUT_PER_VOXEL[k] for k in outputs) * f))
    return phases


def training_phases(config: LapIRNConfig, loss: LossConfig, grid: Grid, raw: Grid, held: int, *,
                    num_classes: int = 1, mask: bool = False, amp: str = "none", on_gpu: bool = False, network_what: str,
                    held_what: str = "the preprocessed images held for training") -> list[Phase]:
    """The phases of training (``pipeline.training.train``): the cases preprocessed one by one
    from the grid ``raw`` onto the network grid ``grid`` and held in memory (``held`` bytes per
    network-grid voxel over all cases: float32 images, labels, masks), a training step
    (:func:`train_step_bytes`), validation (:func:`inference_bytes` and the metrics' arrays) and
    checkpoints (the serialised parameters and Adam's moments)."""
    g, r = math.prod(grid), math.prod(raw)
    data = held * g
    params = parameter_bytes(config)
    return [
        Phase("preprocess", held_what, host=data + 28 * r),
        Phase("train step", network_what, host=data,
              device=train_step_bytes(config, loss, grid, num_classes, mask, amp, on_gpu)),
        Phase("validation", network_what, host=data + 60 * g, device=inference_bytes(config, grid, amp, on_gpu)),
        Phase("checkpoint", held_what, host=data + 6 * params, device=4 * params),
    ]
