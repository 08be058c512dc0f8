"""The parts of ``bench/gpu_check.py``, each run alone in a child process::

    python3 bench/gpu_parts.py PART --work DIR --device cuda|cpu [--quick]

A part records what it found in ``DIR/PART.result.json`` after every step (``status`` running |
ok | failed | skipped, ``reason``, ``result``), so one killed at its time limit still reports what
it had done, and exits 1 when it failed. The measuring parts (``lapirn``, ``instance_opt``'s
direct timing, ``predict``) live in ``bench/gpu_measure.py``; the pipeline's own commands run
in-process through ``pipeline.cli.main`` (one interpreter start per part), ``torchrun``,
``pytest`` and ``bench_evaluate.py`` as child processes. ``torchrun_worker`` is what the
``torchrun`` part runs under ``torchrun``.
"""

from __future__ import annotations

import argparse
import csv
import importlib
import importlib.metadata
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import time
import traceback
import xml.etree.ElementTree as ET
from collections.abc import Callable
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

from gpu_wheels import normalise, read_list  # noqa: E402

# packages the project imports that the GPU machines already hold (bench/gpu_packages.txt)
MACHINE_MODULES = ("numpy", "scipy", "pandas", "matplotlib", "tqdm", "pytest", "torch")
PROJECT_MODULES = ("learn2reg.io", "evaluation.evaluate", "pipeline.prediction.predict", "pipeline.training.train")
Status = tuple[str, str]  # (ok | failed | skipped, reason)


class Recorder:
    """A part's findings so far, rewritten whole into ``path`` after every :meth:`put`."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.result: dict[str, Any] = {}
        self._write("running", "")

    def put(self, **items: Any) -> None:
        self.result.update(items)
        self._write("running", "")

    def finish(self, status: str, reason: str = "") -> None:
        self._write(status, reason)

    def _write(self, status: str, reason: str) -> None:
        tmp = self.path.with_name(f".{self.path.name}.tmp")
        tmp.write_text(json.dumps({"status": status, "reason": reason, "result": self.result}, indent=2, default=str))
        os.replace(tmp, self.path)


# ------------------------------------------------------------------------------------ helpers


def cli(argv: list[str]) -> int:
    """``python -m pipeline ARGV`` in this process (exit code; a usage error is 2)."""
    from pipeline.cli import main

    argv = [str(a) for a in argv]
    print("$ python -m pipeline " + " ".join(argv), flush=True)
    try:
        return main(argv)
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else 2


def sh(cmd: list[str], **kwargs: Any) -> subprocess.CompletedProcess:
    """Run ``cmd`` from the repository root, its output passed on to this part's log."""
    print("$ " + " ".join(map(str, cmd)), flush=True)
    proc = subprocess.run([str(c) for c in cmd], cwd=REPO, capture_output=True, text=True, check=False, **kwargs)
    print(proc.stdout[-3000:] + proc.stderr[-3000:], flush=True)
    return proc


def demo_task(work: Path) -> Path:
    """The demo task T4 (DemoHippocampusMR, 48^3, 3 validation pairs) under ``work``, made once."""
    task = work / "data" / "DemoHippocampusMR"
    if not (task / "DemoHippocampusMR_dataset.json").is_file() and cli(["demo-data", "--out", work / "data", "--tasks", "T4"]) != 0:
        raise RuntimeError("demo-data failed")
    return task


def authors_run(work: Path) -> Path:
    """A run folder holding the LapIRN authors' published weights (displacement variant, start_channel 7)."""
    run = work / "authors_disp"
    if not (run / "checkpoints" / "best.pt").is_file():
        shutil.rmtree(run, ignore_errors=True)
        if cli(["import-weights", REPO / "weights" / "LapIRN_disp_fea7.pth", "--out", run]) != 0:
            raise RuntimeError("import-weights failed")
    return run


def runtimes(folder: Path) -> dict[str, Any]:
    """Per-pair runtimes of a prediction (``runtimes.json``, as the challenge counts them) and their summary."""
    manifest = json.loads((folder / "runtimes.json").read_text())
    pairs = manifest["runtimes"]
    totals = [r["total_s"] for r in pairs.values()]
    rest = sorted(totals[1:]) or totals
    return {"device": manifest["device"], "pairs": pairs, "first_total_s": totals[0],
            "median_total_s_after_first": rest[len(rest) // 2]}


def nvidia_smi() -> str | None:
    if not shutil.which("nvidia-smi"):
        return None
    query = ["nvidia-smi", "--query-gpu=name,driver_version,memory.total", "--format=csv,noheader"]
    proc = subprocess.run(query, capture_output=True, text=True, check=False)
    return proc.stdout.strip() or proc.stderr.strip()


# ------------------------------------------------------------------------------------- parts


def environment() -> dict[str, Any]:
    """Python, torch, CUDA, cuDNN, NCCL, the driver and the device."""
    import torch
    from bench_lapirn import cpu_name

    env: dict[str, Any] = {
        "python": platform.python_version(), "executable": sys.executable, "torch": torch.__version__,
        "torch_cuda": torch.version.cuda, "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
        "cuda_available": torch.cuda.is_available(), "cpu": cpu_name(), "cpu_count": os.cpu_count(), "nvidia_smi": nvidia_smi(),
    }
    if env["cuda_available"]:
        props = torch.cuda.get_device_properties(0)
        env.update(device_count=torch.cuda.device_count(), device_name=props.name, capability=f"{props.major}.{props.minor}",
                   memory_mib=props.total_memory // 2**20, multiprocessors=props.multi_processor_count,
                   nccl=".".join(map(str, torch.cuda.nccl.version())))
        env["driver"] = env["nvidia_smi"].split(",")[1].strip() if env["nvidia_smi"] and "," in env["nvidia_smi"] else None
    elif torch.version.cuda is None:
        env["cuda_problem"] = f"this torch ({torch.__version__}) is a CPU-only build"
    else:
        env["cuda_problem"] = f"this torch ({torch.__version__}, CUDA {torch.version.cuda}) sees no GPU"
    return env


def import_info(module: str) -> dict[str, Any]:
    try:
        mod = importlib.import_module(module)
    except Exception as exc:  # noqa: BLE001 - any failure to import is the finding
        return {"error": f"{type(exc).__name__}: {exc}"}
    return {"file": getattr(mod, "__file__", None), "version": getattr(mod, "__version__", None)}


def wheel_modules(dist: str) -> list[str]:
    """The top-level modules an installed distribution provides (from its file list)."""
    files = importlib.metadata.distribution(dist).files or []
    tops = {f.parts[0].split(".")[0] for f in files if len(f.parts) > 1 and not f.parts[0].endswith((".dist-info", ".data"))}
    tops |= {f.name.split(".")[0] for f in files if len(f.parts) == 1 and f.name.endswith((".py", ".so", ".pyd"))}
    return sorted(t for t in tops if t.isidentifier() and t != "__pycache__")


def setup(args: argparse.Namespace, rec: Recorder) -> Status:
    """The environment, and whether every package the check needs imports (the wheels' too)."""
    try:
        rec.put(environment=environment())
    except ImportError as exc:
        rec.put(environment={"python": platform.python_version(), "executable": sys.executable, "cuda_available": False,
                             "cuda_problem": f"torch does not import ({exc})"})
    imports = {m: import_info(m) for m in MACHINE_MODULES}
    wheels = {}
    for name, version in read_list():
        try:
            found = importlib.metadata.version(name)
            modules = wheel_modules(name)
        except importlib.metadata.PackageNotFoundError:
            wheels[name] = {"expected": version, "error": "not installed"}
            continue
        wheels[name] = {"expected": version, "version": found, "modules": modules}
        imports.update({m: import_info(m) for m in modules})
    imports.update({m: import_info(m) for m in PROJECT_MODULES})
    rec.put(wheels=wheels, imports=imports)
    bad = [m for m, info in imports.items() if "error" in info] + [n for n, w in wheels.items() if "error" in w]
    if bad:
        return "failed", f"cannot import {', '.join(bad)}"
    other = [f"{n} {w['version']} (pinned {w['expected']})" for n, w in wheels.items() if normalise(w["version"]) != normalise(w["expected"])]
    return "ok", f"other versions than pinned: {', '.join(other)}" if other else ""


def pytest_counts(text: str) -> dict[str, int]:
    """Counts from pytest's last summary line (``3 passed, 1 skipped, 1020 deselected in 9.1s``,
    ``3/1023 tests collected (1020 deselected)``)."""
    line = next((ln for ln in reversed(text.strip().splitlines()) if re.search(r"\d+(\.\d+)?s\b", ln)), "")
    counts = {word: int(n) for n, word in re.findall(r"(\d+) (passed|failed|skipped|deselected|errors?|xfailed|xpassed)", line)}
    collected = re.search(r"(\d+)(?:/(\d+))? tests? collected", line)
    if collected:
        counts["collected"] = int(collected[1])
    return counts


def cuda_tests(args: argparse.Namespace, rec: Recorder) -> Status:
    """``pytest -m cuda`` on a GPU; without one only collected (the test modules must import)."""
    cmd = [sys.executable, "-m", "pytest", "-m", "cuda", "-p", "no:cacheprovider", "-q", "-rfE", *args.cuda_tests]
    xml = args.work / "cuda_tests.xml"
    cmd += ["--collect-only"] if args.device == "cpu" else [f"--junitxml={xml}"]
    start = time.perf_counter()
    proc = sh(cmd)
    result: dict[str, Any] = {"paths": args.cuda_tests, "exit_code": proc.returncode, "collect_only": args.device == "cpu",
                              "seconds": round(time.perf_counter() - start, 1), "counts": pytest_counts(proc.stdout)}
    if xml.is_file():
        suite = ET.parse(xml).getroot()
        suite = suite if suite.tag == "testsuite" else suite[0]
        result["failures"] = [
            {"test": f"{case.get('classname')}::{case.get('name')}", "message": (bad.get("message") or "")[:300]}
            for case in suite.iter("testcase") for bad in case if bad.tag in ("failure", "error")
        ][:30]
    rec.put(**result)
    if proc.returncode == 5:
        return ("ok", "") if args.device == "cpu" else ("skipped", "no test is marked cuda")
    if proc.returncode != 0:
        tail = proc.stdout.strip().splitlines()[-1:] or ["no output"]
        return "failed", f"pytest exited {proc.returncode}: {tail[0]}"
    return "ok", ""


def evaluate(args: argparse.Namespace, rec: Recorder) -> Status:
    """The evaluator's throughput on this machine's CPU (bench/bench_evaluate.py, fewer repeats)."""
    out = args.work / "evaluate"
    sizes = ["--quick", "--pairs", "1"] if args.quick else ["--pairs", "2"]  # 2 full-size pairs: about a minute with the task built
    proc = sh([sys.executable, REPO / "bench" / "bench_evaluate.py", *sizes, "--repeats", "1", "--out", out])
    if proc.returncode != 0:
        return "failed", f"bench_evaluate.py exited {proc.returncode}"
    data = json.loads((out / "evaluate_cpu.json").read_text())
    keys = ("format", "workers", "s_per_case_median", "cpu_s_per_case_median", "peak_mb_total")
    ref = data["reference"]
    equal = all(abs(r["first_case"][k] - v) <= 1e-6 * max(abs(v), 1.0) for r in data["ours"] for k, v in ref["first_case"].items())
    rec.put(machine=data["machine"], shape=data["shape"], pairs=data["pairs"], ours=[{k: r[k] for k in keys} for r in data["ours"]],
            reference={k: ref[k] for k in ("s_per_case_median", "cpu_s_per_case_median")}, metrics_equal_reference=equal)
    return ("ok", "") if equal else ("failed", "our metrics differ from the reference formulas")


def short_config(work: Path, quick: bool) -> Path:
    """configs/demo_t4_hippocampus.json with a short schedule."""
    config = json.loads((REPO / "configs" / "demo_t4_hippocampus.json").read_text())
    config["_comment"] = "bench/gpu_check.py: configs/demo_t4_hippocampus.json with a short schedule"
    steps = [2, 2, 4] if quick else [10, 10, 40]
    config["train"].update(steps_per_level=steps, freeze_steps=1, val_every=steps[-1], checkpoint_every=steps[-1])
    path = work / "torchrun_config.json"
    path.write_text(json.dumps(config, indent=2))
    return path


def torchrun(args: argparse.Namespace, rec: Recorder) -> Status:
    """One ``torchrun`` process (:func:`torchrun_worker`): a short training run of a demo config,
    then a process group (nccl on CUDA, gloo on CPU) and one all_reduce."""
    demo_task(args.work)
    launch = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=1"]
    start = time.perf_counter()
    proc = sh([*launch, REPO / "bench" / "gpu_parts.py", "torchrun_worker", "--work", args.work, "--device", args.device,
               *(["--quick"] if args.quick else [])])
    worker_file = args.work / "torchrun_worker.result.json"
    worker = json.loads(worker_file.read_text()) if worker_file.is_file() else {}
    rec.put(**worker.get("result", {}), exit_code=proc.returncode, wall_s=round(time.perf_counter() - start, 1))
    if proc.returncode or worker.get("status") != "ok":
        return "failed", worker.get("reason") or f"torchrun exited {proc.returncode}"
    return "ok", ""


def torchrun_worker(args: argparse.Namespace, rec: Recorder) -> Status:
    """Under torchrun: ``pipeline train`` (in this process), then the process-group probe."""
    import torch
    import torch.distributed as dist

    task, run = demo_task(args.work), args.work / "torchrun_run"
    shutil.rmtree(run, ignore_errors=True)
    start = time.perf_counter()
    code = cli(["train", "--data", task, "--config", short_config(args.work, args.quick), "--out", run, "--device", args.device])
    train: dict[str, Any] = {"exit_code": code, "wall_s": round(time.perf_counter() - start, 1), "world_size_env": os.environ.get("WORLD_SIZE"),
                             "process_group": "none: with WORLD_SIZE 1 pipeline.distributed starts none (DDP needs 2 or more)"}
    if (run / "final.json").is_file():
        steps = [r for r in csv.DictReader((run / "log.csv").open()) if r["kind"] == "train"]
        train.update(final=json.loads((run / "final.json").read_text()), steps=len(steps),
                     steps_per_s_last=float(steps[-1]["steps_per_s"]) if steps else None,
                     checkpoints=sorted(p.name for p in (run / "checkpoints").glob("*.pt")))
    rec.put(train=train)
    cuda = args.device == "cuda"
    device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0"))) if cuda else torch.device("cpu")
    backend = "nccl" if cuda else "gloo"
    if cuda:
        torch.cuda.set_device(device)
    dist.init_process_group(backend=backend, device_id=device if cuda else None)
    try:
        tensor = torch.ones(2**20, device=device)  # 4 MB
        start = time.perf_counter()
        dist.all_reduce(tensor)
        if cuda:
            torch.cuda.synchronize(device)
        probe = {"backend": backend, "world_size": dist.get_world_size(), "all_reduce_s": time.perf_counter() - start,
                 "all_reduce_ok": bool((tensor == dist.get_world_size()).all()),
                 "nccl": ".".join(map(str, torch.cuda.nccl.version())) if cuda else None}
    finally:
        dist.destroy_process_group()
    rec.put(probe=probe)
    problems = [f"training exited {code}"] if code or "final" not in train else []
    problems += [] if probe["all_reduce_ok"] else [f"{backend} all_reduce gave a wrong sum"]
    return ("failed", "; ".join(problems)) if problems else ("ok", "")


def parts() -> dict[str, Callable[[argparse.Namespace, Recorder], Status]]:
    from gpu_measure import instance_opt, lapirn, predict

    return {"setup": setup, "cuda_tests": cuda_tests, "lapirn": lapirn, "predict": predict, "instance_opt": instance_opt,
            "evaluate": evaluate, "torchrun": torchrun, "torchrun_worker": torchrun_worker}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("part", choices=("setup", "cuda_tests", "lapirn", "predict", "instance_opt", "evaluate", "torchrun", "torchrun_worker"))
    parser.add_argument("--work", type=Path, required=True, help="scratch folder shared by the parts")
    parser.add_argument("--device", choices=("cuda", "cpu"), default="cuda")
    parser.add_argument("--quick", action="store_true", help="tiny sizes, fewer repeats")
    parser.add_argument("--cuda-tests", action="append", default=None, help="test paths (cuda_tests)")
    args = parser.parse_args(argv)
    args.cuda_tests = args.cuda_tests or ["tests"]
    args.work.mkdir(parents=True, exist_ok=True)
    rec = Recorder(args.work / f"{args.part}.result.json")
    try:
        status, reason = parts()[args.part](args, rec)
    except Exception as exc:  # noqa: BLE001 - the part fails, the check goes on
        traceback.print_exc()
        status, reason = "failed", f"{type(exc).__name__}: {exc}"[:1000]
    rec.finish(status, reason)
    return 1 if status == "failed" else 0


if __name__ == "__main__":
    sys.exit(main())
