"""learn2reg.rules: each organiser's file-name, point-folder, quantile and selection rules, as
tables read from their code (tests/fixtures/organisers/SPEC.md sections 2.4, 2.5, 6, 7)."""

from __future__ import annotations

import pytest

from learn2reg import rules
from learn2reg.io import DataError

SAME, MR_US, REV, T2 = ("3455_0000", "3454_0000"), ("0099_0000", "0099_0001"), ("0011_0001", "0011_0000"), ("0099_0000", "0099_0002")


@pytest.mark.parametrize(
    ("name", "pair", "candidates", "write"),
    [
        # L2R HEAD: short first only for 0000 <- 0001; long always
        ("l2r", MR_US, ["disp_0099_0099.npz", "disp_0099_0099.nii.gz", "disp_0099_0000_0099_0001.npz", "disp_0099_0000_0099_0001.nii.gz"], "disp_0099_0000_0099_0001.nii.gz"),
        ("l2r", SAME, ["disp_3455_0000_3454_0000.npz", "disp_3455_0000_3454_0000.nii.gz"], "disp_3455_0000_3454_0000.nii.gz"),
        # LUMIR: .nii.gz only, the short name required for equal modalities and 0000 <- 0001, else the long one
        ("lumir24", SAME, ["disp_3455_3454.nii.gz"], "disp_3455_3454.nii.gz"),
        ("lumir25", MR_US, ["disp_0099_0099.nii.gz"], "disp_0099_0099.nii.gz"),
        ("lumir25", REV, ["disp_0011_0001_0011_0000.nii.gz"], "disp_0011_0001_0011_0000.nii.gz"),
        # ReMIND2Reg: only the long name, .npz before .nii.gz
        ("remind2reg", MR_US, ["disp_0099_0000_0099_0001.npz", "disp_0099_0000_0099_0001.nii.gz"], "disp_0099_0000_0099_0001.nii.gz"),
    ],
)
def test_file_names_per_rule_set(name, pair, candidates, write):
    r = rules.RULES[name]
    assert rules.disp_candidates(r, *pair) == candidates
    assert rules.disp_name(name, *pair) == write and write in candidates
    assert rules.output_format(r, *pair) == rules.OutputFormat(write, channel_first=False, dtype="float32")


@pytest.mark.parametrize(
    ("name", "dest", "pair", "folders"),
    [
        ("l2r", "landmarks", T2, ["landmarks00000002", "landmarks02"]),  # HEAD: every dest; ours: OncoReg's as fallback
        ("l2r", "keypoints", REV, ["keypoints00000001", "keypoints01"]),
        ("l2r", "keypoints", MR_US, ["keypoints"]),
        ("lumir24", "keypoints", T2, ["keypoints02"]),  # LUMIR (and the old L2R container): keypoints only, as integers
        ("lumir24", "landmarks", T2, ["landmarks"]),
        ("remind2reg", "landmarks", T2, ["landmarks"]),  # ReMIND2Reg: always dest
    ],
)
def test_point_folders(name, dest, pair, folders):
    assert rules.point_folders(rules.RULES[name], dest, *pair) == folders


def test_point_files_are_label_volumes_for_lumir_only():
    assert [rules.point_extension(r) for r in rules.RULES.values()] == [".csv", ".nii.gz", ".nii.gz", ".csv"]


@pytest.mark.parametrize(
    ("name", "method", "metric", "q"),
    [
        ("l2r", "TRE_lm", "tre", 0.7), ("l2r", "LogJacDetStd", "sdlogj", 0.7), ("l2r", "DSC", "dice", 0.3), ("l2r", "HD95", "hd95", 0.3),
        ("lumir24", "TRE_lm", "", 0.3), ("lumir24", "Non-diffeomorphic Volumes", "", 0.3),
        ("lumir25", "TRE_lm", "", 0.7), ("lumir25", "HD95", "", 0.3), ("lumir25", "TRE_kp", "", 0.3),  # by name only
        ("remind2reg", "TRE_lm", "", 0.3), ("remind2reg", "num_foldings", "", 0.3),
    ],
)  # fmt: skip
def test_the_quantile_behind_30(name, method, metric, q):
    assert rules.quantile(rules.RULES[name], method, metric) == q


LUMIR_CFG = {"name": "LUMIR", "evaluation_methods": [{"name": "NDV", "metric": "ndv"}]}
NAME_ONLY = {"name": "LUMIR", "evaluation_methods": [{"name": "DSC", "metric": "dice", "labels": [1]}]}
REMIND_CFG = {"task_name": "ReMIND2Reg", "evaluation_methods": []}
OTHER = {"task_name": "OASIS", "evaluation_methods": []}


@pytest.mark.parametrize(
    ("requested", "roles", "configs", "chosen"),
    [
        ("auto", ("c1", "c2"), [LUMIR_CFG, LUMIR_CFG], "lumir24"),
        ("auto", ("l1", "s1", "s2", "s3"), [LUMIR_CFG] * 4, "lumir25"),
        ("auto", ("c",), [LUMIR_CFG], "lumir25"),  # one LUMIR config: the current edition
        ("auto", ("c",), [NAME_ONLY], "lumir25"),
        ("auto", ("c",), [REMIND_CFG], "remind2reg"),
        ("auto", ("c",), [OTHER], "l2r"),
        ("auto", (), [], "l2r"),  # derived from the task
        ("lumir24", ("c",), [LUMIR_CFG], "lumir24"),  # a named rule set wins
        ("l2r", ("c",), [REMIND_CFG], "l2r"),
    ],
)
def test_selection(requested, roles, configs, chosen):
    r, reason = rules.select(requested, roles, configs)
    assert r.name == chosen and reason


def test_an_unknown_rule_set_is_refused_naming_the_choices():
    with pytest.raises(DataError, match="l2r, lumir24, lumir25, remind2reg"):
        rules.get("lumir26")


def test_the_result_name_comes_from_the_rule_sets_key():
    assert rules.config_name(rules.LUMIR24, {"name": "LUMIR", "task_name": "x"}, "c.json", "c") == "LUMIR"
    assert rules.config_name(rules.L2R, {"name": "LUMIR"}, "c.json", "c") == "LUMIR"  # ours falls back
    assert rules.config_name(rules.L2R, {}, "c.json", "stem") == "stem"
    with pytest.raises(DataError, match="lumir25 rules read the task name from the config key 'name'.*L2R-style config"):
        rules.config_name(rules.LUMIR25, {"task_name": "ReMIND2Reg"}, "c.json", "c")
    with pytest.raises(DataError, match="remind2reg rules read the task name from the config key 'task_name'.*LUMIR config"):
        rules.config_name(rules.REMIND2REG, {"name": "LUMIR"}, "c.json", "c")


def test_rule_set_names_are_the_tables_names():
    """One source of truth: the names a task folder and --rules use are the tables' (``RULES``)."""
    assert rules.RULE_SETS == tuple(rules.RULES) == ("l2r", "lumir24", "lumir25", "remind2reg")
    assert rules.CHOICES[0] == "auto" and rules.CHOICES[1:] == rules.RULE_SETS
    assert rules.point_folders("remind2reg", "landmarks", *T2) == rules.point_folders(rules.REMIND2REG, "landmarks", *T2)
