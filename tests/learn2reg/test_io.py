"""A damaged ``.nii.gz`` is reported with its real cause, and the memory map is closed; plain headers
are read without nibabel, exactly as nibabel reads them."""

from __future__ import annotations

import gzip
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


# ----------------------------------------------------------------------------- plain headers (read without nibabel)


def _variants() -> list[tuple[str, dict]]:
    """NIfTI files that the plain-header reader takes (``plain``) and ones it leaves to nibabel."""
    out = []
    for version in (1, 2):
        for order in "<>":
            for dtype in ("u1", "i2", "i4", "f4", "f8", "i1", "u2", "u4", "i8", "u8"):
                out.append((f"n{version}{order}{dtype}", {"version": version, "order": order, "dtype": dtype, "plain": True}))
    plain = {"version": 1, "order": "<", "dtype": "f4", "plain": True}
    out += [
        ("4d field", {**plain, "shape": (5, 6, 7, 3)}),
        ("5d itk field", {**plain, "shape": (5, 6, 7, 1, 3)}),
        ("2d", {**plain, "shape": (5, 6)}),
        ("vox_offset 400", {**plain, "offset": 400}),
        ("sform code 1 + qform", {**plain, "sform": 1, "qform": 1}),
        ("sform code 4", {**plain, "sform": 4}),
        ("slope nan", {**plain, "scale": (np.nan, np.nan)}),
        ("slope 0", {**plain, "scale": (0.0, 7.0)}),
        ("qform only", {**plain, "sform": 0, "qform": 1, "plain": False}),
        ("no xform", {**plain, "sform": 0, "qform": 0, "plain": False}),
        ("sform code 5", {**plain, "sform": 5, "plain": False}),
        ("scaled", {**plain, "dtype": "i2", "scale": (0.25, -3.0), "plain": False}),
        ("scaled big-endian n2", {**plain, "version": 2, "order": ">", "dtype": "i2", "scale": (2.0, 1.0), "plain": False}),
        ("extension", {**plain, "extension": True, "plain": False}),
        ("complex", {**plain, "dtype": "c8", "plain": False}),
    ]
    return out


def _write_variant(path: Path, spec: dict) -> None:
    import nibabel as nib

    rng = np.random.default_rng(len(str(path)))
    shape = spec.get("shape", (5, 6, 7))
    data = (rng.standard_normal(shape) * 50).astype(spec["dtype"]) if spec["dtype"][0] in "fc" else rng.integers(0, 100, shape).astype(spec["dtype"])
    klass, header_class = (nib.Nifti1Image, nib.Nifti1Header) if spec["version"] == 1 else (nib.Nifti2Image, nib.Nifti2Header)
    header = header_class(endianness=spec["order"])
    header.set_data_dtype(data.dtype)
    rotation = np.linalg.qr(rng.standard_normal((3, 3)))[0]
    affine = np.eye(4)
    affine[:3, :3] = rotation @ np.diag(rng.uniform(0.4, 2.5, 3))
    affine[:3, 3] = rng.uniform(-90, 90, 3)
    img = klass(data, None, header)
    img.header.set_sform(affine, code=spec.get("sform", 2))
    img.header.set_qform(affine @ np.diag([1.0, -1.0, 1.0, 1.0]), code=spec.get("qform", 0))  # a different qform
    if "scale" in spec:
        img.header["scl_slope"], img.header["scl_inter"] = spec["scale"]
    if spec.get("extension"):
        img.header.extensions.append(nib.nifti1.Nifti1Extension(6, b"a comment"))
    if "offset" in spec:
        img.header.set_data_offset(spec["offset"])
    nib.save(img, path)


@pytest.mark.parametrize("name, spec", _variants(), ids=[n for n, _ in _variants()])
def test_plain_headers_read_without_nibabel_as_nibabel_reads_them(tmp_path, name, spec):
    """Same array (values, stored type with its byte order, shape) and geometry as nibabel's own
    reader, for NIfTI-1/2 of either byte order and every plain numeric type; headers that are not
    plain (qform only, scaled, extensions, ...) are left to nibabel."""
    import nibabel as nib

    for suffix in (".nii.gz", ".nii"):
        path = tmp_path / f"img{suffix}"
        _write_variant(path, spec)
        img = nib.load(path)
        expected = np.asarray(img.dataobj)
        assert img.get_data_dtype() == np.dtype(spec["dtype"]).newbyteorder(spec["order"])  # the variant written
        raw = np.frombuffer(gzip.decompress(path.read_bytes()) if suffix == ".nii.gz" else path.read_bytes(), dtype=np.uint8)
        assert (io.plain_header(raw) is not None) == spec["plain"]
        if len(expected.shape) < 3:  # a geometry needs three axes: ValueError, as ever
            with pytest.raises(ValueError, match="not enough values"):
                load_nifti(path, dtype=None)
            continue
        for copy in (True, False):
            got, geometry = load_nifti(path, dtype=None, copy=copy)
            assert got.dtype == expected.dtype and got.shape == expected.shape
            assert got.flags.writeable == (copy or suffix == ".nii" or not spec["plain"] and "scale" in spec)
            np.testing.assert_array_equal(got, expected)
            assert geometry == io.Geometry.from_affine(img.affine, expected.shape)
        assert io.read_nifti_header(path) == io.Geometry.from_affine(img.affine, img.shape)


def test_plain_header_fields_sit_where_nibabel_reads_them():
    import nibabel as nib

    for ours, theirs in ((io._NIFTI1, nib.nifti1.header_dtype), (io._NIFTI2, nib.nifti2.header_dtype)):
        assert ours.itemsize == theirs.itemsize
        for field, (dtype, offset) in ours.fields.items():
            field_theirs = "srow_x" if field == "srow" else field
            assert theirs.fields[field_theirs][1] == offset, field
            assert dtype.itemsize == (theirs.fields[field_theirs][0].itemsize * (3 if field == "srow" else 1)), field
    assert set(io._SFORM_CODES) <= set(nib.nifti1.xform_codes.value_set())
    for code, stored in io._NIFTI_TYPES.items():
        assert nib.nifti1.data_type_codes.dtype[code] == np.dtype(stored)


def test_damaged_plain_header_names_the_file(tmp_path):
    """A plain header whose data are cut short, or a header that is not NIfTI at all: the same
    errors as before (the short-data message, or nibabel's)."""
    path = tmp_path / "x.nii.gz"
    save_nifti(path, np.zeros((6, 6, 6), np.float32))
    raw = gzip.decompress(path.read_bytes())
    path.write_bytes(gzip.compress(raw[:600]))
    with pytest.raises(DataError, match=r"x\.nii\.gz: unreadable or truncated NIfTI \(ValueError: 600 bytes hold no \(6, 6, 6\) float32 image at offset 352\)"):
        load_nifti(path)
    path.write_bytes(gzip.compress(b"\0" * 400))
    with pytest.raises(DataError, match=r"x\.nii\.gz: unreadable or truncated NIfTI \(ValueError: not a NIfTI-1/2 header\)"):
        load_nifti(path)
    with pytest.raises(DataError, match=r"x\.nii\.gz: unreadable NIfTI header"):
        io.read_nifti_header(path)
