"""What a submission image registers under its contract: the pairs read from the mounted folders,
the checks made before any work, and the field files written (no torch here).

A :class:`Mounts` maps the contract's folders to paths (in the image: the contract's own paths;
in tests: temporary folders). :func:`pair_jobs` lists the pairs exactly as the organiser's
template reads them (``pipeline.container.contracts`` cites each rule); every problem with the
inputs is collected and raised at once as a ``DataError`` before the model is loaded, so an
incomplete mount ends the run with one message and writes nothing. :func:`write_field` writes
one field in the contract's layout and header, atomically.
"""

from __future__ import annotations

import json
import os
import re
import stat
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from learn2reg import rules
from learn2reg.dataset import read_description
from learn2reg.faults import peak_resident_bytes
from learn2reg.io import DataError, Geometry, read_nifti_header, save_nifti
from learn2reg.task import Case, derived_path
from pipeline.affine.fov import modality_name
from pipeline.container.contracts import PAIRS_FLAT, PAIRS_JSON, PAIRS_ONCOREG, Contract

_CASE = re.compile(r"^(?P<prefix>.+)_(?P<subject>\d{4})_(?P<modality>\d{4})\.nii\.gz$")
ULTRASOUND_MODALITY = "0000"  # ReMIND2Reg's fixed image: intra-operative ultrasound
ONCOREG_MODES = {"Val": "registration_val", "Ts": "registration_test"}
ONCOREG_RUN = "lapirn"  # train.sh's run folder under the model folder
SUMMARY = "summary "  # the prefix of a run's last line: "summary {json}"


@dataclass(frozen=True)
class Mounts:
    """The contract's folders and files as paths: ``json`` (a fixed dataset json, or ``None``),
    ``input`` (image paths are relative to it), ``output``, ``model`` (OncoReg)."""

    input: Path
    output: Path
    json: Path | None = None
    model: Path | None = None

    @classmethod
    def of(cls, contract: Contract) -> Mounts:
        """The contract's own paths (inside the image)."""
        return cls(
            input=Path(contract.input_dir), output=Path(contract.output_dir),
            json=Path(contract.json_path) if contract.json_path else None,
            model=Path(contract.model_dir) if contract.model_dir else None,
        )  # fmt: skip


@dataclass(frozen=True)
class Job:
    """One pair to register: the two cases, the field's file name, and the names of their
    modalities (fixed, moving) in the task's modality table, which ``predict`` gives the affine
    pre-alignment as hints for the images' fields of view (``pipeline.affine.fov.choose_fov``)."""

    fixed: Case
    moving: Case
    name: str
    modalities: tuple[str, str] = ("", "")


def case_of(path: Path) -> Case:
    """A case from an image path ``{prefix}_{SSSS}_{MMMM}.nii.gz``; its mask where the official
    naming rule puts one (``masksTr/`` beside ``imagesTr/``). ``DataError`` for another name."""
    match = _CASE.match(path.name)
    if match is None:
        raise DataError(f"{path}: file name does not end in _SSSS_MMMM.nii.gz")
    mask = derived_path(path, "masks")
    return Case(f"{match['subject']}_{match['modality']}", path, mask=mask if mask.is_file() else None)


def _job(contract: Contract, fixed: Path, moving: Path, table: Mapping[str, Any]) -> Job:
    f, m = case_of(fixed), case_of(moving)
    return Job(f, m, rules.disp_name(contract.rules, f.case_id, m.case_id), (modality_name(table, f), modality_name(table, m)))


def _under(root: Path, rel: str) -> Path:
    """``root`` + a json path, as the templates join them (``'/input/' + './imagesVal/x'``): a
    leading ``/`` does not leave ``root``."""
    return root / rel.lstrip("/")


def json_pairs(contract: Contract, json_path: Path, input_dir: Path, keys: tuple[str, ...]) -> tuple[list[Job], str, list[str]]:
    """The pairs of the first of ``keys`` that the json lists (non-empty), with the problems of
    its entries (missing images, bad entries); returns (jobs, key used, problems)."""
    meta = read_description(json_path)
    key = next((k for k in keys if isinstance(meta.get(k), list) and meta[k]), None)
    if key is None:
        raise DataError(f"{json_path}: no pairs under {' or '.join(repr(k) for k in keys)}")
    jobs, problems = [], []
    found = meta.get("modality")
    table: Mapping[str, Any] = found if isinstance(found, dict) else {}
    for i, entry in enumerate(meta[key]):
        where = f"{json_path} {key}[{i}]"
        if not isinstance(entry, dict) or not all(isinstance(entry.get(r), str) for r in ("fixed", "moving")):
            problems.append(f"{where}: expected an object with 'fixed' and 'moving' paths, got {entry!r}")
            continue
        paths = [_under(input_dir, entry[r]) for r in ("fixed", "moving")]
        missing = [str(p) for p in paths if not os.access(p, os.R_OK)]
        if missing:
            problems.append(f"{where}: image not found or not readable by uid {os.getuid()}: {', '.join(missing)}")
            continue
        try:
            jobs.append(_job(contract, paths[0], paths[1], table))
        except DataError as exc:
            problems.append(f"{where}: {exc}")
    return jobs, key, problems


def flat_pairs(contract: Contract, input_dir: Path, moving_modality: str) -> tuple[list[Job], list[str]]:
    """ReMIND2Reg: every ``{prefix}_{case}_{moving_modality}.nii.gz`` of ``input_dir`` (sorted
    by case, as the template) with its fixed ultrasound ``{prefix}_{case}_0000.nii.gz``."""
    found = sorted((m for m in map(_CASE.match, os.listdir(input_dir)) if m and m["modality"] == moving_modality),
                   key=lambda m: (m["subject"], m["prefix"]))
    if not found:
        raise DataError(f"{input_dir}: no image *_{moving_modality}.nii.gz (the moving sequence of this image); "
                        f"found {len(os.listdir(input_dir))} other file(s)")
    jobs, problems = [], []
    for m in found:
        fixed = input_dir / f"{m['prefix']}_{m['subject']}_{ULTRASOUND_MODALITY}.nii.gz"
        if not os.access(fixed, os.R_OK):
            problems.append(f"{input_dir / m.string}: its fixed image {fixed.name} is not in {input_dir}")
            continue
        jobs.append(_job(contract, fixed, input_dir / m.string, contract.modalities))
    return jobs, problems


def oncoreg_json(data_dir: Path, task: str) -> Path:
    """OncoReg's ``{task}_dataset.json`` in the data folder; ``DataError`` naming what is there instead."""
    path = data_dir / f"{task}_dataset.json"
    if not path.is_file():
        found = sorted(p.name for p in data_dir.glob("*_dataset.json")) if data_dir.is_dir() else []
        raise DataError(f"{path}: not found (the task argument names {{task}}_dataset.json in {data_dir}; there: {found or 'none'})")
    return path


def pair_jobs(contract: Contract, mounts: Mounts, *, json_arg: Path | None = None, moving_modality: str | None = None,
              task: str | None = None, mode: str | None = None, force_test: bool = False) -> tuple[list[Job], str]:
    """Every pair the contract's image registers, and where they come from (for the log).
    ``DataError`` listing every problem of the inputs (missing folders, json, images) at once."""
    if not mounts.input.is_dir():
        raise DataError(f"{mounts.input}: input folder not mounted (the organiser's command line binds it)")
    if not os.access(mounts.input, os.R_OK | os.X_OK):
        raise DataError(f"{mounts.input}: not readable by uid {os.getuid()} ({_owner(mounts.input)})")
    if contract.pairs == PAIRS_FLAT:
        jobs, problems = flat_pairs(contract, mounts.input, moving_modality or "")
        source = f"{len(jobs)} {moving_modality} image(s) of {mounts.input} with their {ULTRASOUND_MODALITY}"
    elif contract.pairs == PAIRS_ONCOREG:
        if mode not in ONCOREG_MODES:
            raise DataError(f"mode {mode!r}: test.sh takes <task> Val|Ts")
        json_path = oncoreg_json(mounts.input, task or "")
        jobs, key, problems = json_pairs(contract, json_path, mounts.input, (ONCOREG_MODES[mode],))
        source = f"{json_path} {key!r}"
    elif contract.pairs == PAIRS_JSON:
        given = json_arg or mounts.json
        if given is None or not given.is_file():
            raise DataError(f"{given or 'the dataset json'}: not found (the organiser's command line binds or names it)")
        keys = contract.json_keys[:1] if force_test else contract.json_keys
        jobs, key, problems = json_pairs(contract, given, mounts.input, keys)
        source = f"{given} {key!r}" + ("" if key == contract.json_keys[0] else f" (no {contract.json_keys[0]!r} pairs)")
    else:
        raise ValueError(f"unknown pair source {contract.pairs!r}")
    if problems:
        raise DataError(f"{len(problems)} problem(s) with the inputs:\n  " + "\n  ".join(problems))
    return jobs, source


# ------------------------------------------------------------------------------ output


def writable(path: Path, uid: int, gid: int) -> bool:
    """Whether ``uid``/``gid`` may create files in the folder ``path`` (its mode bits; root may)."""
    st = path.stat()
    if uid == 0:
        return True
    if st.st_uid == uid:
        return bool(st.st_mode & stat.S_IWUSR and st.st_mode & stat.S_IXUSR)
    if st.st_gid == gid:
        return bool(st.st_mode & stat.S_IWGRP and st.st_mode & stat.S_IXGRP)
    return bool(st.st_mode & stat.S_IWOTH and st.st_mode & stat.S_IXOTH)


def check_output(path: Path) -> None:
    """``DataError`` when the output folder is missing or this process may not write into it."""
    if not path.is_dir():
        raise DataError(f"{path}: output folder not mounted (the organiser's command line binds it)")
    if not os.access(path, os.W_OK | os.X_OK):
        raise DataError(f"{path}: not writable by uid {os.getuid()} ({_owner(path)}); run with --user UID:GID of its owner, or make it writable")


def _owner(path: Path) -> str:
    st = path.stat()
    return f"it belongs to uid {st.st_uid}, mode {stat.filemode(st.st_mode)}"


def write_field(contract: Contract, path: Path, u: np.ndarray, moving: Case) -> None:
    """One field, ``u`` (``X x Y x Z x 3`` voxels on the fixed grid), as the contract's template
    writes it: float32, channel-first for LUMIR, with an identity header (``np.eye(4)``, pixdim 1)
    or the moving image's affine; atomically."""
    array = np.asarray(u, dtype=np.float32)
    if contract.channel_first:
        array = np.ascontiguousarray(np.moveaxis(array, -1, 0))
    if contract.affine == "moving":
        save_nifti(path, array, read_nifti_header(moving.image))
    elif contract.affine == "identity":
        save_nifti(path, array, Geometry.from_affine(np.eye(4), array.shape))  # nibabel's eye(4), as the templates
    else:
        raise ValueError(f"unknown affine rule {contract.affine!r}")


def peak_memory_gib() -> float:
    """This process's peak resident memory (GiB; ``learn2reg.faults.peak_resident_bytes``)."""
    return peak_resident_bytes() / 2**30


def summary_line(record: dict[str, Any]) -> str:
    """A run's last log line: :data:`SUMMARY` and the record as JSON (what the check run parses)."""
    return SUMMARY + json.dumps(record, sort_keys=True)


def parse_summary(text: str) -> dict[str, Any] | None:
    """The record of the last summary line in a run's output (``None`` when there is none)."""
    found = None
    for line in text.splitlines():
        at = line.find(SUMMARY + "{")
        if at >= 0:
            found = json.loads(line[at + len(SUMMARY):])
    return found
