"""The LapIRN authors' checkpoints (cwmok/LapIRN): recognise, load safely, map onto :class:`LapIRN`.

The authors' ``miccai2020_model_stage.py`` nests the pyramid: the finest level's module holds the
next coarser one as ``model_lvl{L-1}``, which holds ``model_lvl{L-2}``, ... (3 levels: ``""`` is
level 3, ``model_lvl2.`` level 2, ``model_lvl2.model_lvl1.`` level 1). Ours is flat:
``nets.{p-1}`` is level ``p``. Inside one level (every level alike):

==============================================  ==============================
authors                                         ours
==============================================  ==============================
``input_encoder_lvl1.0.weight``                 ``encoder.0.weight``
``input_encoder_lvl1.2.weight``                 ``encoder.2.weight``
``down_conv.weight``                            ``down.weight``
``resblock_group_lvl1.{i}.conv{1,2}.weight``    ``blocks.{i}.conv{1,2}.weight`` (i = 0, 2, 4, 6, 8)
``up.weight``                                   ``up.weight``
``output_lvl1.0.weight``                        ``head.0.weight``
``output_lvl1.2.weight``                        ``head.2.weight``
==============================================  ==============================

No tensor is transformed (same layouts, no biases on either side, no buffers). The
displacement and the diffeomorphic files have identical keys and shapes: the variant cannot be
read from a state dict; the two published files are recognised by their sha256
(:data:`PUBLISHED`). Their numerics (:data:`AUTHORS_NUMERICS`): ``range_flow`` 0.4, 7 scaling
and squaring steps, ``nn.Upsample``'s ``align_corners=False`` between levels, border-padded
image warps; with these our fields equal the authors' code's to ~1e-6 voxel
(``tests/pipeline/model/test_authors.py`` against a stored output of their code).
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from learn2reg.io import DataError

AUTHORS_REPO = "https://github.com/cwmok/LapIRN"
AUTHORS_COMMIT = "c17fb7564ca752d37e97baf12cafff44e01da668"
#: the complete authors' model; their level-1 and level-2 training snapshots predict at 1/4 and
#: 1/2 of their input's resolution, which no configuration of ours reproduces
AUTHORS_LEVELS = 3
#: model options that reproduce the authors' numerics (``LapIRNConfig`` / ``ModelConfig`` keys)
AUTHORS_NUMERICS: dict[str, Any] = {"range_flow": 0.4, "ss_steps": 7, "align_corners": False, "warp_padding": "border"}
VARIANTS = ("disp", "diff")
#: the voxel spacing (mm) the authors trained at: OASIS brain MR at 1 mm (weights/README.md); a
#: run imported from their checkpoints runs its network at this spacing by default
AUTHORS_SPACING_MM = (1.0, 1.0, 1.0)

LICENSE_NAME = "MIT"
COPYRIGHT = "Copyright (c) 2020 TonyMok"
#: the authors' ``LICENSE.md`` at AUTHORS_COMMIT, verbatim, leading blank line included (a test
#: compares it with weights/LICENSE.md)
LICENSE_TEXT = f"""
The MIT License (MIT)

{COPYRIGHT}

Permission is hereby granted, free of charge, to any person obtaining a copy
of this software and associated documentation files (the "Software"), to deal
in the Software without restriction, including without limitation the rights
to use, copy, modify, merge, publish, distribute, sublicense, and/or sell
copies of the Software, and to permit persons to whom the Software is
furnished to do so, subject to the following conditions:

The above copyright notice and this permission notice shall be included in all
copies or substantial portions of the Software.

THE SOFTWARE IS PROVIDED "AS IS", WITHOUT WARRANTY OF ANY KIND, EXPRESS OR
IMPLIED, INCLUDING BUT NOT LIMITED TO THE WARRANTIES OF MERCHANTABILITY,
FITNESS FOR A PARTICULAR PURPOSE AND NONINFRINGEMENT. IN NO EVENT SHALL THE
AUTHORS OR COPYRIGHT HOLDERS BE LIABLE FOR ANY CLAIM, DAMAGES OR OTHER
LIABILITY, WHETHER IN AN ACTION OF CONTRACT, TORT OR OTHERWISE, ARISING FROM,
OUT OF OR IN CONNECTION WITH THE SOFTWARE OR THE USE OR OTHER DEALINGS IN THE
SOFTWARE.
"""


@dataclass(frozen=True)
class PublishedFile:
    """One of the authors' published checkpoints (``Model/`` of :data:`AUTHORS_REPO` at :data:`AUTHORS_COMMIT`)."""

    name: str
    variant: str  # "disp" or "diff"


#: sha256 -> published file; the only way to tell the two apart (same keys, same shapes)
PUBLISHED: dict[str, PublishedFile] = {
    "9485191cb215e69b6b43ec4d64eb4fd4be4dcec6fce9f59209d8510378cdc2c0": PublishedFile("LapIRN_disp_fea7.pth", "disp"),
    "1f37ca274dfbe9f44b5b66722401aa179d4b8b572ad6a73d3b1094d98b10737a": PublishedFile("LapIRN_diff_fea7.pth", "diff"),
}

_BLOCK_INDICES = (0, 2, 4, 6, 8)  # odd entries of the authors' resblock_group are LeakyReLUs
#: per-level key suffix: authors' -> ours
SUFFIX_MAP: dict[str, str] = {
    "input_encoder_lvl1.0.weight": "encoder.0.weight",
    "input_encoder_lvl1.2.weight": "encoder.2.weight",
    "down_conv.weight": "down.weight",
    **{f"resblock_group_lvl1.{i}.conv{j}.weight": f"blocks.{i}.conv{j}.weight" for i in _BLOCK_INDICES for j in (1, 2)},
    "up.weight": "up.weight",
    "output_lvl1.0.weight": "head.0.weight",
    "output_lvl1.2.weight": "head.2.weight",
}
_NEST = re.compile(r"model_lvl(\d+)\.")


@dataclass(frozen=True)
class AuthorsLayout:
    """What an authors' state dict says about its model. The variant (displacement or
    diffeomorphic), ``range_flow`` and the scaling-and-squaring steps are not stored."""

    levels: int
    start_channel: int
    in_channels: int


def sha256_file(path: str | Path) -> str:
    """Hex sha256 of a file, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def published_file(sha256_hex: str) -> PublishedFile | None:
    """The published file with this sha256, else ``None``."""
    return PUBLISHED.get(sha256_hex.lower())


def level_prefix(level: int, levels: int) -> str:
    """Authors' key prefix of level ``level`` (1-based, 1 = coarsest) in a ``levels``-level model.

    >>> [level_prefix(p, 3) for p in (1, 2, 3)]
    ['model_lvl2.model_lvl1.', 'model_lvl2.', '']
    """
    if not 1 <= level <= levels:
        raise ValueError(f"level must be in 1..{levels}, got {level}")
    return "".join(f"model_lvl{q}." for q in range(levels - 1, level - 1, -1))


def _split(key: str) -> tuple[tuple[int, ...], str]:
    """``'model_lvl2.model_lvl1.up.weight'`` -> ``((2, 1), 'up.weight')``."""
    chain: list[int] = []
    rest = key
    while (m := _NEST.match(rest)) is not None:
        chain.append(int(m.group(1)))
        rest = rest[m.end() :]
    return tuple(chain), rest


def _levels_of(keys: list[str]) -> int:
    """Pyramid levels implied by the nesting of ``keys`` (every chain must be a prefix of the deepest)."""
    if not keys:
        raise ValueError("empty state dict")
    levels = max(len(_split(k)[0]) for k in keys) + 1
    for k in keys:
        chain, _ = _split(k)
        if chain != tuple(range(levels - 1, levels - 1 - len(chain), -1)):
            raise ValueError(f"unexpected nesting in key {k!r}: a {levels}-level authors' model nests {level_prefix(1, levels)!r} ... ''")
    return levels


def infer_authors_layout(sd: Mapping[str, torch.Tensor]) -> AuthorsLayout:
    """Levels (nesting depth + 1), ``start_channel`` (output channels of the coarsest level's first
    conv / 4) and image channels (its input channels / 2: moving and fixed are concatenated).
    ``ValueError`` for a dict that is not an authors' LapIRN state dict."""
    levels = _levels_of(list(sd))
    first = level_prefix(1, levels) + "input_encoder_lvl1.0.weight"
    if first not in sd:
        raise ValueError(f"missing key {first!r}: not a {levels}-level authors' LapIRN state dict")
    shape = tuple(sd[first].shape)
    if len(shape) != 5 or shape[0] % 4 or shape[1] % 2:
        raise ValueError(f"{first!r} has shape {shape}; expected (4 * start_channel, 2 * in_channels, 3, 3, 3)")
    return AuthorsLayout(levels=levels, start_channel=shape[0] // 4, in_channels=shape[1] // 2)


def _expected_shapes(layout: AuthorsLayout) -> dict[str, tuple[int, ...]]:
    """Our key -> shape for a model of that layout (``LapIRN``'s state dict)."""
    w = 4 * layout.start_channel
    out: dict[str, tuple[int, ...]] = {}
    for p in range(layout.levels):
        cin = 2 * layout.in_channels + (0 if p == 0 else 3)
        level = {
            "encoder.0.weight": (w, cin, 3, 3, 3),
            "encoder.2.weight": (w, w, 3, 3, 3),
            "down.weight": (w, w, 3, 3, 3),
            **{f"blocks.{i}.conv{j}.weight": (w, w, 3, 3, 3) for i in _BLOCK_INDICES for j in (1, 2)},
            "up.weight": (w, w, 2, 2, 2),
            "head.0.weight": (w, 2 * w, 3, 3, 3),
            "head.2.weight": (3, w, 3, 3, 3),
        }
        out.update({f"nets.{p}.{k}": v for k, v in level.items()})
    return out


def map_authors_state_dict(sd: Mapping[str, torch.Tensor], target: Mapping[str, torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
    """An authors' LapIRN state dict renamed to :class:`~pipeline.model.lapirn.LapIRN`'s keys
    (the same tensor objects). Keys and shapes are checked against ``target`` (our model's
    ``state_dict()``), else against the shapes the inferred layout implies. ``ValueError``
    naming every unknown key (e.g. a DataParallel ``module.`` prefix), missing key and shape mismatch."""
    layout = infer_authors_layout(sd)
    unknown: list[str] = []
    out: dict[str, torch.Tensor] = {}
    for key, tensor in sd.items():
        chain, suffix = _split(key)
        if suffix not in SUFFIX_MAP:
            unknown.append(key)
            continue
        out[f"nets.{layout.levels - len(chain) - 1}.{SUFFIX_MAP[suffix]}"] = tensor
    expected = {k: tuple(v.shape) for k, v in target.items()} if target is not None else _expected_shapes(layout)
    missing = sorted(set(expected) - set(out))
    extra = sorted(set(out) - set(expected))
    mismatched = sorted(f"{k}: authors {tuple(out[k].shape)} vs expected {expected[k]}"
                        for k in set(out) & set(expected) if tuple(out[k].shape) != tuple(expected[k]))
    problems = []
    if unknown:
        problems.append("unknown authors' keys: " + ", ".join(unknown))
    if missing:
        problems.append("missing (our keys with no authors' tensor): " + ", ".join(authors_key(k, layout.levels) for k in missing))
    if extra:
        problems.append("mapped keys absent from the target: " + ", ".join(extra))
    if mismatched:
        problems.append("shape mismatches: " + "; ".join(mismatched))
    if problems:
        raise ValueError(f"cannot map an authors' LapIRN state dict ({layout.levels} levels, start_channel "
                         f"{layout.start_channel}):\n  " + "\n  ".join(problems))
    return out


def authors_key(our_key: str, levels: int) -> str:
    """The authors' name of one of our keys (``nets.0.up.weight`` -> ``model_lvl2.model_lvl1.up.weight``)."""
    m = re.fullmatch(r"nets\.(\d+)\.(.+)", our_key)
    inverse = {v: k for k, v in SUFFIX_MAP.items()}
    if m is None or m.group(2) not in inverse or not 0 <= int(m.group(1)) < levels:
        return our_key  # not a key the authors' model has: shown as ours
    return level_prefix(int(m.group(1)) + 1, levels) + inverse[m.group(2)]


def load_authors_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """An authors' checkpoint as a plain state dict, loaded with ``weights_only=True`` on the CPU.

    ``DataError`` naming the file when it is missing, cannot be loaded safely (not a torch file,
    or a pickle with arbitrary objects), is one of this project's checkpoints, or is not a
    mapping of parameter names to tensors.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: file not found")
    try:
        sd = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises UnpicklingError, RuntimeError, EOFError, ...
        raise DataError(f"{path}: cannot be loaded as a torch state dict with weights_only=True "
                        f"({type(exc).__name__}: {str(exc).splitlines()[0][:200] if str(exc) else ''})") from exc
    if isinstance(sd, Mapping) and "format" in sd and "model" in sd:
        raise DataError(f"{path}: already a checkpoint of this project ({sd.get('format')}), not an authors' state dict")
    if not isinstance(sd, Mapping) or not sd:
        raise DataError(f"{path}: not a state dict (an empty or non-mapping {type(sd).__name__})")
    bad = [str(k) for k, v in sd.items() if not isinstance(k, str) or not isinstance(v, torch.Tensor)]
    if bad:
        raise DataError(f"{path}: not a state dict: {len(bad)} entries are not named tensors (e.g. {', '.join(bad[:3])})")
    return dict(sd)
