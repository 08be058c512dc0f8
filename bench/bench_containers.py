"""Submission images, one per organiser's contract: image size, start-up and time per pair, scores.

Runs ``tests/test_container.py`` (a real Docker engine: it builds, exports, loads and runs one image per
contract on the demo tasks with the organiser's command line, and scores the fields under the task's
rules) with ``L2R_CONTAINER_RESULTS`` set, then renders the JSON it leaves as a Markdown table:

    python bench/bench_containers.py [--out bench/results] [--from RESULTS.json]

``--from`` renders an existing results JSON without running anything. Writes ``containers_cpu.json``
and ``containers_cpu.md`` into ``--out``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]

ORDER = ("lumir", "lumir25", "remind2reg-ceT1", "remind2reg-T2", "l2r", "oncoreg")
WHAT = {
    "lumir": "DemoLUMIR, 6 pairs 40x56x48, imported LapIRN diff weights (--data check run)",
    "lumir25": "DemoLUMIR, 6 pairs 40x56x48, imported LapIRN diff weights (--user)",
    "remind2reg-ceT1": "DemoReMIND2Reg flat input, 2 pairs 64^3, network-free (rigid) (--data check run)",
    "remind2reg-T2": "DemoReMIND2Reg flat input, 2 pairs 64^3, network-free (rigid)",
    "l2r": "DemoHippocampusMR, 3 pairs 48^3, LapIRN trained 210 steps on the host",
    "oncoreg": "OncoReg layout from DemoLungCT, 2 pairs 64^3, trained in the image (train.sh) (--data check run: train.sh, test.sh)",
}


def run_tests(results: Path) -> None:
    env = {**os.environ, "L2R_CONTAINER_RESULTS": str(results)}
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests/test_container.py"]
    subprocess.run(cmd, cwd=REPO, env=env, check=True)


def _scores(entry: dict[str, Any]) -> str:
    keys = [k for k in entry["scores"] if k in ("DSC", "TRE_lm", "TRE_kp", "HD95", "LogJacDetStd", "Non-diffeomorphic Volumes")]
    parts = []
    for key in keys:
        name = "NDV" if key.startswith("Non-diff") else key
        parts.append(f"{name} {entry['scores'][key]:.3g} ({entry['initial'].get(key, float('nan')):.3g})")
    return ", ".join(parts)


def render(record: dict[str, Any]) -> str:
    lines = [
        f"# Submission images per contract ({record.get('machine', '?')}, {record.get('cpus', '?')} CPUs)",
        "",
        f"{record.get('when', '')} load average {record.get('load')}. `tests/test_container.py`: each image built by "
        "`python -m pipeline container` on the CPU base (local Debian bookworm + torch CPU wheel), exported with "
        "`docker save | gzip -1`, removed, `docker load`ed and run with the organiser's command line (`--network=none`, "
        "read-only inputs, no `--gpus`: no GPU here) as a non-root host user; the base holds torch's CPU wheel, so every "
        "image registered on the CPU (the default CUDA base is not measured here). Start-up: the entry point's (imports, "
        "model, inputs checked) and the container's own (create, start, stop: wall time minus entry start-up and pairs). "
        "Scores: the project's evaluator under the task's rule set, the zero field in brackets. Build + export includes "
        "`--data`'s check run (the image run once on the demo task before the export) where the row says so.",
        "",
        "| contract | demo task, run | image GB | file MB | build + export s | load s | entry start-up s | container s | "
        "s per pair: median (mean, max) | peak RSS GiB | uid | scores (zero field) |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    contracts = record["contracts"]
    for key in [k for k in ORDER if k in contracts] + [k for k in contracts if k not in ORDER]:
        e = contracts[key]
        lines.append(
            f"| {key} | {WHAT.get(key, e['source'])} | {e['image_bytes'] / 1e9:.2f} | {e['file_bytes'] / 1e6:.0f} | "
            f"{e['build_export_s']:.0f} | {e['load_s']:.0f} | {e['entry_startup_s']:.1f} | {e['container_overhead_s']:.1f} | "
            f"{e['pair_median_s']:.2f} ({e['pair_mean_s']:.2f}, {e['pair_max_s']:.2f}) | {e['peak_rss_gib']:.2f} | {e['uid']} | {_scores(e)} |"
        )
    if any(k.startswith("remind2reg") for k in contracts):
        lines += ["", "ReMIND2Reg: both images write into one output folder, scored together (ceT1 and T2 pairs), so the two rows "
                  "share their scores."]
    if "oncoreg" in contracts and "train_wall_s" in contracts["oncoreg"]:
        lines += ["", f"OncoReg's `./train.sh` (in the image, 36 steps): {contracts['oncoreg']['train_wall_s']:.0f} s wall."]
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results")
    parser.add_argument("--from", dest="source", type=Path, default=None, help="render this results JSON, run nothing")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        source = args.source
        if source is None:
            source = Path(tmp) / "containers.json"
            run_tests(source)
        record = json.loads(source.read_text())
    record.setdefault("when", time.strftime("%Y-%m-%d %H:%M"))
    record.setdefault("platform", platform.platform())
    args.out.mkdir(parents=True, exist_ok=True)
    if source != args.out / "containers_cpu.json":
        (args.out / "containers_cpu.json").write_text(json.dumps(record, indent=1, sort_keys=True) + "\n")
    (args.out / "containers_cpu.md").write_text(render(record))
    print((args.out / "containers_cpu.md").read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
