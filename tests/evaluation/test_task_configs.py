"""``evaluate -d TASK`` alone on the 2024-2026 layouts: the task folder's rule set, and the
organisers' config files found in the folder (the ones their evaluator would be run with) or a
config derived as theirs would be (``evaluation.evaluate.task_plan``).

Checked on the organisers' parity cases (their own evaluator's outputs, ``tests/fixtures/organisers``)
and on the demo LUMIR and ReMIND2Reg tasks (``demo-data --layout lumir|remind2reg``).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from evaluation.evaluate import evaluate, organiser_configs, task_plan
from evaluation.initial import evaluate_initial, write_zero_submission
from learn2reg import rules as rulesets
from learn2reg.eval_config import derive_config
from learn2reg.io import DataError
from learn2reg.task import load_task
from pipeline.demo.tasks import write_demo
from tests.evaluation.test_organisers import FIXTURES, PASSING, check
from tests.learn2reg.test_task_current import CASES, oncoreg_task, remind_task


@pytest.fixture(scope="module")
def demo(tmp_path_factory) -> dict[str, Path]:
    """The demo LUMIR (2 training images) and ReMIND2Reg (1 training patient) tasks."""
    root = tmp_path_factory.mktemp("demo")
    lumir = write_demo(root, tasks=("LUMIR",), subjects=2)[0]
    remind = write_demo(root, tasks=("ReMIND",), subjects=1)[0]
    return {"LUMIR": lumir, "ReMIND": remind}


# ------------------------------------------------------------------- the organisers' parity cases


def _as_found(run) -> bool:
    """Runs whose configs are exactly those ``-d`` alone finds in their data folder."""
    data = FIXTURES / run.flags["-d"]
    if run.evaluator not in ("lumir24", "lumir25") or not (data / "imagesVal").is_dir():
        return False
    found = organiser_configs(load_task(data), rulesets.RULES[run.evaluator])
    return {role: path.resolve() for role, path in found.items()} == {role: Path(p).resolve() for role, p in run.config.items()}


@pytest.mark.parametrize("run", [r for r in PASSING if _as_found(r)], ids=lambda r: f"{r.evaluator}-{r.name}")
def test_lumir_parity_cases_scored_with_the_configs_found_in_the_folder(run):
    check(run, evaluate(FIXTURES / run.flags["-i"], FIXTURES / run.flags["-d"], workers=1))


@pytest.mark.parametrize("run", [r for r in PASSING if r.evaluator == "remind2reg"], ids=lambda r: r.name)
def test_remind2reg_parity_cases_scored_with_the_config_found_in_the_folder(run, tmp_path):
    """The ReMIND case with a dataset json: two configs in the folder; the one named after the task is theirs."""
    data = remind_task(tmp_path)
    assert organiser_configs(load_task(data), rulesets.REMIND2REG) == {"c": data.resolve() / "ReMIND2Reg_VAL_evaluation_config.json"}
    check(run, evaluate(FIXTURES / run.flags["-i"], data, workers=1))


def test_the_reason_names_the_rule_set_and_the_configs_used():
    reason = task_plan(CASES / "lumir24").reason
    assert reason == ("the rule set of the task folder LUMIR; the organisers' configs in the folder: "
                      "-c1 LUMIR_VAL_Landmark_evaluation_config.json -c2 LUMIR_VAL_Segmentation_evaluation_config.json")
    four = task_plan(CASES / "lumir25")
    assert [role for role, _ in four.configs] == ["l1", "s1", "s2", "s3"] and four.rules is rulesets.LUMIR25
    told = task_plan(CASES / "lumir25", rules="lumir24")  # a named rule set: its flags, the 2024 parts first
    assert told.rules is rulesets.LUMIR24 and [r for r, _ in told.configs] == ["c1", "c2"]
    assert told.reason.startswith("--rules lumir24; ") and "-c1 LUMIR25_VAL_LUMIR24_Landmark_evaluation_config.json" in told.reason


def test_several_configs_for_one_flag_and_none_named_after_the_task_are_refused(tmp_path):
    data = remind_task(tmp_path)
    meta = json.loads((data / "ReMIND2Reg_dataset.json").read_text())
    (data / "ReMIND2Reg_dataset.json").write_text(json.dumps({**meta, "name": "Other"}))
    with pytest.raises(DataError, match=r"several organisers' configs for -c: L2R_VAL_evaluation_config.json, "
                                        r"ReMIND2Reg_VAL_evaluation_config.json; name the ones to use"):
        task_plan(data)


# ------------------------------------------------------------------- the demo tasks


def _configs(data: Path) -> dict[str, str] | str:
    """The demo task's organisers' config files, as their evaluator's flags would name them."""
    if (data / "DemoLUMIR_VAL_Landmark_evaluation_config.json").is_file():
        return {"l1": str(data / "DemoLUMIR_VAL_Landmark_evaluation_config.json"), "s1": str(data / "DemoLUMIR_VAL_Segmentation_evaluation_config.json")}
    return str(data / "DemoReMIND2Reg_VAL_evaluation_config.json")


@pytest.mark.parametrize(("key", "rules"), [("LUMIR", "lumir25"), ("ReMIND", "remind2reg")])
def test_the_zero_field_scored_with_d_alone_equals_it_scored_with_the_organisers_configs(demo, tmp_path, key, rules):
    data = demo[key]
    zero = write_zero_submission(data, tmp_path / "zero")
    alone = evaluate(zero, data, workers=1)
    assert alone == evaluate(zero, data, _configs(data), workers=1) and alone["rules"] == rules
    assert evaluate_initial(data, workers=1) == alone  # `initial` sees the same plan


@pytest.mark.parametrize(
    ("key", "methods", "labels"),
    [("LUMIR", ["Non-diffeomorphic Volumes", "DSC", "HD95", "TRE_lm"], (0, 1, 2, 3, 4, 5, 6)), ("ReMIND", ["LogJacDetStd", "TRE_lm"], ())],
)
def test_without_their_configs_the_config_is_derived_as_theirs_and_scores_alike(demo, tmp_path, key, methods, labels):
    """LUMIR: NDV, DSC/HD95 over the labels with 0, TRE from the landmark volumes, over every pair;
    ReMIND2Reg: SDlogJ (unmasked) and TRE_lm. Every number their configs give a pair is the same."""
    data = tmp_path / key
    shutil.copytree(demo[key], data, ignore=shutil.ignore_patterns("*_evaluation_config.json"))
    run_plan = task_plan(data)
    assert [role for role, _ in run_plan.configs] == ["c"] and "configuration derived from the task" in run_plan.reason
    config = run_plan.configs[0][1]
    assert [m.name for m in config.methods] == methods and not config.masked
    assert all(m.labels == labels for m in config.methods if m.metric in ("dice", "hd95"))
    if key == "LUMIR":
        pair = config.pairs[0]
        assert pair.point_files("landmarks") == (pair.fixed_image.parent.parent / "landmarksVal" / pair.fixed_image.name,
                                                 pair.moving_image.parent.parent / "landmarksVal" / pair.moving_image.name)
    zero = write_zero_submission(data, tmp_path / "zero")
    derived, theirs = evaluate(zero, data, workers=1), evaluate(zero, demo[key], _configs(demo[key]), workers=1)
    assert sorted(derived["cases"]) == sorted(theirs["cases"])
    for key_, case in theirs["cases"].items():
        assert {m: derived["cases"][key_][m] for m in case} == case


def test_oncoreg_derived_config_reads_each_pairs_own_keypoints(tmp_path):
    """OncoReg: fixed CBCT _0001/_0002 <- moving FBCT _0000, points in keypoints01Tr/keypoints02Tr."""
    config = derive_config(oncoreg_task(tmp_path))
    assert [m.name for m in config.methods] == ["LogJacDetStd", "TRE_kp"]
    for pair, folder in zip(config.pairs, ("keypoints01Tr", "keypoints02Tr"), strict=True):
        files = pair.point_files("keypoints")
        assert files is not None and [f.parent.name for f in files] == [folder, folder]
        assert np.loadtxt(files[1], delimiter=",")[0, 0] == int(folder[-3]) + 0.5  # the FBCT's points of this pair
