"""Where the repository is, for tests that run commands from its root or read its files."""

from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
