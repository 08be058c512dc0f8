"""One writer per folder, and temporaries removed only when their writer is dead.

**Temporaries.** An atomic write (``learn2reg.io.atomic_path``) goes to a hidden sibling named
after its writer, ``.{name}.{machine}-{pid}-{random}.tmp{suffixes}``, which the writer holds an
``fcntl.flock`` on until it has renamed it onto the file (:func:`claim_temporary`). ``machine``
is a short hash of the host name, the boot id and the pid namespace, so a pid is only looked up
where it means the same process (a container has its own pid namespace).
:func:`remove_stale_temporaries` removes a temporary only when no live writer owns it: on the same
machine when its pid is gone; otherwise (another host or container, a name of an older version)
when nobody holds its lock (the kernel drops a killed writer's lock), or, on a file system
without ``flock``, when it has not changed for :data:`UNKNOWN_WRITER_AGE_S`. Two processes that
write the same file (the ranks of one job filling a shared cache) thus never delete each other's
temporaries: the last complete rename wins, and every reader sees a complete file.

**Folder lock.** :func:`hold_folder` gives a run folder or a submission folder one writer at a time:
``fcntl.flock`` on ``FOLDER/.l2r-lock``, held while the stage runs, released by the kernel when
the process ends however it ends (``kill -9`` included), so a killed run never blocks the next.
The lock file records the holder (pid, host, user, command, start, torchrun job) for the refusal
a second process gets (:class:`~learn2reg.errors.FolderBusy`). Taking it also removes the
folder's stale temporaries. The ranks of one ``torchrun`` job count as one writer: rank 0 takes
the lock for all of them (``pipeline.distributed.hold_folder``). A process may take a folder it
already holds again (nested stages). On a file system without ``flock`` a warning says that one
writer at a time is not enforced there.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import functools
import glob
import json
import logging
import os
import re
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from learn2reg.errors import DataError, FolderBusy
from learn2reg.faults import output_error

log = logging.getLogger(__name__)

LOCK_NAME = ".l2r-lock"
#: on a file system without flock, a temporary of another machine is stale once unchanged this long (s)
UNKNOWN_WRITER_AGE_S = 24 * 3600.0
_TEMPORARY = re.compile(r"^\..+\.(?P<machine>[0-9a-f]{8})-(?P<pid>\d+)-[A-Za-z0-9_]+\.tmp(\.[^/]*)?$")
_NO_FLOCK = {errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL}


@functools.lru_cache(maxsize=1)
def machine_id() -> str:
    """8 hex digits naming where a pid means one process: host, boot and pid namespace (their
    CRC-32: zlib is loaded anyway, where hashlib and socket would cost ~5 ms of every command
    that writes a file)."""
    import zlib

    parts = [hostname()]
    for source in ("/proc/sys/kernel/random/boot_id", "/proc/self/ns/pid"):
        try:
            parts.append(Path(source).read_text().strip() if "boot_id" in source else os.readlink(source))
        except OSError:
            parts.append("")
    return f"{zlib.crc32('|'.join(parts).encode()):08x}"


def hostname() -> str:
    """This machine's network name (``socket.gethostname()``, without importing socket where
    ``os.uname`` has it)."""
    if hasattr(os, "uname"):
        return os.uname().nodename
    import socket

    return socket.gethostname()


def temporary_prefix(name: str) -> str:
    """The start of this process's temporary names for the file ``name`` (:func:`make_temporary` adds the rest)."""
    return f".{name}.{machine_id()}-{os.getpid()}-"


def make_temporary(folder: Path, name: str, suffix: str) -> tuple[int, Path]:
    """Create this process's new temporary for the file ``name`` in ``folder`` -> (open fd, path):
    ``temporary_prefix`` + 8 random hex digits + ``.tmp`` + ``suffix``, mode 0600, never an
    existing file (``O_EXCL``; what ``tempfile.mkstemp`` does, without importing tempfile and
    random)."""
    flags = os.O_RDWR | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_BINARY", 0)
    for _ in range(100):
        path = Path(folder) / f"{temporary_prefix(name)}{os.urandom(4).hex()}.tmp{suffix}"
        try:
            return os.open(path, flags, 0o600), path
        except FileExistsError:
            continue
    raise FileExistsError(errno.EEXIST, "no unused temporary name", str(Path(folder) / f"{temporary_prefix(name)}*"))


def pid_alive(pid: int) -> bool:
    """Whether a process ``pid`` exists on this machine (another user's counts; a zombie too)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def claim_temporary(fd: int) -> None:
    """Mark the open temporary ``fd`` as being written by this process (until ``fd`` is closed)."""
    with contextlib.suppress(OSError):  # no flock here: the name (machine, pid) and the age still tell
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)


def is_stale(path: Path, now: float | None = None) -> bool:
    """Whether the temporary ``path`` belongs to no live writer (module docstring)."""
    match = _TEMPORARY.match(path.name)
    if match and match["machine"] == machine_id():
        return not pid_alive(int(match["pid"]))
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:  # gone meanwhile, or not ours to judge
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        return True  # nobody holds it: its writer is dead
    except BlockingIOError:
        return False  # a live writer, elsewhere
    except OSError:  # a file system without flock: only the age can tell
        return (time.time() if now is None else now) - os.fstat(fd).st_mtime > UNKNOWN_WRITER_AGE_S
    finally:
        os.close(fd)


def remove_stale_temporaries(folder: Path, name: str | None = None) -> list[Path]:
    """Remove the temporaries in ``folder`` (of the file ``name`` only, when given) that no live
    writer owns; returns them. Files only, this folder only."""
    pattern = f".{glob.escape(name)}.*.tmp*" if name else ".*.tmp*"
    removed = []
    for path in Path(folder).glob(pattern):
        with contextlib.suppress(OSError):
            if path.is_file() and not path.is_symlink() and is_stale(path):
                path.unlink(missing_ok=True)  # a write killed mid-way (kill -9): it never completes
                removed.append(path)
    if removed:
        log.info("%s: removed %d temporary file(s) of writes killed mid-way", folder, len(removed))
    return removed


def torchrun_job() -> str | None:
    """The ``torchrun`` job this process belongs to (run id and rendezvous address), or ``None``."""
    run_id = os.environ.get("TORCHELASTIC_RUN_ID")
    if run_id is None:
        return None
    return f"{run_id}@{os.environ.get('MASTER_ADDR', '?')}:{os.environ.get('MASTER_PORT', '?')}"


def holder_record() -> dict[str, Any]:
    """What the lock file says about its holder."""
    import shlex
    from datetime import datetime

    return {
        "pid": os.getpid(), "host": hostname(), "machine": machine_id(), "uid": os.geteuid(),
        "command": shlex.join(getattr(sys, "orig_argv", None) or [sys.executable, *sys.argv]),
        "started": datetime.now().astimezone().isoformat(timespec="seconds"), "torchrun_job": torchrun_job(),
    }


def busy_message(folder: Path, holder: dict[str, Any]) -> str:
    """The refusal a second writer gets, naming the folder and the process that holds it."""
    if not holder:
        who = "another process (it has only just started: its details are not written yet)"
    else:
        job = f", torchrun job {holder['torchrun_job']}" if holder.get("torchrun_job") else ""
        who = (f"another process: pid {holder.get('pid')} on {holder.get('host')} (uid {holder.get('uid')}{job}), "
               f"since {holder.get('started')}: {holder.get('command')}")
    return (f"{folder}: in use by {who}; one process writes a folder at a time: wait until it ends or stop it "
            f"(e.g. `kill {holder.get('pid', 'PID')}`: a stopped or killed process frees the folder at once), then rerun; "
            "or choose another folder")


class FolderLock:
    """The writer lock of one folder (module docstring); :func:`hold_folder` is the way to use it."""

    def __init__(self, folder: str | Path) -> None:
        self.folder = Path(folder)
        self.path = self.folder / LOCK_NAME
        self.created = False  # this lock made the folder (so a refused start may remove it again)
        self.fd: int | None = None
        self.pid = os.getpid()

    def acquire(self) -> FolderLock:
        """Take the lock, or raise ``FolderBusy`` naming the holder; ``OutputError`` when the folder
        cannot be made or written; ``DataError`` when it is a file."""
        self._make_folder()
        try:
            for _ in range(5):  # the last holder may remove the file between our open and our flock
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o666)
                if self._lock(fd) and self._same_file(fd):
                    break
                os.close(fd)
            else:
                raise FolderBusy(f"{self.folder}: its lock file {self.path} keeps changing; another process is using it")
        except OSError as exc:
            self._undo_folder()
            raise output_error(exc, self.folder) from exc
        except BaseException:
            self._undo_folder()
            raise
        self.fd = fd
        with contextlib.suppress(OSError):  # a full disk: the stage's own writes will say so
            os.ftruncate(fd, 0)
            os.pwrite(fd, (json.dumps(holder_record()) + "\n").encode(), 0)
        remove_stale_temporaries(self.folder)
        return self

    def _make_folder(self) -> None:
        if self.folder.exists() and not self.folder.is_dir():
            raise DataError(f"{self.folder}: exists and is a file, but a folder is needed here")
        try:
            self.folder.mkdir(parents=True)
            self.created = True
        except FileExistsError:
            pass
        except OSError as exc:
            raise output_error(exc, self.folder) from exc

    def _lock(self, fd: int) -> bool:
        """Lock ``fd``; ``FolderBusy`` when another process holds it; True when locked (or when the
        file system cannot lock: then with a warning)."""
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _read_holder(fd)
            os.close(fd)
            raise FolderBusy(busy_message(self.folder, holder)) from None
        except OSError as exc:
            if exc.errno not in _NO_FLOCK:
                raise
            log.warning("%s: this file system cannot lock files (%s): one writer at a time is not enforced here",
                        self.folder, exc.strerror)
        return True

    def _same_file(self, fd: int) -> bool:
        try:
            return os.stat(self.path).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:
            return False

    def _undo_folder(self) -> None:
        if self.created:
            with contextlib.suppress(OSError):
                self.folder.rmdir()
            self.created = False

    def release(self) -> None:
        """Remove the lock file and free the lock (and the folder, if this lock made it and it is empty)."""
        if self.fd is None:
            return
        with contextlib.suppress(OSError):
            if self._same_file(self.fd):
                self.path.unlink()
        os.close(self.fd)
        self.fd = None
        with contextlib.suppress(OSError):
            if self.created:
                self.folder.rmdir()  # only when empty: a refused or failed start leaves nothing behind


def _read_holder(fd: int) -> dict[str, Any]:
    try:
        text = os.pread(fd, 65536, 0).decode(errors="replace")
        holder = json.loads(text) if text.strip() else {}
    except (OSError, ValueError):
        return {}
    return holder if isinstance(holder, dict) else {}


_HELD: dict[str, FolderLock] = {}  # folders this process holds (real path -> lock): taking one again nests


@contextlib.contextmanager
def hold_folder(folder: str | Path) -> Iterator[FolderLock]:
    """Be the one writer of ``folder`` inside the block (module docstring). Yields the lock (its
    ``created``: whether this call made the folder); a folder this process already holds is
    held again (``created`` false). Raises ``FolderBusy`` naming the holding process."""
    key = os.path.realpath(folder)
    held = _HELD.get(key)
    if held is not None and held.pid == os.getpid() and held.fd is not None:
        yield FolderLock(folder)
        return
    lock = FolderLock(folder).acquire()
    _HELD[key] = lock
    try:
        yield lock
    finally:
        _HELD.pop(key, None)
        lock.release()
