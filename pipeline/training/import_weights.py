"""Import stage: ``python -m pipeline import-weights SRC.pth --out RUN [--variant disp|diff]``.

Turns one of the LapIRN authors' checkpoints (cwmok/LapIRN, e.g. the published
``weights/LapIRN_{disp,diff}_fea7.pth``) into a run folder that ``predict --run RUN`` uses like a
trained one:

* ``RUN/config.json``: a full run configuration whose model section reproduces the authors'
  numerics (:data:`pipeline.model.authors.AUTHORS_NUMERICS`: 3 levels, ``start_channel`` from the
  weights, ``diffeomorphic`` by variant, ``range_flow`` 0.4, 7 scaling-and-squaring steps,
  ``align_corners`` false, ``warp_padding`` "border") and whose preprocessing is theirs: min-max
  to [0, 1] (``percentile`` 100: the upper bound is the maximum; no CT window, full resolution);
  the other sections are the defaults;
* ``RUN/checkpoints/best.pt`` and ``last.pt`` (identical): our checkpoint format with the model
  configuration, the mapped weights and the provenance, no optimiser;
* ``RUN/imported.json``: provenance: source path and sha256, the published file it is (if any),
  variant and how it was decided, the authors' repository and commit, the licence.

The variant: ``--variant`` if given (refused when it contradicts a recognised published file),
else recognised from the sha256 of the two published files, else an error asking for
``--variant`` (the two files have identical keys and shapes). Everything is checked before the
first write; an existing run folder's files are never overwritten.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import Any

from learn2reg.io import DataError, check_output_path, write_json
from learn2reg.writers import hold_folder
from pipeline.config import ModelConfig, PreprocessConfig, RunConfig
from pipeline.model.authors import (
    AUTHORS_COMMIT,
    AUTHORS_LEVELS,
    AUTHORS_NUMERICS,
    AUTHORS_REPO,
    AUTHORS_SPACING_MM,
    COPYRIGHT,
    LICENSE_NAME,
    LICENSE_TEXT,
    VARIANTS,
    infer_authors_layout,
    load_authors_state_dict,
    map_authors_state_dict,
    published_file,
    sha256_file,
)
from pipeline.model.checkpoint import save_checkpoint
from pipeline.model.lapirn import LapIRN, LapIRNConfig
from pipeline.training.run_dir import fresh_run_dir

log = logging.getLogger(__name__)
RUN_FILES = ("config.json", "imported.json", "checkpoints/best.pt", "checkpoints/last.pt")
#: the authors normalise each image by its own minimum and maximum (``imgnorm``): our
#: ``normalise`` with the 100th percentile as the upper bound is exactly that
AUTHORS_PREPROCESS = PreprocessConfig(half_resolution=False, window=None, percentile=100.0)


def decide_variant(source: Path, digest: str, variant: str | None) -> tuple[str, str]:
    """(variant, how it was decided) for ``source`` with sha256 ``digest``; ``DataError`` when the
    variant cannot be recognised and was not given, or contradicts the published file."""
    known = published_file(digest)
    if variant is not None and variant not in VARIANTS:
        raise DataError(f"--variant {variant!r}: allowed: {', '.join(VARIANTS)}")
    if known is not None and variant is not None and variant != known.variant:
        raise DataError(f"{source}: is the authors' published {known.name} (sha256 {digest}), the {known.variant} variant; "
                        f"--variant {variant} contradicts it")
    if variant is not None:
        return variant, "--variant"
    if known is None:
        raise DataError(f"{source}: not one of the authors' published files (sha256 {digest}), and the displacement and "
                        f"diffeomorphic checkpoints have identical keys: pass --variant disp or --variant diff")
    return known.variant, f"sha256 of the published {known.name}"


def imported_config(start_channel: int, diffeomorphic: bool) -> RunConfig:
    """The run configuration that reproduces the authors' numerics and preprocessing (defaults elsewhere)."""
    model = ModelConfig(levels=AUTHORS_LEVELS, start_channel=start_channel, diffeomorphic=diffeomorphic, **AUTHORS_NUMERICS)
    return RunConfig(preprocess=AUTHORS_PREPROCESS, model=model)


def authors_model(source: Path, variant: str) -> tuple[LapIRN, RunConfig]:
    """Our LapIRN with the weights of the authors' checkpoint ``source`` and the run configuration
    that reproduces their numerics; ``DataError`` naming the file when it is not a complete
    3-level, one-channel authors' LapIRN (every unknown, missing or misshapen tensor listed)."""
    sd = load_authors_state_dict(source)
    try:
        layout = infer_authors_layout(sd)
    except ValueError as exc:
        hint = " (its keys start with 'module.': a DataParallel wrapper's state dict)" if all(k.startswith("module.") for k in sd) else ""
        raise DataError(f"{source}: not an authors' LapIRN state dict ({exc}){hint}") from exc
    if layout.levels != AUTHORS_LEVELS:
        raise DataError(f"{source}: a {layout.levels}-level authors' model; only the complete {AUTHORS_LEVELS}-level model can be "
                        "imported (their level-1/level-2 training snapshots predict at a fraction of their input's resolution)")
    if layout.in_channels != 1:
        raise DataError(f"{source}: {layout.in_channels} channels per image; the pipeline registers single-channel images")
    cfg = imported_config(layout.start_channel, diffeomorphic=variant == "diff")
    model = LapIRN(LapIRNConfig(**vars(cfg.model)))
    try:
        model.load_state_dict(map_authors_state_dict(sd, target=model.state_dict()), strict=True)
    except (ValueError, RuntimeError) as exc:
        raise DataError(f"{source}: not an authors' LapIRN checkpoint this project can use: {exc}") from exc
    return model.eval(), cfg


def provenance(source: Path, digest: str, variant: str, how: str) -> dict[str, Any]:
    """What ``imported.json`` records."""
    known = published_file(digest)
    return {
        "source": str(source.resolve()),
        "sha256": digest,
        "published_file": None if known is None else known.name,
        "variant": variant,
        "variant_from": how,
        "authors_repository": AUTHORS_REPO,
        "authors_commit": AUTHORS_COMMIT if known is not None else None,
        "licence": {"name": LICENSE_NAME, "copyright": COPYRIGHT, "text": LICENSE_TEXT} if known is not None else None,
        # what predict and register run the network at by default (pipeline.prediction.scale)
        "network_spacing_mm": list(AUTHORS_SPACING_MM),
        "network_spacing_from": "the authors' training data: OASIS brain MR at 1 mm (weights/README.md)"
        + ("" if known is not None else "; assumed for a checkpoint that is not one of the published files"),
        "note": ("weights from the authors' published checkpoint; model numerics and preprocessing as their code "
                 "(see config.json); the train and loss sections are this project's defaults, not the authors' training")
        if known is not None else "not one of the authors' published files: licence and origin unknown to this project",
    }


def refuse_existing(run_dir: Path) -> None:
    """``DataError`` before any work when ``run_dir`` cannot be written or already holds a run's files."""
    check_output_path(run_dir, folder=True)
    present = [name for name in RUN_FILES if (run_dir / name).exists()]
    if present:
        raise DataError(f"{run_dir}: already holds {', '.join(present)}; refusing to overwrite them (choose another --out)")


def import_weights(source: Path, run_dir: Path, variant: str | None = None) -> dict[str, Any]:
    """Write the run folder ``run_dir`` for the authors' checkpoint ``source``; returns the provenance.
    ``DataError`` (naming the file) for every refusal, before anything is written."""
    source = Path(source)
    refuse_existing(run_dir)
    if not source.is_file():
        raise DataError(f"{source}: file not found")
    digest = sha256_file(source)
    variant, how = decide_variant(source, digest, variant)
    model, cfg = authors_model(source, variant)
    record = provenance(source, digest, variant, how)
    payload = {
        "model_config": model.config.to_dict(),
        "run_config": cfg.to_dict(),
        "model": model.state_dict(),
        "optimizer": None,
        "state": {"imported": True, "level": cfg.model.levels, "step": 0, "global_step": 0},
        "imported": record,
    }
    with hold_folder(run_dir) as lock, fresh_run_dir(run_dir, created=lock.created):
        refuse_existing(run_dir)  # again, as the one writer: another import may have finished meanwhile
        for name in ("best.pt", "last.pt"):
            save_checkpoint(run_dir / "checkpoints" / name, payload)
        write_json(run_dir / "config.json", cfg.to_dict())
        write_json(run_dir / "imported.json", record)
    log.debug("imported %s (%s, variant %s from %s) into %s", source, digest[:12], variant, how, run_dir)
    return record


def build_parser(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("source", type=Path, metavar="SRC.pth", help="the authors' LapIRN checkpoint (a plain state dict)")
    parser.add_argument("--out", type=Path, required=True, help="run folder to create (refused if it holds a run)")
    parser.add_argument("--variant", choices=VARIANTS, default=None,
                        help="disp or diff (default: recognised from the sha256 of the published files)")


def run(args: argparse.Namespace) -> int:
    record = import_weights(args.source, args.out, args.variant)
    print(f"{args.out}: {record['variant']} variant ({record['published_file'] or 'unpublished file'}); "
          f"predict with: python -m pipeline predict --run {args.out} --data TASK --out SUB "
          f"(the network runs at the weights' {AUTHORS_SPACING_MM[0]:g} mm on any task)")
    return 0
