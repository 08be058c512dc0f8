"""``train --init SRC``: a new run that starts from existing weights (fine-tuning).

``SRC`` is one of:

* a run folder (``checkpoints/best.pt``), a trained run or one made by ``import-weights``;
* one of our checkpoint files (``*.pt`` written by ``train`` or ``import-weights``);
* an authors' LapIRN checkpoint (``*.pth``, e.g. ``weights/LapIRN_diff_fea7.pth``), recognised as
  ``import-weights`` recognises it (:func:`pipeline.training.import_weights.authors_model`): the
  variant from the sha256 of the published files, else from the configuration's
  ``model.diffeomorphic``.

The weights define the network, so the run's ``model`` section is the source's (a ``--config``
whose model section differs is logged, key by key, and overruled); every other section
(preprocessing, loss with Dice supervision and masks, schedule with ``train.frozen_levels``,
``preprocess.target_spacing`` for the spacing the weights expect) is the ``--config``'s. The
optimiser and the schedule start fresh. ``RUN/init.json`` records the source, what it is, the
sha256 of the file the weights were read from (and of the authors' file behind an imported
run), the model section taken and the spacing the source was trained at; ``--resume`` takes
the model section from it, so a resumed run is the same experiment.
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from learn2reg.io import DataError, read_json
from pipeline.config import ModelConfig, RunConfig
from pipeline.model.authors import AUTHORS_SPACING_MM, published_file, sha256_file
from pipeline.model.checkpoint import FORMAT, load_checkpoint
from pipeline.model.lapirn import LapIRNConfig
from pipeline.training.import_weights import authors_model, decide_variant

log = logging.getLogger(__name__)
INIT_RECORD = "init.json"


@dataclass(frozen=True)
class InitSource:
    """Weights to start a run from: ``state`` (our LapIRN's state dict), the ``model`` section
    they need, and ``record`` (what ``init.json`` keeps)."""

    state: dict[str, torch.Tensor]
    model: ModelConfig
    record: dict[str, Any]


def _model_section(config: LapIRNConfig, where: Path) -> ModelConfig:
    if config.in_channels != 1:
        raise DataError(f"{where}: a {config.in_channels}-channel model; the pipeline trains single-channel images")
    return ModelConfig(**{f.name: getattr(config, f.name) for f in dataclasses.fields(ModelConfig)})


def _ours(checkpoint: Path, kind: str, run_dir: Path | None) -> InitSource:
    ckpt = load_checkpoint(checkpoint)
    try:
        config = LapIRNConfig.from_dict(ckpt["model_config"])
    except (ValueError, TypeError, AttributeError) as exc:
        raise DataError(f"{checkpoint}: model_config is not a LapIRN configuration ({exc})") from exc
    record: dict[str, Any] = {"kind": kind, "checkpoint": str(checkpoint.resolve()), "sha256": sha256_file(checkpoint)}
    imported = ckpt.get("imported")
    if isinstance(imported, dict):  # an import-weights run: the authors' file behind it
        record["imported"] = {k: imported.get(k) for k in ("source", "sha256", "published_file", "variant")}
    spacing = _recorded_spacing(run_dir)
    if spacing is not None:
        record["trained_spacing_mm"] = spacing
    elif isinstance(imported, dict):
        record["trained_spacing_mm"] = imported.get("network_spacing_mm", list(AUTHORS_SPACING_MM))
    return InitSource(ckpt["model"], _model_section(config, checkpoint), record)


def _recorded_spacing(run_dir: Path | None) -> list[float] | None:
    """The spacing a run folder's network was trained at, as ``dataset.json`` or ``imported.json``
    record it (``network_spacing_mm``; read by ``pipeline.prediction.scale`` for prediction)."""
    for name in ("dataset.json", "imported.json"):
        path = run_dir / name if run_dir is not None else None
        if path is not None and path.is_file():
            record = read_json(path)
            value = record.get("network_spacing_mm") if isinstance(record, dict) else None
            if isinstance(value, list):
                return value
    return None


def _authors(path: Path, cfg: RunConfig) -> InitSource:
    digest = sha256_file(path)
    variant = None if published_file(digest) is not None else ("diff" if cfg.model.diffeomorphic else "disp")
    variant, how = decide_variant(path, digest, variant)
    if how == "--variant":
        how = "the configuration's model.diffeomorphic"
    model, run_cfg = authors_model(path, variant)
    known = published_file(digest)
    record = {"kind": "authors' checkpoint", "checkpoint": str(path.resolve()), "sha256": digest,
              "published_file": known.name if known else None, "variant": variant, "variant_from": how,
              "trained_spacing_mm": list(AUTHORS_SPACING_MM)}
    return InitSource(model.state_dict(), run_cfg.model, record)


def _is_ours(path: Path) -> bool:
    """Whether a file is one of our checkpoints (format tag), read safely."""
    try:
        raw = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises UnpicklingError, RuntimeError, EOFError, ...
        raise DataError(f"{path}: not a loadable torch file ({type(exc).__name__}: {str(exc)[:200]})") from exc
    return isinstance(raw, dict) and raw.get("format") == FORMAT


def load_init(source: Path, cfg: RunConfig) -> InitSource:
    """The weights ``source`` names (module docstring); ``DataError`` naming it when it is none of those."""
    source = Path(source)
    if source.is_dir():
        best = source / "checkpoints" / "best.pt"
        if not best.is_file():
            raise DataError(f"{source}: a folder without checkpoints/best.pt: not a run folder to start from")
        kind = "imported run" if (source / "imported.json").is_file() else "run folder"
        found = _ours(best, kind, source)
    elif not source.is_file():
        raise DataError(f"{source}: not found (--init takes a run folder, a checkpoint or an authors' .pth)")
    elif _is_ours(source):
        found = _ours(source, "checkpoint", source.parent.parent if source.parent.name == "checkpoints" else None)
    else:
        found = _authors(source, cfg)
    found.record["source"] = str(source.resolve())
    found.record["model"] = dataclasses.asdict(found.model)
    return found


def with_source_model(cfg: RunConfig, model: ModelConfig, source: str) -> RunConfig:
    """``cfg`` with the model section of the weights it starts from; each overruled key logged."""
    differs = [f"model.{k}: {getattr(cfg.model, k)!r} -> {v!r}" for k, v in dataclasses.asdict(model).items()
               if getattr(cfg.model, k) != v]
    if differs:
        log.warning("--init %s: the model section follows the weights (%s)", source, "; ".join(differs))
    return dataclasses.replace(cfg, model=model)


def resumed_model(run_dir: Path, cfg: RunConfig) -> RunConfig:
    """For ``--resume``: the configuration with the model section an ``--init`` run was started
    with (``init.json``), unchanged for other runs."""
    path = run_dir / INIT_RECORD
    if not path.is_file():
        return cfg
    record = read_json(path)
    try:
        model = ModelConfig(**record["model"])
    except (KeyError, TypeError, DataError) as exc:
        raise DataError(f"{path}: no usable model section ({exc})") from exc
    return dataclasses.replace(cfg, model=model)


def init_config(run_dir: Path, cfg: RunConfig, init: Path | None, resuming: bool) -> tuple[RunConfig, InitSource | None]:
    """The run's configuration and starting weights: ``--init``'s model section (fresh run), or
    the one ``init.json`` recorded (``--resume``; an ``--init`` given again must be the same weights)."""
    if resuming:
        cfg = resumed_model(run_dir, cfg)
    if init is None:
        return cfg, None
    source = load_init(init, cfg)
    if resuming:
        record = read_json(run_dir / INIT_RECORD) if (run_dir / INIT_RECORD).is_file() else {}
        if record.get("sha256") != source.record["sha256"]:
            raise DataError(f"{run_dir}: --resume --init {init}: the run started from {record.get('source', 'no --init')} "
                            f"(sha256 {record.get('sha256')}), not from these weights (sha256 {source.record['sha256']})")
        return cfg, source
    return with_source_model(cfg, source.model, str(init)), source


def check_init_spacing(source: InitSource, spacing: list[float]) -> None:
    """Log when the run trains at another spacing than its starting weights were trained at."""
    expected = source.record.get("trained_spacing_mm")
    if expected and any(abs(s / e - 1.0) > 0.05 for s, e in zip(spacing, expected, strict=True)):
        log.warning("--init: the weights were trained at %s mm; this run trains them at %s mm (its network grid); "
                    "set preprocess.target_spacing to train at the spacing they expect",
                    "x".join(f"{v:g}" for v in expected), "x".join(f"{v:.3g}" for v in spacing))
