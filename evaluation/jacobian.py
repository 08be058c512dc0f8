"""SDlogJ and folding statistics of a displacement field: the official numbers (bit-identical
determinants, the ``+3`` quirk) and ours (``SDlogJ_true``, ``num_foldings_true``,
``folding_fraction``), computed plane by plane without a full-size float64 Jacobian.

Frames and units as in ``evaluation.metrics``: ``u`` is ``X x Y x Z x 3`` in voxels on the fixed
grid; the optional mask is the fixed mask (voxels ``== 1`` count).

NDV (the second part of this module):

Non-diffeomorphic volume (NDV, %): LUMIR's regularity metric, as its organisers compute it, fast.

The method (Liu et al., "On finite difference Jacobian computation in deformable image
registration", IJCV 2024; ``digital_diffeomorphism.py`` in the LUMIR evaluators; SPEC 2.6 in
``tests/fixtures/organisers``), in our words:

* ``phi = x + u(x)`` (voxels, float64), ``u`` an ``X x Y x Z x 3`` field (``learn2reg.contract``);
* each voxel ``p`` of the interior (one voxel cropped on every face) gets ten determinants: the
  eight one-sided Jacobians ``J_{+-x +-y +-z}``, whose row ``a`` is the forward difference
  ``phi(p + e_a) - phi(p)`` (``+``) or the backward one ``phi(p) - phi(p - e_a)`` (``-``), and two
  "central tetrahedron" ones, ``J*_1`` with rows ``phi(p - e_a - e_b) - phi(p)`` for the axis pairs
  (x, y), (x, z), (y, z) and ``J*_2`` with rows ``phi(p + e_a + e_b) - phi(p)`` for (x, y), (y, z),
  (x, z); every determinant is six times a tetrahedron's signed volume;
* ``NDV = 100 * sum_k sum_p mask(p) * (-0.5 * min(J_k(p), 0) / 6) / sum_p mask(p)``, the mask
  being ``image > 0`` on the interior (LUMIR 2024: the moving image; LUMIR 2025: the fixed one).

Speed without changing a number: the planes are processed in slabs along the field's slowest
axis in memory (bounded memory: no ten full-size float64 determinant maps); voxels whose
neighbourhood provably keeps all ten determinants positive (:func:`_may_fold`: every edge
difference of ``u`` small enough) are skipped, the others computed densely or gathered; every
determinant is the organisers' cofactor expansion, term by term in their order (so each is
bit-identical), with the 2x2 minors shared between the eight one-sided Jacobians (a determinant
is multilinear in its rows: a minor of rows ``a, b`` depends only on their two signs), 76
operations per voxel instead of 112; only negative determinants inside the mask are summed. Sums
run per slab, so the total can differ from the organisers' whole-array sum in the last bits
(~1e-16 relative).
"""

from __future__ import annotations

from collections.abc import Callable
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
    that count over the number of voxels in the region (all three ``None`` when not asked for).
    """

    sdlogj: float
    num_foldings: float
    sdlogj_true: float | None
    num_foldings_true: int | None
    folding_fraction: float | None
    voxels: int


def jacobian_stats(u: np.ndarray, mask: np.ndarray | None = None, true: bool = True) -> JacobianStats:
    """Official SDlogJ (bit-identical determinants) and, if ``true``, our corrected statistics
    (rule sets without our extras skip their logarithms: ~15 % of the time).

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
    official, logs = _Moments(), _Moments()
    shifted = np.empty(planes.plane_size)
    for p in planes.indices():
        det = planes.values(p)  # region voxels of plane p, in memory order
        log_shifted = shifted[: det.size]
        np.add(det, DET_SHIFT, out=log_shifted)
        np.clip(log_shifted, *LOG_CLIP, out=log_shifted)
        official.add(np.log(log_shifted, out=log_shifted))
        if true:
            positive = det > 0
            logs.add(np.log(det, out=det) if positive.all() else np.log(det[positive]))
    voxels = official.n
    # The official num_foldings counts det + 3 <= 0 after the clip to [1e-9, 1e9]: 0 by construction
    # (finite fields give finite determinants), so it is not counted voxel by voxel.
    if not true:
        return JacobianStats(official.std(), 0.0, None, None, None, voxels)
    folds = voxels - logs.n
    fraction = folds / voxels if voxels else float("nan")
    return JacobianStats(official.std(), 0.0, logs.std(), folds, fraction, voxels)


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


# ---------------------------------------------------------------------- NDV, LUMIR's non-diffeomorphic volume


SAFE = 0.9  # a voxel is skipped when 12 N < SAFE (see _may_fold): all ten determinants > 0
SLAB_VOXELS = 1 << 16  # interior voxels per slab: ~0.5 MB per float64 temporary, in cache
# The summation order of the organisers' calc_measurements (non_diff_volume).
ORDER = ("+x+y+z", "+x+y-z", "+x-y+z", "+x-y-z", "Jstar_1", "Jstar_2", "-x+y+z", "-x+y-z", "-x-y+z", "-x-y-z")
JSTAR_PAIRS = {"Jstar_1": (-1, ((0, 1), (0, 2), (1, 2))), "Jstar_2": (1, ((0, 1), (1, 2), (0, 2)))}


def ndv(u: np.ndarray, image: np.ndarray) -> float:
    """LUMIR's NDV in percent of the mask volume (``nan`` for an empty mask, as theirs).

    ``u``: ``X x Y x Z x 3`` voxel displacement (any float type, any memory order; computed in
    float64); ``image``: the mask image on the same grid (voxels ``> 0`` count, cropped by one
    voxel per face). Returns ``100 * non-diffeomorphic volume / mask voxels``.
    """
    contract.check_field(u, image.shape)
    sums, voxels = ndv_sums(u, image)
    total = np.float64(0.0)
    for name in ORDER:
        total = total + sums[name]
    with np.errstate(invalid="ignore", divide="ignore"):
        return float(total / np.int64(voxels) * 100)


def ndv_sums(u: np.ndarray, image: np.ndarray) -> tuple[dict[str, np.float64], int]:
    """Per determinant ``sum_p mask * (-0.5 * min(J, 0) / 6)`` and the mask voxel count."""
    perm = contract.walk_order(u)
    v = u.transpose(*perm, 3)  # view axes: slow, mid, fast; component c stays field axis c
    inside = image.transpose(perm)[1:-1, 1:-1, 1:-1] > 0
    sums = {name: np.float64(0.0) for name in ORDER}
    voxels = int(np.count_nonzero(inside))
    n = v.shape[:3]
    if min(n) < 3 or voxels == 0:
        return sums, voxels
    plane = (n[1] - 2) * (n[2] - 2)
    step = max(1, SLAB_VOXELS // plane)
    for start in range(1, n[0] - 1, step):
        stop = min(start + step, n[0] - 1)
        mask = inside[start - 1 : stop - 1]
        if not mask.any():
            continue
        for name, value in _slab(v, perm, start, stop, mask).items():
            sums[name] = sums[name] + value
    return sums, voxels


def _phi(v: np.ndarray, perm: tuple[int, int, int], start: int, stop: int) -> np.ndarray:
    """``x + u(x)`` on view planes ``start - 1 .. stop``, ``3 x L x n1 x n2`` float64, component
    ``c`` = field axis ``c`` (the organisers add a float32 index grid to the float64 field)."""
    block = v[start - 1 : stop + 1]
    phi = np.empty((3, *block.shape[:3]))
    for c in range(3):
        np.copyto(phi[c], block[..., c])
        b = perm.index(c)  # the view axis along which field axis c runs
        shape = [1, 1, 1]
        shape[b] = phi.shape[1 + b]
        offset = start - 1 if b == 0 else 0
        phi[c] += np.arange(offset, offset + shape[b], dtype=np.float64).reshape(shape)
    return phi


def _slab(v: np.ndarray, perm: tuple[int, int, int], start: int, stop: int, mask: np.ndarray) -> dict[str, np.float64]:
    """The ten masked sums on the interior voxels of view planes ``start .. stop - 1``: on every
    voxel (dense), or only on the voxels that :func:`_may_fold` keeps (gathered), whichever is cheaper."""
    candidates = _may_fold(v[start - 1 : stop + 1], perm) & mask
    count = int(np.count_nonzero(candidates))
    if count == 0:
        return {name: np.float64(0.0) for name in ORDER}
    phi = _phi(v, perm, start, stop)
    length = stop - start
    m1, m2 = phi.shape[2] - 2, phi.shape[3] - 2

    def view(offset: tuple[int, int, int]) -> tuple[int, int, int]:
        return offset[perm[0]], offset[perm[1]], offset[perm[2]]

    if count > candidates.size // 4:

        def dense(offset: tuple[int, int, int]) -> np.ndarray:
            d = view(offset)
            return phi[:, 1 + d[0] : 1 + d[0] + length, 1 + d[1] : 1 + d[1] + m1, 1 + d[2] : 1 + d[2] + m2]

        return _sums(dense, mask)
    i, j, k = np.nonzero(candidates)
    flat = ((i + 1) * phi.shape[2] + (j + 1)) * phi.shape[3] + (k + 1)
    rows = phi.reshape(3, -1)

    def gathered(offset: tuple[int, int, int]) -> np.ndarray:
        d = view(offset)
        return rows[:, flat + (d[0] * phi.shape[2] + d[1]) * phi.shape[3] + d[2]]

    return _sums(gathered, np.ones(count, dtype=bool))


def _may_fold(block: np.ndarray, perm: tuple[int, int, int]) -> np.ndarray:
    """Interior voxels of the slab where some of the ten determinants may be <= 0; every other
    voxel has all ten positive, provably: with ``D_a(q) = u(q + e_a) - u(q)`` and ``N`` the largest
    ``|D_a(q)|^2`` over the axes and the 3x3x3 neighbourhood, a one-sided Jacobian is ``I + A`` with
    ``|A|_F^2 <= 3 N``, a tetrahedron one ``M + D`` with ``det M = 2``, ``|M^-1|_2 = 1`` and
    ``|D|_F^2 <= 12 N`` (each row is a sum of two edges); ``12 N < 1`` keeps both away from
    singular along the segment from the identity part, so their determinants stay positive
    (``det >= det(M) (1 - |M^-1 D|)^3``). ``SAFE`` leaves a margin far above rounding: ``N`` is
    computed from ``u`` itself (``block``: view planes ``start - 1 .. stop``, components last) in its
    stored type, float32 for most fields (relative error < 1e-6), so a voxel is only skipped when
    the exact ``12 N`` is below ``SAFE (1 + 1e-6) < 1``. Which voxels are kept never changes the
    sums: the skipped ones have no negative determinant."""
    shape = block.shape[:3]
    edge = np.zeros(shape, dtype=block.dtype)  # max over axes of |D_a(q)|^2, for q with q + e_a in the slab
    for b in range(3):
        lo = tuple(slice(0, n - 1) if c == b else slice(None) for c, n in enumerate(shape))
        hi = tuple(slice(1, n) if c == b else slice(None) for c, n in enumerate(shape))
        norm = np.zeros(edge[lo].shape, dtype=block.dtype)
        for c in range(3):
            d = block[(*hi, c)] - block[(*lo, c)]
            d *= d
            norm += d
        np.maximum(edge[lo], norm, out=edge[lo])
    for b in range(3):  # 3-voxel max filter along each view axis, cropped to the interior on the way
        size = int(edge.shape[b])
        left, mid, right = (tuple(slice(o, size - 2 + o) if c == b else slice(None) for c in range(3)) for o in (0, 1, 2))
        edge = np.maximum(np.maximum(edge[left], edge[mid]), edge[right])
    return edge * 12.0 >= SAFE


def _sums(at: Callable[[tuple[int, int, int]], np.ndarray], mask: np.ndarray) -> dict[str, np.float64]:
    """The ten sums from ``at(offset)``: ``phi`` at ``p + offset`` (field axes), ``3 x ...``."""

    def unit(axis: int, sign: int) -> tuple[int, int, int]:
        e = [0, 0, 0]
        e[axis] = sign
        return e[0], e[1], e[2]

    here = at((0, 0, 0))
    # rows[a][s]: row a of the one-sided Jacobians, s = 0 forward ("+"), 1 backward ("-")
    rows = [(at(unit(a, 1)) - here, here - at(unit(a, -1))) for a in range(3)]
    out: dict[str, np.float64] = {}
    minors = _minors(rows)
    for sx in range(2):
        for sy in range(2):
            for sz in range(2):
                det = _expand(rows[0][sx], rows[1][sy], rows[2][sz], minors[(1, 2)][sy, sz], minors[(0, 2)][sx, sz], minors[(0, 1)][sx, sy])
                out["+-"[sx] + "x" + "+-"[sy] + "y" + "+-"[sz] + "z"] = _negative_volume(det, mask)
    for name, (sign, pairs) in JSTAR_PAIRS.items():
        r = [at(tuple(sign * int(k in pair) for k in range(3))) - here for pair in pairs]  # type: ignore[arg-type]
        out[name] = _negative_volume(_det(r[0], r[1], r[2]), mask)
    return out


def _minors(rows: list[tuple[np.ndarray, np.ndarray]]) -> dict[tuple[int, int], dict[tuple[int, int], np.ndarray]]:
    """The 2x2 minors of the cofactor expansion down column 0, per pair of rows and their signs:
    rows (1, 2): ``J11 J22 - J12 J21``; rows (0, 2): ``J01 J22 - J02 J21``; rows (0, 1): ``J01 J12 - J02 J11``."""
    out: dict[tuple[int, int], dict[tuple[int, int], np.ndarray]] = {}
    for top, bottom in ((1, 2), (0, 2), (0, 1)):
        out[(top, bottom)] = {}
        for s in range(2):
            for t in range(2):
                a, b = rows[top][s], rows[bottom][t]
                m = a[1] * b[2]
                m -= a[2] * b[1]
                out[(top, bottom)][(s, t)] = m
    return out  # indexed [(rows)][signs] below via a tuple key


def _expand(r0: np.ndarray, r1: np.ndarray, r2: np.ndarray, m12: np.ndarray, m02: np.ndarray, m01: np.ndarray) -> np.ndarray:
    """``J00 m12 - J10 m02 + J20 m01`` (the organisers' order); ``r_a[c]`` = J[a][c]."""
    det = r0[0] * m12
    det -= r1[0] * m02
    det += r2[0] * m01
    return det


def _det(r0: np.ndarray, r1: np.ndarray, r2: np.ndarray) -> np.ndarray:
    """The organisers' cofactor determinant of the rows ``r0, r1, r2`` (components first)."""
    m12 = r1[1] * r2[2]
    m12 -= r1[2] * r2[1]
    m02 = r0[1] * r2[2]
    m02 -= r0[2] * r2[1]
    m01 = r0[1] * r1[2]
    m01 -= r0[2] * r1[1]
    return _expand(r0, r1, r2, m12, m02, m01)


def _negative_volume(det: np.ndarray, mask: np.ndarray) -> np.float64:
    """``sum(-0.5 * min(det, 0) * mask / 6)``, element by element as the organisers write it."""
    neg = det[(det < 0) & mask]
    if neg.size == 0:
        return np.float64(0.0)
    return np.float64(np.sum(-0.5 * neg / 6))
