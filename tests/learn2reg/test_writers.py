"""One writer per folder (a lock that dies with its process) and temporaries removed only when their writer is dead."""

from __future__ import annotations

import json
import multiprocessing
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from learn2reg.errors import FolderBusy
from learn2reg.io import atomic_path, write_json
from learn2reg.writers import LOCK_NAME, hold_folder, is_stale, machine_id, remove_stale_temporaries, temporary_prefix
from tests.paths import REPO

HOLD = """
import sys, time
from learn2reg.writers import hold_folder
with hold_folder(sys.argv[1]):
    print("held", flush=True)
    time.sleep(120)
"""


def dead_pid() -> int:
    """The pid of a process that has ended."""
    return int(subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True).stdout)


@pytest.fixture
def holder(tmp_path):
    """Start a real process that holds ``tmp_path / "run"``; yields (folder, process)."""
    folder = tmp_path / "run"
    proc = subprocess.Popen([sys.executable, "-c", HOLD, str(folder)], cwd=REPO, stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "held"
        yield folder, proc
    finally:
        proc.kill()
        proc.wait()


def test_a_second_process_is_refused_naming_the_folder_and_the_holder_and_a_killed_holder_frees_it(holder):
    folder, proc = holder
    with pytest.raises(FolderBusy) as refused, hold_folder(folder):
        pass
    message = str(refused.value)
    assert message.startswith(f"{folder}: in use by another process: pid {proc.pid} on ")
    assert "hold_folder" in message and f"kill {proc.pid}" in message  # the holder's command line, and the way out
    record = json.loads((folder / LOCK_NAME).read_text())
    assert record["pid"] == proc.pid and record["machine"] == machine_id()
    proc.send_signal(signal.SIGKILL)  # a killed run never blocks the next
    proc.wait()
    with hold_folder(folder) as lock:
        assert not lock.created and json.loads((folder / LOCK_NAME).read_text())["pid"] == os.getpid()
    assert folder.is_dir() and not (folder / LOCK_NAME).exists()


def test_a_folder_the_lock_made_is_removed_again_when_left_empty_and_a_process_may_nest(tmp_path):
    folder = tmp_path / "new" / "run"
    with hold_folder(folder) as lock:
        assert lock.created and (folder / LOCK_NAME).is_file()
        with hold_folder(folder) as inner:  # a stage inside a stage (the demo job): held once
            assert not inner.created
        assert (folder / LOCK_NAME).is_file()
    assert not folder.exists()
    with hold_folder(folder):
        (folder / "kept.json").write_text("{}")
    assert [p.name for p in folder.iterdir()] == ["kept.json"]


def test_a_file_where_the_folder_should_be_is_refused(tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(ValueError, match="exists and is a file"), hold_folder(tmp_path / "file"):
        pass


LOCK_AND_WAIT = """
import fcntl, os, sys, time
fd = os.open(sys.argv[1], os.O_RDWR)
fcntl.flock(fd, fcntl.LOCK_EX)
print("locked", flush=True)
time.sleep(120)
"""


def test_temporaries_of_dead_writers_go_and_those_of_live_ones_stay(tmp_path):
    machine, dead = machine_id(), dead_pid()
    names = {
        "dead": f".a.nii.gz.{machine}-{dead}-x1.tmp.nii.gz",
        "live": f".a.nii.gz.{machine}-{os.getpid()}-x2.tmp.nii.gz",
        "elsewhere_live": f".a.nii.gz.0badf00d-{dead}-x3.tmp.nii.gz",  # another host or container, writing (its lock held)
        "elsewhere_dead": f".a.nii.gz.0badf00d-{dead}-x4.tmp.nii.gz",  # its writer gone: nobody holds its lock
        "old_version": ".a.nii.gz.k1ll3d.tmp.nii.gz",
        "other_file": f".b.json.{machine}-{dead}-x5.tmp.json",
    }
    for name in names.values():
        (tmp_path / name).write_bytes(b"")
    writer = subprocess.Popen([sys.executable, "-c", LOCK_AND_WAIT, str(tmp_path / names["elsewhere_live"])],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert writer.stdout is not None and writer.stdout.readline().strip() == "locked"
        assert is_stale(tmp_path / names["dead"]) and not is_stale(tmp_path / names["live"])
        removed = remove_stale_temporaries(tmp_path, "a.nii.gz")
    finally:
        writer.kill()
        writer.wait()
    assert sorted(p.name for p in removed) == sorted(names[k] for k in ("dead", "elsewhere_dead", "old_version"))
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(names[k] for k in ("live", "elsewhere_live", "other_file"))
    assert is_stale(tmp_path / names["elsewhere_live"])  # its writer was killed: the kernel dropped the lock
    assert temporary_prefix("a.nii.gz") == f".a.nii.gz.{machine}-{os.getpid()}-"


def test_an_atomic_write_holds_its_temporary_until_the_rename(tmp_path):
    with atomic_path(tmp_path / "f.json") as tmp:
        tmp.write_text("{}")
        seen = [p for p in tmp_path.iterdir() if ".tmp" in p.name]
        assert seen == [tmp] and not remove_stale_temporaries(tmp_path)
    assert [p.name for p in tmp_path.iterdir()] == ["f.json"]


def _write_many(path: str, start, count: int) -> None:
    start.wait()
    payload = np.random.default_rng(os.getpid()).random(200_000)
    for _ in range(count):
        with atomic_path(path) as tmp:
            np.save(tmp, payload)


def test_two_processes_writing_one_file_never_delete_each_others_temporary(tmp_path):
    """The ranks of one torchrun job filling a shared cache: the same file, at the same time. (Before
    temporaries were named after their writer, one process's stale-temporary cleanup removed the
    other's file in flight: FileNotFoundError within a few writes.)"""
    ctx = multiprocessing.get_context("spawn")
    start = ctx.Event()
    target = str(tmp_path / "case.npy")
    procs = [ctx.Process(target=_write_many, args=(target, start, 60)) for _ in range(2)]
    for p in procs:
        p.start()
    start.set()
    for p in procs:
        p.join(timeout=120)
    assert [p.exitcode for p in procs] == [0, 0]
    assert np.load(target).shape == (200_000,) and [p.name for p in tmp_path.iterdir()] == ["case.npy"]


def test_an_unwritable_folder_is_named_with_its_owner_and_the_fix(tmp_path):
    if os.geteuid() == 0:
        pytest.skip("root writes anywhere; tests/test_faults.py runs the stages without CAP_DAC_OVERRIDE (setpriv)")
    locked = tmp_path / "ro"
    locked.mkdir(mode=0o555)
    with pytest.raises(Exception, match=r"cannot be written: no write permission .*chmod u\+rwx"):
        write_json(locked / "x.json", {})
    assert not list(Path(locked).iterdir())


def test_temporaries_are_new_private_files_named_after_their_writer(tmp_path, monkeypatch):
    from learn2reg.writers import make_temporary

    fd, path = make_temporary(tmp_path, "out.nii.gz", ".nii.gz")
    os.close(fd)
    assert path.parent == tmp_path and path.name.startswith(temporary_prefix("out.nii.gz")) and path.name.endswith(".tmp.nii.gz")
    assert path.stat().st_mode & 0o777 == 0o600 and not is_stale(path)  # ours, and we are alive
    assert len(machine_id()) == 8 and int(machine_id(), 16) >= 0
    monkeypatch.setattr(os, "urandom", lambda n: bytes(n))  # every try draws the same name: it exists
    fd, first = make_temporary(tmp_path, "x.json", "")
    os.close(fd)
    with pytest.raises(FileExistsError):
        make_temporary(tmp_path, "x.json", "")  # never opens a file that exists
    assert first.read_bytes() == b""
