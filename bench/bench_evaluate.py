"""Evaluator speed and memory: ours (evaluation.evaluate) vs the plain official formulas.

Usage (from the repository root)::

    python bench/bench_evaluate.py            # -> bench/results/evaluate_cpu.{json,md}
    python bench/bench_evaluate.py --quick    # small volume, smoke test (written only with --out DIR)

Builds, in a temporary folder, a task shaped like the official cost estimate (../shared/docs/learn2reg.md
section 3): ``160 x 192 x 224`` volumes, 13 organ-like labels of realistic sizes, a body mask
(masked SDlogJ), 500 corresponding keypoints inside it, and one smooth random field per pair
(amplitude ~3 voxels, stored as float32 ``.nii.gz`` and as ``.npz``). Every measured run is a
child process: its wall time and peak memory (``ru_maxrss`` of the child and, for worker pools,
of its largest worker) are recorded; times are medians over repeats. The reference
(``tests/official_reference.py``: full-volume float64 Jacobian, one mask per label, DeepMind's
surface-distance, full cubic prefilter) is timed on one pair.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
from scipy import ndimage

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from learn2reg import contract, dataset, io  # noqa: E402
from learn2reg.eval_config import derive_config  # noqa: E402

SHAPE = (160, 192, 224)
OFFICIAL_S = 7.0  # the official evaluator's seconds per case of this size on a 2-core machine (../shared/docs/learn2reg.md)
# (relative centre, radii in voxels) of 13 abdominal-organ-like ellipsoids (liver ... adrenal glands)
ORGANS = [
    ((0.45, 0.35, 0.55), (30, 38, 34)), ((0.45, 0.75, 0.55), (14, 16, 18)), ((0.35, 0.30, 0.50), (9, 10, 22)),
    ((0.35, 0.70, 0.50), (9, 10, 22)), ((0.55, 0.55, 0.45), (8, 12, 26)), ((0.30, 0.50, 0.45), (5, 5, 40)),
    ((0.40, 0.50, 0.70), (6, 18, 8)), ((0.60, 0.45, 0.60), (6, 14, 16)), ((0.50, 0.50, 0.35), (12, 14, 12)),
    ((0.55, 0.40, 0.30), (7, 7, 10)), ((0.30, 0.45, 0.62), (3, 3, 5)), ((0.30, 0.58, 0.62), (3, 3, 5)),
    ((0.52, 0.62, 0.40), (8, 9, 10)),
]


def _ellipsoid_into(labels: np.ndarray, centre: np.ndarray, radii: np.ndarray, value: int) -> None:
    lo = np.maximum(np.floor(centre - radii).astype(int), 0)
    hi = np.minimum(np.ceil(centre + radii).astype(int) + 1, labels.shape)
    g = np.ogrid[tuple(slice(a, b) for a, b in zip(lo, hi, strict=True))]
    inside = sum(((gi - c) / r) ** 2 for gi, c, r in zip(g, centre, radii, strict=True)) < 1
    labels[tuple(slice(a, b) for a, b in zip(lo, hi, strict=True))][inside] = value


def smooth_field(shape: tuple[int, ...], amp: float, seed: int) -> np.ndarray:
    """Smooth random displacement, ``X x Y x Z x 3`` float32 voxels, std ``amp`` per component."""
    rng = np.random.default_rng(seed)
    small = [ndimage.gaussian_filter(rng.standard_normal([n // 4 for n in shape]), 2.0) for _ in range(3)]
    u = np.stack([contract.resize_image(c, shape, order=1) for c in small], axis=-1)
    return (u * amp / u.std()).astype(np.float32)


def build_task(root: Path, pairs: int, shape: tuple[int, int, int] = SHAPE, seed: int = 0) -> Path:
    """Current-layout task: subjects 1..pairs+1, val pairs (k <- k+1), labels, masks, keypoints."""
    rng = np.random.default_rng(seed)
    size = np.asarray(shape, dtype=float)
    scale = size / np.asarray(SHAPE)
    body = np.zeros(shape, np.uint8)
    _ellipsoid_into(body, size / 2, size * 0.45, 1)
    inside = np.argwhere(body[::4, ::4, ::4]) * 4.0
    base = inside[rng.choice(len(inside), 500, replace=False)] + rng.uniform(0, 3, (500, 3))
    training = []
    for s in range(1, pairs + 2):
        cid = f"Bench_{s:04d}_0000"
        labels = np.zeros(shape, np.uint8)
        for value, (centre, radii) in enumerate(ORGANS, start=1):
            c = np.asarray(centre) * size + rng.normal(0, 3, 3) * scale
            _ellipsoid_into(labels, c, np.maximum(np.asarray(radii) * scale * rng.uniform(0.85, 1.15, 3), 1.5), value)
        io.save_nifti(root / f"imagesTr/{cid}.nii.gz", labels.astype(np.float32))
        io.save_nifti(root / f"labelsTr/{cid}.nii.gz", labels)
        io.save_nifti(root / f"masksTr/{cid}.nii.gz", body)
        io.write_points(root / f"keypointsTr/{cid}.csv", np.clip(base + rng.normal(0, 2, base.shape), 0, size - 1))
        training.append({"image": f"./imagesTr/{cid}.nii.gz"})
    pairs = [{"fixed": f"./imagesTr/Bench_{s:04d}_0000.nii.gz", "moving": f"./imagesTr/Bench_{s + 1:04d}_0000.nii.gz"} for s in range(1, pairs + 1)]
    dataset.write_description(root, dataset.build_description(
        "Bench", shape, training, pairs, label_names={v: f"organ{v}" for v in range(1, 14)}))
    return root


def build_submissions(task: Path, out: Path, shape: tuple[int, int, int]) -> dict[str, Path]:
    """One field per pair, as ``.nii.gz`` (folder ``nii``) and ``.npz`` (folder ``npz``)."""
    folders = {"nii": out / "nii", "npz": out / "npz"}
    for i, pair in enumerate(derive_config(task).pairs):
        u = smooth_field(shape, 3.0, seed=10 + i)
        name = contract.disp_filename_l2r(pair.fixed, pair.moving)
        io.save_nifti(folders["nii"] / name, u)
        folders["npz"].mkdir(parents=True, exist_ok=True)
        np.savez(folders["npz"] / name.replace(".nii.gz", ".npz"), u)
    return folders


# ----------------------------------------------------------------------------- child runs


class DescendantPeak:
    """Largest peak RSS (``VmHWM``, MB) of this process's descendants, and the largest sum of the
    current RSS of this process and its descendants (all workers together), sampled from /proc
    every 50 ms (also sees workers that are not direct children, e.g. under a forkserver)."""

    def __init__(self) -> None:
        self.peak_mb = 0.0
        self.total_mb = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True)

    def __enter__(self) -> DescendantPeak:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _poll(self) -> None:
        me = os.getpid()
        while not self._stop.wait(0.05):
            kids = _descendants(me)
            for pid in kids:
                self.peak_mb = max(self.peak_mb, _vm_hwm_mb(pid))
            self.total_mb = max(self.total_mb, sum(_vm_mb(pid, "VmRSS") for pid in [me, *kids]))


def _vm_mb(pid: int, key: str) -> float:
    """A memory figure of /proc/PID/status (``VmHWM``, ``VmRSS``) in MB; 0 if the process is gone."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return 0.0
    return next((float(line.split()[1]) / 1024 for line in status.splitlines() if line.startswith(key + ":")), 0.0)


def _vm_hwm_mb(pid: int) -> float:
    """Peak resident memory (``VmHWM``) of a process in MB; 0 if it is gone."""
    return _vm_mb(pid, "VmHWM")


def _descendants(pid: int) -> list[int]:
    """Child processes, recursively, from ``/proc/PID/task/TID/children``."""
    found, todo = [], [pid]
    while todo:
        p = todo.pop()
        for tasks in Path(f"/proc/{p}/task").glob("*/children"):
            try:
                kids = [int(k) for k in tasks.read_text().split()]
            except OSError:
                continue
            found += kids
            todo += kids
    return found


def child(args: argparse.Namespace) -> None:
    """Run one measurement in this (child) process and print a json line."""
    with DescendantPeak() as peak:
        _child_run(args, peak)


def _child_run(args: argparse.Namespace, peak: DescendantPeak) -> None:
    import surface_distance  # noqa: F401  (imports outside the timed region)

    from evaluation.evaluate import evaluate
    from tests.evaluation.official_reference import evaluate_reference

    cpu0 = sum(u.ru_utime + u.ru_stime for u in (resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)))
    t0 = time.perf_counter()
    if args.child == "ours":
        result = evaluate(args.sub, args.task, workers=args.workers)
    else:
        result = evaluate_reference(args.sub, args.task, args.config, extras=False)
    wall = time.perf_counter() - t0
    usage = [resource.getrusage(who) for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)]
    cpu = sum(u.ru_utime + u.ru_stime for u in usage) - cpu0
    # VmHWM, not ru_maxrss: the latter keeps the pre-exec high-water mark of the forked parent
    own = _vm_hwm_mb(os.getpid())
    workers = max(usage[1].ru_maxrss / 1024, peak.peak_mb)
    first = {k: v["mean"] for k, v in next(iter(result["cases"].values())).items()}
    print(json.dumps({"wall_s": wall, "cpu_s": cpu, "cases": len(result["cases"]), "maxrss_mb": own, "worker_maxrss_mb": workers, "total_rss_mb": max(peak.total_mb, own), "first_case": first}))


def run_child(kind: str, task: Path, sub: Path, workers: int, config: Path | None = None) -> dict[str, Any]:
    """One measured run in a fresh child process -> its json line (wall, CPU, memory, first case)."""
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", kind, "--task", str(task), "--sub", str(sub), "--workers", str(workers)]
    if config is not None:
        cmd += ["--config", str(config)]
    path = os.pathsep.join([str(REPO), *filter(None, [os.environ.get("PYTHONPATH")])])  # keep e.g. bench/gpu_check.sh's wheels
    env = {**os.environ, "PYTHONPATH": path, "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1"}
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, check=True, cwd=REPO)
    return json.loads(done.stdout.strip().splitlines()[-1])


def summarize(kind: str, fmt: str, workers: int, runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Medians (and all values) of seconds per case over ``runs``, peak memory over all of them."""
    per_case = [r["wall_s"] / r["cases"] for r in runs]
    cpu_per_case = [r["cpu_s"] / r["cases"] for r in runs]
    return {
        "kind": kind, "workers": workers, "cases": runs[-1]["cases"], "repeats": len(runs), "format": fmt,
        "s_per_case_median": statistics.median(per_case), "s_per_case_all": per_case,
        "cpu_s_per_case_median": statistics.median(cpu_per_case),
        "peak_mb_main": max(r["maxrss_mb"] for r in runs), "peak_mb_worker": max(r["worker_maxrss_mb"] for r in runs),
        "peak_mb_total": max(r["total_rss_mb"] for r in runs),
        "first_case": runs[-1]["first_case"],
    }  # fmt: skip


def measure_ours(task: Path, subs: dict[str, Path], repeats: int) -> list[dict[str, Any]]:
    """Every (format, workers) configuration ``repeats`` times, in interleaved rounds, so that a
    noisy spell on the machine (a shared VM) hits all configurations alike."""
    configs = [("nii", 1), ("nii", 2), ("npz", 1), ("npz", 2)]
    runs: dict[tuple[str, int], list[dict[str, Any]]] = {c: [] for c in configs}
    for _ in range(repeats):
        for fmt, workers in configs:
            runs[(fmt, workers)].append(run_child("ours", task, subs[fmt], workers))
    return [summarize("ours", fmt, workers, runs[(fmt, workers)]) for fmt, workers in configs]


def _timed(fn: Any) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def machine() -> dict[str, Any]:
    model = next((ln.split(":", 1)[1].strip() for ln in Path("/proc/cpuinfo").read_text().splitlines() if ln.startswith("model name")), platform.processor())
    return {"cpu": model, "cores": len(os.sched_getaffinity(0)), "python": platform.python_version(), "numpy": np.__version__, "load_avg": os.getloadavg()}


def write_results(results: dict[str, Any], out_dir: Path) -> None:
    io.write_json(out_dir / "evaluate_cpu.json", results)
    ref = results["reference"]["s_per_case_median"]
    lines = [
        "# Evaluator benchmark (CPU)", "",
        f"Machine: {results['machine']['cpu']}, {results['machine']['cores']} cores; load average before {results['machine']['load_avg']}, after {results['load_avg_after']}.",
        f"Case: {'x'.join(map(str, results['shape']))}, 13 labels (DSC, HD95), masked SDlogJ, 500 keypoints (TRE); {results['pairs']} pairs.", "",
        "| run | field format | workers | wall s / pair (median) | runs: min - max | speed-up (wall) | CPU s / pair | speed-up (CPU) | peak MB (main / largest worker / all together) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]  # fmt: skip
    ref_cpu = results["reference"]["cpu_s_per_case_median"]
    for r in [results["reference"], *results["ours"]]:
        name = "reference (official formulas)" if r["kind"] == "reference" else "ours"
        lines.append(
            f"| {name} | {r['format']} | {r['workers']} | {r['s_per_case_median']:.3f} | "
            f"{min(r['s_per_case_all']):.3f} - {max(r['s_per_case_all']):.3f} ({len(r['s_per_case_all'])}) | {ref / r['s_per_case_median']:.1f}x | "
            f"{r['cpu_s_per_case_median']:.3f} | {ref_cpu / r['cpu_s_per_case_median']:.1f}x | "
            f"{r['peak_mb_main']:.0f} / {r['peak_mb_worker']:.0f} / {r.get('peak_mb_total', float('nan')):.0f} |"
        )
    best = {fmt: min(r["s_per_case_median"] for r in results["ours"] if r["format"] == fmt) for fmt in ("nii", "npz")}
    lines += ["", f"Best seconds per pair: {best['nii']:.3f} (.nii.gz), {best['npz']:.3f} (.npz); "]
    if results["shape"] == list(SHAPE):  # the official cost estimate is for this size only
        lines[-1] += (
            f"{OFFICIAL_S / best['nii']:.1f}x / {OFFICIAL_S / best['npz']:.1f}x less than the official evaluator's "
            f"~{OFFICIAL_S:.0f} s per case (../shared/docs/learn2reg.md section 3; the target 20x is <= {OFFICIAL_S / 20:.2f} s), "
        )
    lines[-1] += f"{ref / best['nii']:.1f}x / {ref / best['npz']:.1f}x less than the reference formulas timed here."
    lines += ["", "Official metrics of the first pair, reference vs ours (nii.gz field):", ""]
    lines += ["| metric | reference | ours | relative difference |", "|---|---|---|---|"]
    ours_first = results["ours"][0]["first_case"]
    for k, v in results["reference"]["first_case"].items():
        diff = abs(ours_first[k] - v) / abs(v) if v else abs(ours_first[k])
        lines.append(f"| {k} | {v:.10g} | {ours_first[k]:.10g} | {diff:.1e} |")
    read = results["read_field_s"]
    lines += [
        "",
        f"Seconds per pair are wall time of whole runs (read, validate, all metrics, write nothing) divided by the pairs, "
        "the median over the runs (ours: the configurations' runs interleaved, round after round); "
        f"reading one field alone takes {read['nii']:.2f} s from .nii.gz (ISA-L, inflated straight into the array) and {read['npz']:.2f} s from .npz here. "
        "Peak memory: max RSS of the run's main process, of its largest worker process, and the largest sum of the "
        "resident memory of all its processes at one time (sampled every 50 ms).",
    ]
    load = results["machine"]["load_avg"][0]  # before: afterwards it also counts the benchmark's own runs
    if load > 0.5 * results["machine"]["cores"]:
        lines += [
            "",
            f"The machine was busy with other jobs when this run started (1-min load average {load:.1f} on "
            f"{results['machine']['cores']} cores): wall times are inflated and 2 workers do not get 2 cores; "
            "CPU seconds per pair (all processes of the run) are the less load-sensitive comparison.",
        ]
    (out_dir / "evaluate_cpu.md").write_text("\n".join(lines) + "\n")


def render(json_path: Path) -> None:
    """Rewrite the markdown next to a results json (e.g. after editing the report format)."""
    write_results(json.loads(json_path.read_text()), json_path.parent)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--child", choices=("ours", "reference"), help=argparse.SUPPRESS)
    parser.add_argument("--task", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--sub", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--config", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--workers", type=int, default=1, help=argparse.SUPPRESS)
    parser.add_argument("--pairs", type=int, default=4, help="pairs evaluated per run (default 4)")
    parser.add_argument("--repeats", type=int, default=5, help="runs per configuration, interleaved (default 5)")
    parser.add_argument("--quick", action="store_true", help="small volume smoke test (written only with --out)")
    parser.add_argument("--out", type=Path, default=None, help="results folder (default bench/results)")
    args = parser.parse_args()
    if args.child:
        child(args)
        return
    shape = (48, 56, 64) if args.quick else SHAPE
    results: dict[str, Any] = {"machine": machine(), "shape": list(shape), "pairs": args.pairs}
    with tempfile.TemporaryDirectory(prefix="bench_evaluate_") as tmp:
        task = build_task(Path(tmp) / "task", args.pairs, shape)
        subs = build_submissions(task, Path(tmp) / "sub", shape)
        config = Path(tmp) / "config.json"
        config.write_text(json.dumps(derive_config(task).to_official(task)))
        one = Path(tmp) / "one"
        one.mkdir()
        first = derive_config(task).pairs[0]
        shutil.copy(subs["nii"] / contract.disp_filename_l2r(first.fixed, first.moving), one)
        one_cfg = json.loads(config.read_text())
        one_cfg["eval_pairs"] = one_cfg["eval_pairs"][:1]
        (Path(tmp) / "one.json").write_text(json.dumps(one_cfg))
        results["reference"] = summarize("reference", "nii", 1, [run_child("reference", task, one, 1, Path(tmp) / "one.json")])
        field = next(one.iterdir())
        results["read_field_s"] = {
            "nii": statistics.median(_timed(lambda: io.load_nifti(field)) for _ in range(3)),
            "npz": statistics.median(_timed(lambda: np.load(subs["npz"] / field.name.replace(".nii.gz", ".npz"))["arr_0"]) for _ in range(3)),
        }
        results["ours"] = measure_ours(task, subs, args.repeats)
    results["load_avg_after"] = os.getloadavg()
    for r in results["ours"]:
        print(f"ours {r['format']} workers={r['workers']}: {r['s_per_case_median']:.3f} s/case, peak {r['peak_mb_main']:.0f}/{r['peak_mb_worker']:.0f} MB")
    print(f"reference: {results['reference']['s_per_case_median']:.3f} s/case, peak {results['reference']['peak_mb_main']:.0f} MB")
    if not args.quick or args.out is not None:
        out = args.out or REPO / "bench" / "results"
        out.mkdir(parents=True, exist_ok=True)
        write_results(results, out)


if __name__ == "__main__":
    main()
