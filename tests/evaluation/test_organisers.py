"""Parity with each organiser's own evaluator: every run of tests/fixtures/organisers/runs.tsv.

The fixtures hold what LUMIR 2024's, LUMIR 2025's, ReMIND2Reg's and MDL-UzL/L2R's (HEAD) own
``evaluation.py`` wrote for small cases (HOW_MADE.md there; their behaviour is written down in
SPEC.md). Each successful run must come out of ``evaluate`` with the same names, key order and
numbers to 1e-6 relative (NaN == NaN, inf == inf; an absolute 1e-12 floor for round-off around
zero: their masked SDlogJ of a zero field is 2.2e-16, ours 0); each failing run must fail with a
``DataError`` naming the file the rule set wants. The rule set is picked automatically (the
command line and the config say whose evaluator it is), except for L2R HEAD run on ReMIND2Reg's
config (``--rules l2r``). One run per evaluator also goes through the real command line.
"""

from __future__ import annotations

import json
import math
import shlex
import subprocess
import sys
from dataclasses import dataclass
from typing import Any

import pytest

from evaluation.evaluate import evaluate
from learn2reg import rules as rulesets
from learn2reg.io import DataError
from tests.paths import REPO

FIXTURES = REPO / "tests" / "fixtures" / "organisers"
RTOL, ATOL = 1e-6, 1e-12
RULES = {"lumir24": "lumir24", "lumir25": "lumir25", "remind2reg": "remind2reg", "l2r_head": "l2r"}
OURS = {"SDlogJ_true", "num_foldings_true", "folding_fraction", "HD95_mm"}  # the l2r rules' extras
CONFIG_FLAGS = {"-c": "c", "-c1": "c1", "-c2": "c2", "-l1": "l1", "-s1": "s1", "-s2": "s2", "-s3": "s3"}


@dataclass(frozen=True)
class Run:
    evaluator: str
    name: str
    field_set: str
    rc: int
    args: tuple[str, ...]

    @property
    def flags(self) -> dict[str, str]:
        return dict(zip(self.args[::2], self.args[1::2], strict=False))

    @property
    def config(self) -> Any:
        configs = {CONFIG_FLAGS[k]: FIXTURES / v for k, v in self.flags.items() if k in CONFIG_FLAGS}
        return configs["c"] if set(configs) == {"c"} else configs

    @property
    def rules(self) -> str:
        return "l2r" if self.evaluator == "l2r_head" else "auto"  # HEAD on ReMIND2Reg's config: named

    def expected(self) -> dict[str, Any]:
        return json.loads((FIXTURES / self.evaluator / self.name / "metrics.json").read_text())


def _runs() -> list[Run]:
    lines = (FIXTURES / "runs.tsv").read_text().splitlines()
    assert lines[0].split("\t") == ["evaluator", "run", "field_set", "rc", "args"]
    return [Run(e, r, f, int(rc), tuple(a for a in shlex.split(args) if a != "-v")) for e, r, f, rc, args in (ln.split("\t") for ln in lines[1:])]


RUNS = _runs()
PASSING = [r for r in RUNS if r.rc == 0]
FAILING = [r for r in RUNS if r.rc != 0]


def differences(ours: Any, theirs: Any, where: str = "", extras: frozenset[str] = frozenset()) -> list[str]:
    """Every difference between two results: key order, types, numbers beyond RTOL / ATOL."""
    if isinstance(theirs, dict):
        if not isinstance(ours, dict):
            return [f"{where}: {type(ours).__name__} instead of an object"]
        found = [k for k in ours if k not in extras]
        out = [] if found == list(theirs) else [f"{where}: keys {found} instead of {list(theirs)}"]
        return out + [d for k in theirs if k in ours for d in differences(ours[k], theirs[k], f"{where}/{k}", extras)]
    if isinstance(theirs, list):
        if not isinstance(ours, list) or len(ours) != len(theirs):
            return [f"{where}: {ours!r} instead of a list of {len(theirs)}"]
        return [d for i, (a, b) in enumerate(zip(ours, theirs, strict=True)) for d in differences(a, b, f"{where}[{i}]")]
    if isinstance(theirs, str) or isinstance(ours, list | dict | str):
        return [] if ours == theirs else [f"{where}: {ours!r} instead of {theirs!r}"]
    if math.isnan(theirs) or math.isinf(theirs) or math.isnan(ours) or math.isinf(ours):
        same = (math.isnan(theirs) and math.isnan(ours)) or ours == theirs
        return [] if same else [f"{where}: {ours!r} instead of {theirs!r}"]
    ok = abs(ours - theirs) <= max(RTOL * abs(theirs), ATOL)
    return [] if ok else [f"{where}: {ours!r} instead of {theirs!r} (relative {abs(ours - theirs) / abs(theirs):.1e})"]


def max_difference(ours: Any, theirs: Any) -> tuple[float, float]:
    """(largest relative difference where theirs is above ATOL in size, largest absolute difference
    where it is not: round-off around zero), over every finite number (for the parity report)."""
    if isinstance(theirs, dict | list):
        pairs = [(ours[k], v) for k, v in theirs.items()] if isinstance(theirs, dict) else list(zip(ours, theirs, strict=True))
        found = [max_difference(a, b) for a, b in pairs]
        return max([f[0] for f in found], default=0.0), max([f[1] for f in found], default=0.0)
    if isinstance(theirs, str) or not math.isfinite(theirs):
        return 0.0, 0.0
    if abs(theirs) <= ATOL:
        return 0.0, abs(ours - theirs)
    return abs(ours - theirs) / abs(theirs), 0.0


def check(run: Run, ours: dict[str, Any]) -> None:
    expected_rules = RULES[run.evaluator]
    assert ours["rules"] == expected_rules
    assert list(ours)[-1] == "rules"  # after the organisers' keys
    extras = frozenset(OURS | {"rules"}) if expected_rules == "l2r" else frozenset({"rules"})
    found = differences(ours, run.expected(), extras=extras)
    assert not found, f"{run.evaluator}/{run.name}: {len(found)} difference(s):\n" + "\n".join(found[:20])


@pytest.mark.parametrize("run", PASSING, ids=lambda r: f"{r.evaluator}-{r.name}")
def test_each_organisers_numbers(run):
    check(run, evaluate(FIXTURES / run.flags["-i"], FIXTURES / run.flags["-d"], run.config, rules=run.rules, workers=1))


@pytest.mark.parametrize("run", FAILING, ids=lambda r: f"{r.evaluator}-{r.name}")
def test_each_organisers_refusals_name_the_file_their_rules_want(run):
    with pytest.raises(DataError) as err:
        evaluate(FIXTURES / run.flags["-i"], FIXTURES / run.flags["-d"], run.config, rules=run.rules, workers=1)
    rules = rulesets.RULES[RULES[run.evaluator]]
    first = json.loads((FIXTURES / next(iter(run.config.values())) if isinstance(run.config, dict) else run.config).read_text())["eval_pairs"][0]
    ids = [first[k][-16:-7] for k in ("fixed", "moving")]
    wanted = rulesets.disp_candidates(rules, *ids)
    message = str(err.value)
    assert f"expected {' or '.join(wanted)} ({rules.name} rules)" in message
    assert "which the" in message  # names the file found under a name or extension these rules refuse


CLI_RUNS = ["lumir24/fold", "lumir25/vanish", "remind2reg/npz", "l2r_head/l2r_cfg_both", "lumir24/long_names"]


@pytest.mark.parametrize("which", CLI_RUNS)
def test_the_command_line_is_a_drop_in(which, tmp_path):
    """The organisers' own arguments (paths relative to their staging folder), ``-o`` elsewhere."""
    run = next(r for r in RUNS if f"{r.evaluator}/{r.name}" == which)
    args = [a if not a.startswith("fx/") else str(tmp_path / "metrics.json") for a in run.args]
    if run.rules != "auto":
        args += ["--rules", run.rules]
    proc = subprocess.run(
        [sys.executable, "-m", "evaluation.evaluate", *args], cwd=FIXTURES, capture_output=True, text=True, timeout=120,
        env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin", "OMP_NUM_THREADS": "1"},
    )  # fmt: skip
    assert proc.returncode == run.rc, proc.stderr
    assert "Traceback" not in proc.stderr
    if run.rc:
        assert "error:" in proc.stderr and not (tmp_path / "metrics.json").exists()
        return
    check(run, json.loads((tmp_path / "metrics.json").read_text()))
    assert f"rules {RULES[run.evaluator]}" in proc.stderr  # the choice and its reason are logged


def test_channel_first_fields_give_the_same_result_where_the_rules_accept_them():
    for evaluator, pairs in (("lumir24", [("smooth", "smooth_cf"), ("fold", "fold_cf")]), ("lumir25", [("smooth", "smooth_cf")])):
        for plain, cf in pairs:
            assert (FIXTURES / evaluator / plain / "metrics.json").read_bytes() == (FIXTURES / evaluator / cf / "metrics.json").read_bytes()
    run = next(r for r in RUNS if (r.evaluator, r.name) == ("lumir24", "fold_cf"))
    check(run, evaluate(FIXTURES / run.flags["-i"], FIXTURES / run.flags["-d"], run.config, workers=2))  # and the pool


def test_every_evaluator_and_field_set_is_covered():
    covered = {(r.evaluator, r.field_set) for r in PASSING}
    for evaluator in RULES:
        for field_set in ("zero", "smooth", "fold"):
            assert (evaluator, field_set) in covered
    assert {("lumir24", "smooth_cf"), ("lumir24", "fold_cf"), ("lumir25", "smooth_cf"), ("lumir24", "vanish"), ("lumir25", "vanish")} <= covered


def test_l2r_heads_npz_fields_are_sampled_in_float32_as_theirs():
    """L2R HEAD casts an .npz field to float32 and map_coordinates returns float32 samples: the TRE
    rounds its samples the same way (sampled in float64 they were 1.2e-8 relative off, which a TRE
    of 0.06 mm on real anatomy would turn into ~1e-6)."""
    runs = [r for r in PASSING if r.evaluator == "l2r_head" and r.field_set in ("npz", "both")]
    assert len(runs) == 4
    for run in runs:
        ours = evaluate(FIXTURES / run.flags["-i"], FIXTURES / run.flags["-d"], run.config, rules=run.rules, workers=1)
        assert max_difference(ours, run.expected())[0] < 1e-12, run.name
