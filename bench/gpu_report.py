"""The GPU page, ``bench/results/gpu.md``, from the folder a run of ``bash bench/gpu_check.sh`` wrote.

    python bench/gpu_report.py [RAW_DIR] [--out PAGE]   # defaults: bench/results/gpu_raw -> bench/results/gpu.md

Without a GPU run in ``RAW_DIR`` (no folder, or a run whose setup found no GPU) the page says
plainly that no GPU measurement exists yet; it never shows a number that a GPU did not produce.
Standard library only; the page depends on the folder alone (no date of its own), so the same
folder always gives the same page.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
RAW = REPO / "bench" / "results" / "gpu_raw"
PAGE = REPO / "bench" / "results" / "gpu.md"
PARTS = ("setup", "cuda_tests", "lapirn", "predict", "instance_opt", "evaluate", "torchrun")
HOW = [
    "What the check measures and how to run it: README, section \"On a GPU\". To fill this page:",
    "",
    "```sh",
    "bash bench/gpu_wheels.sh                                # here: the wheels the GPU machine lacks, into .whl/",
    "bash bench/gpu_check.sh --wheels .whl --out /tmp/gpu    # on the GPU machine, from the repository root",
    "cp /tmp/gpu/*.json bench/results/gpu_raw/               # back here",
    "python bench/gpu_report.py                              # -> bench/results/gpu.md",
    "```",
]


def load(raw: Path) -> dict[str, dict[str, Any]]:
    """``summary`` and every part's JSON that the folder holds."""
    return {p.stem: json.loads(p.read_text()) for p in sorted(raw.glob("*.json"))} if raw.is_dir() else {}


def num(value: Any, digits: int = 2) -> str:
    return "-" if not isinstance(value, int | float) or isinstance(value, bool) else f"{value:.{digits}f}"


def cell(text: Any) -> str:
    return " ".join(str(text).replace("|", "/").split())


def parts_table(runs: dict[str, dict[str, Any]]) -> list[str]:
    lines = ["| part | status | seconds | note |", "|---|---|---|---|"]
    for part in PARTS:
        r = runs.get(part, {})
        lines.append(f"| {part} | {r.get('status', 'missing')} | {num(r.get('seconds'), 0)} | {cell(r.get('reason', ''))[:300]} |")
    return lines


def no_gpu_page(raw: Path, runs: dict[str, dict[str, Any]]) -> list[str]:
    lines = ["# GPU measurements", "", "**No GPU measurement exists yet.** No number on this page comes from a GPU; the GPU",
             "figures in the README (\"What a recipe costs\") are estimates, not measurements.", ""]
    if runs.get("summary"):
        summary = runs["summary"]
        reason = runs.get("setup", {}).get("result", {}).get("environment", {}).get("cuda_problem", "no GPU")
        lines += [f"The run in `{raw.relative_to(REPO) if raw.is_relative_to(REPO) else raw}` ({summary.get('started')},"
                  f" {'--quick, ' if summary.get('quick') else ''}{num(summary.get('seconds'), 0)} s) had no GPU: {reason}."
                  " Its parts (those that need a GPU are skipped; with --quick they ran at tiny sizes on the CPU instead):", ""]
        lines += parts_table(runs) + [""]
    else:
        lines += [f"`{raw.relative_to(REPO) if raw.is_relative_to(REPO) else raw}` holds no run of `bash bench/gpu_check.sh`.", ""]
    return lines + HOW


def environment_lines(runs: dict[str, dict[str, Any]]) -> list[str]:
    env = runs["setup"].get("result", {}).get("environment", {})
    summary = runs["summary"]
    return [
        f"- Device: **{env.get('device_name')}** ({env.get('memory_mib')} MiB, compute capability {env.get('capability')},"
        f" {env.get('multiprocessors')} multiprocessors; {env.get('device_count')} visible)",
        f"- Driver {env.get('driver')}; CUDA {env.get('torch_cuda')} (torch's), cuDNN {env.get('cudnn')}, NCCL {env.get('nccl')};"
        f" torch {env.get('torch')}, Python {env.get('python')}",
        f"- CPU: {env.get('cpu')}, {env.get('cpu_count')} cores",
        f"- Run: {summary.get('started')} to {summary.get('finished')} ({num(summary.get('seconds'), 0)} s"
        f"{', --quick: tiny sizes' if summary.get('quick') else ''}); exit code {summary.get('exit_code')}",
    ]


def lapirn_lines(r: dict[str, Any]) -> list[str]:
    backend = r.get("backend", {})
    lines = ["## LapIRN: forward and training step", "",
             "Median seconds over the timed repeats (GPU-synchronised); peak GPU memory = `max_memory_allocated` (MiB)."
             f" Training step: level 3, the recipe's loss, backward, Adam. cuDNN TF32: {backend.get('cudnn_allow_tf32')},"
             f" cudnn.benchmark: {backend.get('cudnn_benchmark')}.", "",
             "| case | network grid | start_channel | variant | forward s | train step s | peak MiB forward / train step |",
             "|---|---|---|---|---|---|---|"]
    checks = []
    for case in r.get("cases", []):
        grid = "x".join(map(str, case.get("grid", [])))
        for variant, v in case.get("variants", {}).items():
            if "error" in v:
                lines.append(f"| {case['case']} | {grid} | {case.get('start_channel')} | {variant} | {cell(v['error'])[:200]} | | |")
                continue
            fwd, train = v.get("forward", {}), v.get("train_step", {})
            lines.append(f"| {case['case']} | {grid} | {case.get('start_channel')} | {variant} | {num(fwd.get('median_s'), 3)}"
                         f" | {num(train.get('median_s'), 3)} | {num(fwd.get('peak_gpu_mb'), 0)} / {num(train.get('peak_gpu_mb'), 0)} |")
        check = case.get("field_check", {})
        if "relative" in check:
            checks.append(f"- {case['case']}: bf16 field vs fp32, max |difference| {num(check['max_abs_diff'], 4)} voxel ="
                          f" {100 * (check['relative'] or 0):.2f} % of max |u| ({num(check['max_abs_u_fp32'], 3)} voxel);"
                          f" tolerance {100 * check['tolerance']:.0f} %: {'ok' if check['ok'] else '**exceeded**'}")
        elif check:
            checks.append(f"- {case['case']}: field check: {cell(check.get('error', check))[:200]}")
    return lines + [""] + checks


def pairs_table(runtimes: dict[str, Any], key: str) -> list[str]:
    lines = [f"| pair | total s | {key.replace('_s', '')} s |", "|---|---|---|"]
    for pair, t in runtimes.get("pairs", {}).items():
        lines.append(f"| {pair} | {num(t.get('total_s'), 3)} | {num(t.get(key), 3)} |")
    return lines


def predict_lines(r: dict[str, Any], io: dict[str, Any]) -> list[str]:
    rt, ev = r.get("runtimes", {}), r.get("evaluation", {})
    lines = ["## predict, end to end", "",
             f"`python -m pipeline predict --device cuda` on the demo task {r.get('task')} (48x48x48) with the LapIRN authors'"
             f" weights (bf16 autocast, `predict.amp`), per pair as `runtimes.json` records them (device: {rt.get('device')});"
             f" the first pair includes CUDA's warm-up: {num(rt.get('first_total_s'), 3)} s, the others' median"
             f" {num(rt.get('median_total_s_after_first'), 3)} s. Evaluated: DSC {num(ev.get('DSC'), 3)},"
             f" SDlogJ {num(ev.get('LogJacDetStd'), 3)}.", ""]
    lines += pairs_table(rt, "network_s") + ["", "## Instance optimisation", ""]
    demo, direct = io.get("demo", {}), io.get("direct", {})
    lines += [f"In `predict --instance-opt-steps {demo.get('steps')}` on the same task:", ""] + pairs_table(demo, "instance_opt_s")
    if direct:
        settings = direct.get("settings", {})
        lines += ["", f"Alone (`refine_field`, {settings.get('steps')} steps, control grid every {settings.get('grid_spacing')} voxels,"
                  f" fold repair included) on a {'x'.join(map(str, direct.get('grid', [])))} grid (task 3's images):"
                  f" {num(direct.get('median_s'), 3)} s (median), peak {num(direct.get('peak_gpu_mb'), 0)} MiB."]
    return lines


def evaluate_lines(r: dict[str, Any]) -> list[str]:
    m = r.get("machine", {})
    lines = ["## Evaluator (CPU, for the record)", "",
             f"`bench/bench_evaluate.py` on this machine's CPU ({m.get('cpu')}, {m.get('cores')} cores):"
             f" {'x'.join(map(str, r.get('shape', [])))} cases, {r.get('pairs')} pairs, official metrics equal to the reference"
             f" formulas: {r.get('metrics_equal_reference')}.", "",
             "| run | field format | workers | wall s / pair | CPU s / pair |", "|---|---|---|---|---|"]
    ref = r.get("reference", {})
    lines.append(f"| reference (official formulas) | nii | 1 | {num(ref.get('s_per_case_median'), 3)} | {num(ref.get('cpu_s_per_case_median'), 3)} |")
    for row in r.get("ours", []):
        lines.append(f"| ours | {row['format']} | {row['workers']} | {num(row.get('s_per_case_median'), 3)} | {num(row.get('cpu_s_per_case_median'), 3)} |")
    return lines


def torchrun_lines(r: dict[str, Any]) -> list[str]:
    train, probe = r.get("train", {}), r.get("probe", {})
    return ["## torchrun", "",
            f"- Training (`torchrun --standalone --nproc_per_node=1`, `configs/demo_t4_hippocampus.json` with a short schedule):"
            f" {train.get('steps')} steps in {num(train.get('wall_s'), 1)} s (validation and I/O included), last"
            f" {num(train.get('steps_per_s_last'), 1)} steps/s; world size {train.get('final', {}).get('world_size')};"
            f" process group: {train.get('process_group')}",
            f"- Process group {probe.get('backend')} (NCCL {probe.get('nccl')}), world size {probe.get('world_size')}:"
            f" all_reduce of 4 MB {'correct' if probe.get('all_reduce_ok') else 'WRONG'} in {num(probe.get('all_reduce_s'), 4)} s"]


def tests_lines(r: dict[str, Any]) -> list[str]:
    counts = r.get("counts", {})
    lines = ["## Tests marked cuda", "", f"`pytest -m cuda {' '.join(r.get('paths', []))}`: " +
             (", ".join(f"{n} {k}" for k, n in counts.items()) or f"exit code {r.get('exit_code')}")]
    lines += [f"- failed: `{f['test']}`: {cell(f['message'])[:200]}" for f in r.get("failures", [])]
    return lines


def gpu_page(raw: Path, runs: dict[str, dict[str, Any]]) -> list[str]:
    lines = ["# GPU measurements", "", f"From `bash bench/gpu_check.sh` (raw results: `{raw.relative_to(REPO) if raw.is_relative_to(REPO) else raw}/`,"
             " rendered by `python bench/gpu_report.py`).", ""]
    lines += environment_lines(runs) + ["", "## Parts", ""] + parts_table(runs)
    result = {p: runs.get(p, {}).get("result", {}) for p in PARTS}
    sections = [(tests_lines, ("cuda_tests",)), (lapirn_lines, ("lapirn",)), (predict_lines, ("predict", "instance_opt")),
                (evaluate_lines, ("evaluate",)), (torchrun_lines, ("torchrun",))]
    for render, names in sections:
        if any(result[n] for n in names):
            lines += ["", *render(*(result[n] for n in names))]
    return lines


def render(raw: Path) -> str:
    runs = load(raw)
    gpu = bool(runs.get("summary", {}).get("gpu")) and "setup" in runs
    return "\n".join(gpu_page(raw, runs) if gpu else no_gpu_page(raw, runs)) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("raw", type=Path, nargs="?", default=RAW, help="folder of a gpu_check run")
    parser.add_argument("--out", type=Path, default=PAGE, help="the page to write")
    args = parser.parse_args(argv)
    page = render(args.raw.resolve())
    args.out.write_text(page)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
