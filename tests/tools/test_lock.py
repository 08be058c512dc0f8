"""tools/lock.py and requirements-lock.txt: every installed package pinned, the lock current."""

from __future__ import annotations

import re

import pytest

from tests.docker_recipe import REPO
from tools import lock

LOCK = REPO / "requirements-lock.txt"
# a tiny installed world: name -> (version, requirements as in the metadata)
WORLD = {
    "app": ("1.0", ["lib>=1", "Helper_Thing; python_version >= '3'", "extra-only; extra == 'test'", "win; sys_platform == 'win32'"]),
    "lib": ("2.0+cpu", ["helper-thing"]),
    "helper-thing": ("3.1", None),
    "devtool": ("0.5", ["lib", "dev-dep"]),
    "dev-dep": ("9", []),
}


@pytest.fixture
def world(monkeypatch, tmp_path):
    def requires(name):
        return WORLD[name][1]

    def version(name):
        return WORLD[name][0]

    monkeypatch.setattr(lock.metadata, "requires", requires)
    monkeypatch.setattr(lock.metadata, "version", version)
    (tmp_path / "requirements.txt").write_text("app==1.0  # the app\n")
    (tmp_path / "requirements-dev.txt").write_text("-r requirements.txt\ndevtool==0.5\n")
    return tmp_path


def test_closure_follows_requirements_whose_markers_hold_and_names_who_pulls_them_in(world):
    assert lock.closure(["app"]) == {"app": [], "lib": ["app"], "helper-thing": ["app", "lib"]}
    assert lock.closure(["devtool"], done={"app", "lib", "helper-thing"}) == {"devtool": [], "dev-dep": ["devtool"]}


def test_render_pins_runtime_then_development_without_local_labels(world):
    text = lock.render(world)
    assert text.endswith(
        "# runtime: requirements.txt and what it pulls in\n"
        "app==1.0\nhelper-thing==3.1  # via app, lib\nlib==2.0  # via app\n"
        "\n# development: requirements-dev.txt and what it pulls in\n"
        "dev-dep==9  # via devtool\ndevtool==0.5\n"
    )
    path = world / "lock.txt"
    path.write_text(text)
    assert lock.read_lock(path, "runtime") == {"app": "1.0", "helper-thing": "3.1", "lib": "2.0"}
    assert lock.read_lock(path) == {"app": "1.0", "helper-thing": "3.1", "lib": "2.0", "dev-dep": "9", "devtool": "0.5"}


def test_the_lock_pins_every_requirement_at_its_version():
    pinned = lock.read_lock(LOCK)
    for name in ("requirements.txt", "requirements-dev.txt"):
        for line in (REPO / name).read_text().splitlines():
            match = re.match(r"([A-Za-z0-9_.\-]+)==(\S+)", line)
            if match:
                assert pinned.get(lock.canonicalize_name(match.group(1))) == match.group(2), (name, line)
    assert "torch" in lock.read_lock(LOCK, "runtime") and "pytest" not in lock.read_lock(LOCK, "runtime")


def test_the_lock_is_what_this_environment_holds():
    """The venv (made by ``make`` with the lock as constraints) holds exactly the locked versions of
    everything the requirements pull in: a package missing from the lock, or another version, fails
    here (``make lock`` rewrites the file from the environment)."""
    assert lock.render() == LOCK.read_text()
