"""The one I/O boundary: NIfTI images, point files, JSON, and atomic writes.

Array order everywhere in this project is nibabel's: ``X x Y x Z`` (index ``i`` runs along
the first axis, which is also SimpleITK's index ``i`` and ITK's fastest axis). Physical
geometry is kept in ITK's LPS convention (``Geometry``), converted from nibabel's RAS affine
here and nowhere else. numpy/nibabel only: no torch.

nibabel is imported only where it is used (~0.1 CPU s at start-up): a ``.nii.gz`` whose header
nibabel would take as it is (a *plain* header, :func:`plain_header`: no scaling, no extensions,
an sform) is read without it, with the same array, dtype and affine; every other file, ``.nii``
files and writing go through nibabel.
"""

from __future__ import annotations

import contextlib
import gzip
import json
import mmap
import os
import traceback
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, Literal, SupportsFloat, SupportsInt

import numpy as np

from learn2reg.errors import DataError as DataError  # defined there, imported from here by every stage
from learn2reg.faults import FAULTS, error_path, machine_fault, output_error, permission_fix
from learn2reg.writers import claim_temporary, make_temporary, remove_stale_temporaries

_GzipReader: Any
try:  # Intel ISA-L: gzip decoding ~1.4x faster than zlib (the largest cost of reading a field)
    from isal.isal_zlib import _GzipReader
except ImportError:  # pragma: no cover - isal is pinned in requirements.txt
    _GzipReader = None

# RAS (nibabel) <-> LPS (ITK): flip the first two world axes.
_RAS_TO_LPS = np.diag([-1.0, -1.0, 1.0, 1.0])


def int3(values: Iterable[SupportsInt]) -> tuple[int, int, int]:
    """Exactly three values as ints (a shape, an index); ``ValueError`` for another count."""
    x, y, z = (int(v) for v in values)
    return x, y, z


def float3(values: Iterable[SupportsFloat]) -> tuple[float, float, float]:
    """Exactly three values as floats (a spacing, a point in mm); ``ValueError`` for another count."""
    x, y, z = (float(v) for v in values)
    return x, y, z


@dataclass(frozen=True)
class Geometry:
    """Voxel grid in physical space (ITK/LPS convention, millimetres).

    ``physical = origin + direction @ (spacing * index)`` with ``index`` in array order.
    """

    shape: tuple[int, int, int]
    spacing: tuple[float, float, float]
    direction: tuple[float, ...]  # 3x3 row-major
    origin: tuple[float, float, float]

    @property
    def index_to_physical(self) -> np.ndarray:
        """4x4 homogeneous matrix mapping voxel index (array order) to LPS mm."""
        m = np.eye(4)
        m[:3, :3] = np.asarray(self.direction).reshape(3, 3) @ np.diag(self.spacing)
        m[:3, 3] = self.origin
        return m

    @classmethod
    def from_affine(cls, affine_ras: np.ndarray, shape: tuple[int, ...]) -> Geometry:
        """From a nibabel (RAS) voxel-to-world affine."""
        lps = _RAS_TO_LPS @ np.asarray(affine_ras, dtype=np.float64)
        rot = lps[:3, :3]
        spacing = np.linalg.norm(rot, axis=0)
        direction = rot / spacing
        return cls(
            shape=int3(shape[:3]),
            spacing=float3(spacing),
            direction=tuple(float(d) for d in direction.ravel()),
            origin=float3(lps[:3, 3]),
        )

    @property
    def affine_ras(self) -> np.ndarray:
        """The nibabel (RAS) voxel-to-world affine of this grid."""
        return _RAS_TO_LPS @ self.index_to_physical

    @classmethod
    def identity(cls, shape: tuple[int, ...], spacing: tuple[float, ...] = (1.0, 1.0, 1.0)) -> Geometry:
        """Axis-aligned grid at the origin with the given spacing."""
        return cls.from_affine(_RAS_TO_LPS @ np.diag([*spacing, 1.0]), shape)


def load_nifti(path: str | Path, dtype: Any = np.float32, copy: bool = True) -> tuple[np.ndarray, Geometry]:
    """Read a NIfTI file fully into memory.

    Returns the array (``X x Y x Z[ x ...]``, cast to ``dtype``; ``None`` keeps the stored type)
    and its geometry. A ``.nii.gz`` is inflated into a new buffer that only the returned array
    uses, so no copy is made either way; ``copy=False`` returns it read-only (for callers that
    only read, like the evaluator). Raises ``DataError`` naming the file if it is missing,
    unreadable or truncated.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: file not found")
    if path.stat().st_size == 0:
        raise DataError(f"{path}: unreadable or truncated NIfTI (empty file, 0 bytes)")
    try:
        if path.name.endswith(".gz"):
            affine, data = _from_gzip(path, copy)
        else:
            img: Any = _nibabel().load(str(path))  # nib.load is typed as returning the base class
            affine, data = img.affine, img.dataobj
        data = np.asarray(data, dtype=dtype)
    except Exception as exc:  # nibabel, gzip and numpy raise many types for corrupt files
        raise DataError(f"{path}: unreadable or truncated NIfTI ({type(exc).__name__}: {exc})") from exc
    return data, Geometry.from_affine(affine, data.shape)


def _nibabel() -> Any:
    """The nibabel module, imported on first use (its import costs ~0.1 CPU s)."""
    import nibabel

    return nibabel


def _from_gzip(path: Path, copy: bool) -> tuple[np.ndarray, Any]:
    """A ``.nii.gz`` decompressed in one pass into a new array -> (nibabel's affine, the voxels):
    an array on those bytes (stored type; read-only unless ``copy``), or nibabel's proxy for
    scaled data. A plain header (:func:`plain_header`) is read here, any other by nibabel."""
    raw = gunzip_file(path)
    plain = plain_header(raw)
    if plain is None:
        return _from_gzip_nibabel(raw, copy)
    return plain.affine, _voxels(raw, plain.shape, plain.dtype, plain.offset, "F", copy)


def _from_gzip_nibabel(raw: np.ndarray, copy: bool) -> tuple[np.ndarray, Any]:
    nib = _nibabel()
    head = raw[:4].tobytes()
    sizeof_hdr = {int.from_bytes(head, order) for order in ("little", "big")}
    klass: Any  # Nifti1Image or Nifti2Image
    if 540 in sizeof_hdr:  # NIfTI-2: int64 vox_offset at byte 168
        klass, offset = nib.Nifti2Image, raw[168:176].view(_endian(head, 540) + "i8")
    elif 348 in sizeof_hdr:  # NIfTI-1: float32 vox_offset at byte 108
        klass, offset = nib.Nifti1Image, raw[108:112].view(_endian(head, 348) + "f4")
    else:
        raise ValueError("not a NIfTI-1/2 header")
    # the header and its extensions end at vox_offset: nibabel parses that prefix only
    end = min(max(int(offset[0]) if offset.size and np.isfinite(offset[0]) else 0, 544), raw.size)
    img = klass.from_bytes(raw[:end].tobytes())
    proxy: Any = img.dataobj  # an ArrayProxy (typed as ArrayLike)
    if (proxy.slope, proxy.inter) != (1.0, 0.0):  # nibabel's own scaling rules, on the whole file
        whole = klass.from_bytes(raw.tobytes())
        return whole.affine, whole.dataobj
    return img.affine, _voxels(raw, proxy.shape, proxy.dtype, int(proxy.offset), proxy.order, copy)


def _voxels(raw: np.ndarray, shape: tuple[int, ...], dtype: np.dtype, offset: int, order: Literal["C", "F"], copy: bool) -> np.ndarray:
    """The image array on the decompressed bytes (no copy: the buffer is this array's alone,
    writeable only when ``copy``); ``ValueError`` when the file is too short for it."""
    nbytes = int(np.prod(shape)) * np.dtype(dtype).itemsize
    if offset + nbytes > raw.size:
        raise ValueError(f"{raw.size} bytes hold no {shape} {dtype} image at offset {offset}")
    view = np.ndarray(shape, dtype=dtype, buffer=raw, offset=offset, order=order)
    view.flags.writeable = copy
    return view


# The header fields the plain-header reader needs, at the byte offsets of the NIfTI-1 (348-byte) and
# NIfTI-2 (540-byte) standards (little-endian here; byte-swapped for big-endian files).
_NIFTI1 = np.dtype({
    "names": ["sizeof_hdr", "dim", "datatype", "vox_offset", "scl_slope", "scl_inter", "sform_code", "srow", "magic"],
    "formats": ["<i4", ("<i2", 8), "<i2", "<f4", "<f4", "<f4", "<i2", ("<f4", (3, 4)), "S4"],
    "offsets": [0, 40, 70, 108, 112, 116, 254, 280, 344],
    "itemsize": 348,
})  # fmt: skip
_NIFTI2 = np.dtype({
    "names": ["sizeof_hdr", "magic", "eol_check", "datatype", "dim", "vox_offset", "scl_slope", "scl_inter", "sform_code", "srow"],
    "formats": ["<i4", "S4", "V4", "<i2", ("<i8", 8), "<i8", "<f8", "<f8", "<i4", ("<f8", (3, 4))],
    "offsets": [0, 4, 8, 12, 16, 168, 176, 184, 348, 400],
    "itemsize": 540,
})  # fmt: skip
# datatype code -> stored type (the plain numeric ones; others are left to nibabel)
_NIFTI_TYPES = {2: "u1", 4: "i2", 8: "i4", 16: "f4", 64: "f8", 256: "i1", 512: "u2", 768: "u4", 1024: "i8", 1280: "u8"}
_SFORM_CODES = (1, 2, 3, 4)  # scanner, aligned, talairach, mni


@dataclass(frozen=True)
class PlainHeader:
    """What nibabel reads from a plain NIfTI header: the array's ``shape``, stored ``dtype``
    (with the file's byte order), data ``offset`` (bytes) and the voxel-to-RAS ``affine`` (4x4)."""

    shape: tuple[int, ...]
    dtype: np.dtype
    offset: int
    affine: np.ndarray


def plain_header(raw: np.ndarray) -> PlainHeader | None:
    """The header at the start of a single-file NIfTI-1/2 (``raw``: its bytes, ``uint8``), when it
    is one that nibabel takes as it is and reads as stored; ``None`` for any other (nibabel reads
    those, with its own fixes, scaling and errors).

    Plain: a valid magic (NIfTI-2: and EOL check), no extensions, a plain numeric datatype, 1-7
    dimensions of positive size (not FreeSurfer's ico7 shape), an integral data offset after the
    header, no scaling (nibabel's rule: ``scl_slope`` 0 or not finite, or 1 with ``scl_inter`` 0)
    and an sform with a standard code (1-4), which nibabel prefers over the qform: its affine is
    the sform rows, exact in float64 (``Nifti1Header.get_best_affine``). None of nibabel's header
    checks (``check_fix``) changes what such a header gives.
    """
    little, big = int.from_bytes(raw[:4].tobytes(), "little"), int.from_bytes(raw[:4].tobytes(), "big")
    layout = _NIFTI1 if 348 in (little, big) else _NIFTI2 if 540 in (little, big) else None
    if layout is None:
        return None
    order: Literal["<", ">"] = "<" if little == layout.itemsize else ">"
    magic, minimum = (b"n+1", 352) if layout is _NIFTI1 else (b"n+2", 544)
    if raw.size < layout.itemsize + 4 or raw[layout.itemsize] != 0:  # too short, or extensions follow
        return None
    h = raw[: layout.itemsize].view(layout.newbyteorder(order))[0]
    if h["magic"] != magic or (layout is _NIFTI2 and h["eol_check"].tobytes() != b"\r\n\x1a\n"):
        return None
    code = int(h["datatype"])
    ndim = int(h["dim"][0])
    shape = tuple(int(n) for n in h["dim"][1 : ndim + 1])
    offset, slope, inter = float(h["vox_offset"]), float(h["scl_slope"]), float(h["scl_inter"])
    plain = (
        code in _NIFTI_TYPES
        and 1 <= ndim <= 7
        and min(shape) >= 1
        and shape[:3] != (27307, 1, 6)  # nibabel reads this FreeSurfer shape as (163842, 1, 1)
        and np.isfinite(offset) and offset == int(offset) and offset >= minimum
        and (slope == 0 or not np.isfinite(slope) or (slope == 1 and inter == 0))
        and int(h["sform_code"]) in _SFORM_CODES
    )  # fmt: skip
    if not plain:
        return None
    affine = np.eye(4)
    affine[:3] = h["srow"]
    return PlainHeader(shape, np.dtype(_NIFTI_TYPES[code]).newbyteorder(order), int(offset), affine)


def _endian(head: bytes, size: int) -> str:
    return "<" if int.from_bytes(head, "little") == size else ">"


def gunzip_file(path: Path) -> np.ndarray:
    """The decompressed content of a gzip file (all members) as a new ``uint8`` array, inflated
    from a memory map straight into the array. Raises ``EOFError`` if truncated, ``OSError``
    (``BadGzipFile``) on a CRC or length mismatch or data that is not gzip: the decoder's own
    error, never a ``BufferError`` from closing the map (see :func:`_inflate`).

    The array is sized from the gzip trailer's length field; a new array rather than a ``bytes``
    result matters: numpy backs large arrays with huge pages, while the fresh 4 KiB pages of an
    80 MB ``bytes`` object cost ~40 ms of page faults on these machines (measured)."""
    with open(path, "rb") as fh:
        if os.fstat(fh.fileno()).st_size == 0:
            return np.zeros(0, dtype=np.uint8)
        mapped = mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ)
        try:
            data = _inflate(mapped)
        except BaseException as exc:
            # The frames of the traceback (_inflate, _read_into, gzip's) still hold the reader and
            # memoryviews of the map, which then refuses to close ("cannot close exported pointers
            # exist") and that BufferError would replace the real error. Clearing the finished
            # frames' locals releases every view; the original exception is re-raised.
            _clear_frames(exc)
            with contextlib.suppress(BufferError):  # a view kept elsewhere: the GC closes the map
                mapped.close()
            raise
        mapped.close()  # every view died with _inflate's frame
        return data


def _inflate(mapped: mmap.mmap) -> np.ndarray:
    """Decompress a mapped gzip file. Every view of the map is a local of this frame (or of
    :func:`_read_into`), so all of them are gone when it returns, or once the frames of a
    raised exception are cleared (:func:`_clear_frames`); no ``with`` releases a view here,
    since releasing one that the reader still exports would itself raise ``BufferError``."""
    compressed = memoryview(mapped)
    if _GzipReader is None:  # pragma: no cover - isal is pinned in requirements.txt
        return np.frombuffer(gzip.decompress(compressed), dtype=np.uint8)
    reader = _GzipReader(compressed)
    # last member's length (mod 2^32); +1 byte shows whether more data follow
    hint = min(int.from_bytes(compressed[-4:], "little"), 1032 * len(compressed))  # deflate's max ratio
    out = np.empty(hint + 1, dtype=np.uint8)
    filled = _read_into(reader, out)
    if filled <= hint:
        return out[:filled]
    rest = reader.readall()  # several members: the trailer gave the last one's length only
    return np.concatenate([out, np.frombuffer(rest, dtype=np.uint8)])


def _clear_frames(exc: BaseException) -> None:
    """Drop the local variables of every finished frame in the tracebacks of ``exc`` and of the
    exceptions chained to it (a running frame is left alone by ``traceback.clear_frames``)."""
    seen: set[int] = set()
    todo: list[BaseException | None] = [exc]
    while todo:
        e = todo.pop()
        if e is None or id(e) in seen:
            continue
        seen.add(id(e))
        traceback.clear_frames(e.__traceback__)
        todo += [e.__cause__, e.__context__]


def _read_into(reader: Any, out: np.ndarray) -> int:
    with memoryview(out) as target:  # type: ignore[arg-type]  # ndarray is a buffer; numpy's stubs lack __buffer__
        filled = 0
        while filled < out.size:
            n = reader.readinto(target[filled:])
            if not n:
                break
            filled += n
    return filled


def read_nifti_header(path: str | Path) -> Geometry:
    """Geometry from the header alone (cheap; does not read voxels)."""
    path = Path(path)
    plain = _read_plain_header(path)
    if plain is not None:
        return Geometry.from_affine(plain.affine, plain.shape)
    try:
        img: Any = _nibabel().load(str(path))
    except Exception as exc:
        raise DataError(f"{path}: unreadable NIfTI header ({type(exc).__name__}: {exc})") from exc
    return Geometry.from_affine(img.affine, img.shape)


def _read_plain_header(path: Path) -> PlainHeader | None:
    """:func:`plain_header` of a ``.nii`` or ``.nii.gz`` file from its first bytes; ``None`` for
    any other name, a header that is not plain, or a file that cannot be read (nibabel then
    reads it, or names the problem)."""
    if not path.name.endswith((".nii", ".nii.gz")):
        return None
    try:
        with gzip.open(path, "rb") if path.name.endswith(".gz") else open(path, "rb") as fh:
            head = fh.read(_NIFTI2.itemsize + 4)
    except (OSError, EOFError, ValueError):
        return None
    return plain_header(np.frombuffer(head, dtype=np.uint8))


def read_nifti_scaling(path: str | Path) -> tuple[float, float] | None:
    """The header's ``(scl_slope, scl_inter)`` when it scales the stored values (nibabel applies
    it on reading: ``value = stored * slope + inter``); ``None`` for unscaled data or another
    format. Reads the header only; an unreadable file gives ``None`` (reading the voxels reports it)."""
    try:  # nibabel moves the header's scaling into the array proxy when it loads a file
        proxy: Any = _nibabel().load(str(path)).dataobj
        slope, inter = float(getattr(proxy, "slope", 1.0)), float(getattr(proxy, "inter", 0.0))
    except Exception:  # the voxel read names the problem
        return None
    if not (np.isfinite(slope) and np.isfinite(inter)) or (slope == 1 and inter == 0):
        return None
    return slope, inter


def check_output_path(path: str | Path, folder: bool) -> Path:
    """Refuse, before any work, an output path that cannot be written: ``DataError`` naming it
    when it exists as the wrong kind (a file where a folder is wanted, or the reverse), when one
    of its parents is a file, or when the folder it goes into (an existing output folder itself,
    else the nearest existing parent; files are renamed into theirs) is not writable, with the fix (its owner, ``mkdir`` first, ``export UID GID`` in the
    containers: ``learn2reg.faults.permission_fix``). Returns it."""
    path = Path(path)
    kind = "folder" if folder else "file"
    if path.exists() and path.is_dir() != folder:
        raise DataError(f"{path}: exists and is a {'file' if folder else 'folder'}, but a {kind} is needed here")
    if folder and path.is_dir():  # an existing output folder: what counts is writing into it
        if not os.access(path, os.W_OK | os.X_OK):
            raise DataError(f"{path}: cannot be written: no write permission ({permission_fix(path)})")
        return path
    for parent in path.parents:
        if parent.exists():
            if not parent.is_dir():
                raise DataError(f"{path}: cannot be created: {parent} is a file, not a folder")
            if not os.access(parent, os.W_OK | os.X_OK):
                raise DataError(f"{path}: cannot be created: no write permission in {parent} ({permission_fix(parent)})")
            break
    return path


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary sibling path; rename it onto ``path`` only if the block succeeds.

    The temporary is named after this process (``learn2reg.writers``): temporaries of the same
    file that a killed write left behind are removed first, never those of a live writer (the
    ranks of one job filling a shared cache: the last complete rename wins). A full disk, a quota,
    a folder without write permission or a read-only file system raise ``OutputError`` naming
    ``path`` and the cause (``learn2reg.faults``); no temporary is left either way.

    The temporary name keeps the target's suffixes so that writers that infer the format
    from the extension (nibabel, numpy) behave as for the real name.
    """
    path = Path(path)
    suffix = "".join(path.suffixes)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        remove_stale_temporaries(path.parent, path.name)
        fd, tmp_path = make_temporary(path.parent, path.name, suffix)
    except OSError as exc:
        if exc.errno not in FAULTS:
            raise
        raise output_error(exc, path) from exc
    claim_temporary(fd)  # held until the rename: another process sees a live writer
    umask = os.umask(0)
    os.umask(umask)
    try:
        yield tmp_path
        os.chmod(tmp_path, 0o666 & ~umask)  # made 0600; give the file a normal mode
        os.replace(tmp_path, path)
    except Exception as exc:  # a writer (torch, say) may wrap the OSError in its own error
        fault = machine_fault(exc)
        if fault is None or error_path(fault) not in (None, tmp_path, path):
            raise  # not this write's fault (the block read another file, say)
        raise output_error(fault, path) from exc
    finally:
        tmp_path.unlink(missing_ok=True)
        os.close(fd)


@contextlib.contextmanager
def atomic_open(path: str | Path, mode: str = "w") -> Iterator[IO[Any]]:
    """Open a temporary sibling for writing; it replaces ``path`` only on success."""
    with atomic_path(path) as tmp, open(tmp, mode) as fh:
        yield fh


def save_nifti(path: str | Path, array: np.ndarray, geometry: Geometry | None = None) -> None:
    """Write ``array`` as NIfTI atomically; identity geometry if none is given."""
    geometry = geometry or Geometry.identity(array.shape)
    nib = _nibabel()
    img = nib.Nifti1Image(np.asarray(array), geometry.affine_ras)
    with atomic_path(path) as tmp:
        nib.save(img, str(tmp))


def read_points(path: str | Path, columns: int = 3) -> np.ndarray:
    """Read a Learn2Reg point file: CSV, no header, one point per row, voxel coordinates.

    Returns ``N x columns`` float64. Raises ``DataError`` naming the file for a missing file,
    non-numeric cells or a wrong column count.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: file not found")
    rows = []
    with open(path) as fh:
        for lineno, line in enumerate(fh, start=1):
            if not line.strip():
                continue
            cells = line.strip().split(",")
            if len(cells) != columns:
                raise DataError(f"{path}: line {lineno} has {len(cells)} columns, expected {columns}")
            try:
                rows.append([float(c) for c in cells])
            except ValueError as exc:
                raise DataError(f"{path}: line {lineno} is not numeric ({line.strip()!r})") from exc
    points = np.asarray(rows, dtype=np.float64).reshape(-1, columns)
    if not np.all(np.isfinite(points)):
        raise DataError(f"{path}: contains NaN or Inf coordinates")
    return points


def write_points(path: str | Path, points: np.ndarray) -> None:
    """Write ``N x 3`` points as a header-less CSV, atomically."""
    with atomic_open(path) as fh:
        np.savetxt(fh, np.asarray(points, dtype=np.float64), delimiter=",", fmt="%.6f")


def read_json(path: str | Path) -> Any:
    """Parse a JSON file; ``DataError`` naming the file if it is missing or invalid."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: file not found")
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise DataError(f"{path}: invalid JSON ({exc})") from exc


def write_json(path: str | Path, obj: Any) -> None:
    """Write JSON (indented) atomically."""
    with atomic_open(path) as fh:
        json.dump(obj, fh, indent=2, allow_nan=True)
        fh.write("\n")
