"""The organisers' evaluation configs are accepted by ``evaluate -c`` as they are.

MDL-UzL/L2R has no licence file, so no copy of its ``evaluation/evaluation_configs/*.json`` is
stored here: :data:`OFFICIAL` rebuilds each file from its documented structure (task name,
methods, shape, pairs, masking, version; see tests/evaluation/OFFICIAL_CONFIGS.md for the source
commit and the check that the rebuilt files equal the organisers'). Each one is written to a tiny
fake task folder holding every file the official script would read, found by the official rules
written out here independently of ``learn2reg.eval_config``.
"""

from __future__ import annotations

import json
import logging
from itertools import combinations
from pathlib import Path

import numpy as np
import pytest

from evaluation.evaluate import ground_truth_problems, main
from learn2reg import contract, io
from learn2reg.eval_config import read_config
from learn2reg.io import DataError, Geometry

SDLOGJ = {"name": "LogJacDetStd", "metric": "sdlogj"}
TRE_LM = {"name": "TRE_lm", "metric": "tre", "dest": "landmarks"}
TRE_KP = {"name": "TRE_kp", "metric": "tre", "dest": "keypoints"}


def labelled(n: int) -> list[dict]:
    return [SDLOGJ, {"name": "DSC", "metric": "dice", "labels": list(range(1, n + 1))},
            {"name": "HD95", "metric": "hd95", "labels": list(range(1, n + 1))}]


# file stem: (task, methods, shape, masked_evaluation, eval_config_version, pairs ((subject, modality), ...), images folder)
OFFICIAL = {
    "AbdomenCTCT_VAL": ("AbdomenCTCT", labelled(13), [192, 160, 256], False, 0.2,
                        [((f, "0000"), (m, "0000")) for f, m in combinations(range(1, 29, 3), 2)], "imagesTr"),
    "AbdomenMRCT_VAL": ("AbdomenMRCT", labelled(4), [192, 160, 192], True, 0.2,
                        [((s, "0000"), (s, "0001")) for s in (6, 7, 8)], "imagesTr"),
    "CuRIOUS_VAL": ("CuRIOUS", [SDLOGJ, TRE_LM], [256, 256, 288], False, 0.2,
                    [((s, "0000"), (s, "0002")) for s in range(3, 22, 3)], "imagesTr"),
    "HippocampusMR_VAL": ("HippocampusMR", labelled(2), [64, 64, 64], False, 0.2,
                          [((201 + i, "0000"), (260 - i, "0000")) for i in range(60)], "imagesTr"),
    "LungCT_VAL": ("LungCT", [SDLOGJ, TRE_LM, TRE_KP], [192, 192, 208], True, 0.2,
                   [((s, "0000"), (s, "0001")) for s in (1, 2, 3)], "imagesTr"),
    "LungCT_TEST": ("LungCT", [SDLOGJ, TRE_LM], [192, 192, 208], True, 0.2,
                    [((s, "0000"), (s, "0001")) for s in range(21, 31)], "imagesTs"),
    "NLST_VAL": ("NLST", [SDLOGJ, TRE_KP], [224, 192, 224], True, 0.3,
                 [((s, "0000"), (s, "0001")) for s in range(101, 111)], "imagesTr"),
    "OASIS_VAL": ("OASIS", labelled(35), [160, 224, 192], False, 0.2,
                  [((s, "0000"), (s + 1, "0000")) for s in range(395, 414)], "imagesTr"),
    "ThoraxCBCT_VAL": ("ThoraxCBCT", [SDLOGJ, TRE_KP, {"name": "DSC", "metric": "dice", "labels": [1]}], [390, 280, 300], False, 0.2,
                       [((s, m), (s, "0000")) for m in ("0001", "0002") for s in (11, 12, 13)], "imagesTr"),
}


def official_json(stem: str) -> str:
    """The config file as the organisers write it (4-space indent, their key order)."""
    task, methods, shape, masked, version, pairs, folder = OFFICIAL[stem]
    rel = [{r: f"./{folder}/{task}_{s:04d}_{m}.nii.gz" for r, (s, m) in zip(("fixed", "moving"), pair, strict=True)} for pair in pairs]
    config = {"task_name": task, "evaluation_methods": methods, "expected_shape": [*shape, 3], "eval_pairs": rel,
              "eval_config_version": version, "masked_evaluation": masked}
    return json.dumps(config, indent=4)


def official_files(config: dict) -> set[str]:
    """Every file the official evaluation.py reads for ``config`` (its rules, written out here)."""
    metrics = {m["metric"] for m in config["evaluation_methods"]}
    files = set()
    for pair in config["eval_pairs"]:
        fixed, moving = pair["fixed"], pair["moving"]
        files |= {fixed, moving}
        if metrics & {"dice", "hd95"}:
            files |= {fixed.replace("images", "labels"), moving.replace("images", "labels")}
        if config.get("masked_evaluation"):
            files.add(fixed.replace("images", "masks"))
        fm, mm = fixed[-11:-7], moving[-11:-7]
        for m in config["evaluation_methods"]:
            if m["metric"] == "tre":
                dest = m["dest"] if fm == mm or (fm, mm) == ("0000", "0001") else m["dest"] + min(fm, mm) + max(fm, mm)
                files |= {p.replace("images", dest).replace(".nii.gz", ".csv") for p in (fixed, moving)}
    return files


def _boxes(rng: np.random.Generator, shape: tuple[int, int, int], top: int) -> np.ndarray:
    """A label map with labels 1..top as random boxes of a third of each axis (later ones on top)."""
    labels = np.zeros(shape, np.uint8)
    size = [max(1, n // 3) for n in shape]
    for k in range(1, top + 1):
        corner = [rng.integers(0, n - s + 1) for n, s in zip(shape, size, strict=True)]
        labels[tuple(slice(c, c + s) for c, s in zip(corner, size, strict=True))] = k
    return labels


def fake_task(root: Path, config: dict, shape: tuple[int, int, int] = (4, 4, 4), seed: int = 0) -> Path:
    """Tiny files at every path ``config`` names: images (float32), labels (boxes of 1..max label), masks
    (all ones) and point files (5 corresponding points), all on ``shape`` with 1.5 mm spacing."""
    rng = np.random.default_rng(seed)
    top = max((max(m["labels"]) for m in config["evaluation_methods"] if "labels" in m), default=1)
    geom = Geometry.identity(shape, (1.5, 1.5, 1.5))
    for rel in sorted(official_files(config)):
        path = root / rel
        if rel.endswith(".csv"):
            io.write_points(path, rng.uniform(0, min(shape) - 1, (5, 3)))
        elif "/labels" in rel:
            io.save_nifti(path, _boxes(rng, shape, top), geom)
        elif "/masks" in rel:
            io.save_nifti(path, np.ones(shape, np.uint8), geom)
        else:
            io.save_nifti(path, rng.random(shape).astype(np.float32), geom)
    return root


@pytest.mark.parametrize("stem", OFFICIAL)
def test_the_official_config_is_read_and_every_path_resolves(tmp_path, stem, caplog):
    text = official_json(stem)
    raw = json.loads(text)
    data = fake_task(tmp_path / "data", raw)
    path = data / f"{stem}_evaluation_config.json"
    path.write_text(text)
    with caplog.at_level(logging.WARNING, logger="learn2reg.eval_config"):
        cfg = read_config(path, data)
    assert caplog.text == ""  # nothing unknown, nothing ignored
    task, methods, shape, masked, _, pairs, _ = OFFICIAL[stem]
    assert cfg.name == task and cfg.masked is masked and cfg.expected_shape == (*shape, 3)
    assert [(m.name, m.metric, list(m.labels), m.dest) for m in cfg.methods] == [
        (m["name"], m["metric"], m.get("labels", []), m.get("dest")) for m in methods]
    assert [p.key for p in cfg.pairs] == [f"{f[0]:04d}_{f[1]}<--{m[0]:04d}_{m[1]}" for f, m in pairs]
    resolved = set()
    for p in cfg.pairs:
        resolved |= {p.fixed_image, p.moving_image}
        if cfg.has("dice") or cfg.has("hd95"):
            resolved |= {p.fixed_label, p.moving_label}
        if masked:
            resolved.add(p.fixed_mask)
        resolved |= {f for dest in (m.dest for m in cfg.methods if m.metric == "tre") for f in p.point_files(dest)}
    assert resolved == {(data / rel).resolve() for rel in official_files(raw)}  # the official script's files, no other
    assert ground_truth_problems(cfg) == []  # what `evaluate` checks before it starts


def test_thoraxcbct_keypoints_between_modalities_are_found_in_either_release_naming(tmp_path):
    """The official rule appends both 4-digit modality ids (keypoints00000001Tr); the ThoraxCBCT
    release's own dataset.json names keypoints01Tr / keypoints02Tr."""
    raw = json.loads(official_json("ThoraxCBCT_VAL"))
    data = fake_task(tmp_path, raw)
    for old, new in (("keypoints00000001Tr", "keypoints01Tr"), ("keypoints00000002Tr", "keypoints02Tr")):
        (data / old).rename(data / new)
    (data / "c.json").write_text(json.dumps(raw))
    cfg = read_config(data / "c.json", data)
    assert {p.point_files("keypoints")[0].parent.name for p in cfg.pairs} == {"keypoints01Tr", "keypoints02Tr"}
    assert ground_truth_problems(cfg) == []


# ---------------------------------------------------------------------- end to end through `evaluate -c`


def _zero_submission(folder: Path, cfg) -> None:
    for pair in cfg.pairs:
        io.save_nifti(folder / contract.disp_filename_l2r(pair.fixed, pair.moving), np.zeros((*cfg.expected_shape[:3], 3), np.float32))


@pytest.mark.slow
def test_evaluate_runs_the_official_hippocampus_config_as_it_is(tmp_path):
    """All 60 pairs at the official 64^3 shape: zero fields give the initial overlap."""
    text = official_json("HippocampusMR_VAL")
    data = fake_task(tmp_path / "data", json.loads(text), shape=(64, 64, 64))
    (data / "cfg.json").write_text(text)
    _zero_submission(tmp_path / "sub", read_config(data / "cfg.json", data))
    out = tmp_path / "result.json"
    assert main(["-i", str(tmp_path / "sub"), "-d", str(data), "-c", str(data / "cfg.json"), "-o", str(out), "-j", "2"]) == 0
    result = json.loads(out.read_text())
    assert result["name"] == "HippocampusMR" and len(result["cases"]) == 60
    first = result["cases"]["0201_0000<--0260_0000"]
    fixed = io.load_nifti(data / "labelsTr/HippocampusMR_0201_0000.nii.gz", dtype=None)[0]
    moving = io.load_nifti(data / "labelsTr/HippocampusMR_0260_0000.nii.gz", dtype=None)[0]
    dice = [2 * np.sum((fixed == k) & (moving == k)) / (np.sum(fixed == k) + np.sum(moving == k)) for k in (1, 2)]
    np.testing.assert_allclose(first["DSC"]["detailed"], dice, rtol=1e-9)
    assert first["LogJacDetStd"]["mean"] == 0.0 and set(result["aggregates"]) >= {"LogJacDetStd", "DSC", "HD95"}


def test_evaluate_runs_the_official_thoraxcbct_structure_between_modalities(tmp_path):
    """The ThoraxCBCT config with only its expected_shape shrunk to the tiny grid: CBCT (0001,
    0002) fixed, FBCT moving, keypoints from keypoints0000000{1,2}Tr, DSC on label 1. Zero fields:
    TRE = |fixed point - moving point| * the moving image's spacing, by hand."""
    raw = json.loads(official_json("ThoraxCBCT_VAL"))
    raw["expected_shape"] = [8, 7, 6, 3]
    data = fake_task(tmp_path / "data", raw, shape=(8, 7, 6))
    (data / "cfg.json").write_text(json.dumps(raw, indent=4))
    _zero_submission(tmp_path / "sub", read_config(data / "cfg.json", data))
    out = tmp_path / "result.json"
    assert main(["-i", str(tmp_path / "sub"), "-d", str(data), "-c", str(data / "cfg.json"), "-o", str(out), "-j", "1"]) == 0
    case = json.loads(out.read_text())["cases"]["0012_0002<--0012_0000"]
    f = io.read_points(data / "keypoints00000002Tr/ThoraxCBCT_0012_0002.csv")
    m = io.read_points(data / "keypoints00000002Tr/ThoraxCBCT_0012_0000.csv")
    np.testing.assert_allclose(case["TRE_kp"]["detailed"], np.linalg.norm((f - m) * 1.5, axis=1), rtol=1e-6)
    assert list(case)[:3] == ["LogJacDetStd", "num_foldings", "TRE_kp"] and "DSC" in case


# ---------------------------------------------------------------------- what the reader refuses, and why


def _read(tmp_path: Path, raw: dict):
    fake_task(tmp_path, json.loads(official_json("LungCT_VAL")))
    (tmp_path / "c.json").write_text(json.dumps(raw))
    return read_config(tmp_path / "c.json", tmp_path)


def test_the_may_2022_draft_format_is_refused_with_what_to_use_instead(tmp_path):
    raw = json.loads(official_json("LungCT_VAL"))
    raw.update(evaluation_methods={"sdlogj": True, "tre": True}, eval_config_version=0.1)
    with pytest.raises(DataError, match=r"draft format of May 2022 .*current \{TASK\}_VAL_evaluation_config\.json"):
        _read(tmp_path, raw)


@pytest.mark.parametrize("value", ["false", 0, None])
def test_masked_evaluation_must_be_a_json_boolean(tmp_path, value):
    raw = json.loads(official_json("LungCT_VAL"))
    raw["masked_evaluation"] = value
    with pytest.raises(DataError, match="masked_evaluation must be true or false"):
        _read(tmp_path, raw)


def test_unknown_keys_are_ignored_with_a_warning_as_the_official_script_ignores_them(tmp_path, caplog):
    raw = json.loads(official_json("LungCT_VAL"))
    raw["comment"] = "added by hand"
    with caplog.at_level(logging.WARNING, logger="learn2reg.eval_config"):
        cfg = _read(tmp_path, raw)
    assert "ignoring unknown keys ['comment']" in caplog.text and len(cfg.pairs) == 3
