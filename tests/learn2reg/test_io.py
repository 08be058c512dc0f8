"""A damaged ``.nii.gz`` is reported with its real cause, and the memory map is closed."""

from __future__ import annotations

import mmap
import os
from pathlib import Path

import numpy as np
import pytest

from learn2reg import io
from learn2reg.io import DataError, gunzip_file, load_nifti, save_nifti


def _whole(tmp_path: Path) -> bytes:
    """A valid .nii.gz of random voxels (compresses badly: half the file is half the voxels)."""
    path = tmp_path / "whole.nii.gz"
    save_nifti(path, np.random.default_rng(0).random((16, 16, 16)).astype(np.float32))
    return path.read_bytes()


DAMAGE = {
    "truncated": (lambda raw: raw[: len(raw) // 2], "(EOFError: Compressed file ended before the end-of-stream marker was reached)"),
    "empty": (lambda raw: b"", "(empty file, 0 bytes)"),
    "random bytes": (lambda raw: np.random.default_rng(1).bytes(4000), "(BadGzipFile: Not a gzipped file"),
    "gzip magic, garbage after": (lambda raw: raw[:2] + np.random.default_rng(2).bytes(4000), "(BadGzipFile: "),
    "cut inside the header": (lambda raw: raw[:30], "(EOFError: "),
}


@pytest.mark.parametrize("copy", [True, False])
@pytest.mark.parametrize("damage", list(DAMAGE))
def test_damaged_gzip_names_the_file_and_the_real_cause(tmp_path, damage, copy):
    cut, cause = DAMAGE[damage]
    path = tmp_path / "bad.nii.gz"
    path.write_bytes(cut(_whole(tmp_path)))
    with pytest.raises(DataError) as err:
        load_nifti(path, copy=copy)
    message = str(err.value)
    assert message.startswith(f"{path}: unreadable or truncated NIfTI {cause}"), message
    assert "BufferError" not in message


class _TrackedMap(mmap.mmap):
    """An mmap that remembers every instance, to see that each one was closed."""

    made: list[mmap.mmap] = []

    def __new__(cls, *args, **kwargs):
        made = super().__new__(cls, *args, **kwargs)
        cls.made.append(made)
        return made


def test_the_map_is_closed_and_the_decoder_error_raised(tmp_path, monkeypatch):
    """Every view of the map is released before it closes, on success and on every error."""
    monkeypatch.setattr(io.mmap, "mmap", _TrackedMap)
    raw = _whole(tmp_path)
    path = tmp_path / "x.nii.gz"
    for content, error in ((raw, None), (raw[: len(raw) // 2], EOFError), (os.urandom(500), OSError), (raw[:2] + os.urandom(500), OSError)):
        _TrackedMap.made.clear()
        path.write_bytes(content)
        if error is None:
            assert gunzip_file(path).size > 0
        else:
            with pytest.raises(error) as err:
                gunzip_file(path)
            assert not isinstance(err.value, BufferError)
        assert [m.closed for m in _TrackedMap.made] == [True]
