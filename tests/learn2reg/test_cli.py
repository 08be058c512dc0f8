"""learn2reg.cli in the container: messages name the host folders the user mounted."""

from __future__ import annotations

import argparse

import pytest

from learn2reg import cli
from learn2reg.io import DataError

FOLDERS = {"/data": "./data", "/runs": "/srv/runs/", "/outputs": "./outputs"}


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("/data: neither a *_dataset.json nor images/", "./data: neither a *_dataset.json nor images/"),
        ("/data/T/pairs_val.csv: missing", "./data/T/pairs_val.csv: missing"),
        ("cannot write /outputs/demo/T.json", "cannot write ./outputs/demo/T.json"),
        ("'/runs/demo' has no checkpoint", "'/srv/runs/demo' has no checkpoint"),  # trailing / of the host path dropped
        ("--initial=/outputs/initial", "--initial=./outputs/initial"),
        ("/database /app/data /outputs2 ~/data data/x /data.json", "/database /app/data /outputs2 ~/data data/x /data.json"),
    ],
)
def test_container_paths_are_written_as_the_host_folders(text, expected):
    assert cli.on_host(text, FOLDERS) == expected


def test_only_announced_and_mounted_folders_are_mapped():
    environ = {"L2R_HOST_DATA": "./data", "L2R_HOST_RUNS": "", "L2R_HOST_OUTPUTS": "/o"}
    assert cli.host_folders(environ, mounted=lambda folder: folder != "/outputs") == {"/data": "./data"}
    assert cli.host_folders({}, mounted=lambda folder: True) == {}
    assert cli.on_host("/data/x", {}) == "/data/x"
    assert cli.mount_note({}) == ""
    assert cli.mount_note({"/data": "./data", "/outputs": "./out"}) == "(container paths: /data = ./data, /outputs = ./out on the host)"


def test_execute_names_host_paths_in_errors_and_ends_with_the_mapping(monkeypatch, capsys):
    monkeypatch.setattr(cli, "host_folders", lambda: {"/data": "./data"})

    def fails(args: argparse.Namespace) -> int:
        raise DataError("/data/NoSuchTask: not a task folder")

    assert cli.execute(fails, argparse.Namespace()) == 1
    assert capsys.readouterr().err.splitlines() == [
        "error: ./data/NoSuchTask: not a task folder", "(container paths: /data = ./data on the host)",
    ]
    assert cli.execute(lambda args: 0, argparse.Namespace()) == 0
    assert capsys.readouterr().err.splitlines() == ["(container paths: /data = ./data on the host)"]


def test_outside_the_container_nothing_is_added(monkeypatch, capsys):
    for variable in cli.CONTAINER_MOUNTS.values():
        monkeypatch.delenv(variable, raising=False)

    def fails(args: argparse.Namespace) -> int:
        raise DataError("/data/x: missing")

    assert cli.execute(fails, argparse.Namespace()) == 1
    assert capsys.readouterr().err == "error: /data/x: missing\n"


END = """
import gc, sys
from learn2reg import cli
sys.argv = ["tool", *sys.argv[1:]]
code = cli.run_cli("tool", "t", lambda p: p.add_argument("--x", type=int, default=0), lambda a: a.x, None if sys.argv[1:] else ["--x", "5"])
print(code, gc.isenabled())
"""


def test_a_command_process_ends_without_the_exit_collection_and_a_caller_keeps_its_collector():
    import subprocess
    import sys

    from tests.paths import REPO

    as_command = subprocess.run([sys.executable, "-c", END, "--x", "3"], cwd=REPO, capture_output=True, text=True, check=True)
    assert as_command.stdout.split() == ["3", "False"]  # its exit code, and no collection at exit
    as_call = subprocess.run([sys.executable, "-c", END], cwd=REPO, capture_output=True, text=True, check=True)
    assert as_call.stdout.split() == ["5", "True"]  # argv given (a test, a caller): the collector stays on


def test_l2r_overwrite_makes_overwrite_the_default_and_compose_stages_say_so(monkeypatch, tmp_path):
    assert [cli.overwrite_by_default({"L2R_OVERWRITE": v}) for v in ("1", "true", "YES", "0", "", "no")] == [True] * 3 + [False] * 3
    monkeypatch.setenv("L2R_OVERWRITE", "1")
    parser = argparse.ArgumentParser()
    cli.add_overwrite_argument(parser)
    assert parser.parse_args([]).overwrite is True
    monkeypatch.delenv("L2R_OVERWRITE")
    parser = argparse.ArgumentParser()
    cli.add_overwrite_argument(parser)
    assert parser.parse_args([]).overwrite is False and parser.parse_args(["--overwrite"]).overwrite is True
    out = tmp_path / "result.json"
    out.write_text("{}")
    with pytest.raises(DataError, match=r"already exists; pass --overwrite to replace it, or choose another -o$"):
        cli.refuse_existing([out], False, "-o")
    monkeypatch.setenv("L2R_HOST_OUTPUTS", "./outputs")  # a compose stage: its command line is fixed
    with pytest.raises(DataError, match=r"pass --overwrite \(docker compose: OVERWRITE=1 docker compose run --rm \.\.\.\) to replace it"):
        cli.refuse_existing([out], False, "-o")
    cli.refuse_existing([out], True, "-o")  # asked for: nothing refused
