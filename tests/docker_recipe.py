"""What the container tests share: the README's container blocks, a clean copy of the working tree,
the compose variables, and the environment of a fresh shell.

The README's "Containers" section marks the commands a user types with marker comments
(``<!-- container-block: NAME -->`` ... ``<!-- /container-block -->``, around one fenced ``sh`` block);
the tests run those blocks as written, so the README cannot drift from what works.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from collections.abc import Mapping
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
README = REPO / "README.md"
#: the README's container blocks, in the order a user runs them on a machine without registry and GPU
README_BLOCKS = ("no-registry", "run")
#: every variable docker-compose.yml and docker-compose.cpu.yml read (the README documents each one)
COMPOSE_VARIABLES = (
    "TASK", "RUN", "SPLIT", "CONFIG", "SEED", "DEMO_TASKS", "DATA_DIR", "RUNS_DIR", "OUTPUTS_DIR",
    "UID", "GID", "IMAGE", "BASE_IMAGE", "TORCH_WHEEL", "TORCH_INDEX", "METHOD", "LEADERBOARD_ARGS", "OVERWRITE",
)
_BLOCK = re.compile(r"<!-- container-block: ([\w-]+) -->\n```sh\n(.*?)```\n<!-- /container-block -->", re.S)


def readme_blocks(text: str | None = None) -> dict[str, str]:
    """Name -> the shell text of each container block of the README (``text``: its contents)."""
    return dict(_BLOCK.findall(README.read_text() if text is None else text))


def readme_script() -> str:
    """The README's container blocks (README_BLOCKS, in order) as one bash script that stops at the
    first failing command and echoes each command."""
    blocks = readme_blocks()
    return "set -eo pipefail -x\n" + "".join(blocks[name] for name in README_BLOCKS)


def clean_copy(dest: Path) -> Path:
    """A copy of the working tree as a fresh clone would have it, uncommitted changes included: the
    files git tracks plus the untracked files it does not ignore (regular files; no .env, data, wheels)."""
    listed = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=REPO, capture_output=True, check=True,
    ).stdout.decode().split("\0")
    for name in filter(None, listed):
        source = REPO / name
        if source.is_file() and not source.is_symlink():  # deleted files and the .venv link stay behind
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, dest / name)
    return dest


def fresh_shell_env(engine_env: Mapping[str, str], **extra: str) -> dict[str, str]:
    """This process's environment without any compose setting (as a new shell has it), pointed at the
    engine of ``engine_env``; plus ``extra``."""
    env = {
        key: value for key, value in os.environ.items()
        if key not in COMPOSE_VARIABLES and not key.startswith(("COMPOSE_", "DOCKER_", "L2R_"))
    }  # fmt: skip
    env.update({key: value for key, value in engine_env.items() if key.startswith("DOCKER_")})
    env.update(extra)
    return env
