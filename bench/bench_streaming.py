"""Training memory against the number of images: streamed cases (``train``) on LUMIR-sized sets.

Usage (from the repository root)::

    python bench/bench_streaming.py                                   # -> bench/results/streaming_cpu.{json,md}
    git archive 449a807 | tar -x -C /tmp/base                         # the code before streaming, for comparison
    python bench/bench_streaming.py --baseline-src /tmp/base

A LUMIR-like task is generated per size N: N training images and 2 validation images at LUMIR's
160x224x192 (1 mm, uint8 in [0, 255]; the demo LUMIR phantom of ``pipeline.demo.current``
upsampled 4x, a different subject per image), in LUMIR's layout. The preprocessing cache is
filled first (``python -m pipeline preprocess``, not measured: it handles one case at a time),
then ``train`` runs a short schedule whose steps are cheap (level 1 only, start_channel 4: a
40x56x48 network grid) so that the memory of the data path shows: every case it holds is 27.5 MB
(float32 at 160x224x192). Peak RSS is the child's ``ru_maxrss`` (the whole process: Python,
torch, the model, the cases). Variants: ``--case-memory-gb`` small (a few cases), with and
without ``--workers 2``, and the default budget; ``--baseline-src`` adds the same command run with
another copy of the code (e.g. the commit before streaming, which loads every case at the start).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

from bench_lapirn import environment, work_folder, write_report  # noqa: E402

SHAPE = (160, 224, 192)
CASE_MB = SHAPE[0] * SHAPE[1] * SHAPE[2] * 4 / 2**20
NAME = "LumirSized"
CONFIG = {
    "_comment": "bench/bench_streaming.py: cheap steps at LUMIR's image size (level 1 only: a 40x56x48 network grid)",
    "preprocess": {"percentile": 100.0},
    "model": {"levels": 3, "start_channel": 4},
    "train": {"steps_per_level": [0, 0, 0], "freeze_steps": 0, "val_every": 100000, "checkpoint_every": 100000, "lr": 1e-4},
}


def make_task(root: Path, n: int) -> Path:
    """N training + 2 validation images at 160x224x192, LUMIR's layout (images only)."""
    from learn2reg import dataset
    from learn2reg.contract import resize_image
    from learn2reg.io import Geometry, save_nifti
    from pipeline.demo.current import LUMIR
    from pipeline.demo.phantom_lumir import lumir_subject, template_brain
    from pipeline.demo.phantoms import make_rng

    task = root / NAME
    if (task / f"{NAME}_dataset.json").is_file():
        return task
    template = template_brain(make_rng(0, LUMIR.stream, 0), LUMIR.grid)
    geometry = Geometry.identity(SHAPE)
    entries, val = [], []
    for s in range(n + 2):
        small = lumir_subject(make_rng(0, LUMIR.stream, s + 1), LUMIR.grid, template).image.astype(np.float32)
        image = np.clip(np.rint(resize_image(small, SHAPE, order=1)), 0, 255).astype(np.uint8)
        folder = "imagesTr" if s < n else "imagesVal"
        path = f"./{folder}/LUMIRMRI_{s:04d}_0000.nii.gz"
        save_nifti(task / path, image, geometry)
        (entries if s < n else val).append(path)
    meta = dataset.build_description(NAME, SHAPE, [{"image": p} for p in entries], [{"fixed": val[1], "moving": val[0]}],
                                     modality={"0": "T1w Brain MRI"}, val_key="validation", description="bench/bench_streaming.py")
    dataset.write_description(task, meta)
    return task


def child_peak(cmd: list[str], cwd: Path, env: dict[str, str]) -> dict[str, Any]:
    """Run ``cmd``; its peak RSS (GB) from a wrapper process that waits for it alone."""
    wrapper = ("import resource, subprocess, sys, time; t = time.perf_counter(); "
               "code = subprocess.run(sys.argv[1:], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True); "
               "print(code.returncode, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss, time.perf_counter() - t); "
               "sys.stderr.write(code.stderr[-2000:])")
    done = subprocess.run([sys.executable, "-c", wrapper, *cmd], cwd=cwd, env=env, capture_output=True, text=True)
    code, kib, seconds = done.stdout.split()
    if int(code) != 0:
        raise SystemExit(f"failed ({code}): {' '.join(cmd)}\n{done.stderr}")
    return {"peak_rss_gb": int(kib) / 2**20, "seconds": float(seconds)}


def run_size(work: Path, n: int, steps: int, variants: dict[str, tuple[list[str], Path]], threads: int) -> dict[str, Any]:
    task = make_task(work / f"n{n}", n)
    cache, config = work / "cache" / f"n{n}", work / f"cfg{steps}.json"
    config.write_text(json.dumps({**CONFIG, "train": {**CONFIG["train"], "steps_per_level": [steps, 0, 0]}}))
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "L2R_PROGRESS_SECONDS": "600"}
    subprocess.run([sys.executable, "-m", "pipeline", "preprocess", "--data", str(task), "--config", str(config), "--cache", str(cache)],
                   cwd=REPO, env=env, check=True, capture_output=True)
    rows: dict[str, Any] = {}
    for name, (extra, src) in variants.items():
        out = work / f"n{n}" / "runs" / name.replace(" ", "_")
        cmd = [sys.executable, "-m", "pipeline", "train", "--data", str(task), "--config", str(config), "--out", str(out),
               "--device", "cpu", "--cache", str(cache), *extra]
        load = list(os.getloadavg())
        rows[name] = {**child_peak(cmd, src, {**env, "PYTHONPATH": str(src)}), "load_average": load}
        print(json.dumps({"n": n, name: rows[name]}), flush=True)
    return rows


def markdown(report: dict[str, Any]) -> str:
    env = report["environment"]
    names = list(next(iter(report["sizes"].values())))
    lines = [
        "# Training memory against the number of images (streamed cases)",
        "",
        f"- CPU: {env['cpu']} ({env['cpu_count']} cores visible), torch threads {env['threads']}, torch {env['torch']}, Python"
        f" {env['python']}; load average before / after: {env['load_average_before']} / {env.get('load_average_after')}",
        f"- Task: N training + 2 validation images at {'x'.join(map(str, SHAPE))} (LUMIR's size, uint8; {CASE_MB:.1f} MB per"
        f" prepared case, float32), LUMIR's layout; cache filled first; `train` for {report['steps']} level-1 steps"
        " (start_channel 4, 40x56x48 network grid), one validation pair",
        "- Peak RSS: the `train` process's ru_maxrss, GB (Python, torch, model and the cases it holds); seconds: the whole"
        " command (start-up, pairs, steps, validation, checkpoints)",
        "",
        "| N images | " + " | ".join(f"{n}: peak RSS GB (s)" for n in names) + " |",
        "|---|" + "---|" * len(names),
    ]
    for n, rows in report["sizes"].items():
        lines.append(f"| {n} | " + " | ".join(f"{rows[k]['peak_rss_gb']:.2f} ({rows[k]['seconds']:.0f})" for k in names) + " |")
    lines += ["", "Variants:", "", *[f"- {k}: {v}" for k, v in report["variants"].items()]]
    if report.get("notes"):
        lines += ["", *[f"- {n}" for n in report["notes"]]]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[16, 64], help="numbers of training images")
    parser.add_argument("--steps", type=int, default=40, help="level-1 training steps per run")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--baseline-src", type=Path, default=None, help="another copy of the code to run the same command with")
    parser.add_argument("--work", type=Path, default=None, help="scratch folder (default: a temporary one, removed)")
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "streaming_cpu", help="output stem")
    parser.add_argument("--note", action="append", default=[])
    args = parser.parse_args(argv)
    variants: dict[str, tuple[list[str], Path]] = {
        "streamed, 0.25 GB of cases": (["--case-memory-gb", "0.25"], REPO),
        "streamed, 0.25 GB, 2 workers": (["--case-memory-gb", "0.25", "--workers", "2"], REPO),
        "streamed, default 2 GB": ([], REPO),
    }
    described = {"streamed, 0.25 GB of cases": "this code, `--case-memory-gb 0.25` (about 10 cases), no workers",
                 "streamed, 0.25 GB, 2 workers": "the same with `--workers 2` (the cases of the next 4 steps read ahead)",
                 "streamed, default 2 GB": "this code with its defaults (`--case-memory-gb 2`: about 78 LUMIR cases)"}
    if args.baseline_src is not None:
        variants["every case loaded (baseline)"] = ([], args.baseline_src.resolve())
        described["every case loaded (baseline)"] = f"the same command with the code in {args.baseline_src} (no streaming options)"
    with work_folder(args.work, "bench_streaming_") as work:
        report: dict[str, Any] = {"environment": environment("cpu", args.threads), "steps": args.steps, "variants": described,
                                  "sizes": {}, "notes": args.note}
        started = time.perf_counter()
        for n in args.sizes:
            report["sizes"][n] = run_size(work, n, args.steps, variants, args.threads)
        report["environment"].update(load_average_after=list(os.getloadavg()), wall_s=time.perf_counter() - started)
    write_report(report, args.out, markdown)
    print(markdown(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
