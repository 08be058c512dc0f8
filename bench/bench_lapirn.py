"""LapIRN speed and memory: forward and training step (forward + loss + backward + Adam step).

Usage (from the repository root)::

    python bench/bench_lapirn.py                  # CPU, 2 threads -> bench/results/lapirn_cpu.{json,md}
    python bench/bench_lapirn.py --device cuda    # fp32, bf16 autocast, torch.compile -> lapirn_cuda.*

Each configuration (and, on CUDA, each variant) runs in its own child process, so the peak
memory of one does not leak into the next: on CPU the child's max RSS (``ru_maxrss``) after its
forward phase and after its training phase; on CUDA also ``torch.cuda.max_memory_allocated``.
Times are medians over the timed repeats after the warm-up calls.

Children run with ``OMP_WAIT_POLICY=PASSIVE`` unless the caller sets it: with OpenMP's default
spin-waiting, two torch threads on a machine where another process holds one of the two cores
run a LapIRN training step more than 10x slower (measured: 4.2 s instead of 0.35 s at 32^3),
so contended timings would mean nothing; with passive waiting they degrade to one core's speed.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class Case:
    """One benchmark configuration, run in one child process."""

    name: str
    shape: tuple[int, int, int]
    start_channel: int
    device: str = "cpu"
    variant: str = "fp32"  # fp32 | bf16 (autocast) | compile
    threads: int = 2
    warmup_forward: int = 1
    repeats_forward: int = 3
    warmup_train: int = 1
    repeats_train: int = 2


# (name, shape, start_channel, CPU repeats: forward warm-up/timed, train warm-up/timed)
CONFIGS = (
    ("80x96x112 sc7", (80, 96, 112), 7, (1, 5), (1, 3)),
    ("96x80x128 sc28", (96, 80, 128), 28, (1, 2), (0, 1)),
)


QUICK = (("32x32x32 sc2 (smoke test)", (32, 32, 32), 2, (1, 2), (1, 2)),)
VARIANTS = ("fp32", "bf16", "compile")


def plan(device: str, threads: int, variants: tuple[str, ...] | None = None, quick: bool = False) -> list[Case]:
    """The cases of a run: CPU fp32 with few repeats; CUDA fp32, bf16 and compile with more."""
    on_cpu = device == "cpu"
    variants = variants or (("fp32",) if on_cpu else VARIANTS)
    cases = []
    for name, shape, sc, (wf, rf), (wt, rt) in QUICK if quick else CONFIGS:
        for variant in variants:
            reps = (wf, rf, wt, rt) if on_cpu or quick else (3, 10, 3, 10)
            cases.append(Case(name, shape, sc, device, variant, threads, *reps))
    return cases


# ------------------------------------------------------------------- child process


def _sync(device: str) -> None:
    import torch

    if device.startswith("cuda"):
        torch.cuda.synchronize()


def _timed(fn: Any, warmup: int, repeats: int, device: str) -> tuple[list[float], list[float], float]:
    """Call ``fn`` ``warmup`` times untimed (the first one timed separately), then ``repeats`` timed.

    Returns wall-clock seconds and process CPU seconds per timed call (CPU time is what the work
    costs even when other processes share the cores), and the first call's wall time.
    """
    first = 0.0
    for i in range(warmup):
        start = time.perf_counter()
        fn()
        _sync(device)
        if i == 0:
            first = time.perf_counter() - start
    wall, cpu = [], []
    for _ in range(repeats):
        start, start_cpu = time.perf_counter(), time.process_time()
        fn()
        _sync(device)
        wall.append(time.perf_counter() - start)
        cpu.append(time.process_time() - start_cpu)
    return wall, cpu, first


def _rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # Linux: KiB


def _workload(case: Case) -> tuple[Any, Any, Any]:
    """Model, inputs and optimiser of ``case``: returns ``(model, forward, train_step)`` callables."""
    import torch

    from pipeline.config import LossConfig
    from pipeline.model.lapirn import LapIRN, LapIRNConfig
    from pipeline.model.losses import level_loss

    device = torch.device(case.device)
    gen = torch.Generator().manual_seed(0)
    moving = torch.rand(1, 1, *case.shape, generator=gen).to(device)
    fixed = torch.rand(1, 1, *case.shape, generator=gen).to(device)
    torch.manual_seed(0)
    model = LapIRN(LapIRNConfig(start_channel=case.start_channel)).to(device)
    net = torch.compile(model) if case.variant == "compile" else model
    dtype = torch.bfloat16 if case.variant == "bf16" else None
    loss_cfg = LossConfig()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4)

    def autocast() -> Any:
        return torch.autocast(device.type, dtype=dtype, enabled=dtype is not None)

    def forward() -> None:
        with torch.inference_mode(), autocast():
            net(moving, fixed)

    def train_step() -> None:
        optimizer.zero_grad(set_to_none=True)
        with autocast():
            final = net(moving, fixed).final
        loss = level_loss(loss_cfg, 3, 3, final.warped.float(), final.fixed.float(), final.field.float())["total"]
        loss.backward()
        optimizer.step()

    return model, forward, train_step


def run_case(case: Case) -> dict[str, Any]:
    """Time one case in this process (the child) and return its measurements."""
    import torch

    torch.set_num_threads(case.threads)
    cuda = case.device.startswith("cuda")
    result: dict[str, Any] = {"base_rss_mb": _rss_mb()}
    model, forward, train_step = _workload(case)
    phases = [("forward", forward, case.warmup_forward, case.repeats_forward, model.eval),
              ("train_step", train_step, case.warmup_train, case.repeats_train, model.train)]
    for name, fn, warmup, repeats, set_mode in phases:
        set_mode()
        if cuda:
            torch.cuda.reset_peak_memory_stats()
        wall, cpu, first = _timed(fn, warmup, repeats, case.device)
        short = name.split("_")[0]  # forward | train
        result.update({f"{name}_s": wall, f"{name}_cpu_s": cpu, f"{short}_first_s": first if warmup else None})
        result[f"{name}_median_s"] = statistics.median(wall) if wall else None
        result[f"{name}_cpu_median_s"] = statistics.median(cpu) if cpu else None
        result[f"{short}_peak_rss_mb"] = _rss_mb()
        if cuda:
            result[f"{short}_peak_cuda_mb"] = torch.cuda.max_memory_allocated() / 2**20
    return result


# ------------------------------------------------------------------ parent process


def spawn(case: Case, timeout_s: float) -> dict[str, Any]:
    """Run ``case`` in a fresh child process; its measurements, or an ``error`` entry."""
    return run_child(Path(__file__), asdict(case), case.threads, timeout_s)


def run_child(script: Path, spec: dict[str, Any], threads: int, timeout_s: float) -> dict[str, Any]:
    """``python SCRIPT --child JSON`` in a fresh process with ``threads`` OpenMP threads: the last
    JSON line it prints, plus ``wall_s``, or an ``error`` entry (benchmarks measure in children so
    that each case starts cold and alone)."""
    path = os.pathsep.join([str(REPO), *filter(None, [os.environ.get("PYTHONPATH")])])  # keep e.g. bench/gpu_check.sh's wheels
    env = dict(os.environ, PYTHONPATH=path, OMP_NUM_THREADS=str(threads))
    env.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # see the module docstring
    cmd = [sys.executable, str(Path(script).resolve()), "--child", json.dumps(spec)]
    started = time.perf_counter()
    try:
        proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout_s, check=False)
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {timeout_s:.0f} s"}
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    if proc.returncode != 0 or not lines:
        return {"error": f"child exited {proc.returncode}: {proc.stderr.strip()[-2000:]}"}
    result = json.loads(lines[-1])
    result["wall_s"] = time.perf_counter() - started
    return result


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def environment(device: str, threads: int) -> dict[str, Any]:
    import torch

    env = {
        "device": device,
        "cpu": cpu_name(),
        "cpu_count": os.cpu_count(),
        "threads": threads,
        "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY", "PASSIVE"),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "load_average_before": list(os.getloadavg()),
    }
    if device.startswith("cuda"):
        env["gpu"] = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "unavailable"
    return env


def _fmt(value: Any, digits: int = 2) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def markdown(report: dict[str, Any]) -> str:
    """Results table in Markdown."""
    env = report["environment"]
    lines = [
        f"# LapIRN benchmark ({env['device']})",
        "",
        f"- CPU: {env['cpu']} ({env['cpu_count']} cores visible), torch threads: {env['threads']},"
        f" OMP_WAIT_POLICY={env.get('omp_wait_policy', 'default')}",
        f"- torch {env['torch']}, Python {env['python']}" + (f", GPU: {env['gpu']}" if "gpu" in env else ""),
        f"- load average before / after: {env['load_average_before']} / {env.get('load_average_after')}",
        "- times: median of the timed repeats after warm-up, wall-clock seconds (process CPU seconds in brackets;"
        " wall ~ CPU / threads when the cores are free); memory: peak RSS of the child process (MB)"
        + ("; CUDA: max_memory_allocated (MB)" if "gpu" in env else ""),
        "",
        "| configuration | variant | forward s | train step s | repeats fwd/train | peak RSS fwd / train MB | CUDA peak fwd / train MB |",
        "|---|---|---|---|---|---|---|",
    ]
    for row in report["results"]:
        case, res = row["case"], row["result"]
        if "error" in res:
            message = " ".join(res["error"].replace("|", "/").split())[-300:]
            lines.append(f"| {case['name']} | {case['variant']} | error: {message} | | | | |")
            continue
        lines.append(
            f"| {case['name']} | {case['variant']}"
            f" | {_fmt(res['forward_median_s'])} ({_fmt(res['forward_cpu_median_s'])})"
            f" | {_fmt(res['train_step_median_s'])} ({_fmt(res['train_step_cpu_median_s'])})"
            f" | {len(res['forward_s'])}/{len(res['train_step_s'])}"
            f" | {_fmt(res['forward_peak_rss_mb'], 0)} / {_fmt(res['train_peak_rss_mb'], 0)}"
            f" | {_fmt(res.get('forward_peak_cuda_mb'), 0)} / {_fmt(res.get('train_peak_cuda_mb'), 0)} |"
        )
    if report.get("notes"):
        lines += ["", *[f"- {n}" for n in report["notes"]]]
    return "\n".join(lines) + "\n"


def write_report(report: dict[str, Any], stem: Path, render: Callable[[dict[str, Any]], str] | None = None) -> None:
    """``stem.json`` and ``stem.md`` (``render(report)``, this bench's :func:`markdown` by default),
    each written atomically; the other benches write theirs through it too."""
    sys.path.insert(0, str(REPO))
    from learn2reg.io import atomic_open, write_json

    write_json(stem.with_suffix(".json"), report)
    with atomic_open(stem.with_suffix(".md")) as fh:
        fh.write((render or markdown)(report))


@contextlib.contextmanager
def work_folder(given: Path | None, prefix: str) -> Iterator[Path]:
    """The benches' scratch folder: ``given`` (a ``--work`` folder, kept for a rerun) or a
    temporary one, removed at the end."""
    if given is not None:
        yield given
        return
    with tempfile.TemporaryDirectory(prefix=prefix) as tmp:
        yield Path(tmp)


def pipeline_command(*args: str, threads: int) -> None:
    """``python -m pipeline ARGS`` in a child process (stops the benchmark on failure; exit 3 of
    ``predict`` is not one: every field written, an implausible pre-alignment fell back and is named)."""
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "L2R_PROGRESS_SECONDS": "600"}
    done = subprocess.run([sys.executable, "-m", "pipeline", *args], cwd=REPO, env=env, capture_output=True, text=True)
    if done.returncode == 3 and args[0] == "predict":
        print(f"{args[0]}: exit 3 (fields written; a pre-alignment fell back):\n{done.stderr[-600:]}", flush=True)
    elif done.returncode != 0:
        raise SystemExit(f"failed: {' '.join(args)}\n{done.stderr[-3000:]}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu", help="cpu or cuda[:N]")
    parser.add_argument("--threads", type=int, default=2, help="torch intra-op threads")
    parser.add_argument("--out", type=Path, default=None, help="output stem (default bench/results/lapirn_<device>)")
    parser.add_argument("--only", default=None, help="run only configurations whose name contains this")
    parser.add_argument("--variants", default=None, help=f"comma list from {','.join(VARIANTS)} (default: fp32 on CPU, all on CUDA)")
    parser.add_argument("--quick", action="store_true", help="tiny smoke-test size; writes files only with --out")
    parser.add_argument("--timeout", type=float, default=600.0, help="seconds per child process")
    parser.add_argument("--note", action="append", default=[], help="free-text note for the report (repeatable)")
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child is not None:
        data = json.loads(args.child)
        print(json.dumps(run_case(Case(**{**data, "shape": tuple(data["shape"])}))))
        return 0
    variants = tuple(args.variants.split(",")) if args.variants else None
    if variants and not set(variants) <= set(VARIANTS):
        parser.error(f"--variants must be from {','.join(VARIANTS)}")
    report: dict[str, Any] = {"environment": environment(args.device, args.threads), "results": [], "notes": args.note}
    for case in plan(args.device, args.threads, variants, args.quick):
        if args.only and args.only not in case.name:
            continue
        print(f"running {case.name} {case.variant} ...", flush=True)
        result = spawn(case, args.timeout)
        print(f"  {json.dumps(result)}", flush=True)
        report["results"].append({"case": asdict(case), "result": result})
    report["environment"]["load_average_after"] = list(os.getloadavg())
    if args.out or not args.quick:
        write_report(report, args.out or REPO / "bench" / "results" / f"lapirn_{args.device.split(':')[0]}")
    print(markdown(report))
    return 1 if any("error" in r["result"] for r in report["results"]) else 0


if __name__ == "__main__":
    sys.exit(main())
