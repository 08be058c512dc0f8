"""The command line: every --help shows the defaults, --version, the console script of
pyproject.toml (its target called directly, and a built wheel), --device with a clear refusal
where CUDA is absent, and evaluate/initial reachable from ``python -m pipeline``."""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import json
import logging
import shutil
import subprocess
import sys
import tomllib
import zipfile

import pytest
import torch

from evaluation import evaluate as evaluate_module
from evaluation import initial as initial_module
from evaluation.initial import write_zero_submission
from evaluation.leaderboard import stage as leaderboard_module
from learn2reg.io import DataError, read_json
from pipeline import cli
from pipeline.distributed import DistInfo, backend_kind, cuda_problem, device_arg, pick_device
from tests.paths import REPO
from tests.pipeline.training.test_train import make_blob_task

PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())
VERSION = PYPROJECT["project"]["version"]
NO_CUDA = not torch.cuda.is_available()


def help_text(call, capsys) -> str:
    with pytest.raises(SystemExit) as stop:
        call()
    assert stop.value.code == 0
    return " ".join(capsys.readouterr().out.split())


def option_help(text: str, parser: argparse.ArgumentParser, action: argparse.Action) -> str:
    """What the --help ``text`` (whitespace-joined) says about ``action``: its entry as argparse
    formats it, found in the text."""
    formatter = parser._get_formatter()
    formatter.add_argument(action)
    entry = " ".join(formatter.format_help().split())
    assert entry in text.partition(" options: ")[2], entry
    return entry


def expected_default(action: argparse.Action) -> str:
    if isinstance(action.default, bool):
        return "(default:"  # a flag: off (some say what off means, e.g. "(default: refuse)")
    if isinstance(action.default, list | tuple) and not action.default:
        return "(default: none)"
    return f"(default: {action.default})"


def options_with_defaults(parser: argparse.ArgumentParser) -> list[argparse.Action]:
    return [a for a in parser._actions if a.option_strings and a.default is not None and a.default is not argparse.SUPPRESS]


@pytest.mark.parametrize("command", sorted(cli.COMMANDS))
def test_every_command_help_shows_every_default(command, capsys):
    text = help_text(lambda: cli.main([command, "--help"]), capsys)
    assert text.startswith(f"usage: python -m pipeline {command}")
    parser = cli.command_parser("python -m pipeline", command)
    for action in options_with_defaults(parser):
        assert expected_default(action) in option_help(text, parser, action), (command, action.option_strings)


@pytest.mark.parametrize("module", [evaluate_module, initial_module, leaderboard_module], ids=lambda m: m.__name__)
def test_the_evaluation_commands_show_their_defaults_and_version_too(module, capsys):
    text = help_text(lambda: module.main(["--help"]), capsys)
    parser = argparse.ArgumentParser(formatter_class=cli.HelpFormatter)
    module.build_parser(parser)
    for action in options_with_defaults(parser):
        assert expected_default(action) in option_help(text, parser, action), (module.__name__, action.option_strings)
    command = module.__name__.removesuffix(".stage")  # a sub-package's command is the package (its __main__)
    assert help_text(lambda: module.main(["--version"]), capsys) == f"python -m {command} {VERSION}"


def test_top_level_help_lists_every_command_and_version_comes_from_pyproject(capsys):
    assert cli.main(["--help"]) == 0
    out = capsys.readouterr().out
    assert all(f"  {name} " in out for name in cli.COMMANDS) and "--version" in out and "(default: False)" in out
    assert cli.main(["--version"]) == 0
    assert capsys.readouterr().out == f"python -m pipeline {VERSION}\n"
    assert cli.main([]) == 2


def test_console_scripts_of_pyproject_run_help_version_and_sub_commands(capsys):
    scripts = PYPROJECT["project"]["scripts"]
    assert set(scripts) == {"l2r"}
    for name, target in scripts.items():
        module_name, _, function = target.partition(":")
        entry = getattr(importlib.import_module(module_name), function)
        assert entry(["--version"]) == 0
        assert capsys.readouterr().out == f"{name} {VERSION}\n"
        assert entry(["--help"]) == 0
        assert capsys.readouterr().out.startswith(f"usage: {name} ")
        for command in ("train", "evaluate", "initial", "leaderboard"):
            assert help_text(lambda c=command, e=entry: e([c, "--help"]), capsys).startswith(f"usage: {name} {command} ")


def test_a_built_wheel_holds_every_module_and_the_console_script(tmp_path):
    """Built from a copy of the sources (the checkout stays clean), offline, without installing."""
    if importlib.util.find_spec("pip") is None or importlib.util.find_spec("setuptools") is None:
        pytest.skip("pip wheel needs pip and setuptools")
    src = tmp_path / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, src / name)
    for package in ("pipeline", "evaluation"):
        shutil.copytree(REPO / package, src / package, ignore=shutil.ignore_patterns("__pycache__"))
    done = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index", "-q",
                           "-w", str(tmp_path / "dist"), str(src)], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    (wheel,) = (tmp_path / "dist").glob("*.whl")
    assert wheel.name.startswith(f"l2r_lapirn-{VERSION}-")
    with zipfile.ZipFile(wheel) as z:
        names = set(z.namelist())
        entry_points = next(z.read(n).decode() for n in names if n.endswith("entry_points.txt"))
    sources = {p.relative_to(src).as_posix() for package in ("pipeline", "evaluation") for p in (src / package).rglob("*.py")}
    assert sources <= names, sorted(sources - names)
    assert "l2r = pipeline.cli:l2r" in entry_points


# ---------------------------------------------------------------------------- --device


@pytest.mark.parametrize("text", ["gpu", "cuda0", "cuda:", "cuda:x", "CPU", "mps"])
def test_a_device_outside_the_choices_is_a_usage_error(text, capsys):
    with pytest.raises(SystemExit) as stop:
        cli.main(["predict", "--config", "c.json", "--data", "d", "--out", "o", "--device", text])
    assert stop.value.code == 2
    assert f"invalid device {text!r}" in capsys.readouterr().err
    with pytest.raises(DataError, match="not one of"):
        pick_device(text, DistInfo())


@pytest.mark.skipif(not NO_CUDA, reason="this machine has CUDA")
@pytest.mark.parametrize("command", ["train", "predict", "demo", "register"])
@pytest.mark.parametrize("device", ["cuda", "cuda:1"])
def test_cuda_where_there_is_none_is_refused_naming_the_build_and_the_way_out(command, device, capsys, tmp_path):
    """A usage error (exit 2) in every command with --device; register exited 1 before (issue 21)."""
    required = {"train": ["--data", "d", "--config", "c", "--out", str(tmp_path / "r")],
                "predict": ["--data", "d", "--config", "c", "--out", str(tmp_path / "o")], "demo": ["--out", str(tmp_path / "o")],
                "register": ["--fixed", "f", "--moving", "m", "--run", "r", "--out", str(tmp_path / "o")]}
    with pytest.raises(SystemExit) as stop:
        cli.main([command, *required[command], "--device", device])
    assert stop.value.code == 2
    err = capsys.readouterr().err
    assert "CUDA is not available" in err and torch.__version__ in err and "--device cpu" in err and "install a CUDA build" in err
    assert not any(tmp_path.iterdir())
    with pytest.raises(DataError, match="CUDA is not available"):
        pick_device(device, DistInfo())


@pytest.mark.parametrize(
    ("available", "count", "cuda_version", "device", "problem"),
    [
        (False, 0, None, "cuda", "CPU-only build"),
        (False, 0, "12.6", "cuda:0", "sees no GPU"),
        (True, 2, "12.6", "cuda:1", None),
        (True, 2, "12.6", "cuda:2", "there is no cuda:2: 2 CUDA device(s) visible (cuda:0 to cuda:1)"),
        (True, 1, "12.6", "cuda", None),
        (False, 0, None, "cpu", None),
        (False, 0, None, "auto", None),
    ],
)
def test_cuda_problems_on_machines_stood_in_by_monkeypatching(monkeypatch, available, count, cuda_version, device, problem):
    """CUDA availability, device count and build are monkeypatched, so every kind of machine is
    covered from any machine; a real GPU: test_a_real_cuda_device_is_accepted_and_picked."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: available)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: count)
    monkeypatch.setattr(torch.version, "cuda", cuda_version)
    found = cuda_problem(device)
    assert found is None if problem is None else problem in found
    if problem is None:
        assert device_arg(device) == device
    else:
        with pytest.raises(argparse.ArgumentTypeError):
            device_arg(device)


@pytest.mark.cuda
def test_a_real_cuda_device_is_accepted_and_picked():
    count = torch.cuda.device_count()
    assert cuda_problem("cuda") is None and device_arg("cuda") == "cuda" and device_arg("cuda:0") == "cuda:0"
    assert pick_device("cuda", DistInfo()) == torch.device("cuda", 0) and pick_device("auto", DistInfo()).type == "cuda"
    assert backend_kind("auto") == "cuda"
    assert f"there is no cuda:{count}: {count} CUDA device(s) visible" in cuda_problem(f"cuda:{count}")


def test_devices_pick_their_process_group_backend(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert [backend_kind(d) for d in ("auto", "cpu", "cuda", "cuda:3")] == ["cpu", "cpu", "cuda", "cuda"]
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert backend_kind("auto") == "cuda" and pick_device("cpu", DistInfo()) == torch.device("cpu")


# ---------------------------------------------------------------------------- evaluation commands


@pytest.fixture(scope="module")
def zero_submission(tmp_path_factory):
    root = tmp_path_factory.mktemp("eval")
    task = make_blob_task(root / "task")
    return task, write_zero_submission(task, root / "zero")


def test_python_m_pipeline_evaluate_is_the_evaluator(zero_submission, tmp_path, capsys):
    task, sub = zero_submission
    assert evaluate_module.main(["-i", str(sub), "-d", str(task), "-o", str(tmp_path / "direct.json"), "-j", "1"]) == 0
    direct_out = capsys.readouterr().out
    assert cli.main(["evaluate", "-i", str(sub), "-d", str(task), "-o", str(tmp_path / "routed.json"), "-j", "1"]) == 0
    assert capsys.readouterr().out == direct_out.replace("direct.json", "routed.json")
    assert read_json(tmp_path / "routed.json") == read_json(tmp_path / "direct.json")
    # evaluate's own -v (per-case results) reaches it, before or after the other options
    for argv in (["-v", "-i", str(sub)], ["-i", str(sub), "--verbose", "--overwrite"]):
        assert cli.main(["evaluate", *argv, "-d", str(task), "-o", str(tmp_path / "v.json"), "-j", "1"]) == 0
        assert capsys.readouterr().out.startswith("0004_0000<--0005_0000  LogJacDetStd=0.00000")


def test_python_m_pipeline_initial_and_leaderboard(zero_submission, tmp_path, capsys):
    task, _ = zero_submission
    assert cli.main(["initial", "-d", str(task), "-o", str(tmp_path / "Initial.json")]) == 0
    assert initial_module.main(["-d", str(task), "-o", str(tmp_path / "direct.json")]) == 0
    assert read_json(tmp_path / "Initial.json") == read_json(tmp_path / "direct.json")
    assert cli.main(["initial", "-d", str(tmp_path / "missing"), "-o", str(tmp_path / "x.json")]) == 1
    assert "task folder not found" in capsys.readouterr().err
    (tmp_path / "zero").mkdir()
    (tmp_path / "zero" / f"{task.name}.json").write_text(json.dumps(read_json(tmp_path / "Initial.json")))
    assert cli.main(["leaderboard", f"Zero={tmp_path / 'zero'}"]) == 0
    assert "Zero" in capsys.readouterr().out


def test_debug_logging_from_v_before_the_command_or_for_a_command_without_its_own(monkeypatch, tmp_path):
    levels = []
    monkeypatch.setattr(logging, "basicConfig", lambda **kw: levels.append(kw["level"]))
    monkeypatch.setattr("pipeline.data.summary.run", lambda args: 0)
    for argv in (["-v", "summary", "x"], ["summary", "x", "--verbose"], ["summary", "x"]):
        assert cli.main(argv) == 0
    assert levels == [logging.DEBUG, logging.DEBUG, logging.INFO]
