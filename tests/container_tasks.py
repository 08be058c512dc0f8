"""The inputs of the submission-container tests: a demo task per contract layout and a run per kind.

* tasks: ``demo-data`` T4 (DemoHippocampusMR, the ``l2r`` layout), LUMIR (DemoLUMIR), ReMIND
  (DemoReMIND2Reg, whose validation patients become ReMIND2Reg's flat input: :func:`flat_input`),
  and an OncoReg-layout task made from T2 (DemoLungCT, intra-patient paired CT with masks and
  keypoints: :func:`oncoreg_task`);
* runs: the LapIRN authors' diffeomorphic weights imported (``import-weights``), a LapIRN trained
  for a few steps on T4, a network-free configuration (rigid pre-alignment only), and a small
  training configuration that OncoReg's ``train.sh`` trains inside the image.

Everything is written under a temporary folder and made readable by every user, as the organisers'
data are: the images run as a non-root user.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

from learn2reg import dataset
from learn2reg.eval_config import build_config
from learn2reg.io import write_json
from tests.paths import REPO

TASKS = {"l2r": "DemoHippocampusMR", "lumir": "DemoLUMIR", "remind2reg": "DemoReMIND2Reg", "lung": "DemoLungCT"}
ONCOREG = "OncoReg"
#: OncoReg's modalities: FBCT _0000 (moving), CBCT _0001 (fixed); DemoLungCT's are exhale _0000 (fixed), inhale _0001.
ONCOREG_FROM_LUNG = {"0000": "0001", "0001": "0000"}  # OncoReg modality -> DemoLungCT modality
TINY_T4 = {
    "_comment": "container tests: LapIRN trained for a few steps on T4 (demo T4's settings, 210 steps: ~1 min on 2 cores)",
    "preprocess": {"half_resolution": True},
    "model": {"start_channel": 4},
    "loss": {"smooth": 1.5, "dice": 3.0},
    "train": {"steps_per_level": [10, 80, 120], "freeze_steps": 5, "lr": 0.001, "val_every": 50, "checkpoint_every": 50, "cpu_threads": 1},
}
RIGID = {"_comment": "container tests: network-free, rigid pre-alignment only (ultrasound fields of view)",
         "predict": {"affine_only": True, "affine": "rigid"}}
ONCOREG_TRAINING = {
    "_comment": "container tests: OncoReg's train.sh trains this inside the image (demo T2's settings, few steps)",
    "preprocess": {"half_resolution": True, "window": [-924, 494]},
    "model": {"start_channel": 2},
    "loss": {"use_mask": True},
    "train": {"steps_per_level": [6, 6, 24], "freeze_steps": 0, "lr": 0.001, "val_every": 12, "checkpoint_every": 12, "cpu_threads": 1},
}


def pipeline(*args: str | Path, timeout: float = 900) -> subprocess.CompletedProcess:
    """``python -m pipeline ARGS`` from the repository; ``AssertionError`` with its output on failure."""
    proc = subprocess.run([sys.executable, "-m", "pipeline", *map(str, args)], cwd=REPO, capture_output=True, text=True,
                          timeout=timeout, check=False)
    assert proc.returncode == 0, f"pipeline {args[0]}: exit {proc.returncode}\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}"
    return proc


def readable_by_all(root: Path) -> None:
    """``chmod -R a+rX``: demo-data stages its folders with mkdtemp (mode 0700)."""
    for path in [root, *root.rglob("*")]:
        path.chmod(path.stat().st_mode | 0o444 | (0o111 if path.is_dir() else 0))


def demo_tasks(dest: Path) -> dict[str, Path]:
    """The demo tasks of every contract layout under ``dest`` (keys of :data:`TASKS` and ``oncoreg``)."""
    pipeline("demo-data", "--out", dest, "--tasks", "T2,T4,LUMIR,ReMIND")
    tasks = {key: dest / name for key, name in TASKS.items()}
    tasks["oncoreg"] = oncoreg_task(tasks["lung"], dest / ONCOREG)
    readable_by_all(dest)
    return tasks


def _oncoreg_stem(subject: str, modality: str) -> str:
    return f"{ONCOREG}_{subject}_{modality}"


def oncoreg_task(lung: Path, dest: Path) -> Path:
    """OncoReg's layout (``MDL-UzL/OncoReg`` examples, ``utils/data_utils.py``) from DemoLungCT:
    per subject the moving "FBCT" ``_0000`` (the inhale CT) and the fixed "CBCT" ``_0001`` (the
    exhale CT) with masks (``masksTr``) and corresponding keypoints (``keypoints01Tr``), pairs fixed
    ``_0001`` <- moving ``_0000`` in ``training_paired_images`` and ``registration_val``, and an
    L2R-format evaluation config (SDlogJ, TRE on the keypoints). One CBCT per subject (OncoReg has two)."""
    meta = dataset.read_description(lung / f"{lung.name}_dataset.json")
    val_subjects = {Path(p["fixed"]).name.split("_")[1] for p in meta["registration_val"]}
    subjects = sorted({Path(e["image"]).name.split("_")[1] for e in meta["training"]})
    for subject in subjects:
        for ours, theirs in ONCOREG_FROM_LUNG.items():
            src, stem = f"{lung.name}_{subject}_{theirs}", _oncoreg_stem(subject, ours)
            for folder, ext, to in (("imagesTr", ".nii.gz", "imagesTr"), ("masksTr", ".nii.gz", "masksTr"), ("keypointsTr", ".csv", "keypoints01Tr")):
                (dest / to).mkdir(parents=True, exist_ok=True)
                shutil.copyfile(lung / folder / f"{src}{ext}", dest / to / f"{stem}{ext}")

    def pair(subject: str) -> dict[str, str]:
        return {"fixed": f"./imagesTr/{_oncoreg_stem(subject, '0001')}.nii.gz", "moving": f"./imagesTr/{_oncoreg_stem(subject, '0000')}.nii.gz"}

    training = [{"image": f"./imagesTr/{_oncoreg_stem(s, m)}.nii.gz", "mask": f"./masksTr/{_oncoreg_stem(s, m)}.nii.gz"}
                for s in subjects for m in ONCOREG_FROM_LUNG]
    val = [pair(s) for s in subjects if s in val_subjects]
    shape = meta["tensorImageShape"]["0"]
    description = dataset.build_description(
        ONCOREG, shape, training, val, modality={"0": "FBCT", "1": "CBCT"},
        training_paired_images=[pair(s) for s in subjects if s not in val_subjects],
        description="OncoReg-layout stand-in made from the demo task T2 (DemoLungCT) for the container tests", licence="CC0 (synthetic data)",
    )  # fmt: skip
    description["registration_direction"] = {"fixed": 1, "moving": 0}
    dataset.write_description(dest, description)
    write_json(dest / f"{ONCOREG}_VAL_evaluation_config.json", build_config(ONCOREG, shape, val, points=["keypoints"]))
    return dest


def flat_input(task: Path, dest: Path) -> Path:
    """ReMIND2Reg's test-time input: the images of the task's validation pairs (fixed ultrasound
    and both MR sequences) side by side in one flat folder, nothing else."""
    meta = dataset.read_description(task / f"{task.name}_dataset.json")
    dest.mkdir(parents=True)
    for entry in meta["registration_val"]:
        for role in ("fixed", "moving"):
            image = task / entry[role]
            if not (dest / image.name).exists():
                shutil.copyfile(image, dest / image.name)
    readable_by_all(dest)
    return dest


def demo_runs(dest: Path, tasks: dict[str, Path]) -> dict[str, Path]:
    """The runs (and configurations) the images are built from: ``imported``, ``trained``,
    ``rigid`` (a configuration file) and ``oncoreg`` (a training configuration file)."""
    pipeline("import-weights", REPO / "weights" / "LapIRN_diff_fea7.pth", "--out", dest / "imported")
    write_json(dest / "tiny_t4.json", TINY_T4)
    pipeline("train", "--data", tasks["l2r"], "--config", dest / "tiny_t4.json", "--out", dest / "trained")
    write_json(dest / "rigid.json", RIGID)
    write_json(dest / "oncoreg_training.json", ONCOREG_TRAINING)
    return {"imported": dest / "imported", "trained": dest / "trained", "rigid": dest / "rigid.json", "oncoreg": dest / "oncoreg_training.json"}


def owned_by(root: Path, uid: int) -> Path:
    """``root`` created and given to ``uid`` (the "host user" the organiser runs the image as)."""
    root.mkdir(parents=True, exist_ok=True)
    os.chown(root, uid, uid)
    return root


def results_json(path: Path, record: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(record, indent=1, sort_keys=True) + "\n")
