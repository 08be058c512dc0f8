"""What a submission image reads and writes, without torch: the pairs of each contract's mounts,
every missing input named at once, the field files in each template's layout and header."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from learn2reg.io import DataError, Geometry, save_nifti
from pipeline.container import contracts
from pipeline.container.jobs import Mounts, case_of, pair_jobs, parse_summary, summary_line, writable, write_field

SHAPE = (4, 5, 6)


def image(path: Path, affine: np.ndarray | None = None) -> Path:
    save_nifti(path, np.zeros(SHAPE, np.float32), Geometry.from_affine(np.eye(4) if affine is None else affine, SHAPE))
    return path


def lumir_folder(root: Path, pairs=((11, 10), (12, 11))) -> tuple[Path, Path]:
    """A LUMIR-like input folder and its json (paths './imagesVal/...', as LUMIR's)."""
    entries = []
    for fixed, moving in pairs:
        for s in (fixed, moving):
            image(root / "input" / "imagesVal" / f"LUMIRMRI_{s:04d}_0000.nii.gz")
        entries.append({"fixed": f"./imagesVal/LUMIRMRI_{fixed:04d}_0000.nii.gz", "moving": f"./imagesVal/LUMIRMRI_{moving:04d}_0000.nii.gz"})
    (root / "d.json").write_text(json.dumps({"name": "LUMIR", "validation": entries}))
    (root / "output").mkdir()
    return root / "input", root / "d.json"


def test_lumir_reads_the_validation_pairs_under_the_input_folder(tmp_path):
    inp, js = lumir_folder(tmp_path)
    jobs, source = pair_jobs(contracts.LUMIR, Mounts(input=inp, output=tmp_path / "output", json=js))
    assert [j.name for j in jobs] == ["disp_0011_0010.nii.gz", "disp_0012_0011.nii.gz"]
    assert jobs[0].fixed.image == inp / "imagesVal" / "LUMIRMRI_0011_0000.nii.gz" and jobs[0].fixed.case_id == "0011_0000"
    assert source == f"{js} 'validation'"


def test_every_missing_input_is_named_at_once(tmp_path):
    inp, js = lumir_folder(tmp_path)
    (inp / "imagesVal" / "LUMIRMRI_0010_0000.nii.gz").unlink()
    (inp / "imagesVal" / "LUMIRMRI_0012_0000.nii.gz").unlink()
    with pytest.raises(DataError) as caught:
        pair_jobs(contracts.LUMIR, Mounts(input=inp, output=tmp_path / "output", json=js))
    text = str(caught.value)
    assert text.startswith("2 problem(s) with the inputs:")
    assert "validation[0]: image not found" in text and "LUMIRMRI_0010_0000.nii.gz" in text
    assert "validation[1]: image not found" in text and "LUMIRMRI_0012_0000.nii.gz" in text


@pytest.mark.parametrize(
    ("mounts", "message"),
    [
        (lambda t: Mounts(input=t / "nowhere", output=t / "output", json=t / "d.json"), "nowhere: input folder not mounted"),
        (lambda t: Mounts(input=t / "input", output=t / "output", json=t / "none.json"), "none.json: not found"),
    ],
)
def test_a_missing_mount_is_named(tmp_path, mounts, message):
    lumir_folder(tmp_path)
    with pytest.raises(DataError, match=message):
        pair_jobs(contracts.LUMIR, mounts(tmp_path))


def l2r_json(root: Path, test: list, val: list) -> Path:
    for s in (1, 2, 3):
        image(root / "imagesTr" / f"T_{s:04d}_0000.nii.gz")
    pair = {"fixed": "./imagesTr/T_0001_0000.nii.gz", "moving": "./imagesTr/T_0002_0000.nii.gz"}
    (root / "T_dataset.json").write_text(json.dumps({"name": "T", "registration_test": [pair] * len(test), "registration_val": [pair] * len(val)}))
    return root / "T_dataset.json"


def test_l2r_registers_the_test_pairs_else_the_validation_pairs(tmp_path):
    js = l2r_json(tmp_path, test=[1], val=[1, 1])
    jobs, source = pair_jobs(contracts.L2R, Mounts(input=tmp_path, output=tmp_path), json_arg=js)
    assert len(jobs) == 1 and source.endswith("'registration_test'")
    assert jobs[0].name == "disp_0001_0000_0002_0000.nii.gz"
    js = l2r_json(tmp_path, test=[], val=[1, 1])
    jobs, source = pair_jobs(contracts.L2R, Mounts(input=tmp_path, output=tmp_path), json_arg=js)
    assert len(jobs) == 2 and source.endswith("'registration_val' (no 'registration_test' pairs)")
    with pytest.raises(DataError, match="no pairs under 'registration_test'"):
        pair_jobs(contracts.L2R, Mounts(input=tmp_path, output=tmp_path), json_arg=js, force_test=True)


def remind_input(root: Path, cases: dict[str, tuple[str, ...]]) -> Path:
    for case, mods in cases.items():
        for mod in mods:
            image(root / f"ReMIND2Reg_{case}_{mod}.nii.gz")
    return root


def test_remind2reg_takes_every_case_of_its_sequence_sorted_with_its_ultrasound(tmp_path):
    inp = remind_input(tmp_path, {"0101": ("0000", "0001", "0002"), "0099": ("0000", "0001"), "0100": ("0000", "0002")})
    mounts = Mounts(input=inp, output=tmp_path)
    t1, _ = pair_jobs(contracts.REMIND2REG, mounts, moving_modality="0001")
    t2, _ = pair_jobs(contracts.REMIND2REG, mounts, moving_modality="0002")
    assert [j.name for j in t1] == ["disp_0099_0000_0099_0001.nii.gz", "disp_0101_0000_0101_0001.nii.gz"]
    assert [j.name for j in t2] == ["disp_0100_0000_0100_0002.nii.gz", "disp_0101_0000_0101_0002.nii.gz"]
    assert {j.modalities for j in t1} == {("3D iUS", "ceT1")} and {j.modalities for j in t2} == {("3D iUS", "T2")}


def test_remind2reg_names_a_case_without_its_ultrasound_and_an_input_without_its_sequence(tmp_path):
    inp = remind_input(tmp_path / "a", {"0099": ("0001",), "0100": ("0000", "0001")})
    with pytest.raises(DataError, match=r"ReMIND2Reg_0099_0001.nii.gz: its fixed image ReMIND2Reg_0099_0000.nii.gz is not in"):
        pair_jobs(contracts.REMIND2REG, Mounts(input=inp, output=tmp_path), moving_modality="0001")
    inp = remind_input(tmp_path / "b", {"0100": ("0000", "0001")})
    with pytest.raises(DataError, match=r"no image \*_0002.nii.gz"):
        pair_jobs(contracts.REMIND2REG, Mounts(input=inp, output=tmp_path), moving_modality="0002")


def test_oncoreg_reads_its_task_json_per_mode(tmp_path):
    for m in ("0000", "0001"):
        image(tmp_path / "imagesTr" / f"ThoraxCBCT_0011_{m}.nii.gz")
    pair = {"fixed": "./imagesTr/ThoraxCBCT_0011_0001.nii.gz", "moving": "./imagesTr/ThoraxCBCT_0011_0000.nii.gz"}
    (tmp_path / "ThoraxCBCT_dataset.json").write_text(json.dumps({"registration_val": [pair], "registration_test": []}))
    mounts = Mounts(input=tmp_path, output=tmp_path, model=tmp_path)
    jobs, _ = pair_jobs(contracts.ONCOREG, mounts, task="ThoraxCBCT", mode="Val")
    assert [j.name for j in jobs] == ["disp_0011_0001_0011_0000.nii.gz"]
    with pytest.raises(DataError, match="no pairs under 'registration_test'"):
        pair_jobs(contracts.ONCOREG, mounts, task="ThoraxCBCT", mode="Ts")
    with pytest.raises(DataError, match=r"OncoReg_dataset.json: not found .* there: \['ThoraxCBCT_dataset.json'\]"):
        pair_jobs(contracts.ONCOREG, mounts, task="OncoReg", mode="Val")
    with pytest.raises(DataError, match="test.sh takes <task> Val|Ts"):
        pair_jobs(contracts.ONCOREG, mounts, task="ThoraxCBCT", mode="Tr")


def test_case_of_finds_the_mask_by_the_official_naming_rule(tmp_path):
    img = image(tmp_path / "imagesTr" / "X_0001_0000.nii.gz")
    assert case_of(img).mask is None
    image(tmp_path / "masksTr" / "X_0001_0000.nii.gz")
    assert case_of(img).mask == tmp_path / "masksTr" / "X_0001_0000.nii.gz"
    with pytest.raises(DataError, match="does not end in _SSSS_MMMM.nii.gz"):
        case_of(tmp_path / "x.nii.gz")


def test_fields_are_written_in_each_templates_layout_and_header(tmp_path):
    u = np.random.default_rng(0).normal(size=(*SHAPE, 3))
    moving_affine = np.array([[0, 0.5, 0, 10], [-0.5, 0, 0, 20], [0, 0, 0.5, -30], [0, 0, 0, 1]])
    moving = case_of(image(tmp_path / "ReMIND2Reg_0001_0001.nii.gz", moving_affine))
    for contract, shape, affine in ((contracts.LUMIR, (3, *SHAPE), np.eye(4)), (contracts.REMIND2REG, (*SHAPE, 3), moving_affine),
                                    (contracts.L2R, (*SHAPE, 3), np.eye(4)), (contracts.ONCOREG, (*SHAPE, 3), moving_affine)):
        path = tmp_path / f"{contract.name}.nii.gz"
        write_field(contract, path, u, moving)
        img = nib.load(path)
        assert img.shape == shape and img.get_data_dtype() == np.float32, contract.name
        np.testing.assert_allclose(img.affine, affine, atol=1e-6, err_msg=contract.name)
        data = np.asarray(img.dataobj)
        np.testing.assert_allclose(np.moveaxis(data, 0, -1) if contract.channel_first else data, u.astype(np.float32))
    assert list(nib.load(tmp_path / "lumir.nii.gz").header["pixdim"][1:4]) == [1, 1, 1]


@pytest.mark.parametrize(
    ("owner", "group", "mode", "uid", "gid", "expected"),
    [
        (5, 5, 0o755, 5, 5, True), (5, 5, 0o755, 6, 6, False), (5, 6, 0o775, 7, 6, True), (5, 5, 0o777, 7, 7, True),
        (5, 5, 0o733, 7, 7, True), (5, 5, 0o776, 7, 7, False), (5, 5, 0o500, 5, 5, False), (5, 5, 0o700, 0, 0, True),
    ],
)  # fmt: skip
def test_writable_follows_the_mode_bits(tmp_path, monkeypatch, owner, group, mode, uid, gid, expected):
    st = os.stat_result((stat.S_IFDIR | mode, 0, 0, 0, owner, group, 0, 0, 0, 0))
    monkeypatch.setattr(Path, "stat", lambda self, **_: st)
    assert writable(tmp_path, uid, gid) is expected


def test_the_summary_line_round_trips():
    record = {"pairs": 2, "pair_s": [1.5, 2.0]}
    assert parse_summary(f"12:00:00 other\n12:00:01 {summary_line(record)}\n") == record
    assert parse_summary("no summary\n") is None
