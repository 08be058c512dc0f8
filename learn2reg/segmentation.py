"""The value rules for label maps and masks, one definition for every stage.

* A label map holds non-negative integers (any stored dtype; a float map must hold whole
  numbers, NaN and Inf are not integers). 0 is background.
* A mask holds exactly 0 and 1.

``label_problems`` / ``mask_problems`` return the findings as messages (for ``validate``, which
lists every problem); ``check_label_map`` / ``check_mask`` raise ``DataError`` naming the file (the
evaluator, preprocessing). Each message gives the number of offending voxels and a few of
their values. numpy only.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from learn2reg.io import DataError

EXAMPLES = 5  # offending values quoted per message


def _examples(values: np.ndarray) -> list:
    return np.unique(values)[:EXAMPLES].tolist()


def label_problems(data: np.ndarray) -> list[str]:
    """What breaks the label-map rule in ``data`` (any shape, any dtype); empty if nothing.

    Non-integer voxels (fractions, NaN, +-Inf) and negative voxels are counted separately,
    e.g. ``"label map has 512 non-integer voxel(s) (e.g. [1.5])"``,
    ``"label map has negative values (minimum -1): 512 voxel(s) (e.g. [-1])"``.
    """
    if data.dtype == np.bool_ or np.issubdtype(data.dtype, np.unsignedinteger) or data.size == 0:
        return []
    if not np.issubdtype(data.dtype, np.number) or np.issubdtype(data.dtype, np.complexfloating):
        return [f"label map has dtype {data.dtype}, not a number type"]
    found = []
    if np.issubdtype(data.dtype, np.floating):
        with np.errstate(invalid="ignore"):
            frac = np.floor(data)
            np.subtract(data, frac, out=frac)
            bad = frac != 0  # fractions; NaN and +-Inf give NaN, which != 0
        del frac
        if np.any(bad):
            found.append(f"label map has {int(np.count_nonzero(bad))} non-integer voxel(s) (e.g. {_examples(data[bad])})")
    negative = data < 0  # NaN compares False
    if np.any(negative):
        values = data[negative]
        minimum = values.min()
        minimum = int(minimum) if float(minimum).is_integer() else float(minimum)
        found.append(
            f"label map has negative values (minimum {minimum}): {values.size} voxel(s) (e.g. {_examples(values)})"
        )
    return found


def mask_problems(data: np.ndarray) -> list[str]:
    """What breaks the mask rule (exactly 0 and 1) in ``data``; empty if nothing."""
    if data.dtype == np.bool_:
        return []
    bad = (data != 0) & (data != 1)  # NaN is neither
    if not np.any(bad):
        return []
    return [f"mask is not binary: {int(np.count_nonzero(bad))} voxel(s) not 0/1 (e.g. {_examples(data[bad])})"]


def check_label_map(path: str | Path, data: np.ndarray) -> None:
    """``DataError`` naming ``path`` and every problem if ``data`` breaks the label-map rule."""
    problems = label_problems(data)
    if problems:
        raise DataError(f"{path}: " + "; ".join(problems))


def check_mask(path: str | Path, data: np.ndarray) -> None:
    """``DataError`` naming ``path`` if ``data`` is not a binary (0/1) mask."""
    problems = mask_problems(data)
    if problems:
        raise DataError(f"{path}: " + "; ".join(problems))


def label_dtype(max_label: int) -> np.dtype:
    """The smallest unsigned integer dtype that holds labels ``0 .. max_label``."""
    for dtype in (np.uint8, np.uint16, np.uint32, np.uint64):
        if max_label <= np.iinfo(dtype).max:
            return np.dtype(dtype)
    raise ValueError(f"label {max_label} does not fit in 64 bits")


def max_label(data: np.ndarray) -> int:
    """The largest label of a map that passed :func:`check_label_map` (0 if empty)."""
    return int(data.max()) if data.size else 0
