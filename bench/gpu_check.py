"""One prepared check of a GPU machine, run from the repository root in a single call:
``bash bench/gpu_check.sh [--wheels .whl] [--out DIR] [--quick]`` (this module does the work).

Parts, in order, each in its own process group with its own time limit, each writing
``OUT/PART.json`` (``status``: ok | failed | skipped, ``reason``, ``seconds``, ``result``, the
end of its log) whatever the others did:

===============  ========================================================================  =========
part             what                                                                      needs GPU
===============  ========================================================================  =========
setup            install the wheels of ``--wheels`` (bench/gpu_wheels.txt) into a folder   no
                 on PYTHONPATH; versions of Python, torch, CUDA, cuDNN, NCCL, the driver,
                 the device; every needed package imports
cuda_tests       ``pytest -m cuda`` (without a GPU: only collected, so every test module   yes
                 must import there)
lapirn           forward and training step, time and peak GPU memory, fp32 and bf16, at    yes
                 the task-3 and LUMIR sizes; the bf16 field against the fp32 one
predict          ``pipeline predict --device cuda`` end to end on a demo task, runtimes    yes
                 per pair from ``runtimes.json``, then ``evaluate``
instance_opt     predict with instance optimisation (demo task), and the optimisation      yes
                 alone on the task-3 image grid (192x160x256)
evaluate         the evaluator's throughput on the CPU (bench/bench_evaluate.py)           no
torchrun         ``torchrun`` with one process: a short training run of a demo config,     yes
                 and an nccl process group (all_reduce)
===============  ========================================================================  =========

and ``OUT/summary.json``: eight files (the device tool brings back at most eight). Without a GPU
the parts that need one are skipped ("no GPU"); with ``--quick`` they run instead at tiny sizes
on the CPU (a smoke run that keeps this script from rotting: a broken smoke run is a failure,
but the part stays "skipped" since nothing was measured on a GPU). The whole run keeps to
``--budget`` seconds (default 450): a part gets its own limit or what is left, whichever is
less. Exit code: 0 when no part failed, 1 otherwise, 2 usage error. ``bench/gpu_report.py``
turns the folder into ``bench/results/gpu.md``.

Standard library only: it must report even where nothing else imports.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from gpu_wheels import read_list, select  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
PARTS_SCRIPT = REPO / "bench" / "gpu_parts.py"
# part -> (needs a GPU, time limit in seconds)
PARTS: dict[str, tuple[bool, int]] = {
    "setup": (False, 90),
    "cuda_tests": (True, 120),
    "lapirn": (True, 150),
    "predict": (True, 75),
    "instance_opt": (True, 75),
    "evaluate": (False, 90),
    "torchrun": (True, 75),
}
MIN_PART_S = 15  # a part that would get less is skipped ("time budget spent")
LOG_TAIL = 4000  # characters of a part's output kept in its JSON


def now() -> str:
    return datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")


def write_json(path: Path, data: Any) -> None:
    """``path`` written whole or not at all."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(data, indent=2, default=str) + "\n")
    os.replace(tmp, path)


def child_env(site: Path | None) -> dict[str, str]:
    """The environment of every part: the installed wheels, then the repository, on PYTHONPATH."""
    paths = [str(site)] if site else []
    paths += [str(REPO), *filter(None, os.environ.get("PYTHONPATH", "").split(os.pathsep))]
    return {**os.environ, "PYTHONPATH": os.pathsep.join(paths), "PYTHONUNBUFFERED": "1"}


def run_limited(cmd: list[str], timeout_s: float, env: dict[str, str]) -> tuple[int | None, str]:
    """Run ``cmd`` from the repository root in a new process group; ``(exit code or None when it
    ran out of time, its output)``. On timeout the whole group is killed (torchrun's workers too)."""
    with tempfile.TemporaryFile("w+") as log:
        proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT, text=True, start_new_session=True)
        try:
            code: int | None = proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            code = None
        log.seek(0)
        return code, log.read()


def install_wheels(folder: Path, site: Path, env: dict[str, str], timeout_s: float) -> dict[str, Any]:
    """pip-install the listed wheels of ``folder`` into ``site`` (no index, no dependencies)."""
    chosen, missing, others = select(folder, read_list())
    info: dict[str, Any] = {"folder": str(folder), "site": str(site), "wheels": [p.name for p in chosen],
                            "missing": missing, "not_listed": [p.name for p in others]}
    if chosen:
        cmd = [sys.executable, "-m", "pip", "install", "-q", "--no-index", "--no-deps", "--no-compile",
               "--no-cache-dir", "--upgrade", "--target", str(site), *map(str, chosen)]
        start = time.perf_counter()
        code, out = run_limited(cmd, timeout_s, env)
        info.update(pip_exit=code, pip_seconds=round(time.perf_counter() - start, 1), pip_output=out[-LOG_TAIL:])
    return info


class Check:
    """One run of the check: the parts in order, within the budget, into ``out``."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.out: Path = args.out
        self.work = Path(args.work or tempfile.mkdtemp(prefix="l2r_gpu_check_"))
        self.site = self.work / "site" if args.wheels else None
        self.env = child_env(self.site)
        self.deadline = time.monotonic() + args.budget
        self.gpu: bool | None = None
        self.no_gpu_reason = "no GPU"
        self.results: dict[str, dict[str, Any]] = {}

    def limit(self, part: str) -> float:
        """Seconds ``part`` may take: its own limit or what the budget leaves after keeping
        :data:`MIN_PART_S` for each later part, whichever is less."""
        names = list(PARTS)
        later = len([p for p in names[names.index(part) + 1 :] if p in self.args.parts])
        left = self.deadline - time.monotonic() - MIN_PART_S * later
        return min(self.args.timeouts.get(part, PARTS[part][1]), left)

    def run_part(self, part: str) -> dict[str, Any]:
        needs_gpu, _ = PARTS[part]
        record: dict[str, Any] = {"part": part, "needs_gpu": needs_gpu, "started": now(), "seconds": 0.0}
        timeout = self.limit(part)
        smoke = needs_gpu and not self.gpu
        if part not in self.args.parts:
            return {**record, "status": "skipped", "reason": "not selected (--parts)"}
        if smoke and not self.args.quick:
            return {**record, "status": "skipped", "reason": self.no_gpu_reason}
        if timeout < MIN_PART_S:
            return {**record, "status": "skipped", "reason": f"time budget spent ({self.args.budget:.0f} s)"}
        extra: dict[str, Any] = {}
        start = time.perf_counter()
        if part == "setup" and self.args.wheels:
            extra["install"] = install_wheels(self.args.wheels, self.site, self.env, timeout / 2)
        result_file = self.work / f"{part}.result.json"
        result_file.unlink(missing_ok=True)
        cmd = [sys.executable, str(PARTS_SCRIPT), part, "--work", str(self.work), "--device", "cuda" if self.gpu else "cpu"]
        cmd += ["--quick"] if self.args.quick else []
        cmd += [f"--cuda-tests={p}" for p in self.args.cuda_tests] if part == "cuda_tests" else []
        code, log = run_limited(cmd, max(timeout - (time.perf_counter() - start), 1.0), self.env)
        record.update(seconds=round(time.perf_counter() - start, 1), timeout_s=round(timeout), exit_code=code, log_tail=log[-LOG_TAIL:])
        child = json.loads(result_file.read_text()) if result_file.is_file() else {}
        record["result"] = {**extra, **child.get("result", {})}
        if code is None:
            record.update(status="failed", reason=f"timed out after {timeout:.0f} s (result: what it had done by then)")
        elif child.get("status") in ("ok", "failed", "skipped") and (code == 0) == (child["status"] != "failed"):
            record.update(status=child["status"], reason=child.get("reason", ""))
        else:
            lines = [ln for ln in log.strip().splitlines() if ln.strip()]
            record.update(status="failed", reason=f"exited {code}: {lines[-1] if lines else 'no output'}")
        if part == "setup" and extra.get("install", {}).get("missing"):
            record.update(status="failed", reason=f"wheels missing from {self.args.wheels}: {', '.join(extra['install']['missing'])}")
        if part == "setup" and extra.get("install", {}).get("pip_exit", 0) != 0:
            record.update(status="failed", reason=f"pip install failed (exit {extra['install']['pip_exit']}; None: out of time)")
        if smoke and record["status"] == "ok":
            record.update(status="skipped", reason=f"{self.no_gpu_reason}; the CPU smoke run at tiny sizes passed", smoke=True)
        elif smoke and record["status"] == "failed":
            record.update(reason=f"CPU smoke run: {record['reason']}", smoke=True)
        return record

    def after_setup(self, record: dict[str, Any]) -> None:
        env = record.get("result", {}).get("environment", {})
        self.gpu = bool(env.get("cuda_available"))
        if not self.gpu:
            self.no_gpu_reason = f"no GPU: {env.get('cuda_problem') or 'torch could not be asked (see setup)'}"

    def run(self) -> int:
        self.out.mkdir(parents=True, exist_ok=True)
        started, start = now(), time.perf_counter()
        for index, part in enumerate(PARTS, start=1):
            print(f"[{index}/{len(PARTS)}] {part} ...", flush=True)
            record = self.run_part(part)
            if part == "setup":
                self.after_setup(record)
            write_json(self.out / f"{part}.json", record)
            self.results[part] = record
            print(f"      {record['status']} ({record['seconds']:.0f} s){': ' + record['reason'] if record.get('reason') else ''}", flush=True)
        failed = [p for p, r in self.results.items() if r["status"] == "failed"]
        summary = {
            "started": started, "finished": now(), "seconds": round(time.perf_counter() - start, 1),
            "budget_s": self.args.budget, "quick": self.args.quick, "gpu": self.gpu,
            "device": self.results["setup"].get("result", {}).get("environment", {}).get("device_name"),
            "parts": {p: {k: r.get(k) for k in ("status", "reason", "seconds")} for p, r in self.results.items()},
            "failed": failed, "exit_code": 1 if failed else 0, "argv": sys.argv[1:],
        }
        write_json(self.out / "summary.json", summary)
        print(f"{len(PARTS) - len(failed)}/{len(PARTS)} parts without failure in {summary['seconds']:.0f} s; results in {self.out}")
        return summary["exit_code"]


def parse_timeouts(text: str) -> dict[str, int]:
    """``"lapirn=200,evaluate=60"`` -> ``{"lapirn": 200, "evaluate": 60}``."""
    out = {}
    for item in filter(None, text.split(",")):
        name, _, value = item.partition("=")
        if name not in PARTS or not value.isdigit():
            raise argparse.ArgumentTypeError(f"expected PART=SECONDS with PART one of {', '.join(PARTS)}, got {item!r}")
        out[name] = int(value)
    return out


def parse_parts(text: str) -> tuple[str, ...]:
    names = tuple(filter(None, text.split(",")))
    if not set(names) <= set(PARTS) or "setup" not in names:
        raise argparse.ArgumentTypeError(f"a comma list of {', '.join(PARTS)}, with setup (it finds the GPU)")
    return names


def default_out() -> Path:
    """``$OUT`` (the device tool's folder) when set, else bench/results/gpu_raw."""
    return Path(os.environ["OUT"]) if os.environ.get("OUT") else REPO / "bench" / "results" / "gpu_raw"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bash bench/gpu_check.sh", description=__doc__.splitlines()[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--wheels", type=Path, default=None, help="folder of the wheels of bench/gpu_wheels.txt (none: use this Python as it is)")
    parser.add_argument("--out", type=Path, default=default_out(), help="results folder ($OUT when set)")
    parser.add_argument("--quick", action="store_true", help="tiny sizes; without a GPU also run the GPU parts on the CPU (smoke run)")
    parser.add_argument("--budget", type=float, default=450.0, help="seconds for the whole check")
    parser.add_argument("--timeouts", type=parse_timeouts, default={}, help="PART=SECONDS,... to change parts' own limits")
    parser.add_argument("--parts", type=parse_parts, default=tuple(PARTS), help="comma list of parts to run (the others: skipped)")
    parser.add_argument("--cuda-tests", action="append", default=None, help="test paths for pytest -m cuda (repeatable; default tests)")
    parser.add_argument("--work", type=Path, default=None, help="scratch folder (default: a new one under the temp dir)")
    args = parser.parse_args(argv)
    args.cuda_tests = args.cuda_tests or ["tests"]
    args.out, args.wheels, args.work = (p.resolve() if p else None for p in (args.out, args.wheels, args.work))
    if args.wheels is not None and not args.wheels.is_dir():
        parser.error(f"--wheels {args.wheels}: not a folder")
    keep = args.work is not None
    check = Check(args)
    try:
        return check.run()
    finally:
        if not keep:
            shutil.rmtree(check.work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
