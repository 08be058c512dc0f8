"""Both Learn2Reg layouts read into the same model."""

from __future__ import annotations

import gzip
import json
import re
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from learn2reg.io import DataError, Geometry, load_nifti, read_points, save_nifti, write_points
from learn2reg.task import Layout, Pair, load_task

SHAPE = (6, 5, 4)


def _image(path: Path, value: float = 1.0) -> None:
    save_nifti(path, np.full(SHAPE, value, np.float32), Geometry.identity(SHAPE, (1.5, 1.5, 2.0)))


def make_l2r(root: Path, paired: bool) -> Path:
    """Tiny current-layout task: 3 subjects (2 modalities if paired), labels or masks+keypoints."""
    task = root / "Tiny"
    name = "Tiny"
    mods = ("0000", "0001") if paired else ("0000",)
    training = []
    for s in ("0001", "0002", "0003"):
        for m in mods:
            stem = f"{name}_{s}_{m}"
            _image(task / "imagesTr" / f"{stem}.nii.gz")
            entry = {"image": f"./imagesTr/{stem}.nii.gz"}
            if paired:
                save_nifti(task / "masksTr" / f"{stem}.nii.gz", np.ones(SHAPE, np.uint8))
                write_points(task / "keypointsTr" / f"{stem}.csv", np.ones((4, 3)))
                entry["mask"] = f"./masksTr/{stem}.nii.gz"
                entry["keypoints"] = f"./keypointsTr/{stem}.csv"
            else:
                save_nifti(task / "labelsTr" / f"{stem}.nii.gz", np.ones(SHAPE, np.uint8))
                entry["label"] = f"./labelsTr/{stem}.nii.gz"
            training.append(entry)
    if paired:
        write_points(task / "landmarksTr" / f"{name}_0003_0000.csv", np.ones((2, 3)))  # found by derivation
        val = [{"fixed": f"./imagesTr/{name}_0003_0000.nii.gz", "moving": f"./imagesTr/{name}_0003_0001.nii.gz"}]
    else:
        val = [{"fixed": f"./imagesTr/{name}_0002_0000.nii.gz", "moving": f"./imagesTr/{name}_0003_0000.nii.gz"}]
    meta = {
        "name": name,
        "tensorImageShape": {"0": list(SHAPE)},
        "modality": {"0": "CT"},
        "labels": {"0": {"0": "background", "1": "organ"}},
        "training": training,
        "registration_val": val,
        "registration_test": [],
        "pairings": "paired" if paired else "unpaired",
        "registration_direction": {"fixed": 0, "moving": 1},
    }
    (task / f"{name}_dataset.json").write_text(json.dumps(meta))
    return task


def make_2020(root: Path, paired: bool) -> Path:
    task = root / "task_0X"
    roles = ("_fixed", "_moving") if paired else ("",)
    for s in ("0001", "0002", "0003"):
        for r in roles:
            _image(task / "images" / f"img{s}{r}.nii.gz")
            save_nifti(task / "labels" / f"img{s}{r}.nii.gz", np.ones(SHAPE, np.uint8))
    (task / "pairs_val.csv").write_text("fixed,moving\n3,3\n" if paired else "fixed,moving\n2,3\n")
    (task / "task.json").write_text(json.dumps({"name": "Tiny2020", "labels": {"1": "organ"}, "shape": list(SHAPE)}))
    return task


def test_current_layout_inter_patient(tmp_path):
    task = load_task(make_l2r(tmp_path, paired=False))
    assert task.layout == Layout.L2R and task.name == "Tiny" and task.shape == SHAPE
    assert task.labels == {1: "organ"} and not task.intra_patient and task.problems == ()
    assert sorted(task.cases) == ["0001_0000", "0002_0000", "0003_0000"]
    assert task.pairs["val"] == (Pair("0002_0000", "0003_0000"),)
    assert task.pairs["val"][0].key == "0002_0000<--0003_0000"
    pairs = task.training_pairs()
    assert len(pairs) == 6 and len(set(pairs)) == 6 and all(p.fixed != p.moving for p in pairs)
    case = task.case("0001_0000")
    assert case.label is not None and load_nifti(case.label)[0].shape == SHAPE and case.mask is None


def test_current_layout_intra_patient_with_points_and_derived_landmarks(tmp_path):
    task = load_task(make_l2r(tmp_path, paired=True))
    assert task.intra_patient
    assert task.training_pairs() == tuple(Pair(f"000{i}_0000", f"000{i}_0001") for i in (1, 2, 3))
    case = task.case("0003_0000")
    assert read_points(case.keypoints).shape == (4, 3)
    assert case.landmarks is not None and read_points(case.landmarks).shape == (2, 3)
    assert task.case("0001_0000").landmarks is None


def test_2020_layout_reads_into_the_same_model(tmp_path):
    inter = load_task(make_2020(tmp_path / "a", paired=False))
    assert inter.layout == Layout.L2R2020 and inter.name == "Tiny2020" and inter.shape == SHAPE
    assert inter.pairs["val"] == (Pair("0002_0000", "0003_0000"),) and not inter.intra_patient
    assert len(inter.training_pairs()) == 6 and inter.labels == {1: "organ"}
    intra = load_task(make_2020(tmp_path / "b", paired=True))
    assert intra.intra_patient and intra.pairs["val"] == (Pair("0003_0000", "0003_0001"),)
    assert intra.case("0003_0001").label.name == "img0003_moving.nii.gz"


def test_2020_expected_sibling_is_reported_missing_by_path(tmp_path):
    root = make_2020(tmp_path, paired=False)
    (root / "labels" / "img0002.nii.gz").unlink()
    case = load_task(root).case("0002_0000")
    assert case.label == root.resolve() / "labels" / "img0002.nii.gz" and not case.label.exists()


def test_paths_escaping_the_task_folder_are_problems_not_crashes(tmp_path):
    root = make_l2r(tmp_path, paired=False)
    meta_path = root / "Tiny_dataset.json"
    meta = json.loads(meta_path.read_text())
    meta["training"][0]["label"] = "../outside/Tiny_0001_0000.nii.gz"
    meta["registration_val"][0]["fixed"] = "/etc/Tiny_0002_0000.nii.gz"
    meta_path.write_text(json.dumps(meta))
    task = load_task(root)
    joined = "\n".join(task.problems)
    assert "escapes the task folder" in joined and "../outside" in joined
    assert "absolute path" in joined and task.pairs["val"] == ()


@pytest.mark.parametrize("layout", ["l2r", "2020"])
def test_images_linked_from_elsewhere_are_read_through_their_links(tmp_path, layout):
    """Large datasets are linked into a task folder rather than copied: a symlink in the folder
    (to a file or a whole sub-folder elsewhere) is followed, as the organisers' evaluators do;
    the paths stay the folder's own (a `..` in the json is still refused, the test above)."""
    root = make_l2r(tmp_path / "a", paired=False) if layout == "l2r" else make_2020(tmp_path / "a", paired=False)
    plain = load_task(root)
    before = {k: load_nifti(c.image)[0] for k, c in plain.cases.items()}
    images = root / ("imagesTr" if layout == "l2r" else "images")
    store = tmp_path / "store"
    store.mkdir()
    first = sorted(images.glob("*.nii.gz"))[0]
    first.rename(store / first.name)
    first.symlink_to(store / first.name)  # one file linked
    if layout == "l2r":
        (root / "labelsTr").rename(store / "labelsTr")
        (root / "labelsTr").symlink_to(store / "labelsTr", target_is_directory=True)  # a whole folder linked
    task = load_task(root)
    assert task.problems == plain.problems == ()
    assert sorted(task.cases) == sorted(plain.cases) and task.pairs == plain.pairs
    for case in task.cases.values():
        assert case.image.is_relative_to(root.resolve()) and case.image.exists()
        assert np.array_equal(load_nifti(case.image)[0], before[case.case_id])
    linked = next(c for c in task.cases.values() if c.image.name == first.name)
    assert linked.image.is_symlink()


def test_not_a_task_folder_is_a_clear_error(tmp_path):
    with pytest.raises(DataError, match="neither"):
        load_task(tmp_path)
    with pytest.raises(DataError, match="not found"):
        load_task(tmp_path / "missing")
    (tmp_path / "X_dataset.json").write_text("{not json")
    with pytest.raises(DataError, match="invalid JSON"):
        load_task(tmp_path)


def test_io_errors_name_the_file(tmp_path):
    bad = tmp_path / "pts.csv"
    bad.write_text("1,2,3\n4,5\n")
    with pytest.raises(DataError, match=r"pts\.csv: line 2 has 2 columns"):
        read_points(bad)
    img = tmp_path / "img.nii.gz"
    save_nifti(img, np.zeros((20, 20, 20), np.float32))
    img.write_bytes(img.read_bytes()[:200])
    with pytest.raises(DataError, match=r"img\.nii\.gz: unreadable or truncated"):
        load_nifti(img)


@pytest.mark.parametrize("copy", [True, False])
def test_nifti_gz_fast_path_equals_nibabel(tmp_path, copy):
    """.nii.gz are inflated in one pass into a new array (copy=False: a read-only view of it). Same
    arrays as nibabel's own reader for NIfTI-1 and -2, scaled data, multi-member and zero-padded
    gzip files; damaged files are errors naming the file."""
    rng = np.random.default_rng(0)
    data = rng.standard_normal((5, 6, 7, 3)).astype(np.float32)
    scaled = nib.Nifti1Image(rng.integers(-900, 900, (6, 5, 4)).astype(np.int16), np.diag([2.0, 1.0, 3.0, 1.0]))
    scaled.header.set_slope_inter(0.25, -3.0)
    images = {"n1": nib.Nifti1Image(data, np.eye(4)), "n2": nib.Nifti2Image(data, np.eye(4)), "scaled": scaled}
    for name, image in images.items():
        nib.save(image, tmp_path / f"{name}.nii.gz")
    plain = gzip.decompress((tmp_path / "n1.nii.gz").read_bytes())
    (tmp_path / "multi.nii.gz").write_bytes(gzip.compress(plain[:400]) + gzip.compress(plain[400:]))
    (tmp_path / "padded.nii.gz").write_bytes(gzip.compress(plain) + bytes(16))  # zero padding after the member
    for name in ("n1", "n2", "scaled", "multi", "padded"):
        path = tmp_path / f"{name}.nii.gz"
        expected = np.asarray(nib.load(path).dataobj, dtype=np.float32)
        got, geometry = load_nifti(path, copy=copy)
        np.testing.assert_array_equal(got, expected)
        assert got.shape == expected.shape and geometry.shape == expected.shape[:3]
        assert got.flags.writeable == (copy or name == "scaled")  # scaled data are always a new array
    stored, _ = load_nifti(tmp_path / "scaled.nii.gz", dtype=None, copy=copy)
    assert stored.dtype == np.float64  # nibabel's scaling rule: scaled int16 -> float64
    np.testing.assert_array_equal(stored, np.asarray(nib.load(tmp_path / "scaled.nii.gz").dataobj))
    whole = gzip.compress(plain)
    bad_crc = whole[:-8] + bytes(4) + whole[-4:]
    bad_size = whole[:-4] + (len(plain) + 1).to_bytes(4, "little")
    # empty, cut, not gzip, short data, CRC and length fields that disagree with the data
    for broken in (b"", whole[:-4], b"not gzip" * 9, gzip.compress(plain[:300]), bad_crc, bad_size):
        (tmp_path / "bad.nii.gz").write_bytes(broken)
        with pytest.raises(DataError, match=r"bad\.nii\.gz: unreadable or truncated NIfTI"):
            load_nifti(tmp_path / "bad.nii.gz", copy=copy)


def test_atomic_write_leaves_no_partial_file(tmp_path):
    from learn2reg.io import atomic_open

    target = tmp_path / "out.json"
    target.write_text("old")
    with pytest.raises(RuntimeError), atomic_open(target) as fh:
        fh.write("partial")
        raise RuntimeError("boom")
    assert target.read_text() == "old" and [p.name for p in tmp_path.iterdir()] == ["out.json"]


@pytest.mark.parametrize(
    "edit, expected",
    [
        (lambda m: m.update(tensorImageShape={"0": "abc"}), "malformed task description"),
        (lambda m: m.update(labels={"0": {"x": "organ"}}), "malformed task description"),
        (lambda m: m["registration_val"].append("oops"), "expected an object"),
        (lambda m: m["registration_val"].append({"moving": "./imagesTr/Tiny_0001_0000.nii.gz"}), r"registration_val\[1\] \(fixed\): missing path"),
    ],
)
def test_malformed_json_content_is_named_not_a_crash(tmp_path, edit, expected):
    root = make_l2r(tmp_path, paired=False)
    meta_path = root / "Tiny_dataset.json"
    meta = json.loads(meta_path.read_text())
    edit(meta)
    meta_path.write_text(json.dumps(meta))
    try:
        problems = "\n".join(load_task(root).problems)
    except DataError as exc:
        problems = str(exc)
        assert "Tiny_dataset.json" in problems
    assert re.search(expected, problems)


def test_atomic_writes_get_the_usual_file_mode(tmp_path):
    import os

    from learn2reg.io import write_json

    umask = os.umask(0o022)
    try:
        write_json(tmp_path / "x.json", {"a": 1})
    finally:
        os.umask(umask)
    assert (tmp_path / "x.json").stat().st_mode & 0o777 == 0o644


def test_paired_training_follows_training_paired_images_when_the_task_lists_them(tmp_path):
    """ThoraxCBCT's dataset.json: CT _0000 (moving) against two CBCTs _0001/_0002 (fixed),
    registration_direction fixed 1 / moving 0, the pairs listed in training_paired_images, keypoint
    keys of its own (keypoints01, keypoints02) in the training entries, val subjects also listed
    under training."""
    root = tmp_path / "ThoraxCBCT"
    training, listed = [], []
    for s in (0, 1, 11):
        for m in ("0000", "0001", "0002"):
            _image(root / "imagesTr" / f"ThoraxCBCT_{s:04d}_{m}.nii.gz")
            training.append({"image": f"./imagesTr/ThoraxCBCT_{s:04d}_{m}.nii.gz", "keypoints01": "./keypoints01Tr/x.nii.gz"})
        if s != 11:
            listed += [{"fixed": f"./imagesTr/ThoraxCBCT_{s:04d}_{m}.nii.gz", "moving": f"./imagesTr/ThoraxCBCT_{s:04d}_0000.nii.gz"}
                       for m in ("0001", "0002")]
    meta = {"name": "ThoraxCBCT", "pairings": "paired", "registration_direction": {"fixed": 1, "moving": 0},
            "modality": {"0": "FBCT", "1": "CBCT", "2": "CBCT"}, "labels": {}, "training": training,
            "training_paired_images": listed,
            "registration_val": [{"fixed": "./imagesTr/ThoraxCBCT_0011_0001.nii.gz", "moving": "./imagesTr/ThoraxCBCT_0011_0000.nii.gz"}]}
    (root / "ThoraxCBCT_dataset.json").write_text(json.dumps(meta))
    task = load_task(root)
    assert not task.problems
    assert task.pairs["train"] == (Pair("0000_0001", "0000_0000"), Pair("0000_0002", "0000_0000"),
                                   Pair("0001_0001", "0001_0000"), Pair("0001_0002", "0001_0000"))
    del meta["training_paired_images"]  # without the list: registration_direction, one CBCT per subject
    (root / "ThoraxCBCT_dataset.json").write_text(json.dumps(meta))
    assert load_task(root).pairs["train"] == (Pair("0000_0001", "0000_0000"), Pair("0001_0001", "0001_0000"), Pair("0011_0001", "0011_0000"))
