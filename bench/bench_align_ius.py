"""The iUS-MR pre-alignment on the ReMIND2Reg-like demo task: landmark error and time per pair.

Usage (from the repository root)::

    python bench/bench_align_ius.py                 # -> bench/results/align_ius_cpu.{json,md}
    python bench/bench_align_ius.py --seeds 0 --unnamed-seeds   # a quick look

For each seed, ``python -m pipeline demo-data --layout remind2reg`` data (fixed ``_0000`` a
simulated intra-operative ultrasound, zero outside a cone, under a known rigid probe-tracking
error plus brain shift; moving ``_0001`` ceT1 / ``_0002`` T2 MR; landmarks for the validation
pairs) is aligned by ``pipeline.affine.align.align_task`` with its **default options** (rigid,
``--fov auto``), once with the task's modality table as written ("3D iUS") and, for the seeds
in ``--unnamed-seeds``, with the ultrasound renamed "intra-op image" (nothing says ultrasound:
the field of view must be found from the image). Per pair: the mean landmark error (official
TRE, mm) before and after, what became of the result (accepted, or the policy's fallback with
its reasons), the stage's own wall seconds and this process's CPU seconds.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

from bench_lapirn import environment  # noqa: E402

from learn2reg.io import read_json, write_json  # noqa: E402
from pipeline.affine.align import align_task  # noqa: E402
from pipeline.demo.tasks import write_demo  # noqa: E402


def _rename(root: Path, modality: str) -> None:
    meta_path = next(root.glob("*_dataset.json"))
    meta = read_json(meta_path)
    meta["modality"]["0"] = modality
    write_json(meta_path, meta)


def run_seed(seed: int, work: Path, modality: str | None) -> list[dict[str, Any]]:
    """Align the validation pairs of one demo task; one row per pair."""
    root = write_demo(work / f"data{seed}{'u' if modality else ''}", seed=seed, layout="remind2reg")[0]
    if modality is not None:
        _rename(root, modality)
    cpu = time.process_time()
    summary = align_task(root, work / f"out{seed}{'u' if modality else ''}", "val")
    cpu_per_pair = (time.process_time() - cpu) / max(1, len(summary["pairs"]))
    rows = []
    for key, entry in summary["pairs"].items():
        rows.append({
            "seed": seed, "pair": key, "modality": modality or "3D iUS",
            "tre_before_mm": entry["tre_initial_mm"], "tre_after_mm": entry["tre_aligned_mm"],
            "action": entry["action"], "reasons": entry["implausible"], "fixed_fov": entry["fov"]["fixed"]["has_fov"],
            "wall_s": entry["runtime_s"], "cpu_s_mean_of_seed": cpu_per_pair,
        })
    shutil.rmtree(root.parent)
    return rows


def markdown(report: dict[str, Any]) -> str:
    env, rows = report["environment"], report["rows"]
    lines = [
        "# iUS-MR pre-alignment: the ReMIND2Reg-like demo task, default `align` options",
        "",
        f"- {env['cpu']} ({env['cpu_count']} cores visible), torch threads 1 (AffineConfig.threads), torch {env['torch']}, "
        f"Python {env['python']}; load average before / after: {[round(v, 1) for v in env['load_average_before']]} / "
        f"{[round(v, 1) for v in report['load_average_after']]}",
        "- `python bench/bench_align_ius.py` (`pipeline.affine.align.align_task`, rigid, `--fov auto`); TRE = mean official "
        "landmark error (mm) of the pair before and after; wall s = the stage's own time per pair",
        "",
        "| seed | pair | modality 0 | fixed FOV | TRE before mm | TRE after mm | result | wall s |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        result = r["action"] + (f" ({'; '.join(r['reasons'])})" if r["reasons"] else "")
        lines.append(f"| {r['seed']} | {r['pair']} | {r['modality']} | {'yes' if r['fixed_fov'] else 'no'} | "
                     f"{r['tre_before_mm']:.2f} | {r['tre_after_mm']:.2f} | {result} | {r['wall_s']:.1f} |")
    lines += ["", "| modality 0 | pairs | lowered | median TRE before mm | median TRE after mm | worst after mm | median wall s | fallbacks |",
              "|---|---|---|---|---|---|---|---|"]
    for modality in sorted({r["modality"] for r in rows}):
        group = [r for r in rows if r["modality"] == modality]
        lowered = sum(r["tre_after_mm"] < r["tre_before_mm"] for r in group)
        fallbacks = sum(r["action"] != "accepted" for r in group)
        lines.append(f"| {modality} | {len(group)} | {lowered} | {statistics.median(r['tre_before_mm'] for r in group):.2f} | "
                     f"{statistics.median(r['tre_after_mm'] for r in group):.2f} | {max(r['tre_after_mm'] for r in group):.2f} | "
                     f"{statistics.median(r['wall_s'] for r in group):.1f} | {fallbacks} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--unnamed-seeds", type=int, nargs="*", default=[0], help="seeds also run with the ultrasound renamed")
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results")
    args = parser.parse_args(argv)
    env = environment("cpu", 1)
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="bench_align_ius_") as tmp:
        for seed in args.seeds:
            rows += run_seed(seed, Path(tmp), None)
        for seed in args.unnamed_seeds:
            rows += run_seed(seed, Path(tmp), "intra-op image")

    report = {"environment": env, "load_average_after": list(os.getloadavg()), "rows": rows}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "align_ius_cpu.json").write_text(json.dumps(report, indent=1) + "\n")
    (args.out / "align_ius_cpu.md").write_text(markdown(report))
    print(markdown(report))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
