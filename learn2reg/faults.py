"""What a stage says when the machine, not the input, fails: a full disk or quota, a folder it may
not write or read, a read-only file system.

:func:`output_error` turns such an ``OSError`` into an :class:`~learn2reg.errors.OutputError` that
names the path, the cause and the fix: for a full disk the free space on that file system (and
what was needed, when known); for a permission the folder's owner against the process's user,
with ``chown``/``mkdir`` first and, inside the pipeline's image, ``export UID GID``; for a
read-only file system the mount. ``learn2reg.io``'s atomic writes raise it (they know the file),
the folder lock (``learn2reg.writers``) too, and ``learn2reg.cli.execute`` turns any such
``OSError`` that escapes a stage (or that a library wrapped: :func:`machine_fault`) into the same
message, exit code 1, never a traceback. A stage that knows how it resumes replaces the error's
next step (``OutputError.with_next_step``); :func:`require_space` refuses, before the work, space
a run will obviously need.
"""

from __future__ import annotations

import contextlib
import errno
import grp
import os
import pwd
import resource
from pathlib import Path

from learn2reg.errors import OutputError

NO_SPACE = frozenset({errno.ENOSPC, errno.EDQUOT})
NO_PERMISSION = frozenset({errno.EACCES, errno.EPERM})
READ_ONLY = frozenset({errno.EROFS})
#: the errors of the machine that a stage reports by name (anything else is a bug: a traceback)
FAULTS = NO_SPACE | NO_PERMISSION | READ_ONLY
CONTAINER_MARKERS = (Path("/.dockerenv"), Path("/run/.containerenv"))  # Docker, Podman


def size_text(nbytes: float) -> str:
    """``1234567`` -> ``"1.2 MB"`` (decimal units)."""
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if abs(nbytes) >= scale:
            return f"{nbytes / scale:.1f} {unit}"
    return f"{int(nbytes)} B"


def peak_resident_bytes() -> int:
    """This process's peak resident memory since it started its program (bytes): Linux's
    ``VmHWM``. Not ``ru_maxrss``, which after ``exec`` keeps the high-water mark of the process
    it was forked from (a command started by a large Python process would report that one's
    memory as its own peak); ``ru_maxrss`` only where there is no ``/proc``."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024  # kB
    except (OSError, ValueError, IndexError):
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux and most Unixes report KiB


def existing_ancestor(path: Path) -> Path:
    """``path`` itself when it exists, else its nearest existing parent."""
    for candidate in (path, *path.parents):
        with contextlib.suppress(OSError):
            if candidate.exists():
                return candidate
    return Path("/")


def free_bytes(path: str | Path) -> int | None:
    """Bytes a non-root writer may still use on the file system of ``path`` (or of its nearest
    existing parent); ``None`` when that cannot be known."""
    import shutil  # here, as below: only a write that fails needs it

    try:
        return shutil.disk_usage(existing_ancestor(Path(path))).free
    except OSError:
        return None


def space_text(path: Path, needed: int | None = None) -> str:
    """``"0 B free on the file system of /out (3.0 MB in all)"``, with what was needed when known."""
    import shutil

    where = existing_ancestor(path)
    try:
        usage = shutil.disk_usage(where)
    except OSError:
        return f"the free space on the file system of {where} is unknown"
    text = f"{size_text(usage.free)} free on the file system of {where} ({size_text(usage.total)} in all)"
    return text if needed is None else f"about {size_text(needed)} needed, {text}"


def in_pipeline_image() -> bool:
    """Whether this process runs in the pipeline's own image (its code in ``/app``, the Dockerfile's
    WORKDIR, inside a Docker or Podman container), where the output folders are host folders
    that ``docker compose`` mounts."""
    return Path(__file__).resolve().parents[1] == Path("/app") and any(marker.exists() for marker in CONTAINER_MARKERS)


def _user(uid: int) -> str:
    try:
        return f"uid {uid} ({pwd.getpwuid(uid).pw_name})"
    except KeyError:
        return f"uid {uid}"


def _group(gid: int) -> str:
    try:
        return f"gid {gid} ({grp.getgrgid(gid).gr_name})"
    except KeyError:
        return f"gid {gid}"


def permission_fix(path: Path, access: str = "write") -> str:
    """What makes ``access`` (``"write"`` or ``"read"``) at ``path`` work: the owner of the folder
    concerned (``path`` or its nearest existing parent) against the process's user, with the
    command; in the pipeline's image, the mounted host folder made first and ``export UID GID``."""
    folder = existing_ancestor(path)
    folder = folder if folder.is_dir() else folder.parent
    uid, gid = os.geteuid(), os.getegid()
    me = f"this process runs as {_user(uid)}, {_group(gid)}"
    try:
        st = folder.stat()
    except OSError:
        return me
    bit = 0o200 if access == "write" else 0o500
    if st.st_uid != uid:
        extra = f", or let others read it (`chmod o+rx {folder}`)" if access == "read" else ""
        fix = (f"{folder} belongs to {_user(st.st_uid)}, {_group(st.st_gid)} and {me}: make it yours "
               f"(`sudo chown {uid}:{gid} {folder}`){extra} or choose a folder you own")
    elif st.st_mode & bit != bit:
        fix = f"{folder} is yours but its mode {oct(st.st_mode & 0o777)} forbids it: `chmod u+rwx {folder}`"
    else:
        fix = f"{folder} is yours ({me}) and its mode allows it: an ACL, an immutable flag or a security policy forbids it"
    if in_pipeline_image():
        fix += (f"; in the containers {folder} is (under) a host folder that docker compose mounts: create the host "
                "folders yourself before the first `docker compose run` (`mkdir -p data runs outputs`; Docker creates "
                "missing ones as root) and run the stages as their owner (`export UID GID=$(id -g)`)")
    return fix


def cannot_read(path: Path) -> bool:
    """Whether ``path`` (a file, or a folder to enter) or the nearest parent this process can see
    is closed to it for reading."""
    seen = existing_ancestor(path)
    if seen != path:  # something above hides it
        return not os.access(seen, os.R_OK | os.X_OK)
    return not os.access(path, os.R_OK | (os.X_OK if path.is_dir() else 0))


def error_path(exc: OSError) -> Path | None:
    """The file an ``OSError`` names, if any."""
    raw = exc.filename
    return Path(os.fsdecode(raw)) if isinstance(raw, str | bytes) and raw else None


def describe(exc: OSError, path: str | Path | None = None, needed: int | None = None) -> str:
    """``PATH: cannot be written: CAUSE (what to do)`` for a fault of :data:`FAULTS` (``path``: the
    file the stage meant, else the error's own file name)."""
    where = Path(path) if path is not None else error_path(exc)
    name = str(where) if where is not None else "a file"
    if exc.errno in NO_SPACE:
        cause = "no space left on device" if exc.errno == errno.ENOSPC else "disk quota exceeded"
        space = space_text(where, needed) if where is not None else "free space unknown"
        return f"{name}: cannot be written: {cause} ({space})"
    if exc.errno in READ_ONLY:
        return f"{name}: cannot be written: read-only file system (mount it read-write, or choose another folder)"
    if exc.errno in NO_PERMISSION and where is not None:
        verb, access = ("read", "read") if cannot_read(where) else ("written", "write")
        return f"{name}: cannot be {verb}: no {access} permission ({permission_fix(where, access)})"
    return f"{name}: {exc.strerror or exc}"


def output_error(exc: OSError, path: str | Path | None = None, needed: int | None = None) -> OutputError:
    """The :class:`OutputError` of a machine fault met while writing ``path``."""
    where = Path(path) if path is not None else error_path(exc)
    return OutputError(describe(exc, where, needed), path=where, errno=exc.errno)


def machine_fault(exc: BaseException) -> OSError | None:
    """The ``OSError`` of :data:`FAULTS` that ``exc`` is, or that caused it (a library may wrap it:
    ``torch.save`` into a file object raises a ``RuntimeError`` whose context is the ENOSPC)."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        if isinstance(current, OSError) and current.errno in FAULTS:
            return current
        seen.add(id(current))
        current = current.__cause__ or current.__context__
    return None


def library_write_error(exc: Exception, path: Path) -> OutputError:
    """A writer that reports no ``errno`` (SimpleITK, torch's C++ writer) failed on ``path``: its
    own words and the free space there, which tells a full disk."""
    return OutputError(f"{path}: cannot be written ({type(exc).__name__}: {str(exc).strip()[:300]}; {space_text(path)})",
                       path=path)


def require_space(folder: str | Path, needed: int, what: str) -> None:
    """Refuse before the work when the file system of ``folder`` has less free space than the
    ``needed`` bytes that ``what`` will take (``OutputError``; nothing written yet)."""
    free = free_bytes(folder)
    if free is not None and free < needed:
        raise OutputError(
            f"{folder}: not enough free space for {what}: {space_text(Path(folder), needed)}",
            "nothing was written; free space (or choose another folder), then rerun the same command",
            path=Path(folder), errno=errno.ENOSPC, before_work=True,
        )


__all__ = ["FAULTS", "describe", "error_path", "free_bytes", "library_write_error", "machine_fault", "output_error",
           "permission_fix", "require_space", "size_text"]
