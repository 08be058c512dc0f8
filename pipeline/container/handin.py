"""What ``container`` writes beside the image, and the check run that measures it.

:func:`check_run` runs a built image on a task folder with the organiser's own command line
(``pipeline.container.contracts.organiser_command``), changed only where this machine needs it
(:class:`~pipeline.container.contracts.Deltas`: no ``--gpus`` without the NVIDIA runtime; and
``--network=none``, read-only inputs and ``--rm`` everywhere, each change reported), and reads the
entry point's summary line: seconds per pair, start-up, peak memory, CPUs, device.
:func:`manifest` is ``STEM.submission.json``; :func:`write_lumir_readme` the ``README.txt`` that
LUMIR's hand-in zip must hold (CPUs, RAM, time per subject).
"""

from __future__ import annotations

import logging
import os
import shlex
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from learn2reg.dataset import description_path
from learn2reg.io import DataError, atomic_open, read_nifti_header
from learn2reg.task import load_task
from pipeline.container.contracts import (
    PAIRS_FLAT,
    PAIRS_ONCOREG,
    Contract,
    Deltas,
    checked_command,
    organiser_command,
    wants_tty,
)
from pipeline.container.jobs import parse_summary

log = logging.getLogger(__name__)

#: How the hand-in files write the organiser's command lines (placeholders a reader fills in).
PLACEHOLDERS = {
    "json": "DATASET_JSON", "input": "INPUT_DIR", "output": "OUTPUT_DIR", "data": "DATA_DIR", "model": "MODEL_DIR",
    "results": "RESULTS_DIR", "task": "TASK", "mode": "Val", "json_name": "TASK_dataset.json", "uid": "$(id -u)", "gid": "$(id -g)",
}  # fmt: skip


def command_text(contract: Contract, image: str, train: bool = False) -> str:
    """The organiser's command line for ``image`` as text, with :data:`PLACEHOLDERS` for the host paths."""
    argv = organiser_command(contract, {**PLACEHOLDERS, "image": image}, train=train)
    return " ".join(a if a.startswith("$(") else shlex.quote(a) for a in argv)


def gpu_runtime() -> bool:
    """Whether the engine has the NVIDIA container runtime (``--gpus`` works)."""
    proc = subprocess.run(["docker", "info", "--format", "{{json .Runtimes}}"], capture_output=True, text=True, check=False)
    return proc.returncode == 0 and "nvidia" in proc.stdout


def _folder(path: Path) -> Path:
    """A folder the container writes: the host user's; open to every user when the host user is
    root, so that the image runs as its own non-root user rather than as root."""
    path.mkdir(parents=True)
    if os.geteuid() == 0:
        path.chmod(0o777)
    return path


def _flat_input(task_dir: Path, modality: str, dest: Path) -> Path:
    """ReMIND2Reg's flat input: the images of the task's validation and test pairs whose moving
    image has ``modality``, with their fixed images, side by side (hard links where possible)."""
    task = load_task(task_dir)
    dest.mkdir(parents=True)
    pairs = [p for split in ("val", "test") for p in task.pairs.get(split, ()) if task.case(p.moving).modality == modality]
    if not pairs:
        raise DataError(f"{task_dir}: no validation or test pair with a moving {modality} image to check the image with")
    for pair in pairs:
        for case_id in (pair.fixed, pair.moving):
            image = task.case(case_id).image
            if not (dest / image.name).exists():
                try:
                    os.link(image, dest / image.name)
                except OSError:
                    shutil.copyfile(image, dest / image.name)
    return dest


def mount_values(contract: Contract, task_dir: Path, modality: str | None, work: Path, fields: Path) -> dict[str, str]:
    """The organiser command line's placeholders for a check run on ``task_dir``: the fields go to
    ``fields`` (created), anything else the run needs (ReMIND2Reg's flat input, OncoReg's model) under ``work``."""
    values = {"uid": str(os.getuid()), "gid": str(os.getgid()), "mode": "Val"}
    if contract.pairs == PAIRS_FLAT:
        return {**values, "input": str(_flat_input(task_dir, modality or "", work / "input")), "output": str(_folder(fields))}
    json_path = description_path(task_dir)
    if json_path is None:
        raise DataError(f"{task_dir}: no *_dataset.json to check the image with")
    values.update(json=str(json_path), json_name=json_path.name, input=str(task_dir), data=str(task_dir),
                  task=json_path.name.removesuffix("_dataset.json"))
    if contract.pairs == PAIRS_ONCOREG:
        return {**values, "model": str(_folder(work / "model")), "results": str(_folder(fields))}
    return {**values, "output": str(_folder(fields))}


def run_docker(argv: list[str], timeout: float | None = None, env: Mapping[str, str] | None = None) -> tuple[int, str, float]:
    """Run a ``docker run`` command line (``env``: the environment, default this process's); one
    that asks for a terminal (``-it``) runs under a pseudo-terminal (``script``) when this process
    has none. Returns exit code, output (stdout then stderr), seconds."""
    if wants_tty(argv) and not sys.stdin.isatty():
        if shutil.which("script") is None:
            raise DataError("the organiser's command line asks for a terminal (-it) and `script` (util-linux) is missing to give it one")
        argv = ["script", "-qec", shlex.join(argv), "/dev/null"]
    started = time.perf_counter()
    proc = subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True, text=True, check=False, timeout=timeout,
                          env=dict(env) if env is not None else None)
    return proc.returncode, (proc.stdout + proc.stderr).replace("\r\n", "\n"), time.perf_counter() - started


def check_run(contract: Contract, image: str, task_dir: Path, modality: str | None, work: Path, fields: Path) -> dict[str, Any]:
    """Run ``image`` on ``task_dir`` as the organiser does (module docstring), its fields into
    ``fields`` (kept: on LUMIR's validation folder they are the validation predictions to hand in);
    OncoReg: ``./train.sh`` first when the image holds no trained weights, then ``./test.sh TASK Val``.
    ``DataError`` with the output's tail when the image fails."""
    values = {**mount_values(contract, task_dir, modality, work, fields), "image": image}
    deltas = Deltas(drop_gpus=not gpu_runtime())
    steps = [("train", True)] if contract.pairs == PAIRS_ONCOREG and not _has_weights(image) else []
    steps.append(("run", False))
    record: dict[str, Any] = {"task": str(task_dir), "fields_in": str(fields)}
    for name, train in steps:
        argv, changes = checked_command(contract, organiser_command(contract, values, train=train), deltas)
        log.info("check run (%s): %s", name, shlex.join(argv))
        for change in changes:
            log.info("  changed from the organiser's command line: %s", change)
        code, output, seconds = run_docker(argv)
        if code != 0:
            raise DataError(f"the image failed its check run on {task_dir} (exit {code}): {shlex.join(argv)}\n{output[-3000:]}")
        record[name] = {"command": shlex.join(argv), "changes": changes, "wall_s": round(seconds, 2), "summary": parse_summary(output)}
    out_dir = Path(values["results" if contract.pairs == PAIRS_ONCOREG else "output"])
    written = sorted(out_dir.glob("disp_*.nii.gz"))
    record["fields"] = len(written)
    record["field_shape"] = list(read_nifti_header(written[0]).shape) if written else None
    return record


def _has_weights(image: str) -> bool:
    proc = subprocess.run(["docker", "run", "--rm", "--network=none", "--entrypoint", "test", image, "-f",
                           "/app/submission/run/checkpoints/best.pt"], capture_output=True, check=False)
    return proc.returncode == 0


def per_pair(check: dict[str, Any] | None) -> dict[str, Any] | None:
    """Seconds per pair (mean, max), start-up, peak memory, CPUs and device of a check run."""
    summary = (check or {}).get("run", {}).get("summary")
    if not summary or not summary.get("pair_s"):
        return None
    times = summary["pair_s"]
    return {"pairs": len(times), "mean_s": round(statistics.fmean(times), 2), "median_s": round(statistics.median(times), 2),
            "max_s": round(max(times), 2),
            "startup_s": summary["startup_s"], "peak_rss_gib": summary["peak_rss_gib"], "cpus": summary["cpus"],
            "device": summary["device"], "peak_gpu_gib": summary.get("peak_gpu_gib"), "container_s": check["run"]["wall_s"]}  # type: ignore[index]


def manifest(contract: Contract, record: dict[str, Any], tag: str, out: Path, inspect: dict[str, Any], sha256: str,
             args: dict[str, str], check: dict[str, Any] | None, build_log: str) -> dict[str, Any]:
    """``STEM.submission.json``: what was built from what, how the organiser runs it, what it measured."""
    config = inspect.get("Config") or {}
    commands = {"load": f"docker load --input {out.name}"}
    if contract.train_command:
        commands["train"] = command_text(contract, tag, train=True)
    commands["run"] = command_text(contract, tag)
    return {
        "contract": contract.name, "title": contract.title, "template": contract.source, "rules": contract.rules,
        "image": {"tag": tag, "id": inspect.get("Id"), "size_bytes": inspect.get("Size"), "file": out.name,
                  "file_bytes": out.stat().st_size, "sha256": sha256, "workdir": config.get("WorkingDir"),
                  "entrypoint": config.get("Entrypoint"), "labels": config.get("Labels")},
        "run": record, "build_args": args, "organiser_commands": commands, "hand_in": contract.handin,
        "check": check, "measured": per_pair(check), "build_cached_steps": build_log.count("CACHED"),
    }  # fmt: skip


def write_lumir_readme(path: Path, manifest_: dict[str, Any]) -> None:
    """LUMIR's ``README.txt``: the requirements of running the image (CPUs, RAM, time per subject)."""
    m, image = manifest_.get("measured"), manifest_["image"]
    if m is None:
        measured = ["not measured: `python -m pipeline container ... --data TASK` runs the image on a LUMIR task folder and writes them"]
    else:
        where = manifest_["check"]["task"]
        field = manifest_["check"].get("field_shape") or []
        shape = "x".join(str(s) for s in (field[1:] if field[:1] == [3] else field[:3]))
        measured = [
            f"CPUs: {m['cpus']} (the image uses every CPU the container sees; a GPU is used when the container has one, none is needed)",
            f"RAM: {m['peak_rss_gib']:.1f} GiB peak measured; runs within the --memory 16g of test.sh",
            f"Time per subject (pair): {m['mean_s']:.1f} s mean, {m['median_s']:.1f} s median, {m['max_s']:.1f} s max "
            f"over {m['pairs']} pairs on {m['device']}, "
            f"plus {m['startup_s']:.0f} s start-up once",
            f"(measured on {where}, fields {shape}; the test images are 160x224x192, time grows with their size)",
        ]
    lines = [
        f"{image['file']}: LapIRN (l2r-lapirn) for the LUMIR 2024 test phase, image {image['tag']} ({manifest_['run']['source']})",
        "", *measured, "",
        "Run (the template's test.sh):",
        f"  {manifest_['organiser_commands']['load']}",
        f"  {manifest_['organiser_commands']['run']}",
        "Output: /output/disp_<fixed>_<moving>.nii.gz, 3 x 160 x 224 x 192 float32 voxel displacements (pull), one per pair of",
        "the json's 'validation' list; the image reads nothing else and fetches nothing.",
    ]
    with atomic_open(path) as handle:
        handle.write("\n".join(lines) + "\n")


def next_steps(manifest_: dict[str, Any]) -> list[str]:
    """What the command prints at the end: the file, how to try it as the organiser, what to hand in."""
    image = manifest_["image"]
    lines = [f"image: {image['file']} ({image['file_bytes'] / 1e6:.0f} MB; {image['tag']}, {image['size_bytes'] / 1e9:.2f} GB loaded)"]
    m = manifest_.get("measured")
    if m:
        lines.append(f"measured: {m['mean_s']:.2f} s per pair (median {m['median_s']:.2f}, max {m['max_s']:.2f}), "
                     f"start-up {m['startup_s']:.1f} s, "
                     f"peak memory {m['peak_rss_gib']:.2f} GiB, {m['cpus']} CPUs, {m['device']}")
    for name, text in manifest_["organiser_commands"].items():
        lines.append(f"the organiser's {name}: {text}")
    lines.append(f"hand in: {manifest_['hand_in']}")
    return lines
