"""The prepared GPU check (bench/gpu_check.sh) cannot rot: its wheel list covers every import on a
Python 3.12 GPU machine that lacks nibabel and SimpleITK (bench/gpu_packages.txt), and a CPU run of
the whole script (the GPU parts as tiny CPU smoke runs) writes every part's result, which
bench/gpu_report.py turns into the GPU page."""

from __future__ import annotations

import ast
import copy
import importlib.metadata
import importlib.util
import json
import os
import re
import subprocess
import sys
import time
import zipfile
from pathlib import Path
from types import ModuleType

import pytest
from packaging.requirements import Requirement

from tests.paths import REPO

BENCH = REPO / "bench"
# the bench scripts the check runs on the GPU machine (their imports must be there too)
CHECK_SCRIPTS = ("gpu_check.py", "gpu_parts.py", "gpu_measure.py", "gpu_wheels.py", "gpu_report.py", "bench_lapirn.py", "bench_evaluate.py")
GPU_PARTS = ("cuda_tests", "lapirn", "predict", "instance_opt", "torchrun")
PY312 = {"python_version": "3.12", "python_full_version": "3.12.3", "implementation_name": "cpython", "extra": ""}


def bench_module(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(f"bench_{name}_under_test", BENCH / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


wheels = bench_module("gpu_wheels")
report = bench_module("gpu_report")


def machine_packages() -> set[str]:
    lines = (BENCH / "gpu_packages.txt").read_text().splitlines()
    return {wheels.normalise(ln.strip()) for ln in lines if ln.strip() and not ln.startswith("#")}


def wheel_list() -> dict[str, str]:
    return {wheels.normalise(name): version for name, version in wheels.read_list()}


def pins() -> dict[str, str]:
    out = {}
    for req in ("requirements.txt", "requirements-dev.txt"):
        for line in (REPO / req).read_text().splitlines():
            match = re.match(r"([A-Za-z0-9._-]+)==(\S+)", line.split("#")[0].strip())
            if match:
                out[wheels.normalise(match[1])] = match[2]
    return out


def test_wheel_list_carries_pinned_versions_of_what_the_machine_lacks_only():
    listed, machine, pinned = wheel_list(), machine_packages(), pins()
    assert {"nibabel", "simpleitk"} <= set(listed) and not {"nibabel", "simpleitk"} & machine
    assert {name: pinned.get(name) for name in listed} == listed  # the versions of requirements*.txt
    assert not set(listed) & machine  # never a second version of a machine package (numpy, torch, ...)


def imported_distributions() -> dict[str, set[str]]:
    """Distribution (normalised) -> files importing it, over the packages, the tests and the check's scripts."""
    files = [p for d in ("learn2reg", "evaluation", "pipeline", "tests") for p in (REPO / d).rglob("*.py")]
    files += [BENCH / name for name in CHECK_SCRIPTS]
    first_party = {"learn2reg", "evaluation", "pipeline", "tests", "tools", *(p.stem for p in BENCH.glob("*.py"))}
    owners = importlib.metadata.packages_distributions()
    found: dict[str, set[str]] = {}
    for path in files:
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module] if isinstance(node, ast.ImportFrom) and not node.level else []
            for top in {n.split(".")[0] for n in names if n}:
                if top in sys.stdlib_module_names or top in first_party:
                    continue
                for dist in owners.get(top, [f"<no installed distribution provides {top}>"]):
                    found.setdefault(wheels.normalise(dist), set()).add(str(path.relative_to(REPO)))
    return found


def test_every_import_is_on_the_gpu_machine_or_in_the_wheel_list():
    found, listed, machine = imported_distributions(), wheel_list(), machine_packages()
    uncovered = {dist: sorted(files)[:3] for dist, files in found.items() if dist not in machine and dist not in listed}
    assert not uncovered, f"add these to bench/gpu_wheels.txt (pinned as in requirements*.txt): {uncovered}"
    assert set(listed) <= set(found), "a listed wheel nothing imports"
    assert {"torch", "numpy", "scipy", "nibabel", "simpleitk", "isal", "edt"} <= set(found)  # the scan sees them


@pytest.mark.parametrize("name", sorted(wheel_list()))
def test_each_wheels_own_requirements_are_there_on_python_312(name):
    assert importlib.metadata.version(name) == wheel_list()[name]  # the metadata read here is the pinned version's
    needs = [Requirement(r) for r in importlib.metadata.requires(name) or []]
    needs = [wheels.normalise(r.name) for r in needs if r.marker is None or r.marker.evaluate(PY312)]
    assert set(needs) <= machine_packages() | set(wheel_list()), needs


def test_gpu_wheels_sh_downloads_exactly_the_list_for_cpython_312_linux():
    out = subprocess.run(["bash", str(BENCH / "gpu_wheels.sh"), "--dry-run"], capture_output=True, text=True, check=True).stdout
    commands = out.strip().splitlines()
    assert [c.split()[-1] for c in commands] == [f"{n}=={v}" for n, v in wheels.read_list()]
    for command in commands:
        for flag in ("pip download", "--no-deps", "--only-binary=:all:", "--python-version 3.12", "--implementation cp",
                     "--platform manylinux_2_28_x86_64", "--platform manylinux2014_x86_64", "-d .whl"):
            assert flag in command


def fake_wheel(folder: Path, name: str, version: str, payload: bytes = b"x" * 5000) -> Path:
    path = folder / f"{name}-{version}-py3-none-any.whl"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr(f"{name}/__init__.py", payload)
        zf.writestr(f"{name}-{version}.dist-info/RECORD", b"")
    return path


def test_repacked_wheel_holds_the_same_files_and_the_folder_keeps_one_version_each(tmp_path, capsys):
    path = fake_wheel(tmp_path, "demo_pkg", "1.0", payload=bytes(range(256)) * 400)
    before = {i.filename: zipfile.ZipFile(path).read(i) for i in zipfile.ZipFile(path).infolist()}
    wheels.repack(path)
    with zipfile.ZipFile(path) as zf:
        assert {i.filename: zf.read(i) for i in zf.infolist()} == before
        assert {i.compress_type for i in zf.infolist()} == {zipfile.ZIP_LZMA}
    old = fake_wheel(tmp_path, "demo_pkg", "0.9")
    chosen, missing, others = wheels.select(tmp_path, [("demo-pkg", "1.0"), ("absent", "2.0")])
    assert chosen == [path] and missing == ["absent==2.0"] and others == [old]
    assert wheels.tidy(tmp_path, [("demo-pkg", "1.0")]) == 0
    assert sorted(tmp_path.glob("*.whl")) == [path] and "removing demo_pkg-0.9" in capsys.readouterr().out
    assert wheels.main([str(tmp_path), "--has", "demo-pkg==1.0"]) == 0 and wheels.main([str(tmp_path), "--has", "demo-pkg==0.9"]) == 1


def test_a_part_out_of_time_is_killed_with_its_children():
    check = bench_module("gpu_check")
    code = "import subprocess, sys, time; p = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)']); print(p.pid, flush=True); time.sleep(60)"
    start = time.monotonic()
    exit_code, out = check.run_limited([sys.executable, "-c", code], 2, dict(os.environ))
    assert exit_code is None and time.monotonic() - start < 20
    stat = Path(f"/proc/{int(out.split()[0])}/stat")
    time.sleep(0.2)
    assert not stat.exists() or stat.read_text().rsplit(")", 1)[1].split()[0] in ("Z", "X")  # gone, or dead and not yet reaped


def test_the_committed_page_is_the_report_of_the_committed_results():
    assert (BENCH / "results" / "gpu.md").read_text() == report.render(report.RAW)
    if not report.RAW.is_dir():
        assert "**No GPU measurement exists yet.**" in (BENCH / "results" / "gpu.md").read_text()


@pytest.fixture(scope="module")
def cpu_run(tmp_path_factory) -> Path:
    """One run of the whole script on this machine: ``--quick``, the cuda tests of one file collected."""
    out = tmp_path_factory.mktemp("gpu_check") / "out"
    env = {**os.environ, "PYTHON": sys.executable, "OMP_NUM_THREADS": "1"}
    env.pop("OUT", None)
    proc = subprocess.run(["bash", str(BENCH / "gpu_check.sh"), "--quick", "--out", str(out), "--cuda-tests", "tests/bench/test_bench.py"],
                          capture_output=True, text=True, env=env, timeout=600, check=False, cwd=tmp_path_factory.getbasetemp())
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return out


def results(out: Path) -> dict[str, dict]:
    return {p.stem: json.loads(p.read_text()) for p in out.glob("*.json")}


@pytest.mark.slow
def test_the_check_runs_every_part_on_the_cpu(cpu_run):
    names = sorted(p.name for p in cpu_run.iterdir())
    assert names == sorted(f"{p}.json" for p in (*report.PARTS, "summary"))  # <= 8 files: what the device tool brings back
    runs = results(cpu_run)
    gpu = runs["summary"]["gpu"]
    assert runs["summary"]["exit_code"] == 0 and not runs["summary"]["failed"]
    for part in report.PARTS:
        r = runs[part]
        assert r["part"] == part and r["seconds"] > 0 and r["status"] in ("ok", "skipped"), (part, r.get("reason"))
        if part in GPU_PARTS and not gpu:
            assert r["status"] == "skipped" and r["reason"].startswith("no GPU: ") and r["smoke"], part
    assert runs["setup"]["status"] == runs["evaluate"]["status"] == "ok"
    res = {p: runs[p]["result"] for p in report.PARTS}
    assert not [m for m, info in res["setup"]["imports"].items() if "error" in info]
    assert res["cuda_tests"]["exit_code"] in (0, 5) and res["cuda_tests"]["counts"]["deselected"] >= 1
    for case in res["lapirn"]["cases"]:
        assert set(case["variants"]) == {"fp32", "bf16"} and case["field_check"]["ok"]
        assert 0 < case["field_check"]["relative"] < 0.03  # under CPU bf16 autocast the field really changes
        assert all(v[phase]["median_s"] > 0 for v in case["variants"].values() for phase in ("forward", "train_step"))
    assert len(res["predict"]["runtimes"]["pairs"]) == 3 and 0.5 < res["predict"]["evaluation"]["DSC"] <= 1
    assert all(t["instance_opt_s"] > 0 for t in res["instance_opt"]["demo"]["pairs"].values()) and res["instance_opt"]["direct"]["median_s"] > 0
    assert res["evaluate"]["metrics_equal_reference"] and len(res["evaluate"]["ours"]) == 4
    assert res["torchrun"]["train"]["final"]["world_size"] == 1 and res["torchrun"]["train"]["checkpoints"] == ["best.pt", "last.pt"]
    assert res["torchrun"]["probe"]["all_reduce_ok"] and res["torchrun"]["probe"]["backend"] == ("nccl" if gpu else "gloo")


@pytest.mark.slow
def test_the_report_of_a_run_without_gpu_says_no_measurement_exists(cpu_run, tmp_path):
    if results(cpu_run)["summary"]["gpu"]:
        pytest.skip("this machine has a GPU")
    page = tmp_path / "gpu.md"
    assert report.main([str(cpu_run), "--out", str(page)]) == 0
    text = page.read_text()
    assert "**No GPU measurement exists yet.**" in text and "had no GPU" in text
    assert all(f"| {part} | " in text for part in report.PARTS) and "TFLOP" not in text


@pytest.mark.slow
def test_the_report_of_a_gpu_run_shows_device_versions_and_every_measurement(cpu_run, tmp_path):
    """The CPU run's results dressed as a GPU run's: the page a real run would give."""
    raw = tmp_path / "raw"
    raw.mkdir()
    for name, data in results(cpu_run).items():
        data = copy.deepcopy(data)
        if name == "summary":
            data["gpu"] = True
        if name == "setup":
            data["result"]["environment"].update(cuda_available=True, device_name="NVIDIA H100 80GB HBM3", driver="580.159.04",
                                                 torch_cuda="13.0", cudnn=91300, nccl="2.27.7", memory_mib=81559)
        (raw / f"{name}.json").write_text(json.dumps(data))
    text = report.render(raw)
    assert "No GPU measurement" not in text
    for expected in ("**NVIDIA H100 80GB HBM3**", "Driver 580.159.04; CUDA 13.0", "NCCL 2.27.7", "## LapIRN", "| AbdomenCTCT (2020 task 3) | 16x16x24 | 28 | fp32 |",
                     "| LUMIR | 16x16x24 | 7 | bf16 |", "bf16 field vs fp32", "## predict, end to end", "## Instance optimisation",
                     "## Evaluator (CPU, for the record)", "## torchrun", "## Tests marked cuda"):
        assert expected in text, expected
