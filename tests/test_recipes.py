"""The recipes for the current Learn2Reg tasks (configs/l2r_*.json): each says what it is based
on, follows its task's facts (CT windowed in HU with the offset detected, Dice only where the task
has training labels, masked similarity for the lung tasks; LUMIR as the published weights need it,
ReMIND2Reg without a network), and is listed in the README and in the recipe benchmark."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys

import pytest

from pipeline.config import load_config
from tests.paths import REPO

CONFIGS = sorted((REPO / "configs").glob("*.json"))
# recipe: (CT, training labels, lung masks in the similarity, half resolution)
RECIPES = {
    "l2r_oasis.json": (False, True, False, False),
    "l2r_abdomenctct.json": (True, True, False, True),
    "l2r_nlst.json": (True, False, True, True),
    "l2r_lungct.json": (True, False, True, True),
    "l2r_thoraxcbct.json": (True, False, False, True),
    "l2r_hippocampusmr.json": (False, True, False, False),
    "l2r_lumir.json": (False, False, False, False),
    "l2r_oncoreg.json": (True, False, False, True),
    "l2r_remind2reg.json": (False, False, False, False),
}


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_every_config_says_what_it_is(path):
    comment = json.loads(path.read_text()).get("_comment")
    assert isinstance(comment, str) and len(comment) > 40


def test_the_recipes_are_the_l2r_configs():
    assert sorted(p.name for p in CONFIGS if p.name.startswith("l2r_")) == sorted(RECIPES)


@pytest.mark.parametrize("name", RECIPES)
def test_a_recipe_follows_its_task(name):
    ct, labels, masked, half = RECIPES[name]
    cfg = load_config(REPO / "configs" / name)
    comment = json.loads((REPO / "configs" / name).read_text())["_comment"]
    assert "seed paper" in comment and "Assumes" in comment
    assert (cfg.preprocess.window is not None) == ct
    if ct:
        assert cfg.preprocess.hu_offset == "auto" and "HU" in comment
        assert cfg.preprocess.window[0] >= -1024 and cfg.preprocess.window[1] <= 1600  # a window in HU
    assert (cfg.loss.dice > 0) == labels  # training refuses Dice without training labels
    assert cfg.loss.use_mask == masked and cfg.preprocess.half_resolution == half
    assert cfg.model.levels == 3 and cfg.train.steps_per_level == (30000, 30000, 60000)


def test_lumir_trains_unsupervised_as_the_published_weights_need_and_optimises_at_prediction():
    cfg = load_config(REPO / "configs" / "l2r_lumir.json")
    comment = json.loads((REPO / "configs" / "l2r_lumir.json").read_text())["_comment"]
    assert "train --init weights/LapIRN_diff_fea7.pth" in comment and "[0, 255]" in comment
    from pipeline.training.import_weights import imported_config

    authors = imported_config(7, diffeomorphic=True)
    assert cfg.model == authors.model and cfg.preprocess == authors.preprocess  # what train --init keeps
    assert cfg.loss.dice == 0 and cfg.loss.smooth == 3.5 and cfg.predict.uses_network and cfg.predict.instance_opt_steps > 0


def test_remind2reg_registers_without_a_network_and_oncoreg_trains_on_its_paired_images():
    remind = load_config(REPO / "configs" / "l2r_remind2reg.json").predict
    assert not remind.uses_network and remind.network == "none" and remind.instance_opt_steps > 0 and remind.instance_opt_levels == 2
    onco = json.loads((REPO / "configs" / "l2r_oncoreg.json").read_text())["_comment"]
    assert "256x192x192" in onco and "training_paired_images" in onco and "l2r_thoraxcbct.json" in onco


def test_the_2020_lung_window_is_stated_in_hu():
    cfg = load_config(REPO / "configs" / "l2r2020_task02_lung.json").preprocess
    assert cfg.window == (-924, 494) and cfg.hu_offset == "auto"  # the author's [100, 1518] on HU + 1024


def test_the_readme_names_every_recipe():
    readme = (REPO / "README.md").read_text()
    assert "## Recipes for Learn2Reg tasks" in readme
    assert [n for n in RECIPES if n not in readme] == []


def test_the_recipe_benchmark_covers_every_recipe_and_counts_without_measuring(tmp_path):
    spec = importlib.util.spec_from_file_location("bench_recipes", REPO / "bench" / "bench_recipes.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert sorted(r[0] for r in module.RECIPES) == sorted(RECIPES)
    cmd = [sys.executable, str(REPO / "bench" / "bench_recipes.py"), "--only", "HippocampusMR", "--measure-max-voxels", "0",
           "--out", str(tmp_path / "r")]
    subprocess.run(cmd, check=True, capture_output=True, text=True, cwd=REPO, timeout=300)
    row = json.loads((tmp_path / "r.json").read_text())["recipes"][0]
    assert row["grid"] == [64, 64, 64] and "measured" not in row
    assert 0.05e12 < row["counted"]["forward_flops"] < 0.07e12  # ~59 GFLOP at 64^3, start_channel 7
    assert row["counted"]["train_step_flops"][-1] > 2.5 * row["counted"]["forward_flops"]  # backward ~2x forward
    counted_gb = row["counted"]["train_step_bytes"] / 2**30  # ~0.42 GB: activations, parameters, gradients, Adam
    assert 0.35 < counted_gb < 0.5 and row["estimated"]["train_cpu_gb"] > counted_gb + 0.3  # + Python, torch, allocator
    assert row["estimated"]["train_gpu_gb"]["bf16"] < row["estimated"]["train_gpu_gb"]["fp32"]
    assert row["predict_estimate_gb"] > row["counted"]["inference_bytes"] / 2**30
    cmd[3] = "ReMIND2Reg"
    subprocess.run(cmd, check=True, capture_output=True, text=True, cwd=REPO, timeout=300)
    row = json.loads((tmp_path / "r.json").read_text())["recipes"][0]
    assert row["config"] == "l2r_remind2reg.json" and not row["uses_network"] and "counted" not in row and "predict" not in row
    assert row["instance_opt"] == "50 steps x 2 level(s)" and row["predict_estimate_gb"] > 1  # 256^3 float32 images alone: 0.13 GB
