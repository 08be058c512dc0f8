"""Machine faults in words: a full disk, a permission, a read-only file system; the one CLI policy (exit 1)."""

from __future__ import annotations

import argparse
import errno
import os

import pytest

from learn2reg import faults
from learn2reg.cli import execute
from learn2reg.errors import OutputError
from learn2reg.io import check_output_path, write_json


def test_a_full_disk_names_the_file_the_cause_and_the_free_space(tmp_path):
    exc = OSError(errno.ENOSPC, "No space left on device")
    text = faults.describe(exc, tmp_path / "out" / "disp.nii.gz", needed=3_000_000)
    assert text.startswith(f"{tmp_path / 'out' / 'disp.nii.gz'}: cannot be written: no space left on device (about 3.0 MB needed, ")
    assert f"free on the file system of {tmp_path} (" in text
    assert "disk quota exceeded" in faults.describe(OSError(errno.EDQUOT, "Disk quota exceeded"), tmp_path)
    assert "read-only file system" in faults.describe(OSError(errno.EROFS, "Read-only file system"), tmp_path)


def test_a_permission_names_the_owner_and_the_process_user(tmp_path):
    text = faults.permission_fix(tmp_path / "not" / "yet")
    uid = os.geteuid()
    assert f"uid {uid}" in text
    assert (f"{tmp_path} is yours" in text) or (f"{tmp_path} belongs to uid" in text and "sudo chown" in text)


def test_a_stage_replaces_what_is_kept_and_how_to_resume_but_not_after_a_refusal_before_the_work(tmp_path):
    failed = faults.output_error(OSError(errno.ENOSPC, "No space left on device"), tmp_path / "f.json")
    assert str(failed).startswith(f"{tmp_path / 'f.json'}: cannot be written: no space left on device")
    assert str(failed.with_next_step("the 2 fields are kept; rerun")).endswith("; the 2 fields are kept; rerun")
    with pytest.raises(OutputError) as refused:
        faults.require_space(tmp_path, 1 << 62, "the fields")
    assert str(refused.value.with_next_step("never said")).endswith("nothing was written; free space (or choose another "
                                                                  "folder), then rerun the same command")


def test_require_space_refuses_before_the_work(tmp_path):
    faults.require_space(tmp_path, 1, "one byte")
    with pytest.raises(OutputError, match=r"not enough free space for the fields: about .* needed, .* free on the file system"):
        faults.require_space(tmp_path / "sub", 1 << 62, "the fields")


@pytest.mark.parametrize(
    ("raised", "message"),
    [
        (OSError(errno.ENOSPC, "No space left on device", "/x/disp.nii.gz"), "/x/disp.nii.gz: cannot be written: no space left"),
        (PermissionError(errno.EACCES, "Permission denied", "/root/x"), "/root/x: cannot be"),
        (OutputError("/x: cannot be written: no space left on device (...)"), "/x: cannot be written"),
    ],
)
def test_the_cli_policy_turns_machine_faults_into_a_message_and_exit_1(capsys, raised, message):
    def run(_args):
        raise raised

    assert execute(run, argparse.Namespace()) == 1
    assert capsys.readouterr().err.startswith(f"error: {message}")


def test_other_os_errors_stay_tracebacks():
    def run(_args):
        raise OSError(errno.EBADF, "Bad file descriptor")

    with pytest.raises(OSError):
        execute(run, argparse.Namespace())


def test_an_atomic_write_that_fails_leaves_nothing_and_names_the_file(tmp_path, monkeypatch):
    real_replace = os.replace

    def full(src, dst):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "replace", full)
    with pytest.raises(OutputError, match=rf"{tmp_path / 'r.json'}: cannot be written: no space left on device"):
        write_json(tmp_path / "r.json", {"a": 1})
    monkeypatch.setattr(os, "replace", real_replace)
    assert list(tmp_path.iterdir()) == []


def test_an_existing_writable_output_folder_passes_whatever_its_parent(tmp_path):
    parent = tmp_path / "mount"
    (parent / "out").mkdir(parents=True)
    parent.chmod(0o555)  # a mount point in a folder the user may not write (/data in the containers)
    try:
        assert check_output_path(parent / "out", folder=True) == parent / "out"
    finally:
        parent.chmod(0o755)


def test_a_fault_wrapped_by_a_library_is_found_and_reported(tmp_path, capsys):
    """torch.save into a Python file raises a RuntimeError whose context is the ENOSPC."""
    def run(_args):
        try:
            raise OSError(errno.ENOSPC, "No space left on device", str(tmp_path / "last.pt"))
        except OSError as exc:
            raise RuntimeError("unexpected pos 128 vs 0") from exc

    assert execute(run, argparse.Namespace()) == 1
    assert capsys.readouterr().err.startswith(f"error: {tmp_path / 'last.pt'}: cannot be written: no space left on device (")
    assert faults.machine_fault(RuntimeError("a bug")) is None


def test_the_peak_a_command_reports_is_its_own_not_that_of_the_process_that_started_it():
    """A command started by a large process (a test runner, a notebook): ru_maxrss after exec keeps
    the starter's high-water mark on Linux, VmHWM is the command's own."""
    import subprocess
    import sys

    import numpy as np

    from learn2reg.faults import peak_resident_bytes
    from tests.paths import REPO

    held = np.ones(400 * 2**20, dtype=np.uint8)  # 400 MiB resident here
    code = "from learn2reg.faults import peak_resident_bytes; print(peak_resident_bytes())"
    child = int(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=REPO).stdout)
    assert peak_resident_bytes() >= held.nbytes
    assert child < 200 * 2**20  # a Python with numpy: ~30-60 MiB
    del held
