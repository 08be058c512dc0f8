"""The package layout: three packages, imports running one way.

* ``learn2reg/`` (the challenge's formats) stands alone: numpy/scipy/nibabel, never torch,
  ``pipeline`` or ``evaluation``.
* ``evaluation/`` (scoring) stands on ``learn2reg`` only: never torch or ``pipeline``; its top level
  holds the scoring modules, the leaderboard and the per-pair reports are sub-packages.
* ``pipeline/``: stages use the model and the data layer, never the reverse; nothing outside the demo
  imports the demo; it imports ``evaluation`` only where it really scores (``SCORING``).
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

from tests.paths import REPO as ROOT

PACKAGES = ("learn2reg", "evaluation", "pipeline")
TOP_LEVEL = ("pipeline.cli", "pipeline.config", "pipeline.distributed")
# pipeline package -> the pipeline modules it may import (prefixes); learn2reg and third parties are always allowed
ALLOWED = {
    "pipeline.model": ("pipeline.model", "pipeline.config"),
    "pipeline.affine": ("pipeline.affine", "pipeline.config"),
    "pipeline.data": ("pipeline.data", "pipeline.config"),
    "pipeline.training": ("pipeline.training", "pipeline.model", "pipeline.data", *TOP_LEVEL),
    "pipeline.prediction": (
        "pipeline.prediction", "pipeline.model", "pipeline.data", "pipeline.affine.registration",
        "pipeline.affine.fov", "pipeline.affine.ngf", "pipeline.affine.support", *TOP_LEVEL,
    ),
    "pipeline.container": ("pipeline.container", "pipeline.prediction", "pipeline.training", "pipeline.affine.fov", *TOP_LEVEL),
    "pipeline.demo": ("pipeline",),
}
# The pipeline modules that score (and so may import evaluation), and what for.
SCORING = {
    "pipeline.training.validation": "validation Dice and TRE during training",
    "pipeline.affine.align": "the landmark error of the affine stage",
    "pipeline.prediction.outputs": "per-pair reports and Jacobian maps of a prediction",
    "pipeline.prediction.predict": "the report index of a prediction",
    "pipeline.prediction.register": "the report of one registered pair",
    "pipeline.demo.job": "the demo job evaluates and ranks what it trained",
    "pipeline.cli": "evaluate, initial, report and leaderboard as pipeline commands (imported by name)",
}
FORBIDDEN = {  # package -> top-level modules it must never import
    "learn2reg": ("torch", "pipeline", "evaluation"),
    "evaluation": ("torch", "pipeline"),
    "pipeline": (),
}


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(path: Path) -> set[str]:
    """Every module a file imports, at any depth of the file (``from a import b`` gives ``a.b`` for our
    packages, where ``b`` may be a module, and ``a`` for third parties); absolute imports only."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            assert node.level == 0, f"{path}: relative import"
            if node.module and node.module.split(".")[0] in PACKAGES:
                found.update(f"{node.module}.{a.name}" for a in node.names)
            elif node.module:
                found.add(node.module)
    return found


def pipeline_imports(path: Path) -> set[str]:
    """The ``pipeline...`` modules a file imports (``from pipeline import x`` names ``pipeline.x``)."""
    return {_strip_names(t) for t in imports(path) if t.split(".")[0] == "pipeline"}


def _strip_names(target: str) -> str:
    """``pipeline.training.train.train`` (a function) -> the module ``pipeline.training.train``."""
    parts = target.split(".")
    while len(parts) > 1 and not _is_module(parts):
        parts.pop()
    return ".".join(parts)


def _is_module(parts: list[str]) -> bool:
    base = ROOT.joinpath(*parts)
    return base.with_suffix(".py").is_file() or (base / "__init__.py").is_file()


def _allowed(target: str, prefixes: tuple[str, ...]) -> bool:
    return any(target == p or target.startswith(p + ".") for p in prefixes)


MODULES = {pkg: sorted((ROOT / pkg).rglob("*.py")) for pkg in PACKAGES}
ALL = [p for pkg in PACKAGES for p in MODULES[pkg]]


@pytest.mark.parametrize("path", ALL, ids=module_name)
def test_no_package_imports_what_it_stands_below(path):
    package = module_name(path).split(".")[0]
    bad = {t for t in imports(path) if t.split(".")[0] in FORBIDDEN[package]}
    assert not bad, f"{module_name(path)} imports {sorted(bad)}"


@pytest.mark.parametrize("path", MODULES["pipeline"], ids=module_name)
def test_pipeline_imports_run_one_way(path):
    name = module_name(path)
    package = next((pkg for pkg in ALLOWED if name == pkg or name.startswith(pkg + ".")), None)
    found = pipeline_imports(path)
    prefixes = ALLOWED[package] if package else TOP_LEVEL  # top level: cli, config, distributed, __main__
    bad = {t for t in found if not _allowed(t, prefixes)}
    assert not bad, f"{name} imports {sorted(bad)}"


@pytest.mark.parametrize("path", MODULES["pipeline"], ids=module_name)
def test_pipeline_imports_evaluation_only_where_it_scores(path):
    name = module_name(path)
    scoring = {t for t in imports(path) if t.split(".")[0] == "evaluation"}
    assert not scoring or name in SCORING, f"{name} imports {sorted(scoring)}: formats come from learn2reg"


def test_nothing_outside_the_demo_imports_it():
    offenders = [module_name(p) for p in MODULES["pipeline"] if not module_name(p).startswith("pipeline.demo")
                 and any(_allowed(t, ("pipeline.demo",)) for t in pipeline_imports(p))]
    assert not offenders


def test_tops_stay_small_and_every_package_says_what_it_may_import():
    assert len(list((ROOT / "pipeline").glob("*.py"))) <= 8
    scoring = sorted(p.name for p in (ROOT / "evaluation").glob("*.py") if p.name != "__init__.py")
    # the evaluator (evaluate: configs, rule set, CLI; case: one pair; pool: the worker processes; aggregate:
    # merge, aggregates per rule set and what is printed), the zero-field row, and the metric modules
    # (metrics: DSC, HD95, TRE; spline: the TRE's cubic sampling; surface: HD95's surfels and
    # distances; jacobian: SDlogJ, folding, NDV): the "about 8 modules or fewer" at
    # evaluation/'s top level
    assert scoring == ["aggregate.py", "case.py", "evaluate.py", "initial.py", "jacobian.py", "metrics.py", "pool.py", "spline.py", "surface.py"], scoring
    packages = [ROOT / pkg for pkg in PACKAGES]
    packages += [p for pkg in PACKAGES for p in (ROOT / pkg).rglob("*") if (p / "__init__.py").is_file()]
    for package in packages:
        doc = ast.get_docstring(ast.parse((package / "__init__.py").read_text()))
        assert doc and "May import" in doc, f"{package}/__init__.py: no docstring saying what it may import"


def test_the_rules_see_an_offending_import(tmp_path):
    """The checker itself: a stage import inside the model is found, even inside a function, and a
    torch import inside a learn2reg function is found too."""
    bad = tmp_path / "bad.py"
    bad.write_text("def f():\n    from pipeline.training.train import train\n    import pipeline.demo.job\n    import torch.nn\n")
    assert pipeline_imports(bad) == {"pipeline.training.train", "pipeline.demo.job"}
    assert not any(_allowed(t, ALLOWED["pipeline.model"]) for t in pipeline_imports(bad))
    assert {t for t in imports(bad) if t.split(".")[0] in FORBIDDEN["learn2reg"]} == {
        "pipeline.training.train.train", "pipeline.demo.job", "torch.nn"}


def test_the_formats_and_the_evaluator_load_without_torch():
    """What the slim evaluator image runs: every learn2reg and evaluation module, imported in a fresh
    interpreter, loads neither torch nor pipeline (nor does any module they import)."""
    names = [module_name(p) for pkg in ("learn2reg", "evaluation") for p in MODULES[pkg] if p.name != "__main__.py"]
    code = "import importlib, sys\n" + "".join(f"importlib.import_module({n!r})\n" for n in names)
    code += "print(sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'pipeline')))"
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[]"
