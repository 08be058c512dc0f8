"""The evaluator: ``python -m evaluation.evaluate -i DISP_DIR -d DATA_DIR [-c CONFIG.json] -o OUT.json``.

A drop-in for each Learn2Reg organiser's ``evaluation.py`` (same flags, same output schema:
``{name, aggregates: {metric: {mean, std, "30"}}, cases: {"SSSS_MMMM<--SSSS_MMMM": {metric:
{mean, detailed}}}, eval_version}``, plus ``"rules"``: the rule set used). One evaluator, four rule
sets (``learn2reg.rules``): ``l2r`` (MDL-UzL/L2R, the default), ``lumir24`` (``-c1 -c2``),
``lumir25`` (``-l1 -s1 -s2 -s3``) and ``remind2reg``, picked from the command line and the
configuration (``--rules auto``) or named (``--rules NAME``); each reproduces its organiser's
numbers, quirks included. Under ``l2r``, ours are added, clearly named: ``SDlogJ_true``,
``num_foldings_true``, ``folding_fraction``, ``<HD95 name>_mm`` and, when the submission carries a
``runtimes.json`` manifest, ``runtime`` / ``runtime_network`` (seconds); the organiser rule sets
write exactly their organiser's keys.

Flow: resolve the configs (files; without them the task folder's rule set and the organisers'
config files found in it, else a config derived from the task: :func:`task_plan`) and the rule
set, find every field and
ground-truth file (all missing files reported at once), then evaluate the pairs of every config in
one worker pool; each worker validates its field (shape, dtype, NaN/Inf) before any metric. Any
problem -> ``DataError`` listing all of them and no output file (it is written atomically at the
very end). Several configs (LUMIR) are merged as their organisers merge them (``evaluation.aggregate``).
"""

from __future__ import annotations

import argparse
import functools
import gc
import logging
import os
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from evaluation import aggregate
from evaluation.aggregate import print_summary
from evaluation.case import CaseJob, Options, estimated_seconds, evaluate_case, preload
from evaluation.pool import run_pool
from learn2reg import rules as rulesets
from learn2reg.cli import add_overwrite_argument, refuse_existing, run_cli
from learn2reg.eval_config import EvalConfig, EvalPair, config_from_dict, derive_config
from learn2reg.io import DataError, check_output_path, read_json, write_json
from learn2reg.progress import progress as progress_bar
from learn2reg.rules import Rules
from learn2reg.submission import MANIFEST_NAME, Manifest, detect_format, field_folder, load_manifest, locate_fields
from learn2reg.task import Layout, Task, load_task

__all__ = ["Options", "Plan", "evaluate", "ground_truth_problems", "main", "organiser_configs", "plan", "task_plan"]

log = logging.getLogger(__name__)
ROLES = ("c", "c1", "c2", "l1", "s1", "s2", "s3")  # config flags, in run order
# Estimated CPU seconds of a run below which no worker pool is started. Measured on 2 cores (ReMIND2Reg,
# 80x96x80 smooth fields, interleaved): 3 pairs (~0.08 s estimated) 0.213 s alone vs 0.217 s with two
# workers, 4 pairs 0.232 vs 0.226, 6 pairs (~0.16) 0.267 vs 0.235 (at ~13 % more CPU in all).
POOL_MIN_SECONDS = 0.1
ConfigSource = EvalConfig | str | Path | None | Mapping[str, "str | Path"]


@dataclass(frozen=True)
class Plan:
    """What a run evaluates: the rule set (and why it was chosen) and each config with its flag."""

    rules: Rules
    reason: str
    configs: tuple[tuple[str, EvalConfig], ...]  # (role: c, c1, c2, l1, s1, s2, s3; config)

    @property
    def pairs(self) -> list[EvalPair]:
        """Every pair of every config, each key once (first appearance)."""
        return list({p.key: p for _, c in self.configs for p in c.pairs}.values())


def plan(data_dir: str | Path, config: ConfigSource = None, rules: str | Rules = "auto", split: str = "val") -> Plan:
    """Resolve the configs and the rule set of a run (``learn2reg.rules.select``).

    ``config``: an :class:`EvalConfig`; the path of an official config json (flag ``-c``); a
    mapping of flags to paths (``{"c1": ..., "c2": ...}``, ``{"l1": ..., "s1": ..., ...}``: LUMIR's
    several configs, evaluated in that order and merged); or ``None``: the task's own (see
    :func:`task_plan`). ``DataError`` for a config the rule set cannot read (its task-name key
    missing; a metric it does not score).
    """
    if isinstance(config, EvalConfig):
        chosen = rulesets.get(rulesets.L2R if rules == "auto" else rules)
        return Plan(chosen, "a resolved configuration" if rules == "auto" else f"--rules {rules}", (("c", config),))
    if config is None:
        return task_plan(data_dir, rules, split)
    sources = {"c": config} if isinstance(config, str | Path) else dict(config)
    given = set(sources)
    if not given or given - set(ROLES) or ("c" in given and len(given) > 1) or (given & {"c1", "c2"} and given & {"l1", "s1", "s2", "s3"}):
        raise DataError(f"configs {sorted(given)}: give -c CONFIG, or LUMIR 2024's -c1/-c2, or LUMIR 2025's -l1/-s1/-s2/-s3")
    order = [r for r in ROLES if r in given]
    raws = [read_json(sources[r]) for r in order]
    if not all(isinstance(raw, dict) for raw in raws):
        bad = next(sources[r] for r, raw in zip(order, raws, strict=True) if not isinstance(raw, dict))
        raise DataError(f"{bad}: invalid evaluation config:\n  must be a JSON object")
    chosen, reason = rulesets.select(rules if isinstance(rules, str) else rules.name, order, raws)
    if rules == "auto" and chosen is rulesets.L2R:  # no marker in the config: the task folder's own rule set, if it has one
        chosen, reason = _folder_rules(data_dir) or (chosen, reason)
    if order != ["c"] and not set(order) <= set(chosen.roles):
        log.warning("the %s evaluator's command line takes %s; the configs given (%s) are run in that order and merged", chosen.name,
                    " ".join(f"-{r}" for r in chosen.roles), " ".join(f"-{r}" for r in order))  # fmt: skip
    configs = tuple((r, _checked(config_from_dict(raw, data_dir, str(sources[r]), chosen), chosen, str(sources[r]))) for r, raw in zip(order, raws, strict=True))
    return Plan(chosen, reason, configs)


def task_plan(data_dir: str | Path, rules: str | Rules = "auto", split: str = "val") -> Plan:
    """The plan of a run without config files: the task folder's rule set (:attr:`Task.rules`;
    ``rules`` overrides it) and, for the ``val`` split of a task scored by its own organisers
    (LUMIR, ReMIND2Reg), the organisers' config files found in the folder
    (:func:`organiser_configs`: the configs their evaluator would be run with, LUMIR's merged as
    ``-c1/-c2`` or ``-l1 -s1 -s2 -s3``); otherwise a config derived as that organiser's would be
    (``learn2reg.eval_config.derive_config``). The reason says which."""
    task = load_task(data_dir)
    told = None if rules == "auto" else rules if isinstance(rules, str) else rules.name
    task = task.with_rules(told)
    chosen = rulesets.get(task.rules)
    reason = f"--rules {told}" if told else f"the rule set of the task folder {task.name}"
    if task.layout == Layout.L2R2020 and chosen is not rulesets.L2R:
        raise DataError(f"{task.root}: a 2020-layout task is scored by the l2r rules only, not {chosen.name}")
    found = organiser_configs(task, chosen) if split == "val" else {}
    if found:
        named = " ".join(f"-{role} {path.name}" for role, path in found.items())
        run_plan = plan(task.root, {role: str(path) for role, path in found.items()}, chosen, split)
        return Plan(chosen, f"{reason}; the organisers' configs in the folder: {named}", run_plan.configs)
    derived = _checked(derive_config(task, split, chosen), chosen)
    metrics = ", ".join(m.name for m in derived.methods)
    return Plan(chosen, f"{reason}; configuration derived from the task ({split} pairs: {metrics})", (("c", derived),))


def _folder_rules(data_dir: str | Path) -> tuple[Rules, str] | None:
    """The rule set of the task folder ``data_dir`` when it is not ``l2r`` (``None`` for a folder
    that is no task, e.g. an evaluator's ground-truth folder, or an ``l2r`` one)."""
    try:
        task = load_task(data_dir)
    except DataError:
        return None
    if task.layout == Layout.L2R2020 or task.rules == rulesets.L2R.name:
        return None
    return rulesets.get(task.rules), f"the config has no rule-set marker; the rule set of the task folder {task.name}"


def organiser_configs(task: Task, rules: Rules) -> dict[str, Path]:
    """The organisers' config files in the task folder, by flag (``Rules.config_files``):
    ``{PREFIX}_VAL_{part}_evaluation_config.json`` for each flag's parts in order of preference
    (LUMIR's ``LUMIR_VAL_Landmark``, ``LUMIR25_VAL_HighField_Segmentation``...; ReMIND2Reg's
    ``ReMIND2Reg_VAL_evaluation_config.json``), empty when there are none. Several files for one
    flag: the one whose prefix is the task's name, else ``DataError`` naming them."""
    found: dict[str, Path] = {}
    for role, parts in rules.config_files:
        for part in parts:
            pattern = f"*_VAL_{part}_evaluation_config.json" if part else "*_VAL_evaluation_config.json"
            candidates = sorted(p for p in task.root.glob(pattern) if "_VAL_" not in p.name.split("_VAL_", 1)[1])
            own = [p for p in candidates if p.name.split("_VAL_", 1)[0] == task.name]
            if len(candidates) > 1 and len(own) != 1:
                raise DataError(f"{task.root}: several organisers' configs for -{role}: {', '.join(p.name for p in candidates)}; "
                                f"name the ones to use (-c, -c1/-c2 or -l1/-s1/-s2/-s3)")
            if candidates:
                found[role] = (own or candidates)[0]
                break
    return found


def _checked(config: EvalConfig, rules: Rules, where: str = "derived configuration") -> EvalConfig:
    """``DataError`` for a metric the rule set does not know; a warning for one it skips."""
    for m in config.methods:
        if m.metric in rules.ignored:
            log.warning("%s: method %r (%s) is ignored by the %s rules, as by the organisers' evaluator", where, m.name, m.metric, rules.name)
        elif m.metric not in rules.scored:
            raise DataError(f"{where}: metric {m.metric!r} ({m.name}) is not scored by the {rules.name} rules ({rules.title}); NDV is LUMIR's: --rules lumir24 or lumir25")
    return config


def evaluate(
    disp_dir: str | Path,
    data_dir: str | Path,
    config: ConfigSource = None,
    *,
    rules: str | Rules = "auto",
    split: str = "val",
    fmt: str = "auto",
    workers: int | None = None,
    options: Options | None = None,
    task_folder: str | None = None,
    progress: bool = False,
) -> dict[str, Any]:
    """Evaluate a submission folder against a task; returns the organisers' result dict
    (``name``, ``aggregates``, ``cases``, ``eval_version``) plus ``rules``.

    ``config``: see :func:`plan` (a file, LUMIR's several files as ``{"c1": ..., "c2": ...}``, or
    ``None`` to derive from the task). ``rules``: ``auto`` (:func:`learn2reg.rules.select`) or a
    rule set. ``fmt``: ``auto``, ``l2r`` or ``l2r2020`` (2020 submissions: ``l2r`` rules only).
    ``options``: :class:`Options`. ``workers``: processes (default: :func:`pool_size`).
    ``task_folder``: the ``task_NN`` sub-folder of a 2020 submission (default: the only one, or
    the data folder's name). Raises ``DataError`` listing every problem (missing or invalid
    fields, missing ground truth, an invalid runtime manifest) before any output exists.
    """
    disp_dir, data_dir, options = Path(disp_dir), Path(data_dir), options or Options()
    run_plan = plan(data_dir, config, rules, split)
    chosen = run_plan.rules
    log.info("rules %s (%s): %s", chosen.name, chosen.title, run_plan.reason)
    if chosen is not rulesets.L2R and options.aggregate != "l2r":
        raise DataError(f"--aggregate {options.aggregate} applies to the l2r rules only (the {chosen.name} rules aggregate as their organisers)")
    if not disp_dir.is_dir():
        raise DataError(f"{disp_dir}: submission folder not found")
    fmt = _format(disp_dir, fmt, chosen)
    if task_folder and not (disp_dir / task_folder).is_dir():
        raise DataError(f"{disp_dir / task_folder}: task folder of the submission not found")
    folder = field_folder(disp_dir, fmt, task_folder or data_dir.resolve().name)
    fields, problems = locate_fields(folder, run_plan.pairs, fmt, chosen)
    for _, cfg in run_plan.configs:
        problems += ground_truth_problems(cfg, chosen)
    if problems:
        raise DataError(_problem_text(list(dict.fromkeys(problems))))
    manifest = _find_manifest(folder, disp_dir) if chosen.extras else None
    jobs = [
        CaseJob(p, fields[p.key], fmt, cfg.methods, cfg.expected_shape, cfg.masked, options, chosen)
        for _, cfg in run_plan.configs for p in cfg.pairs
    ]  # fmt: skip
    outcomes = _run(jobs, workers, progress)
    problems = list(dict.fromkeys(msg for _, _, msgs in outcomes for msg in msgs))  # every pair of every config
    if problems:
        raise DataError(_problem_text(problems))
    results = iter([(key, result) for key, result, _ in outcomes if result is not None])  # in job order
    runs = [aggregate.ConfigRun(role, cfg, dict(next(results) for _ in cfg.pairs)) for role, cfg in run_plan.configs]
    cases = aggregate.merge(runs)
    if manifest is not None:
        _add_runtimes(cases, manifest)
    aggregates = aggregate.aggregates(chosen, runs, cases, options.aggregate)
    name = run_plan.configs[-1][1].name
    return {"name": name, "aggregates": aggregates, "cases": cases, "eval_version": chosen.eval_version, "rules": chosen.name}


def _format(disp_dir: Path, fmt: str, rules: Rules) -> str:
    """The submission format: ``auto`` detects it (2020 or current: ``l2r`` rules only)."""
    if fmt == "auto":
        return detect_format(disp_dir) if rules is rulesets.L2R else Layout.L2R
    if fmt not in list(Layout):
        raise DataError(f"unknown submission format {fmt!r} (auto, {', '.join(Layout)})")
    if fmt != Layout.L2R and rules is not rulesets.L2R:
        raise DataError(f"submission format {fmt!r}: the {rules.name} rules read {Layout.L2R!r} submissions only")
    return fmt


def _problem_text(problems: list[str]) -> str:
    return f"{len(problems)} problem(s):\n  " + "\n  ".join(problems)


def ground_truth_problems(config: EvalConfig, rules: Rules = rulesets.L2R) -> list[str]:
    """Missing ground-truth files the configured metrics need under ``rules``, all at once."""
    problems = []
    scored = [m for m in config.methods if m.metric in rules.scored]
    for pair in config.pairs:
        needed: list[Path | None] = []
        if any(m.metric in ("dice", "hd95") for m in scored):
            needed += [pair.fixed_label, pair.moving_label]
        for m in scored:
            if m.metric == "tre":
                files = pair.point_files(m.dest or "")
                needed += list(files) if files else [None]
                needed += [pair.fixed_image, pair.moving_image]  # every evaluator reads both headers
            elif m.metric == "ndv":
                needed.append(pair.moving_image if rules.ndv_mask == "moving" else pair.fixed_image)
        if config.masked and config.require_masks:
            needed.append(pair.fixed_mask)
        for path in needed:
            if path is None or not path.is_file():
                what = path if path is not None else f"{pair.key}: point files"
                problems.append(f"{what}: ground-truth file not found (needed for {pair.key})")
    return sorted(set(problems), key=problems.index)


def pool_size(jobs: list[CaseJob], workers: int | None) -> int:
    """Processes for ``jobs``: ``workers`` if given (capped at the pair count), else
    ``min(cores, pairs)``, or 1 (this process alone) when the whole run is estimated at under
    ``POOL_MIN_SECONDS`` of CPU: forking, feeding and ending workers would cost more than it saves."""
    if workers is not None:
        return max(1, min(workers, len(jobs)))
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    if estimated_seconds(jobs) < POOL_MIN_SECONDS:
        return 1
    return max(1, min(cores, len(jobs)))


def _run(jobs: list[CaseJob], workers: int | None, progress: bool) -> list[tuple[str, dict | None, list[str]]]:
    workers = pool_size(jobs, workers)
    bar = functools.partial(progress_bar, total=len(jobs), enabled=progress, desc="evaluate", unit="pair", logger=log)
    if workers == 1:
        return [evaluate_case(job) for job in bar(jobs)]

    preload(jobs)  # imported once here rather than once per forked worker
    # Frozen, the objects the workers inherit are never visited by their garbage collector, whose
    # writes would otherwise copy those pages into every worker (~0.05 CPU s per worker measured).
    gc.freeze()
    try:
        # a worker that dies (out of memory, killed) is named by the pair it held (evaluation.pool)
        return run_pool(evaluate_case, jobs, [job.pair.key for job in jobs], workers, bar)
    finally:
        gc.unfreeze()


def keep_freed_memory(mmap_below: int = 32 << 20, trim_above: int = 128 << 20) -> bool:
    """glibc only (else a no-op, ``False``): serve blocks below ``mmap_below`` bytes from the heap
    and return freed heap memory to the system only beyond ``trim_above`` bytes. Each pair
    allocates and frees the same multi-megabyte arrays (fields, slabs, transforms); by default
    glibc maps and unmaps many of them, and every new page costs a fault: ~0.1 of 1.3 CPU s of a
    LUMIR run (measured). Process-wide and inherited by forked workers; for the CLI process."""
    import ctypes

    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):  # not glibc (macOS, Windows)
        return False
    m_trim_threshold, m_mmap_threshold = -1, -3  # <malloc.h>
    return bool(mallopt(m_mmap_threshold, mmap_below)) and bool(mallopt(m_trim_threshold, trim_above))


def _find_manifest(folder: Path, disp_dir: Path) -> Manifest | None:
    for where in dict.fromkeys((folder, disp_dir)):
        if (where / MANIFEST_NAME).is_file():
            return load_manifest(where / MANIFEST_NAME)
    return None


def _add_runtimes(cases: dict[str, dict], manifest: Manifest) -> None:
    missing = [k for k in cases if k not in manifest.runtimes]
    if missing:
        log.warning("runtime manifest lacks %d pair(s), e.g. %s: runtime NaN there", len(missing), missing[0])
    for key, case in cases.items():
        r = manifest.runtimes.get(key)
        total, network = (r.total_s, r.network_s) if r else (float("nan"), float("nan"))
        case["runtime"] = {"mean": total, "detailed": total}
        case["runtime_network"] = {"mean": network, "detailed": network}


# ----------------------------------------------------------------------------- CLI


CONFIG_FLAGS = (  # (flags, role, help): LUMIR's several configs, run in this order and merged
    (("-c1", "--config1"), "c1", "LUMIR 2024: the first config (their Docker: the Landmark one); implies --rules lumir24"),
    (("-c2", "--config2"), "c2", "LUMIR 2024: the second config (Segmentation), merged after -c1"),
    (("-l1", "--landmark_config"), "l1", "LUMIR 2025: the landmark config; implies --rules lumir25"),
    (("-s1", "--seg_config1"), "s1", "LUMIR 2025: the first segmentation config (ID_dice)"),
    (("-s2", "--seg_config2"), "s2", "LUMIR 2025: the second segmentation config (OOD_dice)"),
    (("-s3", "--seg_config3"), "s3", "LUMIR 2025: the third segmentation config (MM_dice)"),
)


def build_parser(parser: argparse.ArgumentParser) -> None:
    """Flags of the organisers' scripts (-i -d -o -c -v; LUMIR's -c1 -c2 and -l1 -s1 -s2 -s3) plus ours."""
    parser.add_argument("-i", "--input", dest="input_path", required=True, help="folder with the displacement fields")
    parser.add_argument("-d", "--data", dest="gt_path", required=True, help="task data folder (ground truth)")
    parser.add_argument("-o", "--output", dest="output_path", default="metrics.json", help="output json (a folder: timestamped name)")
    parser.add_argument("-c", "--config", dest="config_path", default=None,
                        help="official evaluation config json (default: the organisers' configs in the task folder, else derived from the task)")
    for flags, role, text in CONFIG_FLAGS:
        parser.add_argument(*flags, dest=f"config_{role}", default=None, metavar="CONFIG", help=text)
    parser.add_argument(
        "--rules", choices=rulesets.CHOICES, default="auto",
        help="whose evaluator to reproduce: auto = lumir24 for -c1/-c2, lumir25 for -l1/-s*, for one config lumir25 when it is "
        "LUMIR's (name without task_name, or an ndv metric), remind2reg for task_name ReMIND2Reg, else the task folder's "
        "(LUMIR, ReMIND2Reg folders; l2r = MDL-UzL/L2R for the others)",
    )  # fmt: skip
    parser.add_argument("-v", "--verbose", action="store_true", help="print per-case results")
    parser.add_argument("--split", choices=("val", "test"), default="val", help="pairs of a derived config")
    parser.add_argument("--format", dest="fmt", choices=("auto", *Layout), default="auto", help="submission format")
    parser.add_argument("--task-folder", default=None, help="2020 submissions: the task_NN sub-folder to read")
    parser.add_argument("-j", "--workers", type=int, default=None, help=f"worker processes (default: min(cores, pairs); 1 for a run estimated under {POOL_MIN_SECONDS} CPU s)")
    parser.add_argument("--official-only", action="store_true", help="only the official metrics (no *_true, *_mm, folding_fraction)")
    parser.add_argument("--aggregate", choices=("l2r", "2020"), default="l2r", help="aggregate rule of the l2r rules (2020: ddof=1, 0.3 quantile)")
    parser.add_argument("--tre", dest="tre_method", choices=("auto", "kernel", "crop", "full"), default="auto", help="TRE sampler")
    add_overwrite_argument(parser, "an existing output json")


def config_source(args: argparse.Namespace) -> ConfigSource:
    """The ``config`` argument of :func:`evaluate` from the flags: ``-c``, LUMIR's, or none (derive)."""
    several = {role: getattr(args, f"config_{role}") for _, role, _ in CONFIG_FLAGS if getattr(args, f"config_{role}", None)}
    if several:
        if args.config_path:
            several["c"] = args.config_path  # plan() refuses the mix, naming the flags
        return several
    return args.config_path


def run(args: argparse.Namespace) -> int:
    """Evaluate, write the json atomically, print the aggregates. ``DataError`` propagates."""
    options = Options(extras=not args.official_only, aggregate=args.aggregate, tre_method=args.tre_method)
    from datetime import datetime  # here: only an output folder needs a timestamped name

    out = Path(args.output_path)
    out = out / (datetime.now().strftime("%Y%m%d_%H%M") + ".json") if out.is_dir() else check_output_path(out, folder=False)
    refuse_existing([out], args.overwrite, "-o")
    keep_freed_memory()  # this process and the workers it forks
    result = evaluate(
        args.input_path, args.gt_path, config_source(args), rules=getattr(args, "rules", "auto"), split=args.split, fmt=args.fmt,
        workers=args.workers, options=options, task_folder=args.task_folder, progress=True,
    )  # fmt: skip
    write_json(out, result)
    if args.verbose:
        for key, case in result["cases"].items():
            print(key + "  " + "  ".join(f"{k}={v['mean']:.5f}" for k, v in case.items()))
    print_summary(result, out)
    return 0


def main(argv: list[str] | None = None) -> int:
    """``python -m evaluation.evaluate``: exit 0 ok, 1 bad input (message on stderr), 2 usage."""
    return run_cli("python -m evaluation.evaluate", "Learn2Reg evaluation (official metrics, fast).", build_parser, run, argv)


if __name__ == "__main__":
    sys.exit(main())
