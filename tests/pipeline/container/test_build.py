"""The ``container`` command without an engine: what the build context holds (the code the Dockerfile
copies and the run's configuration and weights, never data or caches), the configuration baked in,
where the build arguments come from, and the refusals made before anything is built."""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import stat

import pytest
import torch

from learn2reg.io import DataError, write_json
from pipeline.cli import main
from pipeline.container import build, contracts
from pipeline.container.build import build_settings, resolve_source, stage_context
from pipeline.container.run import predictor as image_predictor
from pipeline.prediction.predictor import load_predictor, run_config
from tests.paths import REPO
from tests.pipeline.training.test_train import trained_blob_run

WHEEL = "torch-2.13.0+cpu-cp311-cp311-manylinux_2_28_x86_64.whl"


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    return trained_blob_run(tmp_path_factory.mktemp("build"))


def test_the_staged_context_holds_every_file_the_dockerfile_copies():
    text = (REPO / "Dockerfile").read_text()
    sources = set()
    for line in re.findall(r"^COPY (?!--from)(.+)$", text, re.M):
        sources.update(part.rstrip("/") for part in line.split()[:-1])
    staged = {*build.PROJECT_FILES, *build.PROJECT_DIRS, build.WHEELS}
    copied_dirs = {s.split("/")[0] for s in sources}  # docker/entrypoint.sh -> docker
    assert copied_dirs - {"submission"} <= staged | {s for s in sources if "/" not in s}
    assert {s for s in sources if "/" not in s} - {"submission"} <= staged, sorted(sources)


def stage(tmp_path, contract, run=None, config=None, wheel=None):
    source = resolve_source(run, config, "best", contract, {})
    return stage_context(tmp_path / "ctx", contract, source, {"contract": contract.name}, wheel), source


def test_a_trained_run_contributes_its_configuration_and_best_checkpoint_only(trained, tmp_path):
    task, run = trained
    assert (run / "dataset.json").is_file() and (run / "checkpoints" / "last.pt").is_file()
    (tmp_path / "ctx").mkdir()
    ctx, source = stage(tmp_path, contracts.L2R, run=run)
    files = sorted(str(p.relative_to(ctx / "submission")) for p in (ctx / "submission").rglob("*") if p.is_file())
    assert files == ["bin/test.sh", "contract.json", "run/checkpoints/best.pt", "run/config.json", "run/dataset.json"]  # test.sh: the L2R template's
    assert (ctx / "submission" / "run" / "checkpoints" / "best.pt").read_bytes() == (run / "checkpoints" / "best.pt").read_bytes()
    spacing = json.loads((run / "dataset.json").read_text())["network_spacing_mm"]
    assert json.loads((ctx / "submission" / "run" / "dataset.json").read_text()) == {"network_spacing_mm": spacing}, "the spacing, no case list"
    baked = image_predictor(ctx / "submission" / "run")  # what the image loads: the network at the trained spacing, predict's hash
    assert baked.grid_policy is not None and baked.grid_policy.trained is not None and list(baked.grid_policy.trained.spacing) == spacing
    assert baked.config_hash == source.config_hash == load_predictor(run_config(run, {}), run, None, torch.device("cpu"), "best").config_hash
    assert not list(ctx.rglob("*.nii.gz")) and not list(ctx.rglob("cache")) and not list(ctx.rglob("__pycache__"))
    assert [p.name for p in (ctx / build.WHEELS).iterdir()] == [".gitignore"], "as a clone has it: the install layer's cache is shared"
    assert sorted(p.name for p in ctx.iterdir()) == sorted([*build.PROJECT_FILES, *build.PROJECT_DIRS, build.WHEELS, "submission"])


def test_an_imported_run_brings_its_provenance_and_oncoreg_its_scripts(tmp_path):
    run = tmp_path / "imported"
    from pipeline.training.import_weights import import_weights

    import_weights(REPO / "weights" / "LapIRN_disp_fea7.pth", run)
    (tmp_path / "ctx").mkdir()
    ctx, source = stage(tmp_path, contracts.ONCOREG, run=run, wheel=None)
    assert (ctx / "submission" / "run" / "imported.json").read_bytes() == (run / "imported.json").read_bytes()
    assert source.description.startswith("imported (")
    scripts = sorted((ctx / "submission" / "bin").iterdir())
    assert [p.name for p in scripts] == ["test.sh", "train.sh"]
    assert all(p.stat().st_mode & stat.S_IXOTH for p in scripts)
    assert "entry train" in (ctx / "submission" / "bin" / "train.sh").read_text()


def test_the_configuration_baked_in_is_the_resolved_one_and_hashes_as_predict_does(trained, tmp_path):
    task, run = trained
    source = resolve_source(run, None, "best", contracts.LUMIR, {"instance_opt_steps": 5, "affine": None})
    assert source.config["predict"]["instance_opt_steps"] == 5
    p = load_predictor(run_config(run, {"instance_opt_steps": 5}), run, None, torch.device("cpu"), "best")
    assert source.config_hash == p.config_hash
    assert source.checkpoint == run / "checkpoints" / "best.pt"


def test_a_configuration_alone_is_a_network_free_run_or_oncoreg_training(tmp_path):
    write_json(tmp_path / "free.json", {"predict": {"affine_only": True, "affine": "rigid"}})
    write_json(tmp_path / "net.json", {"model": {"start_channel": 2}})
    assert resolve_source(None, tmp_path / "free.json", "best", contracts.REMIND2REG, {}).description.startswith("network-free")
    recipe = REPO / "configs" / "l2r_remind2reg.json"  # predict.network "none": MIND instance optimisation, no weights
    source = resolve_source(None, recipe, "best", contracts.REMIND2REG, {})
    assert source.checkpoint is None and source.description.startswith("network-free")
    with pytest.raises(DataError, match="not a network-free configuration .* need --run \\(only oncoreg trains inside the image\\)"):
        resolve_source(None, tmp_path / "net.json", "best", contracts.LUMIR, {})
    src = resolve_source(None, tmp_path / "net.json", "best", contracts.ONCOREG, {})
    assert src.checkpoint is None and src.description.startswith("training configuration")


def test_build_arguments_come_from_the_command_line_the_environment_then_dotenv(tmp_path, monkeypatch):
    (tmp_path / ".docker-wheels").mkdir()
    (tmp_path / ".docker-wheels" / WHEEL).write_bytes(b"wheel")
    (tmp_path / ".env").write_text(f"COMPOSE_FILE=a\nBASE_IMAGE=from-dotenv\nTORCH_WHEEL=.docker-wheels/{WHEEL}\n")
    args, wheel = build_settings({}, environ={}, project=tmp_path)
    assert args == {"BASE_IMAGE": "from-dotenv", "TORCH_WHEEL": f".docker-wheels/{WHEEL}"} and wheel == tmp_path / ".docker-wheels" / WHEEL
    args, _ = build_settings({"BASE_IMAGE": "given"}, environ={"BASE_IMAGE": "env", "TORCH_INDEX": "https://i"}, project=tmp_path)
    assert args["BASE_IMAGE"] == "given" and args["TORCH_INDEX"] == "https://i"
    elsewhere = tmp_path / "w" / WHEEL
    elsewhere.parent.mkdir()
    elsewhere.write_bytes(b"w")
    args, wheel = build_settings({"TORCH_WHEEL": str(elsewhere)}, environ={}, project=tmp_path)
    assert wheel == elsewhere and args["TORCH_WHEEL"] == f".docker-wheels/{WHEEL}", "any wheel file goes into the context"
    monkeypatch.chdir(tmp_path)
    with pytest.raises(DataError, match="torch wheel not found"):
        build_settings({"TORCH_WHEEL": "nope.whl"}, environ={}, project=tmp_path)


def test_the_compose_file_builds_the_submission_target_with_the_contracts_workdir(tmp_path):
    path = build.compose_file(tmp_path, "img:1", contracts.ONCOREG, {"BASE_IMAGE": "b"})
    spec = json.loads(path.read_text())["services"]["submission"]
    assert spec["image"] == "img:1" and spec["build"]["target"] == "submission" and spec["build"]["network"] == "host"
    assert spec["build"]["args"] == {"BASE_IMAGE": "b", "SUBMISSION_WORKDIR": "/oncoreg", "CONTRACT": "oncoreg"}


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"contract_name": "remind2reg"}, "--sequence is required"),
        ({"contract_name": "lumir", "out_name": "image.tar"}, r"\.tar\.gz"),
        ({"contract_name": "lumir", "exists": "README.txt"}, "README.txt: already exists; pass --overwrite"),
        ({"contract_name": "l2r", "exists": "img.submission.json"}, "img.submission.json: already exists"),
        ({"contract_name": "l2r", "compress_level": 0}, "gzip's levels are 1"),
        ({"contract_name": "l2r", "data": "missing"}, "missing: task folder not found"),
    ],
)
def test_refusals_come_before_any_build(trained, tmp_path, monkeypatch, kwargs, message):
    monkeypatch.setattr(build, "check_engine", lambda: pytest.fail("the engine was asked before the refusal"))
    _, run = trained
    if "exists" in kwargs:
        (tmp_path / kwargs["exists"]).write_text("x")
    out = tmp_path / kwargs.get("out_name", "img.tar.gz")
    data = tmp_path / kwargs["data"] if "data" in kwargs else None
    with pytest.raises(DataError, match=message):
        build.container(kwargs["contract_name"], out, run, data=data, compress_level=kwargs.get("compress_level", 6))
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(filter(None, [kwargs.get("exists")]))


def test_the_checkpoint_hash_is_the_files(trained):
    _, run = trained
    source = resolve_source(run, None, "last", contracts.L2R, {})
    cfg_digest = run_config(run, {}).digest()
    spacing = ",".join(f"{v:g}" for v in json.loads((run / "dataset.json").read_text())["network_spacing_mm"])
    weights = hashlib.sha256((run / "checkpoints" / "last.pt").read_bytes()).hexdigest()
    assert source.config_hash == hashlib.sha256(f"{cfg_digest}{weights}|network at the trained spacing {spacing}".encode()).hexdigest()[:16]


# --- the command line: exit codes, messages, nothing written ----------------------------------


def _container_cli(tmp_path, *args: str) -> int:
    return main(["container", *args, "--out", str(tmp_path / "out" / "img.tar.gz")])


@pytest.fixture
def out_dir(tmp_path, monkeypatch):
    """An empty ``--out`` folder; no build setting from this machine's environment."""
    for key in build.BUILD_ARGS:
        monkeypatch.delenv(key, raising=False)
    (tmp_path / "out").mkdir()
    return tmp_path / "out"


@pytest.mark.parametrize(
    ("args", "code", "message"),
    [
        (["--run", "{tmp}/nothing", "--contract", "lumir"], 1, "error: {tmp}/nothing: not a run folder (no config.json)"),
        (["--run", "{tmp}", "--contract", "lumir"], 1, "error: {tmp}: not a run folder (no config.json)"),
        (["--run", "{run}", "--contract", "lumir", "--checkpoint", "{tmp}/gone.pt"], 1, "error: {tmp}/gone.pt: checkpoint not found"),
        (["--run", "{run}", "--contract", "nope"], 2, "argument --contract: invalid choice: 'nope'"),
        (["--run", "{run}", "--contract", "remind2reg", "--sequence", "FLAIR"], 1, "error: remind2reg: --sequence FLAIR: not one of ceT1 (0001), T2 (0002)"),
        (["--contract", "lumir"], 2, "one of the arguments --run --config is required"),
    ],
)
def test_bad_input_exits_1_usage_errors_2_and_nothing_is_written(trained, tmp_path, out_dir, capsys, args, code, message):
    _, run = trained
    fill = {"tmp": str(tmp_path), "run": str(run)}
    if code == 2:
        with pytest.raises(SystemExit) as exit_:
            _container_cli(tmp_path, *(a.format(**fill) for a in args))
        assert exit_.value.code == 2
    else:
        assert _container_cli(tmp_path, *(a.format(**fill) for a in args)) == 1
    assert message.format(**fill) in capsys.readouterr().err
    assert list(out_dir.iterdir()) == []


@pytest.mark.parametrize(
    ("environ", "message"),
    [
        ({"PATH": "{tmp}/bin"}, "no docker command: `container` builds with Docker"),
        ({"DOCKER_HOST": "unix://{tmp}/no-engine.sock"}, "no Docker engine answers (docker info: "),
    ],
)
def test_without_an_engine_the_command_says_so_before_building_and_writes_nothing(trained, tmp_path, out_dir, capsys, monkeypatch,
                                                                                  environ, message):  # fmt: skip
    if "DOCKER_HOST" in environ and shutil.which("docker") is None:
        pytest.skip("no docker client here")
    (tmp_path / "bin").mkdir()
    for key, value in environ.items():
        monkeypatch.setenv(key, value.format(tmp=tmp_path))
    _, run = trained
    assert _container_cli(tmp_path, "--run", str(run), "--contract", "l2r") == 1
    assert message in capsys.readouterr().err
    assert list(out_dir.iterdir()) == []


def test_a_failed_export_leaves_no_partial_image_file(tmp_path, monkeypatch):
    """``docker save`` that dies after writing part of the image: the file is not there, nor a temporary."""
    fake = tmp_path / "bin" / "docker"
    fake.parent.mkdir()
    fake.write_text("#!/bin/sh\nhead -c 100000 /dev/zero\necho 'Error: write error: no space left on device' >&2\nexit 1\n")
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", f"{fake.parent}:{os.environ['PATH']}")
    (tmp_path / "out").mkdir()
    with pytest.raises(DataError, match=r"docker save img:latest \| gzip failed \(docker save exit 1, gzip exit 0\): Error: write error"):
        build.export_image("img:latest", tmp_path / "out" / "img.tar.gz", level=1)
    assert list((tmp_path / "out").iterdir()) == []


def test_an_image_that_fails_its_check_run_is_not_exported(trained, tmp_path, out_dir, monkeypatch):
    """``--data``: the check runs before ``docker save``; when the image fails it, no image file and no fields."""
    _, run = trained
    (tmp_path / "task").mkdir()
    monkeypatch.setattr(build, "check_engine", lambda: None)
    monkeypatch.setattr(build, "build_image", lambda *a, **k: "")

    def failing_check(contract, tag, data, modality, work, fields):
        fields.mkdir()
        (fields / "disp_0001_0000_0002_0000.nii.gz").write_bytes(b"partial")
        raise DataError("the image failed its check run (exit 1)")

    monkeypatch.setattr(build.handin, "check_run", failing_check)
    monkeypatch.setattr(build, "export_image", lambda *a, **k: pytest.fail("exported an image that failed its check"))
    with pytest.raises(DataError, match="failed its check run"):
        build.container("l2r", out_dir / "img.tar.gz", run, data=tmp_path / "task")
    assert list(out_dir.iterdir()) == []
