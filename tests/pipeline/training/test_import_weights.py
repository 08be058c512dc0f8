"""``import-weights``: the authors' published checkpoints become run folders whose model reproduces
the authors' own code (stored fixture, both variants), every bad source is refused by name before
anything is written, and ``predict --run`` works with an imported run on a task nothing was trained on."""

from __future__ import annotations

import dataclasses
import json
import pickle
import re
from pathlib import Path

import numpy as np
import pytest
import torch

from learn2reg.contract import disp_filename_l2r, normalized_to_voxel
from learn2reg.io import DataError, load_nifti
from learn2reg.submission import read_manifest
from pipeline.cli import main
from pipeline.config import config_from_dict, load_config
from pipeline.data.preprocess import normalise
from pipeline.model.authors import AUTHORS_COMMIT, AUTHORS_NUMERICS, COPYRIGHT, sha256_file
from pipeline.model.checkpoint import load_checkpoint, model_from_checkpoint
from pipeline.model.field import predict_field
from pipeline.model.lapirn import LapIRN
from pipeline.training.import_weights import import_weights, imported_config
from pipeline.training.train import train
from tests.paths import REPO
from tests.pipeline.model.test_authors import fake_authors_sd
from tests.pipeline.training.test_train import SHAPE, TINY, make_blob_task

WEIGHTS = REPO / "weights"
FIXTURE = REPO / "tests" / "fixtures" / "lapirn_authors" / "lapirn_authors_fixture.npz"
VARIANTS = ("disp", "diff")


@pytest.fixture(scope="module")
def imported(tmp_path_factory) -> dict[str, Path]:
    """Run folders imported from the shipped weights, one per variant (variant recognised by sha256)."""
    root = tmp_path_factory.mktemp("imported")
    for variant in VARIANTS:
        import_weights(WEIGHTS / f"LapIRN_{variant}_fea7.pth", root / variant)
    return {v: root / v for v in VARIANTS}


# ---------------------------------------------------------------------- equivalence with the authors' code


def _voxels(flow: np.ndarray | torch.Tensor) -> np.ndarray:
    """Authors'-convention flow ``1 x 3 x X x Y x Z`` (normalised, grid channel order) -> contract field."""
    flow = flow.numpy() if isinstance(flow, torch.Tensor) else flow
    return normalized_to_voxel(np.moveaxis(flow[0], 0, -1))


def _differences(model: LapIRN, fx: np.lib.npyio.NpzFile, variant: str) -> list[float]:
    """max |ours - authors'| in voxels: the final field as prediction computes it, then levels 1 and 2."""
    moving, fixed = (torch.from_numpy(fx[k].astype(np.float32) / np.float32(255))[None, None] for k in ("moving_u8", "fixed_u8"))
    field = predict_field(model, moving, fixed, torch.device("cpu"), "none")
    with torch.no_grad():
        out = model(moving, fixed)
    final = np.abs(field[0].permute(1, 2, 3, 0).numpy() - _voxels(fx[f"{variant}_flow"])).max()
    levels = [np.abs(_voxels(out.levels[p].flow) - _voxels(fx[f"{variant}_flow_lvl{p + 1}"])).max() for p in (0, 1)]
    return [float(final), *map(float, levels)]


@pytest.mark.parametrize("variant", VARIANTS)
def test_the_imported_model_reproduces_the_authors_code_and_our_default_numerics_do_not(imported, variant):
    fx = np.load(FIXTURE, allow_pickle=False)
    assert str(fx[f"{variant}_weights_sha256"]) == sha256_file(WEIGHTS / f"LapIRN_{variant}_fea7.pth")
    assert str(fx["authors_commit"]) == AUTHORS_COMMIT
    model, _ = model_from_checkpoint(imported[variant] / "checkpoints" / "best.pt")
    assert (model.config.diffeomorphic, model.config.align_corners, model.config.warp_padding) == (variant == "diff", False, "border")
    authors_numerics = _differences(model, fx, variant)
    ours = LapIRN(dataclasses.replace(model.config, align_corners=True, warp_padding="zeros")).eval()
    ours.load_state_dict(model.state_dict())
    default_numerics = _differences(ours, fx, variant)
    print(f"\n{variant}: max |ours - authors'| voxel (final, level 1, level 2): authors' numerics "
          f"{', '.join(f'{d:.2g}' for d in authors_numerics)}; align_corners true + zero padding "
          f"{', '.join(f'{d:.2g}' for d in default_numerics)}")
    assert max(authors_numerics) < 1e-4
    assert default_numerics[0] > 1e-2  # the options matter (measured 0.17 disp, 0.05 diff)


# ---------------------------------------------------------------------- the run folder


@pytest.mark.parametrize("variant", VARIANTS)
def test_the_run_folder_holds_the_authors_numerics_preprocessing_and_provenance(imported, variant):
    run = imported[variant]
    cfg = load_config(run / "config.json")
    assert cfg == imported_config(7, diffeomorphic=variant == "diff")
    assert (cfg.model.levels, cfg.model.start_channel, cfg.model.diffeomorphic) == (3, 7, variant == "diff")
    assert {k: getattr(cfg.model, k) for k in AUTHORS_NUMERICS} == {"range_flow": 0.4, "ss_steps": 7, "align_corners": False, "warp_padding": "border"}
    assert (cfg.preprocess.half_resolution, cfg.preprocess.window, cfg.preprocess.percentile) == (False, None, 100.0)
    best, last = (load_checkpoint(run / "checkpoints" / f"{n}.pt") for n in ("best", "last"))
    assert best["model_config"] == last["model_config"] == {**vars(cfg.model), "in_channels": 1}
    assert config_from_dict(best["run_config"]) == cfg
    assert all(torch.equal(best["model"][k], last["model"][k]) for k in best["model"])
    record = json.loads((run / "imported.json").read_text())
    source = WEIGHTS / f"LapIRN_{variant}_fea7.pth"
    assert record["source"] == str(source.resolve()) and record["sha256"] == sha256_file(source)
    assert record["published_file"] == source.name and record["variant"] == variant and "sha256" in record["variant_from"]
    assert (record["authors_repository"], record["authors_commit"]) == ("https://github.com/cwmok/LapIRN", AUTHORS_COMMIT)
    assert record["licence"]["name"] == "MIT" and record["licence"]["copyright"] == COPYRIGHT
    assert record["licence"]["text"] == (WEIGHTS / "LICENSE.md").read_text()
    assert best["imported"] == record


def test_percentile_100_is_the_authors_min_max_normalisation():
    image = np.random.default_rng(0).normal(300.0, 80.0, (6, 7, 8)).astype(np.float32)
    theirs = (image - image.min()) / (image.max() - image.min())  # their Functions.imgnorm
    np.testing.assert_allclose(normalise(image, imported_config(7, False).preprocess), theirs, rtol=0, atol=1e-6)


def test_an_unpublished_checkpoint_needs_variant_and_takes_start_channel_from_its_weights(tmp_path, capsys):
    source = tmp_path / "mine.pth"
    torch.save(fake_authors_sd(3, start_channel=2), source)
    assert main(["import-weights", str(source), "--out", str(tmp_path / "a")]) == 1
    err = capsys.readouterr().err
    assert f"error: {source}: not one of the authors' published files" in err and "--variant" in err
    assert not (tmp_path / "a").exists()
    assert main(["import-weights", str(source), "--out", str(tmp_path / "b"), "--variant", "diff"]) == 0
    cfg = load_config(tmp_path / "b" / "config.json")
    assert (cfg.model.start_channel, cfg.model.diffeomorphic, cfg.model.align_corners) == (2, True, False)
    record = json.loads((tmp_path / "b" / "imported.json").read_text())
    assert record["published_file"] is None and record["licence"] is None and record["variant_from"] == "--variant"
    model, _ = model_from_checkpoint(tmp_path / "b" / "checkpoints" / "best.pt")
    assert torch.equal(model.nets[0].up.weight, torch.load(source, weights_only=True)["model_lvl2.model_lvl1.up.weight"])


def test_a_variant_that_contradicts_the_published_file_is_refused(tmp_path, capsys):
    source = WEIGHTS / "LapIRN_disp_fea7.pth"
    assert main(["import-weights", str(source), "--out", str(tmp_path / "run"), "--variant", "diff"]) == 1
    assert f"error: {source}: is the authors' published LapIRN_disp_fea7.pth" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


def _with(edit):
    return lambda tmp: torch.save(edit(fake_authors_sd(3)), tmp)


class _Evil:
    def __reduce__(self):
        return (print, ("this must never run",))


BAD_SOURCES = {
    "missing": (lambda path: None, "file not found"),
    "not a torch file": (lambda path: path.write_text("hello"), "cannot be loaded as a torch state dict with weights_only=True"),
    "arbitrary pickle": (lambda path: path.write_bytes(pickle.dumps({"up.weight": _Evil()}, protocol=2)), "weights_only=True"),
    "not a dict": (lambda path: torch.save([torch.zeros(1)], path), "not a state dict"),
    "wrapped state dict": (lambda path: torch.save({"state_dict": fake_authors_sd(3)}, path), "not a state dict"),
    "our own checkpoint": (lambda path: torch.save({"format": "l2r-lapirn-checkpoint", "model": {}}, path), "already a checkpoint of this project"),
    "unexpected key": (_with(lambda sd: {**sd, "extra.weight": torch.zeros(1)}), "unknown authors' keys: extra.weight"),
    "missing key": (_with(lambda sd: {k: v for k, v in sd.items() if k != "model_lvl2.down_conv.weight"}), r"missing .*model_lvl2\.down_conv\.weight"),
    "wrong shape": (_with(lambda sd: {**sd, "up.weight": torch.zeros(8, 8, 3, 3, 3)}), r"shape mismatches: nets\.2\.up\.weight"),
    "DataParallel": (_with(lambda sd: {f"module.{k}": v for k, v in sd.items()}), "DataParallel"),
    "2 levels": (lambda path: torch.save(fake_authors_sd(2), path), "a 2-level authors' model; only the complete 3-level"),
    "2 channels": (lambda path: torch.save(fake_authors_sd(3, in_channels=2), path), "2 channels per image"),
}


@pytest.mark.parametrize("make, message", BAD_SOURCES.values(), ids=BAD_SOURCES.keys())
def test_a_bad_source_is_refused_by_name_with_exit_1_and_nothing_written(tmp_path, capsys, make, message):
    source = tmp_path / "src.pth"
    make(source)
    run = tmp_path / "run"
    assert main(["import-weights", str(source), "--out", str(run), "--variant", "disp"]) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"error: {source}: "), err
    assert "Traceback" not in err
    assert re.search(message, err), err
    assert not run.exists()


def test_an_existing_run_is_never_overwritten(imported, tmp_path, capsys):
    run = imported["disp"]
    before = {p: p.stat().st_mtime_ns for p in run.rglob("*") if p.is_file()}
    assert main(["import-weights", str(WEIGHTS / "LapIRN_diff_fea7.pth"), "--out", str(run)]) == 1
    assert f"error: {run}: already holds config.json, imported.json, checkpoints/best.pt, checkpoints/last.pt" in capsys.readouterr().err
    assert {p: p.stat().st_mtime_ns for p in run.rglob("*") if p.is_file()} == before
    trained = tmp_path / "trained"
    (trained / "checkpoints").mkdir(parents=True)
    (trained / "checkpoints" / "last.pt").write_bytes(b"a training run's checkpoint")
    with pytest.raises(DataError, match="already holds checkpoints/last.pt"):
        import_weights(WEIGHTS / "LapIRN_disp_fea7.pth", trained)
    assert (trained / "checkpoints" / "last.pt").read_bytes() == b"a training run's checkpoint"


def test_train_refuses_an_imported_run_folder(imported, tmp_path):
    task = make_blob_task(tmp_path / "task")
    for resume in (False, True):
        with pytest.raises(DataError, match="holds imported weights"):
            train(task, config_from_dict(TINY), imported["disp"], resume=resume, device="cpu")


# ---------------------------------------------------------------------- predict with an imported run


@pytest.mark.parametrize("variant", VARIANTS)
def test_predict_runs_with_an_imported_run_on_a_task_without_training(imported, tmp_path, variant):
    task = make_blob_task(tmp_path / "task")
    out = tmp_path / "sub"
    argv = ["predict", "--run", str(imported[variant]), "--data", str(task), "--out", str(out), "--device", "cpu"]
    assert main(argv) == 0
    u, _ = load_nifti(out / disp_filename_l2r("0004_0000", "0005_0000"))
    assert u.shape == SHAPE + (3,) and u.dtype == np.float32 and np.isfinite(u).all() and np.abs(u).max() > 0
    manifest = read_manifest(out / "runtimes.json")
    assert manifest["checkpoint"] == str(imported[variant] / "checkpoints" / "best.pt")
