"""SDlogJ and folding statistics of a displacement field: the official numbers (bit-identical
determinants, the ``+3`` quirk) and ours (``SDlogJ_true``, ``num_foldings_true``,
``folding_fraction``), computed plane by plane without a full-size float64 Jacobian.

Frames and units as in ``evaluation.metrics``: ``u`` is ``X x Y x Z x 3`` in voxels on the fixed
grid; the optional mask is the fixed mask (voxels ``== 1`` count).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from learn2reg import contract

LOG_CLIP = (1e-9, 1e9)  # official clip of det + 3 before the log
DET_SHIFT = 3.0  # official (quirky) shift of det J before the log
CROP = 2  # voxels dropped on every face before SDlogJ


@dataclass(frozen=True)
class JacobianStats:
    """Jacobian-determinant statistics over the field cropped by ``CROP`` voxels (and masked).

    ``sdlogj`` and ``num_foldings`` are the official numbers (+3 quirk; the latter is always 0);
    the ``*_true`` ones use det(I + grad u) itself: ``sdlogj_true`` over the voxels with det > 0
    (population std of log det), ``num_foldings_true`` counts det <= 0, ``folding_fraction`` is
    that count over the number of voxels in the region.
    """

    sdlogj: float
    num_foldings: float
    sdlogj_true: float
    num_foldings_true: int
    folding_fraction: float
    voxels: int


def jacobian_stats(u: np.ndarray, mask: np.ndarray | None = None) -> JacobianStats:
    """Official SDlogJ (bit-identical determinants) and our corrected statistics.

    ``u``: ``X x Y x Z x 3`` voxel field; ``mask``: fixed mask on the same grid (voxels == 1
    count) or ``None``. Central differences ``(u[i+1] - u[i-1]) / 2`` on the interior equal the
    official zero-padded correlation after the 2-voxel crop; computed in float64 one plane at a
    time along the field's slowest axis in memory (axis 0 for C order, axis 2 for NIfTI's Fortran
    order), inside the bounding rectangle of the plane's region voxels, so no full-size float64
    Jacobian is ever held; planes without region voxels are skipped.
    """
    contract.check_field(u)
    if min(u.shape[:3]) <= 2 * CROP:
        raise ValueError(f"field {u.shape[:3]} is too small for the {CROP}-voxel crop of SDlogJ")
    planes = _DetPlanes(u, mask)
    official, true = _Moments(), _Moments()
    shifted = np.empty(planes.plane_size)
    for p in planes.indices():
        det = planes.values(p)  # region voxels of plane p, in memory order
        log_shifted = shifted[: det.size]
        np.add(det, DET_SHIFT, out=log_shifted)
        np.clip(log_shifted, *LOG_CLIP, out=log_shifted)
        official.add(np.log(log_shifted, out=log_shifted))
        positive = det > 0
        true.add(np.log(det, out=det) if positive.all() else np.log(det[positive]))
    voxels = official.n
    folds = voxels - true.n
    sdlogj, true_std = official.std(), true.std()
    fraction = folds / voxels if voxels else float("nan")
    # The official num_foldings counts det + 3 <= 0 after the clip to [1e-9, 1e9]: 0 by construction
    # (finite fields give finite determinants), so it is not counted voxel by voxel.
    return JacobianStats(sdlogj, 0.0, true_std, folds, fraction, voxels)


def jacobian_det_interior(u: np.ndarray) -> np.ndarray:
    """The official determinant grid: det(I + grad u) with official central differences on the
    field cropped by ``CROP`` voxels per face -> ``(X-4) x (Y-4) x (Z-4)`` float64 (no +3)."""
    contract.check_field(u)
    planes = _DetPlanes(u, None)
    c, n = CROP, planes.shape
    out = np.stack([planes.values(p).reshape(n[1] - 2 * c, n[2] - 2 * c) for p in planes.indices()])
    return out.transpose(planes.perm)  # perm is its own inverse


class _Moments:
    """Count and population std of values added in batches, without holding them all: values
    are shifted by the first one (exact zeros for a constant field), each batch is summed in two
    passes and batches are merged exactly (Chan et al.)."""

    def __init__(self) -> None:
        self.n, self.mean, self.m2 = 0, 0.0, 0.0
        self.shift: float | None = None

    def add(self, values: np.ndarray) -> None:
        n = int(values.size)
        if n == 0:
            return
        if self.shift is None:
            self.shift = float(values[0])
        centred = values - self.shift
        mean = float(np.add.reduce(centred)) / n  # what ndarray.mean does, without its overhead
        centred -= mean
        m2 = float(np.dot(centred, centred))
        total = self.n + n
        delta = mean - self.mean
        self.mean += delta * n / total
        self.m2 += m2 + delta * delta * self.n * n / total
        self.n = total

    def std(self) -> float:
        return float(np.sqrt(self.m2 / self.n)) if self.n else float("nan")


class _DetPlanes:
    """det(I + grad u) plane by plane, on flat rows.

    The field is viewed as ``v = u.transpose(*perm, 3)`` (axes: slow, mid, fast, component; for a
    NIfTI field a plane of one component is contiguous). Within a plane ``p`` the voxels
    ``(r, q)`` are flattened to ``k = r * n_fast + q``, so the neighbours along the fast, mid and
    slow axes are ``k +- 1``, ``k +- n_fast`` and the same ``k`` in planes ``p +- 1``: every
    central difference is one subtraction of two shifted 1-D views, over the flat span from the
    first to the last region voxel of the plane (the voxels of the span outside the region are
    computed and dropped). Each plane is converted to float64 once and kept while the next two
    need it (mixed-type subtractions are ~3x slower). The region (interior after the crop,
    ``mask == 1``) is held padded to the full grid, so that the same flat span indexes it.
    """

    def __init__(self, u: np.ndarray, mask: np.ndarray | None) -> None:
        self.perm = contract.walk_order(u)
        self.v = u.transpose(*self.perm, 3)
        self.shape = self.v.shape[:3]
        c = CROP
        inside = np.zeros(self.shape, dtype=bool)  # C order in view axes: planes flatten like the field's
        inside[c:-c, c:-c, c:-c] = True if mask is None else mask.transpose(self.perm)[c:-c, c:-c, c:-c] == 1
        self.plane_size = self.shape[1] * self.shape[2]
        self.inside = inside.reshape(self.shape[0], self.plane_size)
        n = self.plane_size
        self.diff = [[np.empty(n) for _ in range(3)] for _ in range(3)]  # diff[field axis][component]
        self.t1, self.t2, self.det = np.empty(n), np.empty(n), np.empty(n)
        self.planes: dict[int, np.ndarray] = {}  # plane index -> 3 x n float64 (components)

    def indices(self) -> list[int]:
        """Planes with region voxels, ascending."""
        return np.flatnonzero(self.inside.any(axis=1)).tolist()

    def _neighbours(self, p: int) -> list[np.ndarray]:
        """Planes ``p - 1, p, p + 1`` as float64 (``3 x n`` each); buffers of older planes are reused."""
        needed = (p - 1, p, p + 1)
        for q in needed:
            if q not in self.planes:
                spare = [k for k in self.planes if k not in needed]
                buf = self.planes.pop(spare[0]) if spare else np.empty((3, self.plane_size))
                for comp in range(3):
                    np.copyto(buf[comp], self.v[q, :, :, comp].reshape(-1))
                self.planes[q] = buf
        return [self.planes[q] for q in needed]

    def values(self, p: int) -> np.ndarray:
        """det at the region voxels of plane ``p`` (flat memory order), a new float64 array.

        ``j[a][c] = delta_ac + (u_c[x + e_a] - u_c[x - e_a]) / 2`` for *field* axis ``a``, as the
        official ``-0.5 u[i-1] + 0.5 u[i+1]`` in float64; the cofactor expansion is the official
        one, term by term. It runs on ``2 j`` (the differences themselves, 2 on the diagonal) and
        scales the determinant by 1/8 at the end: scaling by powers of two commutes with
        rounding, so the result is bit-identical and saves nine passes.
        """
        region = self.inside[p]
        a, b = int(region.argmax()), region.size - int(region[::-1].argmax())  # flat span of the region
        # voxels; they lie in interior rows, so k +- n_fast stay in the plane
        nf, length = self.shape[2], b - a
        prev, here, nxt = self._neighbours(p)
        j = [[d[:length] for d in row] for row in self.diff]
        for comp in range(3):
            h = here[comp]
            shifted = ((nxt[comp, a:b], prev[comp, a:b]), (h[a + nf : b + nf], h[a - nf : b - nf]), (h[a + 1 : b + 1], h[a - 1 : b - 1]))
            for view_axis, (hi, lo) in enumerate(shifted):
                np.subtract(hi, lo, out=j[self.perm[view_axis]][comp])
            j[comp][comp] += 2.0
        t1, t2, det = self.t1[:length], self.t2[:length], self.det[:length]
        np.multiply(j[1][1], j[2][2], out=t1)
        t1 -= np.multiply(j[1][2], j[2][1], out=t2)
        np.multiply(j[0][0], t1, out=det)
        np.multiply(j[0][1], j[2][2], out=t1)
        t1 -= np.multiply(j[0][2], j[2][1], out=t2)
        det -= np.multiply(j[1][0], t1, out=t1)
        np.multiply(j[0][1], j[1][2], out=t1)
        t1 -= np.multiply(j[0][2], j[1][1], out=t2)
        det += np.multiply(j[2][0], t1, out=t1)
        det *= 0.125
        return det[self.inside[p, a:b]]


def determinant_map(u: np.ndarray, slab: int = 16) -> np.ndarray:
    """det(I + grad u) on the whole grid, ``X x Y x Z`` float64: ``contract.jacobian_determinant``
    (``np.gradient``: central differences inside, one-sided at the faces), computed in slabs of
    ``slab`` planes along axis 0 with a one-plane halo, so that no full-size ``X x Y x Z x 3 x 3``
    float64 Jacobian is held; bit-identical to the whole-grid computation. The map of
    ``predict --save-jacobian`` and of the per-pair report (folded voxels: det <= 0)."""
    contract.check_field(u)
    n = u.shape[0]
    if n < 2 or min(u.shape[1:3]) < 2:
        raise ValueError(f"field grid {u.shape[:3]} needs at least 2 voxels per axis for a Jacobian")
    out = np.empty(u.shape[:3], dtype=np.float64)
    for start in range(0, n, max(int(slab), 1)):
        stop = min(start + max(int(slab), 1), n)
        lo, hi = max(start - 1, 0), min(stop + 1, n)
        out[start:stop] = contract.jacobian_determinant(u[lo:hi])[start - lo : stop - lo]
    return out
