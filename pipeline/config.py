"""Typed, frozen run configuration, loaded from JSON; every value is checked when it is loaded.

A configuration file has up to five sections, each optional (defaults below):

```json
{"preprocess": {...}, "model": {...}, "loss": {...}, "train": {...}, "predict": {...}}
```

Task configurations live in ``configs/``; the resolved configuration is written into every
run folder. Checks (:func:`load_config`), table-driven, every problem of a file listed at once
(one ``FILE: key: value (allowed: ...)`` line each, in one ``DataError``):

* unknown keys are refused (keys starting with ``_``, e.g. ``"_comment"``, are notes);
* the **type** of each value follows its type hint: ``int`` only JSON integers (not ``true``,
  not ``4.0``), ``float`` any finite number, ``bool`` only ``true``/``false``, ``str``,
  ``tuple[int, ...]`` a list, ``tuple[float, float] | None`` ``null`` or a list of two numbers,
  ``float | None`` ``null`` or a number;
  ``str | float`` a string of the field's choices or a number within its bounds;
* the **range** of each value comes from its field's ``metadata["allowed"]`` (:class:`Allowed`:
  bounds on a number or on every item of a list, choices of a string, increasing items);
* **rules across fields** (:data:`_RULES`): one ``train.steps_per_level`` entry per
  ``model.levels``, a warm-up shorter than every trained level, at most one of
  ``predict.input_scale`` (other than 1) and ``predict.target_spacing``.

The same checks run when a section is built in code (``DataError`` naming the class).
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import math
import operator
import types
from collections.abc import Callable
from dataclasses import dataclass, field, fields, is_dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any, get_args, get_type_hints

from learn2reg.io import DataError, read_json


@dataclass(frozen=True)
class Allowed:
    """What a field accepts beyond its type hint: bounds (``ge`` >=, ``gt`` >, ``le`` <=, ``lt`` <)
    on a number or on every item of a list, ``choices`` of a string, list items ``increasing``."""

    ge: float | None = None
    gt: float | None = None
    le: float | None = None
    lt: float | None = None
    choices: tuple[str, ...] = ()
    increasing: bool = False

    def bounds(self) -> list[tuple[str, Callable[[Any, Any], bool], float]]:
        ops = (("ge", ">=", operator.ge), ("gt", ">", operator.gt), ("le", "<=", operator.le), ("lt", "<", operator.lt))
        return [(sign, op, getattr(self, name)) for name, sign, op in ops if getattr(self, name) is not None]

    def admits(self, number: float) -> bool:
        return all(op(number, bound) for _, op, bound in self.bounds())

    def describe_bounds(self) -> str:
        return " and ".join(f"{sign} {bound}" for sign, _, bound in self.bounds())


def _spec(default: Any, **allowed: Any) -> Any:
    """A dataclass field with a default and what it accepts (:class:`Allowed` keywords)."""
    return field(default=default, metadata={"allowed": Allowed(**allowed)})


class _Checked:
    """Mixin of the configuration dataclasses: every field's type and range checked on construction."""

    def __post_init__(self) -> None:
        problems = _field_problems(self, type(self).__name__)
        if problems:
            raise DataError("\n".join(problems))


@dataclass(frozen=True)
class PreprocessConfig(_Checked):
    """How images become network input. ``window``: CT window **in HU** (clip, then [0, 1]);
    without it, [min, ``percentile``-th percentile] -> [0, 1] (background 0).

    ``hu_offset``: what the stored CT values add to HU (stored = HU + offset), used only with a
    ``window``: a number (0 for data stored in HU, as the current Learn2Reg tasks; 1024 for the
    2020 lung data), or ``"auto"`` to detect it per image (``pipeline.data.preprocess.detect_hu_offset``:
    +1024 when the image minimum is about 0 and the air level about 0-100, 0 when the air level
    is about -1000; anything else is taken as HU with a warning naming the file)."""

    half_resolution: bool = False
    window: tuple[float, float] | None = _spec(None, increasing=True)
    hu_offset: str | float = _spec("auto", choices=("auto",), ge=-32768, le=32768)
    percentile: float = _spec(99.5, gt=0, le=100)
    # mm: the network grid at this spacing per axis, corner-aligned with the image (replaces
    # half_resolution); null: the image grid (or its half). E.g. 1 to fine-tune the published
    # 1 mm weights at the spacing they expect on a 2 mm task.
    target_spacing: float | None = _spec(None, gt=0)


@dataclass(frozen=True)
class ModelConfig(_Checked):
    """LapIRN: ``levels`` pyramid levels, width ``start_channel`` (C = 4 * start_channel).
    Numerics (see ``pipeline.model.lapirn``): ``align_corners`` of the trilinear upsampling of a
    coarser level's flow (the authors' code: false), ``warp_padding`` of image warps ("border",
    the authors' code, or "zeros"). Inputs are padded to a multiple of 2^levels, hence at most 5."""

    levels: int = _spec(3, ge=1, le=5)
    start_channel: int = _spec(7, ge=1)
    diffeomorphic: bool = False
    range_flow: float = _spec(0.4, gt=0)
    ss_steps: int = _spec(7, ge=0)
    align_corners: bool = True
    warp_padding: str = _spec("border", choices=("border", "zeros"))


@dataclass(frozen=True)
class LossConfig(_Checked):
    """LapIRN's loss (see ``pipeline.model.losses.level_loss``): similarity pyramid of local NCC
    (windows fixed by the level, eps 1e-5), smoothness lambda / 2^(L-p) in the public code's
    units (``smooth_unit`` 2), Dice on warped labels (> 0 only where the task has training
    labels), anti-folding penalty, similarity inside the fixed mask (``use_mask``). Weights >= 0."""

    eps: float = _spec(1e-5, gt=0)
    smooth: float = _spec(1.0, ge=0)
    smooth_unit: float = _spec(2.0, gt=0)
    dice: float = _spec(0.0, ge=0)
    antifold: float = _spec(0.0, ge=0)
    use_mask: bool = False


@dataclass(frozen=True)
class AugmentConfig(_Checked):
    """The seed paper's affine augmentation (see ``pipeline.training.augment``): with probability
    ``prob``, rotations up to ``rotation_deg``, scaling 1 +- ``scaling`` (< 1: no flips or
    collapse), translation up to ``translation`` (normalised units, fraction of the half-extent)."""

    prob: float = _spec(0.1, ge=0, le=1)
    rotation_deg: float = _spec(10.0, ge=0, le=180)
    translation: float = _spec(0.05, ge=0, le=1)
    scaling: float = _spec(0.08, ge=0, lt=1)


@dataclass(frozen=True)
class TrainConfig(_Checked):
    """Progressive schedule: ``steps_per_level[p]`` steps at level p+1 (0: the level is skipped),
    levels below frozen for the first ``freeze_steps`` of each level after the first. Learning
    rate per level (each level starts a fresh Adam): ``lr`` throughout (``lr_schedule``
    "constant", the authors' code) or a linear warm-up over ``warmup_steps`` then a cosine decay
    to 0 at the level's last step ("cosine"). ``cpu_threads``: with the CLI's passive OpenMP
    waiting, every parallel region wakes its sleeping threads; LapIRN's many small ops make one
    thread faster than two on the demo grids (see ``configs/demo_t4_hippocampus.json``).
    ``frozen_levels``: levels (1-based) that never train, e.g. ``[1, 2]`` to fine-tune only the
    finest level of weights given by ``train --init``."""

    steps_per_level: tuple[int, ...] = _spec((30000, 30000, 60000), ge=0)
    freeze_steps: int = _spec(2000, ge=0)
    frozen_levels: tuple[int, ...] = _spec((), ge=1, increasing=True)
    lr: float = _spec(1e-4, gt=0)
    lr_schedule: str = _spec("constant", choices=("constant", "cosine"))
    warmup_steps: int = _spec(0, ge=0)
    val_every: int = _spec(1000, ge=1)
    checkpoint_every: int = _spec(1000, ge=1)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    exclude_val_subjects: bool = True
    seed: int = _spec(0, ge=0, le=2**32 - 1)
    amp: str = _spec("bf16", choices=("bf16", "fp16", "none"))  # autocast is used on GPU only
    deterministic: bool = False
    cpu_threads: int = _spec(0, ge=0)  # torch intra-op threads while training on CPU (0: torch's default)


@dataclass(frozen=True)
class PredictConfig(_Checked):
    """Inference: optional affine pre-alignment, the network, and instance optimisation, which
    refines each field at test time. ``network``: "lapirn" (a trained run: ``predict --run``) or
    "none" (no network and no checkpoint: ``predict --config``; the field is the affine stage's,
    the identity with ``affine`` "none", refined by instance optimisation from there when
    ``instance_opt_steps`` > 0: registration without training, ConvexAdam-style).
    ``affine_only`` true is the older spelling of ``network`` "none" (the seed paper's task 1),
    kept so that existing configurations and their output hashes stay valid; read
    :attr:`uses_network`, not either key. The network's grid
    (``pipeline.data.preprocess.scaled_shape``): the preprocessing grid scaled by ``input_scale``
    (2: twice as fine, e.g. a 2 mm task at the 1 mm the published weights expect), or the image
    grid at ``target_spacing`` mm per axis (replaces ``half_resolution``); at most one of the two."""

    affine: str = _spec("none", choices=("none", "rigid", "affine"))
    affine_search_mm: float = _spec(0.0, ge=0)  # exhaustive translation search radius before L-BFGS (0 = off)
    # the pre-alignment's plausibility (pipeline.affine.bounds; README "The affine pre-alignment"): bounds
    # around the start, and what becomes of a result at one ("refuse" is align's alone: predict writes every field)
    affine_max_rotation_deg: float = _spec(15.0, gt=0, le=90)  # each rotation-vector component, degrees
    affine_max_translation: float = _spec(0.2, gt=0)  # per axis, fraction of the fixed image's mean extent
    affine_on_implausible: str = _spec("fallback", choices=("fallback", "warn"))
    affine_only: bool = False
    network: str = _spec("lapirn", choices=("lapirn", "none"))
    # instance optimisation (pipeline.model.instance_opt): Adam steps (0 = off), learning rate
    # (control-grid voxels), diffusion weight of the correction, control-grid spacing (voxels),
    # voxels sampled per step, fold repair of the result, similarity, coarse-to-fine levels (steps each)
    instance_opt_steps: int = _spec(0, ge=0)
    instance_opt_lr: float = _spec(0.5, gt=0)
    instance_opt_smooth: float = _spec(0.3, ge=0)
    instance_opt_grid: int = _spec(2, ge=1)
    instance_opt_points: int = _spec(65536, ge=1)
    instance_opt_unfold: bool = True
    instance_opt_similarity: str = _spec("mind", choices=("mind", "lncc"))  # sampled MIND-SSC, or dense local NCC (mono-modal)
    instance_opt_levels: int = _spec(1, ge=1, le=4)  # coarse-to-fine levels (1: the fixed grid only; 2: half, then full)
    instance_opt_window: int = _spec(9, ge=1, le=31)  # lncc: the local window (voxels, odd); 3-5 follow finer detail
    instance_opt_presmooth: float = _spec(0.0, ge=0)  # Gaussian sigma (fixed-grid voxels) of the start field first; 0 = off
    amp: str = _spec("bf16", choices=("bf16", "fp16", "none"))
    input_scale: float = _spec(1.0, gt=0)  # network grid spacing = preprocessing grid spacing / input_scale
    target_spacing: float | None = _spec(None, gt=0)  # mm; network grid spacing per axis, from the fixed image's spacing

    @property
    def uses_network(self) -> bool:
        """Whether prediction runs a trained network (``network`` "lapirn" and not ``affine_only``)."""
        return self.network != "none" and not self.affine_only


@dataclass(frozen=True)
class RunConfig(_Checked):
    """The five sections; the rules across sections (:data:`_RULES`) are checked on construction."""

    preprocess: PreprocessConfig = field(default_factory=PreprocessConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    predict: PredictConfig = field(default_factory=PredictConfig)

    def __post_init__(self) -> None:
        problems = _field_problems(self, "RunConfig") + _rule_problems(self, set())
        if problems:
            raise DataError("\n".join(problems))

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def digest(self, *sections: str) -> str:
        """Short stable hash of the given sections (all if none), for caches and manifests; the
        :data:`LATER_KEYS` at their defaults are left out, so earlier hashes stand."""
        d = self.to_dict()
        for dotted, default in LATER_KEYS.items():
            section, name = dotted.split(".")
            if d[section].get(name) == default:
                del d[section][name]
        picked = {k: d[k] for k in (sections or d)}
        return hashlib.sha256(json.dumps(picked, sort_keys=True).encode()).hexdigest()[:16]


#: Keys added after run folders and prediction outputs were made with this format, with their
#: defaults: the behaviour before the key existed. An older resolved configuration that lacks
#: one means its default (:func:`with_later_keys`), and :meth:`RunConfig.digest` leaves one at
#: its default out, so that earlier outputs keep their hash and earlier runs can be resumed.
LATER_KEYS: dict[str, Any] = {"predict.network": "lapirn", "predict.instance_opt_levels": 1, "predict.instance_opt_similarity": "mind",
                              "predict.affine_max_rotation_deg": 15.0, "predict.affine_max_translation": 0.2,
                              "predict.affine_on_implausible": "fallback", "predict.instance_opt_window": 9,
                              "predict.instance_opt_presmooth": 0.0}


def with_later_keys(resolved: Any) -> Any:
    """A resolved configuration (``RunConfig.to_dict()``, e.g. an older run's ``config.json``)
    with every :data:`LATER_KEYS` entry it lacks set to its default; anything else unchanged."""
    if not isinstance(resolved, dict):
        return resolved
    out = dict(resolved)
    for dotted, default in LATER_KEYS.items():
        section, name = dotted.split(".")
        if isinstance(out.get(section), dict) and name not in out[section]:
            out[section] = {**out[section], name: default}
    return out


# ---------------------------------------------------------------------- one value against its field

_ANY = Allowed()
_SCALARS = {bool: ("true or false", ""), int: ("an integer", "integers"), float: ("a number", "numbers"), str: ("a string", "strings")}
@functools.cache
def _hints(cls: type) -> dict[str, Any]:
    """The resolved type hints of a config dataclass (cached: read once per class)."""
    return get_type_hints(cls)


def _show(value: Any) -> str:
    """A value as it reads in the file (JSON)."""
    try:
        return json.dumps(value)
    except (TypeError, ValueError):
        return repr(value)


def _optional(hint: Any) -> Any | None:
    """``X`` of a hint ``X | None``; ``None`` for any other hint."""
    args = get_args(hint)
    return next(a for a in args if a is not type(None)) if type(None) in args else None


def _union(hint: Any) -> tuple[Any, ...]:
    """The members of a union of scalars without ``None`` (``str | float``); ``()`` otherwise.
    ``allowed.choices`` then apply to the string member, the bounds to the number member."""
    args = get_args(hint)
    return args if isinstance(hint, types.UnionType) and type(None) not in args else ()


def _describe(hint: Any, allowed: Allowed) -> str:
    """What a field accepts, in words (``a list of integers >= 0``)."""
    if _optional(hint) is not None:
        return "null or " + _describe(_optional(hint), allowed)
    if _union(hint):
        return " or ".join(_describe(member, allowed) for member in _union(hint))
    if is_dataclass(hint):
        return "an object with the keys " + ", ".join(f.name for f in fields(hint))
    if hint is str and allowed.choices:
        if len(allowed.choices) == 1:
            return json.dumps(allowed.choices[0])
        return "one of " + ", ".join(json.dumps(c) for c in allowed.choices)
    bounds = (" " + allowed.describe_bounds()) if allowed.bounds() else ""
    if hint in _SCALARS:
        return _SCALARS[hint][0] + bounds
    args = get_args(hint)
    count = "" if args[-1] is Ellipsis else f"{len(args)} "
    order = ", strictly increasing" if allowed.increasing else ""
    return f"a list of {count}{_SCALARS[args[0]][1]}{bounds}{order}"


def _scalar_ok(hint: type, allowed: Allowed, value: Any) -> bool:
    if hint is bool:
        return isinstance(value, bool)
    if hint is str:
        return isinstance(value, str) and (not allowed.choices or value in allowed.choices)
    if isinstance(value, bool) or not isinstance(value, int if hint is int else (int, float)):
        return False
    return (isinstance(value, int) or math.isfinite(value)) and allowed.admits(value)


def _check(hint: Any, allowed: Allowed, value: Any, key: str) -> list[str]:
    """Problems of one value (``KEY: VALUE (allowed: ...)``); a list's bad items are named by index."""
    bad = [f"{key}: {_show(value)} (allowed: {_describe(hint, allowed)})"]
    if _optional(hint) is not None:
        return [] if value is None or not _check(_optional(hint), allowed, value, key) else bad
    if _union(hint):
        return [] if any(not _check(member, allowed, value, key) for member in _union(hint)) else bad
    if isinstance(hint, type) and is_dataclass(hint):
        return [] if isinstance(value, hint) else bad
    if hint in _SCALARS:
        return [] if _scalar_ok(hint, allowed, value) else bad
    args = get_args(hint)  # tuple[T, ...] or tuple[T1, T2, ...]
    if not isinstance(value, (list, tuple)) or (args[-1] is not Ellipsis and len(value) != len(args)):
        return bad
    item_hints = [args[0]] * len(value) if args[-1] is Ellipsis else args
    each = dataclasses.replace(allowed, increasing=False)
    items = [p for i, (h, v) in enumerate(zip(item_hints, value, strict=True)) for p in _check(h, each, v, f"{key}[{i}]")]
    if items:
        return items
    return bad if allowed.increasing and any(a >= b for a, b in zip(value, value[1:], strict=False)) else []


def _field_problems(obj: Any, prefix: str) -> list[str]:
    """Every field of a built dataclass against its type hint and ``metadata["allowed"]``."""
    cls: type = type(obj)
    hints = _hints(cls)
    return [p for f in fields(obj) for p in _check(hints[f.name], f.metadata.get("allowed", _ANY), getattr(obj, f.name), f"{prefix}.{f.name}")]


# ---------------------------------------------------------------------- rules across fields


def _steps_match_levels(c: Any) -> str | None:
    steps, levels = c.train.steps_per_level, c.model.levels
    if len(steps) != levels:
        return f"train.steps_per_level: {_show(steps)} (allowed: a list of {levels} entries, one per model level (model.levels = {levels}))"
    if not any(steps):
        return f"train.steps_per_level: {_show(steps)} (allowed: at least one level with steps > 0)"
    return None


def _frozen_levels_exist(c: Any) -> str | None:
    frozen, levels, steps = c.train.frozen_levels, c.model.levels, c.train.steps_per_level
    if any(p > levels for p in frozen):
        return f"train.frozen_levels: {_show(frozen)} (allowed: levels 1..{levels} (model.levels = {levels}))"
    idle = [p for p in range(1, levels + 1) if p <= len(steps) and steps[p - 1] > 0 and all(q in frozen for q in range(1, p + 1))]
    if idle:
        return (f"train.frozen_levels: {_show(frozen)} (allowed: a level at or below each level with steps left to train; "
                f"level {idle[0]} has {steps[idle[0] - 1]} steps (train.steps_per_level {_show(steps)}) and nothing to train)")
    return None


def _warmup_fits(c: Any) -> str | None:
    t = c.train
    if t.lr_schedule == "constant":
        ok, allowed = t.warmup_steps == 0, '0 with train.lr_schedule "constant" (no warm-up)'
    else:
        trained = [s for s in t.steps_per_level if s > 0]
        ok = not trained or t.warmup_steps < min(trained)
        allowed = f"fewer than the steps of every trained level: < {min(trained, default=0)} (train.steps_per_level {_show(t.steps_per_level)})"
    return None if ok else f"train.warmup_steps: {t.warmup_steps} (allowed: {allowed})"


def _odd_window(c: Any) -> str | None:
    w = c.predict.instance_opt_window
    return None if w % 2 == 1 else f"predict.instance_opt_window: {w} (allowed: an odd number of voxels, centred on each voxel)"


def _one_grid_rule(c: Any) -> str | None:
    p = c.predict
    if p.target_spacing is None or p.input_scale == 1:
        return None
    return (f"predict.target_spacing: {_show(p.target_spacing)} (allowed: null when predict.input_scale is not 1 "
            f"(predict.input_scale = {_show(p.input_scale)}): give one of the two)")


# (keys each rule reads, rule): a rule is skipped when one of its keys already has a problem
_RULES: tuple[tuple[tuple[str, ...], Callable[[Any], str | None]], ...] = (
    (("model.levels", "train.steps_per_level"), _steps_match_levels),
    (("train.lr_schedule", "train.warmup_steps", "train.steps_per_level"), _warmup_fits),
    (("model.levels", "train.steps_per_level", "train.frozen_levels"), _frozen_levels_exist),
    (("predict.input_scale", "predict.target_spacing"), _one_grid_rule),
    (("predict.instance_opt_window",), _odd_window),
)


def _rule_problems(c: Any, bad: set[str]) -> list[str]:
    """Problems across fields of ``c`` (a ``RunConfig`` or its sections), skipping rules on ``bad`` keys."""
    found = []
    for keys, rule in _RULES:
        if any(k == b or k.startswith(b + ".") for k in keys for b in bad):
            continue
        problem = rule(c)
        if problem:
            found.append(problem)
    return found


# ---------------------------------------------------------------------- loading


def _values(cls: type, raw: Any, key: str, problems: list[str], bad: set[str]) -> dict[str, Any]:
    """Keyword arguments of ``cls`` from a JSON object: lists become tuples; each unknown key or
    bad value is recorded in ``problems`` (its key in ``bad``) and left out, so its default stands."""
    names = [f.name for f in fields(cls)]
    if not isinstance(raw, dict):
        problems.append(f"{key + ': ' if key else ''}{_show(raw)} (allowed: {_describe(cls, _ANY)})")
        bad.add(key)
        return {}
    hints, allowed = _hints(cls), {f.name: f.metadata.get("allowed", _ANY) for f in fields(cls)}
    values = {}
    for name, value in raw.items():
        dotted = f"{key}.{name}" if key else name
        if name.startswith("_"):  # "_comment" keys are notes
            continue
        if name not in allowed:
            problems.append(f"{dotted}: unknown key (allowed: {', '.join(names)})")
        elif is_dataclass(hints[name]):
            values[name] = hints[name](**_values(hints[name], value, dotted, problems, bad))
        else:
            value = tuple(value) if isinstance(value, list) else value
            found = _check(hints[name], allowed[name], value, dotted)
            problems.extend(found)
            if found:
                bad.add(dotted)
            else:
                values[name] = value
    return values


def config_from_dict(raw: Any, where: str = "config") -> RunConfig:
    """Build and check a configuration; ``DataError`` with one ``WHERE: key: ...`` line per problem."""
    problems: list[str] = []
    bad: set[str] = set()
    values = _values(RunConfig, raw, "", problems, bad)
    sections = SimpleNamespace(**{f.name: values[f.name] if f.name in values else f.default_factory() for f in fields(RunConfig)})  # type: ignore[operator]  # every RunConfig field has a default_factory
    problems += _rule_problems(sections, bad)
    if problems:
        raise DataError("\n".join(f"{where}: {p}" for p in problems))
    return RunConfig(**values)


def load_config(path: str | Path) -> RunConfig:
    """Read a JSON configuration; ``DataError`` naming the file, each bad key and its value."""
    return config_from_dict(read_json(path), where=str(path))


def differences(old: Any, new: Any, where: str = "") -> list[tuple[str, Any, Any]]:
    """``(dotted key, old value, new value)`` of every key whose value differs between two JSON-like
    trees (resolved configurations: ``RunConfig.to_dict()`` or their files; lists compared whole,
    tuples as lists; a key only one side has compares with ``None``)."""
    if isinstance(old, dict) and isinstance(new, dict):
        found = []
        for key in sorted(set(old) | set(new), key=str):
            found += differences(old.get(key), new.get(key), f"{where}.{key}" if where else str(key))
        return found
    as_json = list(new) if isinstance(new, tuple) else new
    return [] if old == as_json else [(where, old, as_json)]
