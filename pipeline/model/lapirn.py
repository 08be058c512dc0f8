"""LapIRN: one parameterised Laplacian-pyramid registration network (displacement or diffeomorphic).

Architecture as in ``../shared/docs/lapirn.md`` (Mok & Chung): ``levels`` identical CNN registration
networks (CRN), coarse to fine; level ``p`` works at ``1 / 2^(levels - p)`` resolution. Every CRN
predicts a residual in grid_sample's normalised units (``B x 3 x X x Y x Z``, *grid* channel
order, ``align_corners=True``) that is added to the upsampled field of the level below
(diffeomorphic: added to the upsampled velocity, then exponentiated by scaling and squaring).

Frames: inside the network everything is normalised on the **padded** grid of each level;
the conversion to voxel fields happens once per level through ``pipeline.model.contract.flow_to_voxel``
on that padded grid, and only then are the fields cropped back to the input's grid.

Upsampling between levels is trilinear x2 (flow, and velocity in the diffeomorphic variant);
``LapIRNConfig.align_corners`` chooses its corner rule. ``True`` (our default): a normalised
flow at level ``p`` is defined with the corners of *that* level's grid at -1 and +1; with
``align_corners=True`` fine voxel ``j`` receives the coarse value interpolated at the same
normalised position, so the flow needs no value scaling. With ``align_corners=False`` the sampled
position is shifted by up to half a coarse voxel near the faces. (Voxel fields would need
rescaling; normalised ones do not.) ``False`` is what the public code does (``nn.Upsample``'s
default, values not rescaled) and what its published weights were trained with. Measured with
the public code and its published weights mapped into this model: with ``align_corners=False``
and ``warp_padding="border"`` the fields equal the public code's to 1e-6 voxel; with
``align_corners=True`` and zero padding (our models before these options) they differ by 0.17 voxel.

Image warps inside the model (the moving image fed to levels 2.., the ``warped`` outputs) pad
by ``LapIRNConfig.warp_padding``: ``"border"`` (default, the public code's; a zero rim would
darken images that touch the edge) or ``"zeros"``. Scaling and squaring always extends the
field by its edge values with ``align_corners=True`` (the public code's too).

Precision (``pipeline.model.precision``): under a caller's autocast only the CRNs' convolutions
run in reduced precision; each residual is cast back to float32 at once, and every field, grid,
warp, upsampling and voxel conversion is computed in float32 with autocast switched off.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import asdict, dataclass, fields
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from pipeline.model.contract import flow_to_voxel, identity_flow_grid, warp_flow
from pipeline.model.losses import avg_downsample
from pipeline.model.onednn_conv import Conv3d
from pipeline.model.precision import field_dtype, no_autocast

PadSpec = tuple[tuple[int, int], ...]  # (before, after) per spatial axis
WARP_PADDINGS = ("border", "zeros")
# what checkpoints written before a key existed were trained with (not the current defaults)
LEGACY_CONFIG = {"align_corners": True, "warp_padding": "zeros"}


@dataclass(frozen=True)
class LapIRNConfig:
    """Constructor configuration of :class:`LapIRN` (stored in checkpoints).

    ``start_channel``: CRN width is ``4 * start_channel`` (7 default; 28 for the abdomen set-up).
    ``range_flow``: bound of each level's residual in normalised units. ``ss_steps``: scaling
    and squaring steps of the diffeomorphic variant. ``in_channels``: channels per image.
    ``align_corners``: corner rule of the trilinear x2 upsampling between levels (``False``: the
    public code's, needed for its weights). ``warp_padding``: padding of the image warps inside
    the model, ``"border"`` or ``"zeros"`` (see the module docstring).
    """

    levels: int = 3
    start_channel: int = 7
    diffeomorphic: bool = False
    range_flow: float = 0.4
    ss_steps: int = 7
    in_channels: int = 1
    align_corners: bool = True
    warp_padding: str = "border"

    def __post_init__(self) -> None:
        if self.levels < 1 or self.start_channel < 1 or self.in_channels < 1 or self.ss_steps < 0:
            raise ValueError(f"invalid LapIRN configuration: {self}")
        if not isinstance(self.align_corners, bool):
            raise ValueError(f"align_corners must be true or false, got {self.align_corners!r}")
        if self.warp_padding not in WARP_PADDINGS:
            raise ValueError(f"warp_padding must be one of {', '.join(WARP_PADDINGS)}, got {self.warp_padding!r}")
        if not self.range_flow > 0:
            raise ValueError(f"range_flow must be > 0, got {self.range_flow}")

    @property
    def width(self) -> int:
        """Channels of every CRN layer (``4 * start_channel``)."""
        return 4 * self.start_channel

    @property
    def pad_multiple(self) -> int:
        """Inputs are padded to a multiple of ``2^levels`` (8 for 3 levels): level 1 works at
        ``1 / 2^(levels-1)`` and its CRN halves that once more, so its grid must be even. The
        public code asks for 16; padding less keeps e.g. a 24^3 input at 24^3 instead of 32^3."""
        return 2**self.levels

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> LapIRNConfig:
        """Build from a mapping (a checkpoint's ``model_config``); unknown keys are rejected
        (``ValueError`` naming them).

        Backward compatibility: a key of :data:`LEGACY_CONFIG` that is missing takes its
        *legacy* value, not the current default. Checkpoints written before ``align_corners``
        and ``warp_padding`` existed were trained with ``align_corners=True`` and zero-padded
        image warps, and must run that way. Other missing keys take the field defaults.
        """
        unknown = sorted(set(data) - {f.name for f in fields(cls)})
        if unknown:
            raise ValueError(f"unknown LapIRN config keys: {', '.join(unknown)}")
        return cls(**{**LEGACY_CONFIG, **data})


# ------------------------------------------------------------------- padding and grids


def pad_to_multiple(x: torch.Tensor, multiple: int) -> tuple[torch.Tensor, PadSpec]:
    """Zero-pad the spatial axes of ``x`` (``B x C x X x Y x Z``) at their end to a multiple of ``multiple``.

    Returns the padded tensor and the pad spec ``((0, aX), (0, aY), (0, aZ))`` for :func:`crop`.
    Zero is background for images in [0, 1] (and for one-hot labels: no class).
    """
    after = [(-n) % multiple for n in x.shape[2:]]
    spec: PadSpec = tuple((0, a) for a in after)
    if any(after):
        x = F.pad(x, (0, after[2], 0, after[1], 0, after[0]))
    return x, spec


def crop(x: torch.Tensor, pad_spec: PadSpec, scale: int = 1) -> torch.Tensor:
    """Undo :func:`pad_to_multiple` on a padded grid, or on that grid downsampled ``scale`` times.

    ``x``: ``B x C x ...`` on the padded grid divided by ``scale`` (a pyramid level). Keeps the
    coarse voxels whose centres (coarse voxel ``i`` sits on fine voxel ``scale * i``) lie in
    the original image: ``ceil(before / scale) .. ceil((before + n) / scale)``. With
    ``scale = 1`` this is exactly the original grid.
    """
    index: list[slice] = [slice(None), slice(None)]
    for size, (before, after) in zip(x.shape[2:], pad_spec, strict=True):
        n = size * scale - before - after
        index.append(slice(math.ceil(before / scale), math.ceil((before + n) / scale)))
    return x[tuple(index)]


def image_pyramid(x: torch.Tensor, levels: int) -> list[torch.Tensor]:
    """``[x pooled levels-1 times, ..., x pooled once, x]``: coarse to fine, by :func:`avg_downsample`."""
    out = [x]
    for _ in range(levels - 1):
        out.append(avg_downsample(out[-1]))
    return out[::-1]


def upsample_flow(flow: torch.Tensor, align_corners: bool = True) -> torch.Tensor:
    """Normalised flow (or velocity) ``B x 3 x n...`` -> ``B x 3 x 2n...``: trilinear, values unchanged.

    ``align_corners=True`` keeps an affine function of normalised position exact;
    ``False`` is ``nn.Upsample``'s default, the public code's (see the module docstring).
    At least float32, autocast off.
    """
    with no_autocast(flow):
        return F.interpolate(flow.to(field_dtype(flow)), scale_factor=2, mode="trilinear", align_corners=align_corners)


def compose_flow(flow: torch.Tensor, then: torch.Tensor) -> torch.Tensor:
    """Normalised-flow twin of ``contract.compose``: ``flow + then o (id + flow)``.

    Both ``B x 3 x n...`` (normalised, grid order, one grid). ``then`` is sampled linearly and
    extended by its edge values outside the grid (``padding_mode="border"``, ``align_corners=True``),
    the contract's rule for fields, whatever the model's ``warp_padding`` for images. At least
    float32, autocast off.
    """
    with no_autocast(flow):
        dtype = field_dtype(flow)
        flow, then = flow.to(dtype), then.to(dtype)
        grid = identity_flow_grid(flow.shape[2:], flow) + flow.permute(0, 2, 3, 4, 1)
        return flow + F.grid_sample(then, grid, mode="bilinear", padding_mode="border", align_corners=True)


def scaling_and_squaring(velocity: torch.Tensor, steps: int) -> torch.Tensor:
    """Exponential of a stationary velocity field (normalised units, grid order) -> normalised flow.

    ``phi = v / 2^steps``, then ``steps`` times ``phi <- phi + phi o (id + phi)``
    (:func:`compose_flow`; edge extension as the public code's ``padding_mode="border"``, so a
    constant velocity gives exactly that translation).
    """
    with no_autocast(velocity):
        flow = velocity.to(field_dtype(velocity)) / 2**steps
        for _ in range(steps):
            flow = compose_flow(flow, flow)
        return flow


# ------------------------------------------------------------------------------ network


def _conv(cin: int, cout: int, stride: int = 1) -> nn.Conv3d:
    return Conv3d(cin, cout, kernel_size=3, stride=stride, padding=1, bias=False)


class PreActBlock(nn.Module):
    """Pre-activation residual block: ``x + conv(lrelu(conv(lrelu(x))))`` (no bias, no norm)."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.conv1 = _conv(width, width)
        self.conv2 = _conv(width, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv1(F.leaky_relu(x, 0.2))
        return x + self.conv2(F.leaky_relu(out, 0.2))


class CRN(nn.Module):
    """One level's CNN registration network: ``B x in x n... -> (residual B x 3 x n..., decoder feature)``.

    The residual is ``range_flow * softsign(...)`` in normalised units (grid channel order),
    always at least float32: under autocast the last conv's output is cast up before the
    softsign. The decoder feature (``B x width x n/2...``, the convolutions' dtype) is added
    after the next level's down conv.
    """

    def __init__(self, in_channels: int, width: int, range_flow: float, blocks: int = 5) -> None:
        super().__init__()
        self.range_flow = range_flow
        self.encoder = nn.Sequential(_conv(in_channels, width), nn.LeakyReLU(0.2), _conv(width, width))
        self.down = _conv(width, width, stride=2)
        layers: list[nn.Module] = []
        for _ in range(blocks):
            layers += [PreActBlock(width), nn.LeakyReLU(0.2)]
        self.blocks = nn.Sequential(*layers)
        self.up = nn.ConvTranspose3d(width, width, kernel_size=2, stride=2, bias=False)
        self.head = nn.Sequential(_conv(2 * width, width), nn.LeakyReLU(0.2), _conv(width, 3), nn.Softsign())

    def forward(self, x: torch.Tensor, skip: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        if x.device.type == "cpu":
            # oneDNN's native CPU layout: about 30 % less CPU time than NCDHW (values unchanged)
            x = x.contiguous(memory_format=torch.channels_last_3d)
        f = self.encoder(x)
        e = self.down(f)
        if skip is not None:
            e = e + skip
        e = self.up(self.blocks(e))
        h = self.head[:-1](torch.cat([e, f], dim=1))  # convolutions: the caller's autocast dtype
        return self.head[-1](h.to(field_dtype(h))) * self.range_flow, e  # softsign in full precision


@dataclass(frozen=True)
class LevelOutput:
    """What one level produced. Images/fields cropped to the level's share of the input grid.

    ``flow``/``velocity``: normalised, grid channel order, on the level's **padded** grid
    (normalised units only mean something on the grid they were made on). ``field``/
    ``velocity_field``: voxel units of the level's grid (``B x 3 x ...``, axis order), cropped.
    ``warped``: moving pyramid image warped by the level's flow; ``fixed``/``moving``: the pyramid
    images at this level. ``velocity*`` are ``None`` for the displacement variant.
    """

    level: int
    flow: torch.Tensor
    field: torch.Tensor
    warped: torch.Tensor
    fixed: torch.Tensor
    moving: torch.Tensor
    velocity: torch.Tensor | None = None
    velocity_field: torch.Tensor | None = None


@dataclass(frozen=True)
class LapIRNOutput:
    """Per-level outputs, coarse to fine (``levels[0]`` is level 1), and the input's pad spec."""

    levels: tuple[LevelOutput, ...]
    pad_spec: PadSpec

    @property
    def final(self) -> LevelOutput:
        """The finest level that was run."""
        return self.levels[-1]

    @property
    def field(self) -> torch.Tensor:
        """Voxel field of the finest level run (the input grid when all levels ran)."""
        return self.levels[-1].field


class LapIRN(nn.Module):
    """LapIRN with ``config.levels`` CRNs. ``model(moving, fixed, level=None) -> LapIRNOutput``."""

    def __init__(self, config: LapIRNConfig | None = None) -> None:
        super().__init__()
        self.config = config or LapIRNConfig()
        c = self.config
        self.nets = nn.ModuleList(
            CRN(2 * c.in_channels + (0 if p == 0 else 3), c.width, c.range_flow) for p in range(c.levels)
        )

    def level_parameters(self, level: int) -> Iterator[nn.Parameter]:
        """Parameters of level ``level`` (1-based)."""
        self._check_level(level)
        return self.nets[level - 1].parameters()

    def freeze_levels(self, below: int) -> None:
        """Freeze levels ``1 .. below-1`` (no gradients) and unfreeze the others; ``below=1`` unfreezes all."""
        if not 1 <= below <= self.config.levels + 1:
            raise ValueError(f"below must be in 1..{self.config.levels + 1}, got {below}")
        for p, net in enumerate(self.nets, start=1):
            net.requires_grad_(p >= below)

    @property
    def trainable_levels(self) -> tuple[int, ...]:
        """Levels (1-based) whose parameters all require gradients."""
        return tuple(p for p, net in enumerate(self.nets, start=1) if all(q.requires_grad for q in net.parameters()))

    def _check_level(self, level: int) -> None:
        if not 1 <= level <= self.config.levels:
            raise ValueError(f"level must be in 1..{self.config.levels}, got {level}")

    def pyramid(self, x: torch.Tensor) -> list[torch.Tensor]:
        """The model's image pyramid of ``x`` (``B x C x X x Y x Z``, any channels, e.g. one-hot
        labels): padded, pooled, cropped exactly like the ``fixed``/``moving`` of the outputs.
        Coarse to fine, one tensor per level."""
        padded, spec = pad_to_multiple(x, self.config.pad_multiple)
        pyr = image_pyramid(padded, self.config.levels)
        return [crop(t, spec, 2 ** (self.config.levels - 1 - i)) for i, t in enumerate(pyr)]

    def _check_inputs(self, moving: torch.Tensor, fixed: torch.Tensor) -> None:
        c = self.config.in_channels
        for name, t in (("moving", moving), ("fixed", fixed)):
            if t.ndim != 5 or t.shape[1] != c:
                raise ValueError(f"{name} must be B x {c} x X x Y x Z, got {tuple(t.shape)}")
        if moving.shape != fixed.shape:
            raise ValueError(f"moving {tuple(moving.shape)} and fixed {tuple(fixed.shape)} differ in shape")

    def forward(self, moving: torch.Tensor, fixed: torch.Tensor, level: int | None = None) -> LapIRNOutput:
        """Register ``moving`` to ``fixed`` (both ``B x in_channels x X x Y x Z``, intensities in [0, 1]).

        Runs levels ``1 .. level`` (default: all). Each level's voxel ``field`` pulls the moving
        image onto the fixed grid at that level's resolution (``pipeline.model.contract`` convention).
        Under autocast only the convolutions use reduced precision: every output tensor is float32
        (float64 for float64 inputs).
        """
        level = self.config.levels if level is None else level
        self._check_level(level)
        self._check_inputs(moving, fixed)
        with no_autocast(moving):
            dtype = field_dtype(moving)
            moving_p, spec = pad_to_multiple(moving.to(dtype), self.config.pad_multiple)
            fixed_p, _ = pad_to_multiple(fixed.to(dtype), self.config.pad_multiple)
            pyr_m = image_pyramid(moving_p, self.config.levels)
            pyr_f = image_pyramid(fixed_p, self.config.levels)
        outputs: list[LevelOutput] = []
        flow = velocity = skip = None
        for p in range(level):
            flow, velocity, skip, warped = self._level(p, pyr_m[p], pyr_f[p], flow, velocity, skip)
            scale = 2 ** (self.config.levels - 1 - p)
            outputs.append(
                LevelOutput(
                    level=p + 1,
                    flow=flow,
                    field=crop(flow_to_voxel(flow), spec, scale),
                    warped=crop(warped, spec, scale),
                    fixed=crop(pyr_f[p], spec, scale),
                    moving=crop(pyr_m[p], spec, scale),
                    velocity=velocity,
                    velocity_field=None if velocity is None else crop(flow_to_voxel(velocity), spec, scale),
                )
            )
        return LapIRNOutput(levels=tuple(outputs), pad_spec=spec)

    def _level(
        self,
        p: int,
        moving: torch.Tensor,
        fixed: torch.Tensor,
        prev_flow: torch.Tensor | None,
        prev_velocity: torch.Tensor | None,
        skip: torch.Tensor | None,
    ) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor, torch.Tensor]:
        """One level (0-based ``p``) on padded pyramid images -> (flow, velocity, decoder feature, warped).

        Level 1 sees ``cat(moving, fixed)``; later levels see ``cat(moving warped by the upsampled
        flow, fixed, upsampled flow)`` (diffeomorphic: the upsampled *velocity* as third input and
        as the base the residual is added to, as in the public code). The CRN runs under the
        caller's autocast; everything else in ``moving``'s (full precision) dtype, autocast off.
        """
        c = self.config
        base = None
        with no_autocast(moving):
            if prev_flow is None:
                x = torch.cat([moving, fixed], dim=1)
            else:
                up_flow = upsample_flow(prev_flow, c.align_corners)
                base = upsample_flow(prev_velocity, c.align_corners) if c.diffeomorphic and prev_velocity is not None else up_flow
                x = torch.cat([warp_flow(moving, up_flow, padding=c.warp_padding), fixed, base], dim=1)
        residual, skip = self.nets[p](x, skip)
        with no_autocast(moving):
            residual = residual.to(moving.dtype)
            total = residual if base is None else residual + base
            flow = scaling_and_squaring(total, c.ss_steps) if c.diffeomorphic else total
            warped = warp_flow(moving, flow, padding=c.warp_padding)
        return flow, total if c.diffeomorphic else None, skip, warped
