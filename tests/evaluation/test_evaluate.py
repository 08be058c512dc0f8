"""The evaluator end to end (evaluation.evaluate / config / submission) on small tasks in tmp_path."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
from scipy import ndimage

from evaluation.case import CaseJob, estimated_seconds
from evaluation.evaluate import Options, evaluate, main
from learn2reg import contract, io
from learn2reg import rules as rulesets
from learn2reg.eval_config import EvalPair, Method, derive_config, read_config
from learn2reg.io import DataError, Geometry
from learn2reg.submission import (
    CaseRuntime,
    Manifest,
    check_submission,
    l2r_names,
    load_manifest,
    locate_fields,
    read_manifest,
    write_manifest,
)
from learn2reg.task import Layout
from tests.evaluation.official_reference import evaluate_reference

SHAPE = (20, 22, 24)
SPACING = (1.5, 1.0, 2.0)
PAIRS = ((1, 2), (2, 3), (3, 1))


def _ellipsoid(centre, radii) -> np.ndarray:
    g = np.indices(SHAPE, dtype=np.float64)
    return (((g - np.asarray(centre)[:, None, None, None]) / np.asarray(radii)[:, None, None, None]) ** 2).sum(0) < 1


def make_task(root: Path, seed: int = 0, missing=((2, 3),)) -> Path:
    """Inter-patient toy task (current layout): 3 subjects, labels 1-3 (label 3 absent in subject
    2), fixed masks, 12 corresponding keypoints, anisotropic spacing, val pairs 1<-2, 2<-3, 3<-1."""
    rng = np.random.default_rng(seed)
    geom = Geometry.identity(SHAPE, SPACING)
    base = rng.uniform(3, np.array(SHAPE) - 4, (12, 3))
    training = []
    for s in (1, 2, 3):
        cid = f"Toy_{s:04d}_0000"
        io.save_nifti(root / f"imagesTr/{cid}.nii.gz", rng.random(SHAPE).astype(np.float32), geom)
        lab = np.zeros(SHAPE, np.uint8)
        for value in (1, 2, 3):
            if (s, value) not in missing:
                lab[_ellipsoid(rng.uniform(5, np.array(SHAPE) - 5), rng.uniform(2, 5, 3))] = value
        io.save_nifti(root / f"labelsTr/{cid}.nii.gz", lab, geom)
        io.save_nifti(root / f"masksTr/{cid}.nii.gz", _ellipsoid(np.array(SHAPE) / 2, np.array(SHAPE) * 0.4).astype(np.uint8), geom)
        io.write_points(root / f"keypointsTr/{cid}.csv", base + rng.normal(0, 1.0, base.shape))
        training.append({"image": f"./imagesTr/{cid}.nii.gz"})
    meta = {
        "name": "Toy",
        "tensorImageShape": {"0": list(SHAPE)},
        "labels": {"0": {"1": "a", "2": "b", "3": "c"}},
        "training": training,
        "registration_val": [{"fixed": f"./imagesTr/Toy_{f:04d}_0000.nii.gz", "moving": f"./imagesTr/Toy_{m:04d}_0000.nii.gz"} for f, m in PAIRS],
        "pairings": "unpaired",
    }
    (root / "Toy_dataset.json").write_text(json.dumps(meta))
    return root


def smooth_field(seed: int, amp: float = 1.2) -> np.ndarray:
    rng = np.random.default_rng(100 + seed)
    u = np.stack([ndimage.gaussian_filter(rng.standard_normal(SHAPE), 3.0) for _ in range(3)], axis=-1)
    return (u * amp / u.std()).astype(np.float32)


def write_submission(folder: Path, config, kind: str = "nii") -> dict[str, np.ndarray]:
    """Fields for every pair: ``nii`` / ``npz`` (current format, long names) or ``2020``
    (``task_03/disp_XXXX_YYYY.npz`` float16 half resolution). Returns the written fields."""
    fields = {}
    for i, pair in enumerate(config.pairs):
        u = smooth_field(i)
        if kind == "2020":
            path = folder / "task_03" / contract.disp_filename_2020(pair.fixed, pair.moving)
            path.parent.mkdir(parents=True, exist_ok=True)
            np.savez(path, arr_0=contract.to_2020(u))
        elif kind == "npz":
            folder.mkdir(parents=True, exist_ok=True)
            np.savez(folder / contract.disp_filename_l2r(pair.fixed, pair.moving).replace(".nii.gz", ".npz"), u)
        else:
            io.save_nifti(folder / contract.disp_filename_l2r(pair.fixed, pair.moving), u)
        fields[pair.key] = u
    return fields


@pytest.fixture(scope="module")
def task(tmp_path_factory) -> Path:
    return make_task(tmp_path_factory.mktemp("task"))


@pytest.fixture(scope="module")
def official_config(task, tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("cfg") / "Toy_VAL_evaluation_config.json"
    path.write_text(json.dumps(derive_config(task).to_official(task), indent=4))
    return path


def assert_same_result(ours: dict, theirs: dict, rtol: float = 1e-6) -> None:
    """Same schema and every number equal to ``rtol`` (NaN == NaN, inf == inf)."""
    assert ours["name"] == theirs["name"] and ours["eval_version"] == theirs["eval_version"] == "2.0"
    assert list(ours["cases"]) == list(theirs["cases"])
    for key, case in theirs["cases"].items():
        assert list(ours["cases"][key]) == list(case), key
        for metric, value in case.items():
            for part in ("mean", "detailed"):
                a, b = np.asarray(ours["cases"][key][metric][part], float), np.asarray(value[part], float)
                np.testing.assert_allclose(a, b, rtol=rtol, atol=1e-12, equal_nan=True, err_msg=f"{key} {metric} {part}")
    assert list(ours["aggregates"]) == list(theirs["aggregates"])
    for metric, agg in theirs["aggregates"].items():
        for k in ("mean", "std", "30"):
            np.testing.assert_allclose(ours["aggregates"][metric][k], agg[k], rtol=rtol, atol=1e-12, equal_nan=True, err_msg=metric)


# ----------------------------------------------------------------------------- config


def test_derived_config_matches_the_task(task):
    cfg = derive_config(task)
    assert [(m.name, m.metric) for m in cfg.methods] == [("LogJacDetStd", "sdlogj"), ("DSC", "dice"), ("HD95", "hd95"), ("TRE_kp", "tre")]
    assert cfg.methods[1].labels == (1, 2, 3) and cfg.methods[3].dest == "keypoints"
    assert cfg.masked and cfg.expected_shape == (*SHAPE, 3)
    assert [p.key for p in cfg.pairs] == ["0001_0000<--0002_0000", "0002_0000<--0003_0000", "0003_0000<--0001_0000"]


def test_official_config_file_resolves_the_same_paths(task, official_config):
    derived, read = derive_config(task), read_config(official_config, task)
    assert read.methods == derived.methods and read.pairs == derived.pairs and read.masked == derived.masked


def test_bad_config_lists_every_problem(task, tmp_path):
    bad = {"task_name": "Toy", "evaluation_methods": [{"name": "A", "metric": "dice"}, {"name": "A", "metric": "tre"}, {"name": "B", "metric": "xx"}],
           "expected_shape": [20, 22, 24], "eval_pairs": [{"fixed": "../outside_0001_0000.nii.gz", "moving": "./imagesTr/Toy_0002_0000.nii.gz"}]}  # fmt: skip
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(bad))
    with pytest.raises(DataError) as err:
        read_config(path, task)
    text = str(err.value)
    for fragment in ("labels must be", "unique", "tre needs 'dest'", "metric in", "expected_shape", "outside the data folder"):
        assert fragment in text


def test_point_files_between_modalities_follow_the_official_suffix_rule(tmp_path):
    for rel in ("imagesTr/X_0001_0000.nii.gz", "imagesTr/X_0001_0002.nii.gz", "keypoints02Tr/X_0001_0000.csv", "keypoints02Tr/X_0001_0002.csv"):
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).touch()
    raw = {"task_name": "X", "evaluation_methods": [{"name": "TRE", "metric": "tre", "dest": "keypoints"}], "expected_shape": [4, 4, 4, 3],
           "eval_pairs": [{"fixed": "./imagesTr/X_0001_0000.nii.gz", "moving": "./imagesTr/X_0001_0002.nii.gz"}]}  # fmt: skip
    (tmp_path / "c.json").write_text(json.dumps(raw))
    pair = read_config(tmp_path / "c.json", tmp_path).pairs[0]
    assert pair.point_files("keypoints") == (tmp_path / "keypoints02Tr/X_0001_0000.csv", tmp_path / "keypoints02Tr/X_0001_0002.csv")
    (tmp_path / "keypoints00000002Tr").mkdir()
    for name in ("X_0001_0000.csv", "X_0001_0002.csv"):
        (tmp_path / "keypoints00000002Tr" / name).touch()  # the current official folder name wins
    assert read_config(tmp_path / "c.json", tmp_path).pairs[0].point_files("keypoints")[0].parent.name == "keypoints00000002Tr"


def test_2020_layout_task_with_2020_submission(tmp_path):
    """2020 layout (images/imgSSSS.nii.gz, labels/, pairs_val.csv, task.json) end to end."""
    root = tmp_path / "task_03"
    rng = np.random.default_rng(4)
    for s in (1, 2):
        lab = np.zeros(SHAPE, np.uint8)
        lab[_ellipsoid(rng.uniform(6, np.array(SHAPE) - 6), (4, 5, 4))] = 1
        lab[_ellipsoid(rng.uniform(6, np.array(SHAPE) - 6), (3, 3, 5))] = 2
        io.save_nifti(root / f"images/img{s:04d}.nii.gz", rng.random(SHAPE).astype(np.float32))
        io.save_nifti(root / f"labels/img{s:04d}.nii.gz", lab)
    (root / "pairs_val.csv").write_text("fixed,moving\n1,2\n2,1\n")
    (root / "task.json").write_text(json.dumps({"name": "task_03", "shape": list(SHAPE), "labels": {"1": "a", "2": "b"}}))
    cfg = derive_config(root)
    assert [m.metric for m in cfg.methods] == ["sdlogj", "dice", "hd95"] and not cfg.masked
    write_submission(tmp_path / "sub", cfg, "2020")
    result = evaluate(tmp_path / "sub", root, workers=1)
    assert list(result["cases"]) == ["0001_0000<--0002_0000", "0002_0000<--0001_0000"]
    u = contract.from_2020(np.load(tmp_path / "sub/task_03/disp_0001_0002.npz")["arr_0"])
    fixed, moving = (io.load_nifti(root / f"labels/img{s:04d}.nii.gz", np.uint8)[0] for s in (1, 2))
    warped = contract.warp_labels(moving, u)
    dsc = [2 * ((fixed == v) & (warped == v)).sum() / ((fixed == v).sum() + (warped == v).sum()) for v in (1, 2)]
    np.testing.assert_allclose(result["cases"]["0001_0000<--0002_0000"]["DSC"]["detailed"], dsc, rtol=1e-12)


# ----------------------------------------------------------------------------- equality with the reference


@pytest.mark.parametrize("kind", ["nii", "npz"])
def test_equals_official_reference_current_format(task, official_config, tmp_path, kind):
    write_submission(tmp_path / "sub", derive_config(task), kind)
    ours = evaluate(tmp_path / "sub", task, official_config, workers=1)
    assert_same_result(ours, evaluate_reference(tmp_path / "sub", task, official_config))
    assert ours["cases"]["0001_0000<--0002_0000"]["DSC"]["detailed"][2] != ours["cases"]["0001_0000<--0002_0000"]["DSC"]["detailed"][2]  # NaN: label 3 absent in moving


def test_a_data_folder_linked_from_elsewhere_scores_the_same(task, official_config, tmp_path):
    """Ground truth linked into the data folder (a sub-folder and single files pointing elsewhere,
    as large datasets are laid out): read through the links, as the organisers' evaluators do."""
    write_submission(tmp_path / "sub", derive_config(task), "nii")
    linked, store = tmp_path / "linked", tmp_path / "store"
    shutil.copytree(task, linked, symlinks=True)
    store.mkdir()
    for folder in ("labelsTr", "keypointsTr"):  # whole folders
        (linked / folder).rename(store / folder)
        (linked / folder).symlink_to(store / folder, target_is_directory=True)
    for path in sorted((linked / "imagesTr").iterdir()):  # and each file of another
        path.rename(store / path.name)
        path.symlink_to(store / path.name)
    plain = evaluate(tmp_path / "sub", task, official_config, workers=1)
    assert_same_result(evaluate(tmp_path / "sub", linked, official_config, workers=1), plain, rtol=0)


def test_equals_official_reference_2020_format_and_pool(task, official_config, tmp_path):
    write_submission(tmp_path / "sub", derive_config(task), "2020")
    ours = evaluate(tmp_path / "sub", task, official_config, workers=2)  # format detected from task_03/
    assert_same_result(ours, evaluate_reference(tmp_path / "sub" / "task_03", task, official_config, fmt=Layout.L2R2020))


def test_zero_field_gives_initial_values(task, tmp_path):
    cfg = derive_config(task)
    for pair in cfg.pairs:
        io.save_nifti(tmp_path / contract.disp_filename_l2r(pair.fixed, pair.moving), np.zeros((*SHAPE, 3), np.float32))
    result = evaluate(tmp_path, task, workers=1, options=Options(tre_method="kernel"))
    for pair in cfg.pairs:
        case = result["cases"][pair.key]
        assert case["LogJacDetStd"]["mean"] == 0.0 and case["folding_fraction"]["mean"] == 0.0
        fixed_pts, moving_pts = (io.read_points(p) for p in pair.point_files("keypoints"))
        np.testing.assert_allclose(case["TRE_kp"]["detailed"], np.linalg.norm((fixed_pts - moving_pts) * SPACING, axis=1), rtol=1e-9)
        fixed, moving = (io.load_nifti(p, np.uint8)[0] for p in (pair.fixed_label, pair.moving_label))
        for i, lab in enumerate((1, 2, 3)):
            a, b = fixed == lab, moving == lab
            expected = 2 * (a & b).sum() / (a.sum() + b.sum()) if a.any() and b.any() else math.nan
            np.testing.assert_equal(case["DSC"]["detailed"][i], expected)
    official_only = evaluate(tmp_path, task, workers=1, options=Options(extras=False))
    assert set(next(iter(official_only["cases"].values()))) == {"LogJacDetStd", "num_foldings", "DSC", "HD95", "TRE_kp"}
    assert set(official_only["aggregates"]) == {"LogJacDetStd", "DSC", "HD95", "TRE_kp"}


# ----------------------------------------------------------------------------- validation


def test_submission_problems_are_listed_at_once_and_nothing_is_written(task, tmp_path):
    cfg = derive_config(task)
    sub = tmp_path / "sub"
    fields = write_submission(sub, cfg, "nii")
    (sub / contract.disp_filename_l2r(cfg.pairs[0].fixed, cfg.pairs[0].moving)).unlink()
    (sub / contract.disp_filename_l2r(cfg.pairs[1].fixed, cfg.pairs[1].moving)).unlink()
    problems = check_submission(sub, cfg)
    assert len(problems) == 2 and all("missing displacement field" in p for p in problems)
    assert cfg.pairs[0].key in problems[0] and cfg.pairs[1].key in problems[1]
    out = tmp_path / "out.json"
    rc = main(["-i", str(sub), "-d", str(task), "-o", str(out)])
    assert rc == 1 and not out.exists()
    # wrong shape and NaN values: both reported (per case, before its metrics), still no output
    bad = fields[cfg.pairs[0].key].copy()
    bad[3, 3, 3, 0] = np.nan
    io.save_nifti(sub / contract.disp_filename_l2r(cfg.pairs[0].fixed, cfg.pairs[0].moving), bad)
    io.save_nifti(sub / contract.disp_filename_l2r(cfg.pairs[1].fixed, cfg.pairs[1].moving), bad[:-1])
    with pytest.raises(DataError) as err:
        evaluate(sub, task, workers=1)
    assert "1 NaN/Inf values" in str(err.value) and "shape 19x22x24x3" in str(err.value)
    assert main(["-i", str(sub), "-d", str(task), "-o", str(out)]) == 1 and not out.exists()
    assert len(check_submission(sub, cfg, deep=True)) == 2


def test_2020_dtype_and_shape_are_checked(task, tmp_path):
    cfg = derive_config(task)
    write_submission(tmp_path / "sub", cfg, "2020")
    folder = tmp_path / "sub" / "task_03"
    p0, p1 = (folder / contract.disp_filename_2020(p.fixed, p.moving) for p in cfg.pairs[:2])
    np.savez(p0, arr_0=np.zeros((3, 10, 11, 12), np.float32))
    np.savez(p1, arr_0=np.zeros((3, 9, 11, 12), np.float16))
    problems = check_submission(tmp_path / "sub", cfg)
    assert len(problems) == 2 and "float16" in problems[0] and "3x9x11x12" in problems[1]
    with pytest.raises(DataError, match="float16"):
        evaluate(tmp_path / "sub", task, workers=1)


def test_short_names_only_for_0000_to_0001(tmp_path):
    intra = EvalPair("0004_0000", "0004_0001", tmp_path / "a", tmp_path / "b")
    inter = EvalPair("0004_0000", "0005_0000", tmp_path / "a", tmp_path / "b")
    assert l2r_names(intra)[:2] == ["disp_0004_0004.npz", "disp_0004_0004.nii.gz"]
    assert "disp_0004_0000_0004_0001.nii.gz" in l2r_names(intra)
    assert l2r_names(inter) == ["disp_0004_0000_0005_0000.npz", "disp_0004_0000_0005_0000.nii.gz"]
    (tmp_path / "disp_0004_0004.nii.gz").touch()
    (tmp_path / "disp_0004_0005.nii.gz").touch()
    found, problems = locate_fields(tmp_path, (intra, inter), Layout.L2R)
    assert found == {intra.key: tmp_path / "disp_0004_0004.nii.gz"}
    assert len(problems) == 1 and "disp_0004_0000_0005_0000.nii.gz" in problems[0]


# ----------------------------------------------------------------------------- runtime manifest, CLI


def test_manifest_round_trip_and_runtime_metrics(task, official_config, tmp_path):
    cfg = derive_config(task)
    sub = tmp_path / "sub"
    write_submission(sub, cfg, "npz")
    runtimes = {p.key: {"total_s": 1.0 + i, "network_s": 0.5, "affine_s": 0.1} for i, p in enumerate(cfg.pairs)}
    write_manifest(sub, {"device": "cpu", "checkpoint": "best.pt", "config_hash": "abc", "runtimes": runtimes})
    typed = load_manifest(sub)
    assert typed.runtimes[cfg.pairs[2].key] == CaseRuntime(3.0, 0.5, {"affine_s": 0.1})
    assert read_manifest(sub / "runtimes.json")["runtimes"] == runtimes
    assert write_manifest(tmp_path / "m.json", typed) == tmp_path / "m.json" and load_manifest(tmp_path / "m.json") == typed
    result = evaluate(sub, task, official_config, workers=1)
    assert [c["runtime"]["mean"] for c in result["cases"].values()] == [1.0, 2.0, 3.0]
    assert result["aggregates"]["runtime"]["mean"] == 2.0 and result["aggregates"]["runtime"]["30"] == pytest.approx(2.4)
    assert result["aggregates"]["runtime_network"]["std"] == 0.0


def test_invalid_manifest_names_the_file_and_every_problem(tmp_path):
    bad = {"device": 3, "checkpoint": "x", "config_hash": "h", "extra": 1, "runtimes": {"k": {"total_s": -1, "network_s": 0}}}
    with pytest.raises(DataError) as err:
        write_manifest(tmp_path / "runtimes.json", bad)
    text = str(err.value)
    assert "runtimes.json" in text and "'device' must be a string" in text and "unknown key 'extra'" in text and "runtimes['k']" in text
    assert not (tmp_path / "runtimes.json").exists()
    assert Manifest("d", "c", "h", {}).to_json()["runtimes"] == {}


def test_cli_exit_codes_and_output(task, tmp_path, capsys):
    sub = tmp_path / "sub"
    write_submission(sub, derive_config(task), "nii")
    out = tmp_path / "res" / "metrics.json"
    assert main(["-i", str(sub), "-d", str(task), "-o", str(out), "-j", "1", "--official-only", "--aggregate", "2020"]) == 0
    result = json.loads(out.read_text())
    assert list(result) == ["name", "aggregates", "cases", "eval_version", "rules"] and result["name"] == "Toy"
    assert result["rules"] == "l2r"  # the rule set used, after the organisers' keys
    assert set(result["aggregates"]["DSC"]) == {"mean", "std", "30"} and "SDlogJ_true" not in result["aggregates"]
    assert "Results saved to" in capsys.readouterr().out
    assert main(["-i", str(sub), "-d", str(task), "-o", str(out.parent), "-j", "1"]) == 0  # a folder: timestamped name
    assert len(list(out.parent.glob("2*.json"))) == 1
    assert main(["-i", str(tmp_path / "nowhere"), "-d", str(task), "-o", str(tmp_path / "x.json")]) == 1
    assert "error:" in capsys.readouterr().err and not (tmp_path / "x.json").exists()
    with pytest.raises(SystemExit) as usage:
        main(["-d", str(task)])
    assert usage.value.code == 2


def test_mismatched_point_files_and_missing_ground_truth_are_reported(tmp_path):
    task = make_task(tmp_path / "task")
    cfg = derive_config(task)
    write_submission(tmp_path / "sub", cfg, "npz")
    fixed_csv, moving_csv = cfg.pairs[0].point_files("keypoints")
    io.write_points(moving_csv, io.read_points(moving_csv)[:-2])
    with pytest.raises(DataError, match="has 12 points but .* has 10"):
        evaluate(tmp_path / "sub", task, cfg, workers=1)
    cfg.pairs[1].moving_label.unlink()
    with pytest.raises(DataError, match="ground-truth file not found"):
        evaluate(tmp_path / "sub", task, cfg, workers=1)


HEAVY = ("scipy", "scipy.ndimage", "scipy.spatial", "nibabel", "pandas", "matplotlib", "tqdm", "torch", "pipeline", "numpy.ma")
_IMPORTS_OF_A_RUN = """
import sys
from evaluation.evaluate import main
heavy = {heavy}
before = [m for m in heavy if m in sys.modules]
assert main(sys.argv[1:] + ["-j", "1"]) == 0
print(before, [m for m in heavy if m in sys.modules])
"""


@pytest.mark.parametrize(
    "flags, loaded",
    [
        ("-c1 {c}/LUMIR_VAL_Landmark_evaluation_config.json -c2 {c}/LUMIR_VAL_Segmentation_evaluation_config.json -i {c}/disp/smooth/ -d {c}/", []),
        ("-c {r}/ReMIND2Reg_VAL_evaluation_config.json -i {r}/disp/smooth/ -d {r}/", []),
    ],
    ids=["lumir24", "remind2reg"],
)
def test_start_up_is_lean_and_heavy_modules_load_only_where_a_metric_needs_them(tmp_path, flags, loaded):
    """Importing the evaluator loads none of scipy, nibabel, pandas, matplotlib, tqdm (their imports
    cost ~0.5 CPU s); a LUMIR run (NDV, DSC, HD95 on a small grid, centroid TRE) loads none of them
    either, nor does a ReMIND2Reg run (cubic TRE at a few points: evaluation.metrics, no scipy);
    plain .nii.gz headers need no nibabel, the "30" quantile no numpy.ma."""
    import subprocess
    import sys

    from tests.paths import REPO

    cases = REPO / "tests" / "fixtures" / "organisers" / "cases"
    argv = flags.format(c=cases / "lumir24", r=cases / "remind").split() + ["-o", str(tmp_path / "out.json")]
    code = _IMPORTS_OF_A_RUN.format(heavy=HEAVY)
    done = subprocess.run([sys.executable, "-c", code, *argv], capture_output=True, text=True, cwd=REPO, check=True)
    assert done.stdout.strip().splitlines()[-1] == f"[] {loaded}"


def _jobs(n: int, shape: tuple[int, int, int], metrics: tuple[str, ...], rules: rulesets.Rules) -> list[CaseJob]:
    pair = EvalPair("0001_0000", "0002_0000", Path("f.nii.gz"), Path("m.nii.gz"))
    methods = tuple(Method(m.upper(), m) for m in metrics)
    return [CaseJob(pair, Path("d.nii.gz"), "l2r", methods, (*shape, 3), False, Options(), rules) for _ in range(n)]


def test_a_small_run_has_no_worker_pool_and_a_large_one_has(monkeypatch):
    """Three 80x96x80 ReMIND2Reg pairs (SDlogJ + TRE) cost less than forking workers saves; six with
    HD95 (L2R) do not; -j decides when given (capped at the pair count)."""
    from evaluation import evaluate as module

    monkeypatch.setattr(module.os, "sched_getaffinity", lambda _: {0, 1, 2, 3}, raising=False)
    small = _jobs(3, (80, 96, 80), ("sdlogj", "tre"), rulesets.REMIND2REG)
    large = _jobs(6, (80, 96, 80), ("sdlogj", "tre", "dice", "hd95"), rulesets.L2R)
    assert estimated_seconds(small) < module.POOL_MIN_SECONDS < estimated_seconds(large)
    assert module.pool_size(small, None) == 1 and module.pool_size(large, None) == 4
    assert module.pool_size(small, 2) == 2 and module.pool_size(large[:3], 8) == 3
    # a metric the rule set does not score costs nothing (ReMIND2Reg ignores DSC and HD95)
    assert estimated_seconds(_jobs(3, (80, 96, 80), ("sdlogj", "tre", "hd95"), rulesets.REMIND2REG)) == estimated_seconds(small)


def test_the_estimate_counts_what_the_files_hold(tmp_path, monkeypatch):
    """Inflating a field costs more the less it compresses, and TRE from CSV points costs per
    point: eight 80x96x80 ReMIND2Reg pairs with a real registration's (barely compressible) fields
    and 100 landmarks get workers (~0.45 CPU s measured; 0.53 -> 0.37 s of wall time with two), and
    so do six smooth fields with 6 points (0.267 -> 0.235 s); three of those stay in the process."""
    from evaluation import evaluate as module
    from learn2reg.io import save_nifti, write_points

    monkeypatch.setattr(module.os, "sched_getaffinity", lambda _: {0, 1}, raising=False)
    rng = np.random.default_rng(0)
    grid = np.indices((80, 96, 80), dtype=np.float32).sum(axis=0)
    smooth = np.stack([np.sin(grid / 40.0)] * 3, axis=-1).astype(np.float32)
    noisy = (smooth + rng.normal(0, 0.3, smooth.shape)).astype(np.float32)
    jobs = {}
    for name, field, points in (("smooth", smooth, 6), ("real", noisy, 100)):
        save_nifti(tmp_path / f"{name}.nii.gz", field)
        write_points(tmp_path / f"{name}.csv", rng.uniform(10, 60, (points, 3)))
        pair = EvalPair("0001_0000", "0002_0000", Path("f.nii.gz"), Path("m.nii.gz"),
                        points=(("landmarks", tmp_path / f"{name}.csv", tmp_path / f"{name}.csv"),))
        methods = (Method("LogJacDetStd", "sdlogj"), Method("TRE_lm", "tre", dest="landmarks"))
        jobs[name] = [CaseJob(pair, tmp_path / f"{name}.nii.gz", "l2r", methods, (80, 96, 80, 3), False, Options(), rulesets.REMIND2REG)]
    print(f"\nestimates: smooth x 6 {estimated_seconds(jobs['smooth'] * 6):.3f} s, real x 8 {estimated_seconds(jobs['real'] * 8):.3f} s")
    assert estimated_seconds(jobs["smooth"] * 3) < module.POOL_MIN_SECONDS < estimated_seconds(jobs["smooth"] * 6)
    assert estimated_seconds(jobs["smooth"] * 6) < estimated_seconds(jobs["real"] * 6)  # the stored bytes and points count
    assert module.pool_size(jobs["smooth"] * 3, None) == 1 and module.pool_size(jobs["smooth"] * 6, None) == 2
    assert module.pool_size(jobs["real"] * 8, None) == 2
