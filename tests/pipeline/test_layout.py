"""The package layout of ``pipeline/``: imports run one way (stages use the model and the data
layer, never the reverse; nothing outside the demo imports the demo); few top-level modules."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from tests.paths import REPO as ROOT

PIPELINE = ROOT / "pipeline"
TOP_LEVEL = ("pipeline.cli", "pipeline.config", "pipeline.distributed")
# package -> the pipeline modules it may import (prefixes); evaluation and third parties are always allowed
ALLOWED = {
    "pipeline.model": ("pipeline.model", "pipeline.config"),
    "pipeline.affine": ("pipeline.affine", "pipeline.config"),
    "pipeline.data": ("pipeline.data", "pipeline.config"),
    "pipeline.training": ("pipeline.training", "pipeline.model", "pipeline.data", *TOP_LEVEL),
    "pipeline.prediction": (
        "pipeline.prediction", "pipeline.model", "pipeline.data", "pipeline.affine.registration",
        "pipeline.affine.fov", "pipeline.affine.ngf", *TOP_LEVEL,
    ),
    "pipeline.demo": ("pipeline",),
}


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def pipeline_imports(path: Path) -> set[str]:
    """Every ``pipeline...`` module a file imports, at any depth of the file (absolute imports only)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.split(".")[0] == "pipeline")
        elif isinstance(node, ast.ImportFrom):
            assert node.level == 0, f"{path}: relative import"
            if node.module and node.module.split(".")[0] == "pipeline":
                found.update(f"{node.module}.{a.name}" if node.module == "pipeline" else node.module for a in node.names)
    return found


def _allowed(target: str, prefixes: tuple[str, ...]) -> bool:
    return any(target == p or target.startswith(p + ".") for p in prefixes)


MODULES = sorted(PIPELINE.rglob("*.py"))


@pytest.mark.parametrize("path", MODULES, ids=lambda p: module_name(p))
def test_imports_run_one_way(path):
    name = module_name(path)
    package = next((pkg for pkg in ALLOWED if name == pkg or name.startswith(pkg + ".")), None)
    imports = pipeline_imports(path)
    if package is None:  # top level: cli, config, distributed, __main__
        bad = {t for t in imports if not _allowed(t, ("pipeline.cli", "pipeline.config", "pipeline.distributed"))}
    else:
        bad = {t for t in imports if not _allowed(t, ALLOWED[package])}
    assert not bad, f"{name} imports {sorted(bad)}"


def test_nothing_outside_the_demo_imports_it():
    offenders = [module_name(p) for p in MODULES if not module_name(p).startswith("pipeline.demo")
                 and any(_allowed(t, ("pipeline.demo",)) for t in pipeline_imports(p))]
    assert not offenders


def test_the_top_level_stays_small_and_every_package_says_what_it_may_import():
    top = [p.name for p in PIPELINE.glob("*.py")]
    assert len(top) <= 8, top
    for package in sorted(p for p in PIPELINE.iterdir() if (p / "__init__.py").is_file()):
        doc = ast.get_docstring(ast.parse((package / "__init__.py").read_text()))
        assert doc and "May import" in doc, f"{package}/__init__.py: no docstring saying what it may import"


def test_the_rules_see_an_offending_import(tmp_path):
    """The checker itself: a stage import inside the model is found, even inside a function."""
    bad = tmp_path / "bad.py"
    bad.write_text("def f():\n    from pipeline.training.train import train\n    import pipeline.demo.job\n")
    imports = pipeline_imports(bad)
    assert imports == {"pipeline.training.train", "pipeline.demo.job"}
    assert not any(_allowed(t, ALLOWED["pipeline.model"]) for t in imports)
