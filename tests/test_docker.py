"""The container workflow run by a real engine: the README's commands as written, the image, the stages.

Every test here needs the engine (markers ``docker`` and ``slow``). A private engine is started when
none answers (``tests/docker_engine.py``). The image is built once, the way the README's no-registry
block builds it (``docker/local-base.sh``, ``docker/torch-wheel.sh``, ``docker compose build`` with the
CPU override), in a clean copy of the working tree; the stages then run through
``docker compose -f docker-compose.yml -f docker-compose.cpu.yml run --rm STAGE`` on folders under
pytest's tmp_path, as a non-root host user. The README's container blocks themselves run in another
clean copy, where the same build is a cache hit. The files alone (no engine) are checked in
``tests/test_docker_files.py``.
"""

from __future__ import annotations

import csv
import json
import os
import re
import signal
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests import docker_engine
from tests.docker_engine import Engine, sh
from tests.docker_recipe import COMPOSE_VARIABLES, REPO, clean_copy, fresh_shell_env, readme_script
from tools.lock import canonicalize_name, read_lock

COMPOSE_FILES = ("-f", "docker-compose.yml", "-f", "docker-compose.cpu.yml")
PROJECT = f"l2r-pytest-{os.getpid()}"  # per test process: xdist workers may share an engine
IMAGE = f"l2r-lapirn:pytest-{os.getpid()}"
STAGE_UID = 4242  # the "host user" the stages run as; the mounted folders belong to it
TASK = "DemoHippocampusMR"

# Engine tests share one engine and image: one xdist worker should run them all (`--dist loadfile`;
# xdist 3.8's groups are ignored under pytest 9, and the marker exists only while xdist is loaded).
# Workers that do get engine tests each start their own engine: the base image cache is locked.
_ON_ONE_WORKER = [pytest.mark.xdist_group("docker")] if os.environ.get("PYTEST_XDIST_WORKER") else []
pytestmark = [pytest.mark.docker, pytest.mark.slow, *_ON_ONE_WORKER]


@dataclass(frozen=True)
class Stack:
    """The built image, the clean copy it was built from, and the host folders the services mount (owned by STAGE_UID)."""

    env: dict[str, str]  # engine environment + the compose variables
    context: Path  # the clean copy of the working tree: build context and compose project folder
    data: Path
    runs: Path
    outputs: Path
    build_log: str
    wheel: Path
    own_engine: bool  # started by these tests (else someone's engine: leave nothing behind)


@pytest.fixture(scope="session")
def stack(engine: Engine, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """Build the image as the README's no-registry block does, in a clean copy; host folders for the stages."""
    base = docker_engine.ensure_base_image(engine)  # docker/local-base.sh
    context = clean_copy(tmp_path_factory.mktemp("context"))
    wheel_line = sh(["sh", "docker/torch-wheel.sh"], cwd=context, env=fresh_shell_env(engine.env), timeout=900)
    torch_wheel = wheel_line.stdout.strip().removeprefix("TORCH_WHEEL=")
    root = tmp_path_factory.mktemp("compose")
    folders = [root / name for name in ("data", "runs", "outputs")]
    for folder in folders:
        folder.mkdir()
        os.chown(folder, STAGE_UID, STAGE_UID)
    env = {
        **engine.env, "IMAGE": IMAGE, "BASE_IMAGE": base, "TORCH_WHEEL": torch_wheel,
        "UID": str(STAGE_UID), "GID": str(STAGE_UID),
        "DATA_DIR": str(folders[0]), "RUNS_DIR": str(folders[1]), "OUTPUTS_DIR": str(folders[2]),
        "TASK": TASK, "RUN": "pytest", "SPLIT": "val", "DEMO_TASKS": "T4",
    }  # fmt: skip
    build = compose(env, "build", "--progress", "plain", "validate", cwd=context, timeout=1200)
    assert build.returncode == 0, build.stdout[-3000:] + build.stderr[-3000:]
    own = engine.process is not None
    yield Stack(env, context, *folders, build_log=build.stdout + build.stderr, wheel=context / torch_wheel, own_engine=own)
    if not own:
        sh(["docker", "image", "rm", "-f", IMAGE], env=engine.env, check=False)


def compose(env: dict[str, str], *args: str, cwd: Path = REPO, timeout: float = 900) -> subprocess.CompletedProcess:
    """``docker compose -p PROJECT -f docker-compose.yml -f docker-compose.cpu.yml ARGS`` in ``cwd``."""
    return sh(["docker", "compose", "-p", PROJECT, *COMPOSE_FILES, *args], env=env, cwd=cwd, timeout=timeout, check=False)


def run_stage(stack: Stack, service: str, *args: str, entrypoint: str | None = None, **env: str):
    """``docker compose run --rm -T SERVICE [ARGS]`` with extra compose variables ``env``."""
    extra = ["--entrypoint", entrypoint] if entrypoint else []
    return compose({**stack.env, **env}, "run", "--rm", "-T", *extra, service, *args, cwd=stack.context)


def in_image(stack: Stack, *cmd: str, user: str | None = None) -> subprocess.CompletedProcess:
    """``docker run --rm`` the image with entrypoint ``cmd[0]`` (the image's own user unless ``user``)."""
    who = ["--user", user] if user else []
    return sh(["docker", "run", "--rm", "--network", "host", *who, "--entrypoint", cmd[0], IMAGE, *cmd[1:]],
              env=stack.env, check=False, timeout=300)


def output(proc: subprocess.CompletedProcess) -> str:
    return f"exit {proc.returncode}\n--- stdout\n{proc.stdout[-4000:]}\n--- stderr\n{proc.stderr[-4000:]}"


def board_values(path: Path) -> dict[tuple[str, str, str], float]:
    """(method, task, metric) -> value of a leaderboard.csv."""
    rows = csv.DictReader(path.open())
    return {(r["method"], r["task"], r["metric"]): float(r["value"]) for r in rows if r["value"] not in ("", "nan")}


# --------------------------------------------------------------------------------------------
# The README's commands, as written


def test_the_readme_container_blocks_work_as_written_in_a_fresh_clone(stack, tmp_path):
    """The "no registry" and "run" blocks of the README's Containers section, extracted from it and
    run with bash in a clean copy of the working tree, from a shell without any compose variable:
    they build the image and end in a leaderboard with an Initial row that LapIRN beats, and the demo
    job's leaderboard with LapIRN ahead of Initial on every task (TRE down by 30 % on T1/T2, Dice up
    by at least 0.03 on T3/T4, smooth fields). ``stack`` built the same layers: here a cache hit."""
    clone = clean_copy(tmp_path / "clone")
    isolate = {} if stack.own_engine else {"IMAGE": f"{IMAGE}-readme", "COMPOSE_PROJECT_NAME": f"{PROJECT}-readme"}
    env = fresh_shell_env(stack.env, L2R_DOCKER_CACHE=str(docker_engine.CACHE_DIR), **isolate)
    proc = subprocess.run(["bash", "-c", readme_script()], cwd=clone, env=env, capture_output=True, text=True, timeout=2400)
    if not stack.own_engine:
        sh(["docker", "image", "rm", "-f", isolate["IMAGE"]], env=stack.env, check=False)
    assert proc.returncode == 0, output(proc)
    assert re.search(r"^TORCH_WHEEL=\.docker-wheels/torch-[^/]+\.whl$", (clone / ".env").read_text(), re.M)
    assert "(container paths: /data = ./data, /outputs = ./outputs on the host)" in proc.stderr

    stages = board_values(clone / "outputs/leaderboard/leaderboard.csv")
    assert stages[("LapIRN", TASK, "DSC")] > stages[("Initial", TASK, "DSC")] + 0.03, stages

    demo = board_values(clone / "outputs/demo-job/leaderboard/leaderboard.csv")
    for task in ("DemoCuRIOUS", "DemoLungCT"):
        assert demo[("LapIRN", task, "TRE_lm")] < 0.7 * demo[("Initial", task, "TRE_lm")], task
    for task in ("DemoAbdomenCTCT", "DemoHippocampusMR"):
        assert demo[("LapIRN", task, "DSC")] > demo[("Initial", task, "DSC")] + 0.03, task
    for task in ("DemoCuRIOUS", "DemoLungCT", "DemoAbdomenCTCT", "DemoHippocampusMR"):
        assert demo[("LapIRN", task, "SDlogJ")] < 0.2, task


# --------------------------------------------------------------------------------------------
# Compose files and the image


def compose_config(env: dict[str, str], *files: str) -> dict:
    """``docker compose config`` (validated, variables resolved) as a dict."""
    cmd = ["docker", "compose", "-p", PROJECT, "--env-file", os.devnull, *files, "config", "--format", "json"]
    proc = sh(cmd, env=env, cwd=REPO, check=False)
    assert proc.returncode == 0, output(proc)
    return json.loads(proc.stdout)


def test_compose_files_validate_and_share_the_dockerfile_defaults(engine):
    env = {k: v for k, v in engine.env.items() if k not in COMPOSE_VARIABLES}  # the defaults, not a user's choices
    base = compose_config(env, "-f", "docker-compose.yml")
    cpu = compose_config({**env, "UID": "1234", "GID": "99"}, *COMPOSE_FILES)
    stages = {"demo", "demo-data", "validate", "preprocess", "align", "train", "predict", "evaluate", "initial", "leaderboard"}
    assert stages == set(base["services"]) == set(cpu["services"])
    default_base = re.search(r"^ARG BASE_IMAGE=(\S+)$", (REPO / "Dockerfile").read_text(), re.M).group(1)
    # the host folders as mounted (for messages), and OVERWRITE unset: a rerun is refused
    environment = {"L2R_HOST_DATA": "./data", "L2R_HOST_RUNS": "./runs", "L2R_HOST_OUTPUTS": "./outputs", "L2R_OVERWRITE": ""}
    for name, svc in base["services"].items():
        assert svc["build"]["args"] == {"BASE_IMAGE": default_base, "TORCH_WHEEL": "", "TORCH_INDEX": ""}, name
        assert svc["build"]["target"] == "pipeline" and svc["build"]["network"] == "host", name
        assert svc["image"] == "l2r-lapirn:latest" and svc["user"] == "1000:1000", name
        assert svc["environment"] == environment, name
        gpus = svc.get("deploy", {}).get("resources", {}).get("reservations", {}).get("devices", [])
        if name in ("train", "predict", "demo"):
            assert gpus == [{"driver": "nvidia", "count": -1, "capabilities": ["gpu"]}], name  # count all = -1
        else:
            assert gpus == [], name
    cpu_args = {"BASE_IMAGE": "python:3.11-slim-bookworm", "TORCH_WHEEL": "", "TORCH_INDEX": "https://download.pytorch.org/whl/cpu"}
    for name, svc in cpu["services"].items():
        assert svc["build"]["args"] == cpu_args and svc["image"] == "l2r-lapirn:cpu", name
        assert svc["network_mode"] == "host" and svc["user"] == "1234:99", name
        assert not svc.get("deploy", {}).get("resources", {}).get("reservations", {}).get("devices"), name
        mounts = {v["target"]: v for v in svc.get("volumes", [])}
        if "/data" in mounts:
            assert mounts["/data"].get("read_only", False) == (name != "demo-data"), name
    assert cpu["services"]["evaluate"]["command"][:1] == ["evaluate"]
    assert cpu["services"]["initial"]["command"] == [
        "initial", "-d", f"/data/{TASK}", "-o", f"/outputs/initial/{TASK}.json", "--split", "val",
    ]
    for name in ("preprocess", "train"):  # the default CONFIG ships in the image (/app/configs)
        command = cpu["services"][name]["command"]
        assert (REPO / command[command.index("--config") + 1]).is_file(), name
    assert f"/data/{TASK}" in cpu["services"]["validate"]["command"]


def test_build_context_holds_little_besides_the_wheel(stack):
    sizes = [float(n) * {"B": 1e-6, "kB": 1e-3, "MB": 1.0, "GB": 1e3}[unit]
             for n, unit in re.findall(r"transferring context: ([\d.]+)(B|kB|MB|GB)", stack.build_log)]
    assert sizes, stack.build_log[-2000:]
    weights = sum(p.stat().st_size for p in (REPO / "weights").iterdir()) / 1e6  # shipped on purpose (MIT)
    assert max(sizes) < stack.wheel.stat().st_size / 1e6 + weights + 5.0


def test_a_wheel_outside_the_build_context_stops_the_build_with_a_message(stack):
    proc = compose({**stack.env, "TORCH_WHEEL": str(stack.wheel)}, "build", "--progress", "plain", "validate",
                   cwd=stack.context, timeout=600)
    assert proc.returncode != 0, output(proc)
    assert "the build sees only files inside its context" in proc.stdout + proc.stderr, output(proc)


def test_image_runs_as_a_non_root_user(stack):
    proc = in_image(stack, "id", "-u")
    assert proc.returncode == 0, output(proc)
    assert int(proc.stdout) != 0


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


def test_the_image_installs_exactly_the_locked_runtime_packages(stack):
    """What the image adds to its base (its venv) is requirements-lock.txt's runtime section, at the
    locked versions (torch's local label aside): no transitive dependency floats."""
    probe = (
        "import json, importlib.metadata as md; "
        "print(json.dumps([[d.metadata['Name'], d.version, str(d.locate_file(''))] for d in md.distributions()]))"
    )
    proc = in_image(stack, "python", "-c", probe)
    assert proc.returncode == 0, output(proc)
    venv = {canonicalize_name(name): version.split("+")[0] for name, version, where in json.loads(proc.stdout)
            if where.startswith("/opt/venv/")}
    assert venv == read_lock(REPO / "requirements-lock.txt", "runtime")


def test_image_holds_the_code_and_no_caches(stack):
    script = "ls -A /app; ls -A /tmp; test ! -e /root/.cache && echo no-root-cache"
    proc = in_image(stack, "sh", "-c", script, user="0")
    assert proc.returncode == 0, output(proc)
    assert proc.stdout.split() == [
        "configs", "docker", "evaluation", "learn2reg", "pipeline", "pyproject.toml", "requirements-docker.txt",
        "requirements-lock.txt", "requirements.txt", "weights", "no-root-cache",
    ]


# --------------------------------------------------------------------------------------------
# The stages through compose, as a non-root host user


@pytest.fixture(scope="session")
def demo_data(stack: Stack) -> subprocess.CompletedProcess:
    """``docker compose run demo-data`` once (task T4 only: DEMO_TASKS=T4)."""
    return run_stage(stack, "demo-data")


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
    # the message ends by naming the host folder mounted at /data, as the user gave it
    assert missing.stderr.rstrip().endswith(f"(container paths: /data = {stack.data} on the host)"), output(missing)


def test_errors_name_the_host_path_the_user_mounted(stack):
    proc = run_stage(stack, "initial", "initial", "-d", "/data/NoSuchTask", "-o", "/outputs/none.json")
    assert proc.returncode == 1, output(proc)
    assert f"error: {stack.data}/NoSuchTask: task folder not found" in proc.stderr.splitlines(), output(proc)


def test_stages_run_as_the_host_user_with_a_writable_home(stack):
    probe = "import getpass, os, pathlib; pathlib.Path('~/probe').expanduser().touch(); print(os.getuid(), getpass.getuser())"
    proc = run_stage(stack, "validate", "-c", probe, entrypoint="python")
    assert proc.returncode == 0, output(proc)
    assert proc.stdout.split() == [str(STAGE_UID), "l2r"]


def test_a_root_host_user_runs_the_stages_as_root_as_the_readme_says(stack):
    """The documented limit (README, "Users"): UID=0 (a root shell's ``export UID``) means root."""
    proc = run_stage(stack, "validate", "-u", entrypoint="id", UID="0", GID="0")
    assert proc.returncode == 0 and proc.stdout.split() == ["0"], output(proc)


def test_only_demo_data_may_write_the_data_folder(stack):
    denied = run_stage(stack, "validate", "/data/written-by-validate", entrypoint="touch")
    assert denied.returncode != 0 and "Read-only file system" in denied.stderr, output(denied)
    allowed = run_stage(stack, "evaluate", "/outputs/written-by-evaluate", entrypoint="touch")
    assert allowed.returncode == 0, output(allowed)
    assert (stack.outputs / "written-by-evaluate").stat().st_uid == STAGE_UID
    assert not (stack.data / "written-by-validate").exists()


LATER_STAGES = ("preprocess", "align", "train", "predict", "evaluate", "initial", "leaderboard")  # pipeline order
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
    elif stage == "initial":
        assert "aggregates" in json.loads((stack.outputs / "initial" / f"{TASK}.json").read_text())
    elif stage == "leaderboard":
        methods = {method for method, _, _ in board_values(stack.outputs / "leaderboard" / "leaderboard.csv")}
        assert methods == {"Initial", "LapIRN"}, methods


def test_later_stages_run_through_compose(stack, demo_data):
    """preprocess, align, train, predict, evaluate, initial, leaderboard (ranking Initial too), each
    through ``docker compose run``, each checked for its outputs (``_check_stage``) and for files
    owned by the host user."""
    assert demo_data.returncode == 0, output(demo_data)
    config = stack.runs / "tiny_config.json"
    config.write_text(json.dumps(TINY_CONFIG))
    for stage in LATER_STAGES:
        proc = run_stage(stack, stage, CONFIG="/runs/tiny_config.json", LEADERBOARD_ARGS="--initial /outputs/initial")
        assert proc.returncode == 0, f"{stage}: {output(proc)}"
        _check_stage(stack, stage)
        for written in (stack.runs, stack.outputs):
            assert all(p.stat().st_uid == STAGE_UID for p in written.rglob("*") if p != config), stage
    # a rerun: refused, naming the output and the compose variable; with OVERWRITE=1 it replaces it
    result = stack.outputs / "pytest" / f"{TASK}.json"
    before = result.stat().st_mtime_ns
    again = run_stage(stack, "evaluate")
    assert again.returncode == 1 and "Traceback" not in again.stderr, output(again)
    assert "already exists" in again.stderr and "OVERWRITE=1 docker compose run" in again.stderr, output(again)
    assert result.stat().st_mtime_ns == before
    replaced = run_stage(stack, "evaluate", OVERWRITE="1")
    assert replaced.returncode == 0, output(replaced)
    assert result.stat().st_mtime_ns != before and "aggregates" in json.loads(result.read_text())


# --------------------------------------------------------------------------------------------
# Faults in the containers: a mount the stage may not write, a script that is interrupted


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
        # the container folder is written as the host folder it is, and the mapping is printed
        assert "no write permission" in text and f"{root_owned} belongs to uid {root_owned.stat().st_uid}" in text, output(proc)
        assert f"{where} = {root_owned}" in text, output(proc)
        assert "mkdir -p data runs outputs" in text and "export UID GID=$(id -g)" in text, service
    assert not list(root_owned.iterdir())


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
