"""``validate`` lists every problem of a task folder at once; ``summary`` describes it."""

from __future__ import annotations

import gzip
import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from learn2reg.io import Geometry, save_nifti, write_points
from learn2reg.task import load_task
from pipeline.cli import main
from pipeline.data.summary import format_summary, provides, summarize
from pipeline.data.validate import Problem, validate_task
from pipeline.demo.tasks import write_demo
from tests.paths import REPO

SHAPE = (8, 8, 8)
SPACING = (1.5, 1.5, 2.0)
NAME = "Toy"
N_POINTS = 5


def _segmentation(path: Path, data: np.ndarray) -> None:
    """A label map or mask on the images' grid (same spacing, identity direction, zero origin)."""
    save_nifti(path, data, Geometry.identity(data.shape, SPACING))


def _image(path: Path, seed: int, shape: tuple[int, ...] = SHAPE) -> None:
    """Random texture (compresses badly, so half a gzip really is half the voxels)."""
    data = np.random.default_rng(seed).random(shape).astype(np.float32)
    save_nifti(path, data, Geometry.identity(shape, SPACING))


def _points(path: Path, n: int = N_POINTS, columns: int = 3) -> None:
    write_points(path, np.linspace(0.0, 7.0, n * columns).reshape(n, columns))


def _stem(subject: int, modality: int = 0) -> str:
    return f"{NAME}_{subject:04d}_{modality:04d}"


def make_l2r(root: Path) -> Path:
    """Clean current-layout task: 4 subjects with image, label, mask, keypoints; one val pair."""
    task = root / NAME
    training = []
    for s in range(1, 5):
        stem = _stem(s)
        _image(task / "imagesTr" / f"{stem}.nii.gz", seed=s)
        _segmentation(task / "labelsTr" / f"{stem}.nii.gz", np.arange(512, dtype=np.uint8).reshape(SHAPE) % 3)
        _segmentation(task / "masksTr" / f"{stem}.nii.gz", np.ones(SHAPE, np.uint8))
        _points(task / "keypointsTr" / f"{stem}.csv")
        training.append(
            {
                "image": f"./imagesTr/{stem}.nii.gz",
                "label": f"./labelsTr/{stem}.nii.gz",
                "mask": f"./masksTr/{stem}.nii.gz",
                "keypoints": f"./keypointsTr/{stem}.csv",
            }
        )
    meta = {
        "name": NAME,
        "tensorImageShape": {"0": list(SHAPE)},
        "modality": {"0": "CT"},
        "labels": {"0": {"0": "background", "1": "liver", "2": "spleen"}},
        "training": training,
        "registration_val": [{"fixed": f"./imagesTr/{_stem(1)}.nii.gz", "moving": f"./imagesTr/{_stem(2)}.nii.gz"}],
        "pairings": "unpaired",
    }
    _write_meta(task, meta)
    return task


def _meta(task: Path) -> dict:
    return json.loads((task / f"{NAME}_dataset.json").read_text())


def _write_meta(task: Path, meta: dict) -> None:
    (task / f"{NAME}_dataset.json").write_text(json.dumps(meta, indent=1))


def make_2020(root: Path) -> Path:
    """Clean 2020-layout intra-patient task: 3 subjects (fixed/moving), masks and keypoints."""
    task = root / "task_02"
    for s in range(1, 4):
        for r, role in enumerate(("fixed", "moving")):
            stem = f"img{s:04d}_{role}"
            _image(task / "images" / f"{stem}.nii.gz", seed=10 * s + r)
            _segmentation(task / "masks" / f"{stem}.nii.gz", np.ones(SHAPE, np.uint8))
            _points(task / "keypoints" / f"{stem}.csv")
    (task / "pairs_val.csv").write_text("fixed,moving\n3,3\n")
    (task / "task.json").write_text(json.dumps({"name": "Lung2020", "shape": list(SHAPE), "modality": {"0": "CT"}}))
    return task


def errors(problems: list[Problem]) -> list[Problem]:
    return [p for p in problems if p.is_error]


def names(problems: list[Problem], path: Path, text: str) -> bool:
    """Whether some error is about ``path`` and mentions ``text``."""
    return any(p.path == path.resolve() and text.lower() in p.message.lower() for p in errors(problems))


# ---------------------------------------------------------------- clean folders


@pytest.mark.parametrize("make", [make_l2r, make_2020])
def test_clean_folder_has_no_problems_and_exits_0(tmp_path, capsys, make):
    task = make(tmp_path)
    assert validate_task(task) == []
    assert main(["validate", "--no-progress", str(task)]) == 0
    out, err = capsys.readouterr()
    assert out.splitlines()[0] == f"OK {task}" and err == ""
    assert out.splitlines()[1:] == [f"  {line}" for line in provides(load_task(task))]  # what it provides, per split


def test_problem_str_names_path_first():
    assert str(Problem(Path("/a/b.nii.gz"), "bad")) == "/a/b.nii.gz: bad"
    assert str(Problem(Path("/a"), "meh", "warning")) == "/a: warning: meh"


def test_missing_task_shape_is_only_a_warning(tmp_path, capsys):
    task = make_l2r(tmp_path)
    meta = _meta(task)
    del meta["tensorImageShape"]
    _write_meta(task, meta)
    problems = validate_task(task)
    assert len(problems) == 1 and not problems[0].is_error and "tensorImageShape" in problems[0].message
    assert main(["validate", "--no-progress", str(task)]) == 0
    out, err = capsys.readouterr()
    assert "OK" in out and "warning: no 'tensorImageShape'" in err


def test_unlisted_sibling_gap_is_a_warning(tmp_path, capsys):
    """Labels found by name (not listed in the json): a gap in labelsTr/ is reported once."""
    task = make_l2r(tmp_path)
    meta = _meta(task)
    for entry in meta["training"]:
        del entry["label"]
    _write_meta(task, meta)
    assert validate_task(task) == []
    (task / "labelsTr" / f"{_stem(2)}.nii.gz").unlink()
    problems = validate_task(task)
    assert [str(p) for p in problems] == [f"{task.resolve() / 'labelsTr'}: warning: no label file for 1 of 4 images (e.g. 0002_0000)"]
    assert main(["validate", "--no-progress", str(task)]) == 0
    assert capsys.readouterr().out.splitlines()[0] == f"OK {task} (1 warning(s))"


# ---------------------------------------------------------------- acceptance: four problems, one run


def _break_four(task: Path, outside: Path) -> dict[str, Path]:
    """(a) deleted label, (b) gzip cut in half, (c) wrong shape, (d) '../' path; returns the files."""
    label = task / "labelsTr" / f"{_stem(1)}.nii.gz"
    label.unlink()
    truncated = task / "imagesTr" / f"{_stem(2)}.nii.gz"
    raw = truncated.read_bytes()
    assert gzip.decompress(raw)  # it was a valid gzip before the cut
    truncated.write_bytes(raw[: len(raw) // 2])
    wrong = task / "imagesTr" / f"{_stem(3)}.nii.gz"
    _image(wrong, seed=3, shape=(9, 8, 8))
    _image(outside / f"{_stem(4)}.nii.gz", seed=4)
    meta = _meta(task)
    meta["training"][3]["image"] = f"../outside/{_stem(4)}.nii.gz"
    _write_meta(task, meta)
    return {"label": label, "truncated": truncated, "wrong": wrong, "json": task / f"{NAME}_dataset.json"}


def test_one_run_names_all_four_problems(tmp_path, capsys):
    task = make_l2r(tmp_path)
    files = _break_four(task, tmp_path / "outside")
    problems = validate_task(task)
    assert names(problems, files["label"], "not found")
    assert names(problems, files["truncated"], "truncated NIfTI (EOFError: Compressed file ended")
    assert not any("BufferError" in p.message for p in problems)
    assert names(problems, files["wrong"], "(9, 8, 8) differs from tensorImageShape (8, 8, 8)")
    assert names(problems, files["json"], "'../outside/")
    # Nothing else: the wrong-shape image also disagrees with its own label and mask.
    assert sum(p.path == files["wrong"].resolve() for p in problems) == 1
    assert len(errors(problems)) == 6

    assert main(["validate", "--no-progress", str(task)]) == 1
    out, err = capsys.readouterr()
    assert out == ""
    for path in files.values():
        assert f"{path.resolve()}: " in err
    assert err.strip().splitlines()[-1] == f"FAILED {task}: 6 problem(s), 0 warning(s)"


def test_subprocess_cli_lists_every_problem(tmp_path):
    clean = make_2020(tmp_path)
    task = make_l2r(tmp_path)
    files = _break_four(task, tmp_path / "outside")
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    cmd = [sys.executable, "-m", "pipeline", "validate", "--no-progress", str(clean), str(task)]
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1, proc.stderr
    assert proc.stdout.splitlines()[0] == f"OK {clean}" and "FAILED" not in proc.stdout
    for path in files.values():
        assert str(path.resolve()) in proc.stderr
    assert "Traceback" not in proc.stderr and "BufferError" not in proc.stderr
    assert f"{files['truncated'].resolve()}: unreadable or truncated NIfTI (EOFError: " in proc.stderr


# ---------------------------------------------------------------- one breakage at a time


def _save_label(task: Path, values: np.ndarray) -> None:
    _segmentation(task / "labelsTr" / f"{_stem(1)}.nii.gz", values)


def _nan_image(task: Path) -> None:
    data = np.zeros(SHAPE, np.float32)
    data[1, 2, 3] = np.nan
    data[0, 0, 0] = np.inf
    save_nifti(task / "imagesTr" / f"{_stem(1)}.nii.gz", data, Geometry.identity(SHAPE, SPACING))


def _negative_label(task: Path) -> None:
    _save_label(task, np.full(SHAPE, -1, np.int16))


def _fractional_label(task: Path) -> None:
    _save_label(task, np.full(SHAPE, 1.5, np.float32))


def _mixed_label(task: Path) -> None:
    """Both rules broken in one file: each is reported with its count and examples."""
    values = np.zeros(SHAPE, np.float32)
    values[0] = -2.0  # 64 negative voxels
    values[1, :2] = 0.25  # 16 fractional
    values[2, 0, 0] = -0.5  # both
    _save_label(task, values)


def _label_shape(task: Path) -> None:
    _save_label(task, np.zeros((8, 8, 7), np.uint8))


def _mask(task: Path) -> None:
    _segmentation(task / "masksTr" / f"{_stem(1)}.nii.gz", np.full(SHAPE, 2, np.uint8))


def _four_columns(task: Path) -> None:
    _points(task / "keypointsTr" / f"{_stem(1)}.csv", columns=4)


def _non_numeric(task: Path) -> None:
    with open(task / "keypointsTr" / f"{_stem(1)}.csv", "a") as fh:
        fh.write("1.0,two,3.0\n")


def _row_mismatch(task: Path) -> None:
    _points(task / "keypointsTr" / f"{_stem(1)}.csv", n=N_POINTS + 1)


def _points_outside(task: Path) -> None:
    write_points(task / "keypointsTr" / f"{_stem(1)}.csv", np.array([[1.0, 2, 3], [1, 7.6, 3], [-0.4, 0, 0], [0, 0, 0], [1, 1, 1]]))


def _absolute_path(task: Path) -> None:
    meta = _meta(task)
    meta["training"][0]["label"] = str((task / "labelsTr" / f"{_stem(1)}.nii.gz").resolve())
    _write_meta(task, meta)


def _symlink_outside(task: Path) -> None:
    label = task / "labelsTr" / f"{_stem(1)}.nii.gz"
    target = task.parent / "elsewhere.nii.gz"
    label.rename(target)
    label.symlink_to(target)


def _symlink_folder(task: Path) -> None:
    folder = task / "masksTr"
    folder.rename(task.parent / "masks_elsewhere")
    folder.symlink_to(task.parent / "masks_elsewhere", target_is_directory=True)


def _symlink_broken(task: Path) -> None:
    label = task / "labelsTr" / f"{_stem(1)}.nii.gz"
    label.unlink()
    label.symlink_to(task.parent / "nowhere.nii.gz")


def _missing_image(task: Path) -> None:
    (task / "imagesTr" / f"{_stem(1)}.nii.gz").unlink()


def _unknown_case(task: Path) -> None:
    meta = _meta(task)
    meta["registration_val"].append({"fixed": f"./imagesTr/{_stem(1)}.nii.gz", "moving": f"./imagesTr/{_stem(9)}.nii.gz"})
    _write_meta(task, meta)


def _bad_shape_key(task: Path) -> None:
    meta = _meta(task)
    meta["tensorImageShape"] = {"0": [8, 8]}
    _write_meta(task, meta)


def _no_training(task: Path) -> None:
    meta = _meta(task)
    del meta["training"]
    _write_meta(task, meta)


def _bad_json(task: Path) -> None:
    (task / f"{NAME}_dataset.json").write_text("{not json")


IMAGE = f"imagesTr/{_stem(1)}.nii.gz"
LABEL = f"labelsTr/{_stem(1)}.nii.gz"
POINTS = f"keypointsTr/{_stem(1)}.csv"
JSON = f"{NAME}_dataset.json"
# breakage, file (relative to the task) that an error must name, text it must contain, number of errors
CASES: list[tuple[Callable[[Path], None], str, str, int]] = [
    (_nan_image, IMAGE, "2 NaN/Inf voxel(s)", 1),
    (_negative_label, LABEL, "label map has negative values (minimum -1): 512 voxel(s) (e.g. [-1])", 1),
    (_mixed_label, LABEL, "label map has 17 non-integer voxel(s) (e.g. [-0.5, 0.25])", 2),
    (_mixed_label, LABEL, "label map has negative values (minimum -2): 65 voxel(s) (e.g. [-2.0, -0.5])", 2),
    (_fractional_label, LABEL, "512 non-integer voxel(s) (e.g. [1.5])", 1),
    (_label_shape, LABEL, "label shape (8, 8, 7) differs from its image's shape (8, 8, 8)", 1),
    (_mask, f"masksTr/{_stem(1)}.nii.gz", "not binary: 512 voxel(s)", 1),
    (_four_columns, POINTS, "4 columns, expected 3", 1),
    (_non_numeric, POINTS, "line 6 is not numeric", 1),
    (_row_mismatch, POINTS, f"6 keypoints rows, but moving file {{task}}/keypointsTr/{_stem(2)}.csv has 5", 1),
    (_points_outside, POINTS, "1 of 5 point(s) outside the image grid (8, 8, 8) (first: line 2", 1),
    (_absolute_path, JSON, "absolute path", 1),
    (_symlink_outside, LABEL, "read through the link; a container must mount its target too", 0),  # a warning: linked data are read
    (_symlink_folder, "masksTr", "read through the link; a container must mount its target too", 0),
    (_symlink_broken, LABEL, "broken symlink", 2),  # and the label it should be is missing
    (_missing_image, IMAGE, "image of case 0001_0000 not found", 1),
    (_unknown_case, f"imagesTr/{_stem(9)}.nii.gz", "image of case 0009_0000 not found", 1),
    (_bad_shape_key, JSON, "three positive integers", 1),
    (_no_training, JSON, "required key 'training' is missing", 1),  # the val pair's images: warnings only
    (_bad_json, JSON, "invalid JSON", 1),
]


@pytest.mark.parametrize(("breakage", "rel", "text", "count"), CASES, ids=[c[0].__name__.strip("_") for c in CASES])
def test_each_check(tmp_path, breakage, rel, text, count):
    task = make_l2r(tmp_path)
    breakage(task)
    problems = validate_task(task)
    text = text.format(task=task.resolve())
    path = task.resolve() / rel if rel != "masksTr" else task / rel  # a symlinked folder is named as itself
    assert any(p.path == path and text.lower() in p.message.lower() for p in problems), "\n".join(map(str, problems))
    assert len(errors(problems)) == count, "\n".join(map(str, problems))


def test_each_check_fails_the_cli(tmp_path, capsys):
    task = make_l2r(tmp_path)
    _mask(task)
    assert main(["validate", "--no-progress", str(task)]) == 1
    _, err = capsys.readouterr()
    assert f"{task.resolve() / 'masksTr' / _stem(1)}.nii.gz: mask is not binary" in err


def test_2020_layout_problems(tmp_path):
    """Training-pair row counts, a bad pairs csv, a missing expected mask, an unknown val subject."""
    task = make_2020(tmp_path)
    _points(task / "keypoints" / "img0002_moving.csv", n=N_POINTS - 1)
    (task / "masks" / "img0001_fixed.nii.gz").unlink()
    (task / "pairs_val.csv").write_text("fixed,moving\n3,3\n7,7\nx,1\n")
    problems = validate_task(task)
    root = task.resolve()
    assert names(problems, root / "keypoints" / "img0002_fixed.csv", "5 keypoints rows, but moving file")
    assert names(problems, root / "masks" / "img0001_fixed.nii.gz", "mask file of case 0001_0000 not found")
    assert names(problems, root / "pairs_val.csv", "line 4 is not two integer ids")
    assert names(problems, root / "pairs_val.csv", "val pair 0007_0000<--0007_0001: fixed case")
    assert names(problems, root / "pairs_val.csv", "val pair 0007_0000<--0007_0001: moving case")
    assert len(errors(problems)) == 5


def test_one_volume_in_memory_at_a_time(tmp_path, monkeypatch):
    """Every volume read is released before the next one is read (weak references die)."""
    import weakref

    import pipeline.data.validate as V

    alive: list[weakref.ref] = []
    real = V.load_nifti

    def tracking(path, dtype=None):
        assert all(ref() is None for ref in alive), f"a volume is still held when {path} is read"
        data, geometry = real(path, dtype=dtype)
        alive.append(weakref.ref(data))
        return data, geometry

    monkeypatch.setattr(V, "load_nifti", tracking)
    assert validate_task(make_l2r(tmp_path)) == []
    assert len(alive) == 12  # 4 images, 4 labels, 4 masks: all read, whole


def test_2020_without_task_json_warns(tmp_path):
    task = make_2020(tmp_path)
    (task / "task.json").unlink()
    assert [str(p) for p in validate_task(task)] == [
        f"{task.resolve() / 'task.json'}: warning: not found: image shapes are not checked against a task shape"
    ]


def test_missing_folder_and_no_task(tmp_path, capsys):
    assert [str(p) for p in validate_task(tmp_path / "nope")] == [f"{tmp_path / 'nope'}: task folder not found"]
    problems = validate_task(tmp_path)
    assert len(problems) == 1 and "neither a *_dataset.json" in problems[0].message
    assert main(["validate", "--no-progress", str(tmp_path)]) == 1
    assert "neither a *_dataset.json" in capsys.readouterr().err


# ---------------------------------------------------------------- summary


def test_summarize_l2r(tmp_path):
    task_dir = make_l2r(tmp_path)
    from learn2reg.task import load_task

    row = summarize(load_task(task_dir))
    assert row["name"] == NAME and row["layout"] == "l2r"
    assert (row["images_train"], row["images_test"]) == (4, 0)
    assert row["shape"] == SHAPE and row["spacing"] == pytest.approx(SPACING)
    assert row["labels"] == {1: "liver", 2: "spleen"} and row["modalities"] == {"0": "CT"}
    assert row["masks"] == 4
    assert row["keypoints"] == {_stem(s).removeprefix(f"{NAME}_"): N_POINTS for s in range(1, 5)}
    assert row["landmarks"] == {}
    assert (row["training_pairs"], row["val_pairs"], row["test_pairs"]) == (12, 1, 0)  # 4 * 3 ordered pairs
    assert row["training_pairs_used"] == 2  # subjects 3 and 4 form the val pair: train holds out every pair touching them
    assert row["pairing"] == "inter-patient"


def test_summarize_2020_and_table(tmp_path, capsys):
    from learn2reg.task import load_task

    rows = [summarize(load_task(make_l2r(tmp_path))), summarize(load_task(make_2020(tmp_path)))]
    assert (rows[1]["images_train"], rows[1]["training_pairs"], rows[1]["val_pairs"]) == (6, 3, 1)
    assert rows[1]["pairing"] == "intra-patient" and rows[1]["layout"] == "l2r2020"
    lines = format_summary(rows).splitlines()
    table = {line.split("  ")[0]: line.split()[-1] for line in lines}
    assert lines[0].split() == ["name", NAME, "Lung2020"]
    assert table["spacing (mm)"] == "1.5x1.5x2" and table["training pairs"] == "subjects)"
    # issue 21: the count train uses, not the one the task lists (30 -> 12 on a real task)
    assert "training pairs       2 of 12 (train holds out 10 touching val subjects)  2 of 3 (" in "\n".join(lines)
    assert "keypoints per image  5 (4 files)" in "\n".join(lines)
    assert "2 (liver, spleen)" in lines[[line.split("  ")[0] for line in lines].index("labels")]

    assert main(["summary", str(tmp_path / NAME), str(tmp_path / "task_02")]) == 0
    assert capsys.readouterr().out.strip() == "\n".join(lines)
    assert main(["summary", str(tmp_path / "nope")]) == 1
    assert "task folder not found" in capsys.readouterr().err


@pytest.mark.slow
@pytest.mark.parametrize("layout", ["l2r", "l2r2020", "lumir", "remind2reg"])
def test_demo_tasks_validate_clean(tmp_path, layout):
    """Every generated demo task passes validation (no errors, no warnings) in every layout."""
    task_dirs = write_demo(tmp_path / "data", seed=0, layout=layout)
    assert len(task_dirs) == {"l2r": 4, "l2r2020": 4, "lumir": 1, "remind2reg": 1}[layout]
    for task_dir in task_dirs:
        assert [str(p) for p in validate_task(task_dir)] == []
