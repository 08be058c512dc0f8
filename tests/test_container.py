"""Submission images with a real engine (#19): one per organiser's contract, as a participant hands it in.

For each contract, in a clean copy of the working tree (what a fresh clone has), ``python -m pipeline
container`` builds the image from a demo run (the CPU base of the no-registry recipe:
``docker/local-base.sh`` and ``docker/torch-wheel.sh``) and exports it (``docker save | gzip``, level 1
here for time). The image is then removed, loaded back from that file (``docker load``) and run with the
organiser's own command line, changed only where this machine needs it (``contracts.checked_command``:
``--gpus`` dropped, there is no NVIDIA runtime; ``--network=none``, read-only inputs and ``--rm`` where
theirs lack them; ReMIND2Reg's ``-it`` under a pseudo-terminal), on host folders that belong to a
non-root user (uid 4242): without ``--user`` the image must become that user, with LUMIR 2025's
``--user`` it is that user. Its fields are checked (names, layout, dtype, header, owner) and scored
with the project's evaluator under the task's rules, beside the zero field's scores.

Demo inputs (``tests/container_tasks.py``): LUMIR and LUMIR 2025 on DemoLUMIR with the LapIRN authors'
imported weights; L2R on DemoHippocampusMR (T4) with a LapIRN trained for a few steps here;
ReMIND2Reg (ceT1 and T2 images) on DemoReMIND2Reg's validation patients as a flat input with a
network-free run (rigid pre-alignment); OncoReg on an OncoReg-layout task made from T2's paired lung
CTs, trained inside the image by ``./train.sh``, registered by ``./test.sh``. Image size, start-up and
per-pair times are recorded (JSON under the test's temporary folder; ``L2R_CONTAINER_RESULTS=PATH``
writes it there too: ``bench/bench_containers.py``).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import pytest
import torch

from evaluation.evaluate import evaluate
from evaluation.initial import evaluate_initial
from learn2reg import dataset, rules
from learn2reg.io import load_nifti
from learn2reg.package import package
from pipeline.container import contracts
from pipeline.container.contracts import CONTRACTS, Deltas, checked_command, organiser_command
from pipeline.container.handin import run_docker
from pipeline.container.jobs import case_of, parse_summary
from pipeline.prediction.predict import register_images
from pipeline.prediction.predictor import load_predictor, run_config
from tests import docker_engine
from tests.container_tasks import demo_runs, demo_tasks, flat_input, owned_by, results_json
from tests.docker_engine import Engine, sh
from tests.docker_recipe import clean_copy, fresh_shell_env

_ON_ONE_WORKER = [pytest.mark.xdist_group("docker")] if os.environ.get("PYTEST_XDIST_WORKER") else []
pytestmark = [pytest.mark.docker, pytest.mark.slow, *_ON_ONE_WORKER]

HOST_UID = 4242  # the organiser's user: owns the output folders
TAG = f"l2r-pytest-submission-{os.getpid()}"


@dataclass
class Kit:
    """The engine, the clean copy the images are built from, the demo tasks and runs, the results."""

    engine: Engine
    clone: Path
    root: Path
    tasks: dict[str, Path]
    runs: dict[str, Path]
    build_args: list[str]
    results: dict[str, Any] = field(default_factory=dict)


@pytest.fixture(scope="module")
def kit(engine: Engine, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Kit]:
    base = docker_engine.ensure_base_image(engine)
    clone = clean_copy(tmp_path_factory.mktemp("clone"))
    wheel = sh(["sh", "docker/torch-wheel.sh"], cwd=clone, env=fresh_shell_env(engine.env), timeout=900).stdout.strip()
    root = tmp_path_factory.mktemp("submissions")
    tasks = demo_tasks(root / "data")
    runs = demo_runs(root / "runs", tasks)
    args = ["--base-image", base, "--torch-wheel", str(clone / wheel.removeprefix("TORCH_WHEEL=")), "--compress-level", "1"]
    made = Kit(engine, clone, root, tasks, runs, args)
    yield made
    record = {"machine": cpu_model(), "cpus": os.cpu_count(), "load": [round(x, 1) for x in os.getloadavg()],
              "when": time.strftime("%Y-%m-%d %H:%M"), "contracts": made.results}
    results_json(root / "containers.json", record)
    if os.environ.get("L2R_CONTAINER_RESULTS"):
        results_json(Path(os.environ["L2R_CONTAINER_RESULTS"]), record)
    if engine.process is None:  # someone's engine: leave no image behind
        images = sh(["docker", "image", "ls", "--format", "{{.Repository}}:{{.Tag}}"], env=engine.env).stdout.split()
        for image in (i for i in images if i.startswith(TAG)):
            sh(["docker", "image", "rm", "-f", image], env=engine.env, check=False)


def cpu_model() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return os.uname().machine


def build_export_load(kit: Kit, contract: str, source: list[str], name: str, *extra: str) -> tuple[str, dict[str, Any], dict[str, float]]:
    """``python -m pipeline container`` in the clean copy, then the image removed and loaded back
    from its file; returns the tag, the manifest and the seconds of each step."""
    tag, out = f"{TAG}-{name}:latest", kit.root / "images" / f"{name}.tar.gz"
    out.parent.mkdir(exist_ok=True)
    cmd = [sys.executable, "-m", "pipeline", "container", "--contract", contract, *source, "--out", str(out), "--tag", tag,
           *kit.build_args, *extra]  # fmt: skip
    env = {**fresh_shell_env(kit.engine.env), "PYTHONPATH": str(kit.clone)}
    started = time.perf_counter()
    proc = subprocess.run(cmd, cwd=kit.clone, env=env, capture_output=True, text=True, timeout=2400, check=False)
    assert proc.returncode == 0, f"container: exit {proc.returncode}\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}"
    built = time.perf_counter() - started
    sh(["docker", "image", "rm", tag], env=kit.engine.env)
    started = time.perf_counter()
    loaded = sh(["docker", "load", "--input", out], env=kit.engine.env, timeout=900)
    assert f"Loaded image: {tag}" in loaded.stdout, loaded.stdout
    seconds = {"build_export_s": round(built, 1), "load_s": round(time.perf_counter() - started, 1)}
    return tag, json.loads(out.with_name(f"{name}.submission.json").read_text()), seconds


def run_as_organiser(kit: Kit, contract: contracts.Contract, values: dict[str, str], train: bool = False) -> tuple[int, str, float]:
    """The organiser's command line with this machine's changes (module docstring)."""
    argv, _ = checked_command(contract, organiser_command(contract, values, train=train), Deltas(drop_gpus=True))
    return run_docker(argv, timeout=1800, env=kit.engine.env)


def record(kit: Kit, key: str, manifest: dict[str, Any], seconds: dict[str, float], output: str, wall: float, scores: dict, initial: dict) -> dict:
    summary = parse_summary(output)
    assert summary is not None, output[-3000:]
    pair_s = summary["pair_s"]
    kit.results[key] = {
        "image_bytes": manifest["image"]["size_bytes"], "file_bytes": manifest["image"]["file_bytes"], **seconds,
        "run_wall_s": round(wall, 2), "entry_startup_s": summary["startup_s"], "container_overhead_s": round(wall - sum(pair_s) - summary["startup_s"], 2),
        "pairs": len(pair_s), "pair_mean_s": round(float(np.mean(pair_s)), 3), "pair_median_s": round(float(np.median(pair_s)), 3),
        "pair_max_s": round(max(pair_s), 3),
        "peak_rss_gib": summary["peak_rss_gib"], "uid": summary["uid"], "source": manifest["run"]["source"],
        "scores": scores, "initial": initial,
    }  # fmt: skip
    return summary


def official(result: dict[str, Any]) -> dict[str, float]:
    """The mean of each aggregate that has one (the organisers' keys)."""
    return {k: round(v["mean"], 4) for k, v in result["aggregates"].items() if isinstance(v, dict) and "mean" in v}


def check_fields(folder: Path, names: list[str], shape: tuple[int, ...], affine: np.ndarray | None) -> None:
    """Exactly ``names`` in ``folder`` (besides ``debug.log``), float32 of ``shape``, header ``affine``
    (``None``: not checked), owned by the organiser's user."""
    assert sorted(p.name for p in folder.iterdir() if p.name != "debug.log") == sorted(names)
    for name in names:
        img = nib.load(folder / name)
        assert img.shape == shape and img.get_data_dtype() == np.float32, (name, img.shape)
        if affine is not None:
            np.testing.assert_allclose(img.affine, affine, atol=1e-5)
        assert (folder / name).stat().st_uid == HOST_UID, name


def lumir_configs(task: Path, flags: tuple[str, str]) -> dict[str, Path]:
    return {flags[0]: task / f"{task.name}_VAL_Landmark_evaluation_config.json", flags[1]: task / f"{task.name}_VAL_Segmentation_evaluation_config.json"}


def expected_names(contract: str, task: Path, key: str) -> list[str]:
    meta = dataset.read_description(task / f"{task.name}_dataset.json")
    return [rules.disp_name(CONTRACTS[contract].rules, p["fixed"][-16:-7], p["moving"][-16:-7]) for p in meta[key]]


# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("contract", "flags"), [("lumir", ("c1", "c2")), ("lumir25", ("l1", "s1"))])
def test_lumir_images_run_as_the_test_scripts_run_them_and_score(kit, contract, flags):
    c, task = CONTRACTS[contract], kit.tasks["lumir"]
    extra = ("--data", str(task)) if contract == "lumir" else ()  # LUMIR 2024's README.txt: measured on the demo task
    tag, manifest, seconds = build_export_load(kit, contract, ["--run", str(kit.runs["imported"])], contract, *extra)
    out = owned_by(kit.root / "out" / contract, HOST_UID)
    values = {"image": tag, "json": str(task / f"{task.name}_dataset.json"), "input": str(task), "output": str(out),
              "uid": str(HOST_UID), "gid": str(HOST_UID)}  # fmt: skip
    code, output, wall = run_as_organiser(kit, c, values)
    assert code == 0, output[-4000:]
    names = expected_names(contract, task, "validation")
    check_fields(out, names, (3, 40, 56, 48), np.eye(4))
    assert all(f"{name} in " in output for name in names), "one progress line per pair"
    configs = lumir_configs(task, flags)
    scores, initial = official(evaluate(out, task, configs, rules=c.rules)), official(evaluate_initial(task, config=configs, rules=c.rules))
    summary = record(kit, contract, manifest, seconds, output, wall, scores, initial)
    assert summary["uid"] == HOST_UID and summary["device"] == "cpu"
    assert scores["DSC"] > initial["DSC"] + 0.05, (scores, initial)
    if contract == "lumir":
        readme = (kit.root / "images" / "README.txt").read_text()
        assert "Time per subject (pair):" in readme and "RAM:" in readme and "CPUs: " in readme
        assert manifest["measured"]["pairs"] == len(names)
        # the check run's fields are the validation predictions LUMIR's zip holds, as `package` zips them
        check = kit.root / "images" / "lumir.check"
        zipped = package(task, check, kit.root / "images" / "validation_predictions.zip", rules="lumir24")
        assert [name for _, name in zipped.members] == sorted(f"validation_predictions/{n}" for n in names)
        assert manifest["image"]["workdir"] == "/"
    else:
        assert manifest["image"]["workdir"] == "/app"


def test_a_lumir_image_without_its_json_stops_with_one_message(kit):
    """Depends on the lumir image loaded above (same module, same engine)."""
    task, out = kit.tasks["lumir"], owned_by(kit.root / "out" / "lumir-missing", HOST_UID)
    argv = ["docker", "run", "--rm", "--network=none", "--mount", f"type=bind,source={task},target=/input,readonly",
            "--mount", f"type=bind,source={out},target=/output", f"{TAG}-lumir:latest"]  # fmt: skip
    code, output, _ = run_docker(argv, timeout=600, env=kit.engine.env)
    assert code == 1 and "error: /LUMIR_dataset.json: not found (the organiser's command line binds or names it)" in output, output
    assert not list(out.iterdir())


def test_remind2reg_images_one_per_sequence_read_a_flat_read_only_input(kit):
    c, task = contracts.REMIND2REG, kit.tasks["remind2reg"]
    flat = flat_input(task, kit.root / "remind-input")
    out = owned_by(kit.root / "out" / "remind2reg", HOST_UID)
    summaries, names = [], []
    for sequence, modality in c.sequences.items():
        check = ("--data", str(task)) if sequence == "ceT1" else ()  # the README's --data TASK: the flat input made from the task
        tag, manifest, seconds = build_export_load(kit, "remind2reg", ["--config", str(kit.runs["rigid"])], f"remind2reg-{sequence.lower()}",
                                                   "--sequence", sequence, *check)  # fmt: skip
        assert manifest["run"]["moving_modality"] == modality
        code, output, wall = run_as_organiser(kit, c, {"image": tag, "input": str(flat), "output": str(out)})
        assert code == 0, output[-4000:]
        summaries.append((sequence, manifest, seconds, output, wall))
        these = [n for n in expected_names("remind2reg", task, "registration_val") if n.endswith(f"_{modality}.nii.gz")]
        if check:
            fields = kit.root / "images" / f"remind2reg-{sequence.lower()}.check"
            assert sorted(p.name for p in fields.iterdir()) == sorted(these) and manifest["measured"]["pairs"] == len(these)
        names += these
    moving = nib.load(next(flat.glob("*_0001.nii.gz"))).affine
    check_fields(out, names, (64, 64, 64, 3), moving)
    config = task / f"{task.name}_VAL_evaluation_config.json"
    scores = official(evaluate(out, task, config, rules="remind2reg"))
    initial = official(evaluate_initial(task, config=config, rules="remind2reg"))
    for sequence, manifest, seconds, output, wall in summaries:
        assert record(kit, f"remind2reg-{sequence}", manifest, seconds, output, wall, scores, initial)["uid"] == HOST_UID
    assert np.isfinite(scores["TRE_lm"])

    empty = owned_by(kit.root / "remind-empty", HOST_UID)
    code, output, _ = run_as_organiser(kit, c, {"image": f"{TAG}-remind2reg-t2:latest", "input": str(empty), "output": str(out)})
    assert code == 1 and "no image *_0002.nii.gz (the moving sequence of this image)" in output, output


def test_the_l2r_image_registers_the_json_pairs_as_predict_does_and_holds_no_data(kit):
    c, task, run = contracts.L2R, kit.tasks["l2r"], kit.runs["trained"]
    tag, manifest, seconds = build_export_load(kit, "l2r", ["--run", str(run)], "l2r")
    out = owned_by(kit.root / "out" / "l2r", HOST_UID)
    code, output, wall = run_as_organiser(kit, c, {"image": tag, "data": str(task), "output": str(out), "json_name": f"{task.name}_dataset.json"})
    assert code == 0, output[-4000:]
    names = expected_names("l2r", task, "registration_val")  # the demo json has no test pairs: the validation ones
    check_fields(out, names, (48, 48, 48, 3), np.eye(4))
    p = load_predictor(run_config(run, {}), run, None, torch.device("cpu"), "best")
    meta = dataset.read_description(task / f"{task.name}_dataset.json")
    first = meta["registration_val"][0]
    host, _, _ = register_images(p, case_of(task / first["fixed"]), case_of(task / first["moving"]))
    np.testing.assert_allclose(load_nifti(out / names[0])[0], host, atol=1e-4)  # the image computes what predict computes
    config = task / f"{task.name}_VAL_evaluation_config.json"
    scores, initial = official(evaluate(out, task, config, rules="l2r")), official(evaluate_initial(task, config=config, rules="l2r"))
    assert record(kit, "l2r", manifest, seconds, output, wall, scores, initial)["uid"] == HOST_UID

    script = (  # the run's files; any image data outside the installed packages (whose tests ship .npz files); caches under /app
        "find /app/submission -type f | sort; "
        "find / -xdev \\( -path /proc -o -path /sys -o -path /usr -o -path /opt/venv -o -path /var \\) -prune -o "
        "\\( -name '*.nii' -o -name '*.nii.gz' -o -name '*.npz' -o -name '*.mha' -o -name '*.csv' \\) -print; "
        "find /app -path /app/submission -prune -o \\( -name cache -o -name dataset.json -o -name '*.log' \\) -print; "
        "cat /app/submission/run/dataset.json"
    )
    listing = sh(["docker", "run", "--rm", "--network=none", "--entrypoint", "sh", tag, "-c", script], env=kit.engine.env)
    files, spacing = listing.stdout.split("{", 1)
    assert files.split() == ["/app/submission/bin/test.sh", "/app/submission/contract.json", "/app/submission/run/checkpoints/best.pt",
                             "/app/submission/run/config.json", "/app/submission/run/dataset.json"], listing.stdout  # fmt: skip
    assert json.loads("{" + spacing) == {"network_spacing_mm": json.loads((run / "dataset.json").read_text())["network_spacing_mm"]}


def test_the_oncoreg_image_trains_with_train_sh_and_registers_with_test_sh(kit):
    c, task = contracts.ONCOREG, kit.tasks["oncoreg"]
    # --data: the check run trains with ./train.sh (the image holds a training configuration only), then ./test.sh TASK Val
    tag, manifest, seconds = build_export_load(kit, "oncoreg", ["--config", str(kit.runs["oncoreg"])], "oncoreg", "--data", str(task))
    names = expected_names("oncoreg", task, "registration_val")
    assert manifest["check"]["train"]["wall_s"] > 0 and manifest["measured"]["pairs"] == len(names)
    assert sorted(p.name for p in (kit.root / "images" / "oncoreg.check").glob("disp_*")) == sorted(names)
    model, results = owned_by(kit.root / "out" / "oncoreg-model", HOST_UID), owned_by(kit.root / "out" / "oncoreg-results", HOST_UID)
    values = {"image": tag, "data": str(task), "model": str(model), "results": str(results), "task": "OncoReg", "mode": "Val"}
    code, output, train_wall = run_as_organiser(kit, c, values, train=True)
    assert code == 0, output[-4000:]
    best = model / "lapirn" / "checkpoints" / "best.pt"
    assert best.is_file() and best.stat().st_uid == HOST_UID and (model / "debug.log").is_file()
    code, output, wall = run_as_organiser(kit, c, values)
    assert code == 0, output[-4000:]
    moving = nib.load(task / "imagesTr" / "OncoReg_0011_0000.nii.gz").affine
    check_fields(results, names, (64, 64, 64, 3), moving)
    assert (results / "debug.log").is_file() and "model: /oncoreg/model/lapirn/checkpoints/best.pt" in output
    config = task / "OncoReg_VAL_evaluation_config.json"
    scores, initial = official(evaluate(results, task, config, rules="l2r")), official(evaluate_initial(task, config=config, rules="l2r"))
    summary = record(kit, "oncoreg", manifest, {**seconds, "train_wall_s": round(train_wall, 1)}, output, wall, scores, initial)
    assert summary["uid"] == HOST_UID
    assert scores["TRE_kp"] < initial["TRE_kp"], (scores, initial)

