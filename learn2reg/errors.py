"""The errors every command turns into its message and exit code 1 (``learn2reg.cli.execute``).

* :class:`DataError`: the input: a file that exists but cannot be used (the message names it).
* :class:`OutputError`: the machine: a file or folder a stage must write cannot be written (a full
  disk or quota, no permission, a read-only file system). It names the path and the cause, and
  says what is already safe and how to go on (:attr:`OutputError.next_step`, which the stage
  that knows how it resumes replaces: :meth:`OutputError.with_next_step`).
* :class:`FolderBusy`: another live process writes the folder (``learn2reg.writers``).

Standard library only; ``learn2reg.io`` re-exports ``DataError``, where it has always been imported from.
"""

from __future__ import annotations

from pathlib import Path

#: what every atomic write guarantees, and the default advice
NOTHING_PARTIAL = "nothing partial is left (every file is written whole or not at all)"
DEFAULT_NEXT_STEP = f"{NOTHING_PARTIAL}; fix this, then rerun the same command"


class DataError(ValueError):
    """A file that exists but cannot be used; the message names the file and the problem."""


class OutputError(Exception):
    """A write the machine refused: ``problem`` names the path and the cause (with the free space
    for a full disk, the owner for a permission), ``next_step`` what is kept and how to resume.
    Not a :class:`DataError`: a stage that goes on with the next pair after a bad one stops here,
    since every later write would meet the same disk."""

    def __init__(self, problem: str, next_step: str = DEFAULT_NEXT_STEP, path: Path | None = None,
                 errno: int | None = None, before_work: bool = False) -> None:
        super().__init__(f"{problem}; {next_step}")
        self.problem, self.next_step, self.path, self.errno = problem, next_step, path, errno
        self.before_work = before_work  # a refusal before anything was written: its next step stays

    def with_next_step(self, next_step: str) -> OutputError:
        """The same problem with another account of what is kept and how to resume (a refusal
        before the work keeps its own: nothing was written)."""
        return OutputError(self.problem, self.next_step if self.before_work else next_step, self.path, self.errno,
                           self.before_work)


class FolderBusy(DataError):
    """Another live process holds the folder's writer lock (``learn2reg.writers.hold_folder``)."""
