"""HD95 as the official Learn2Reg evaluator computes it (DeepMind's surface-distance method), fast.

The method, in our words (positions are **voxel vertices**, not voxel centres):

* a mask is cut into 2x2x2 neighbourhoods; the neighbourhood whose upper corner is voxel ``v``
  (voxels ``v - 1`` .. ``v`` on every axis) gets an 8-bit code, bit ``7 - (4a + 2b + c)`` set when
  voxel ``v - 1 + (a, b, c)`` is inside; vertex ``v`` is a *surface element* (surfel) when its
  code is neither 0 nor 255;
* each code has an area: the summed triangle areas of its marching-cubes patch, scaled by the
  spacing (table below);
* the distance of a surfel to the other surface is the Euclidean distance (mm, i.e. vertex index
  times spacing) to the nearest surfel of the other mask;
* the directed 95th percentile sorts surfels by (distance, area), takes the cumulative area
  fraction and returns the first distance whose fraction reaches 0.95 (no interpolation); HD95 is
  the larger of the two directions; an empty surface on either side gives ``inf``.

The official evaluator calls it with spacing ``(1, 1, 1)``: HD95 in voxels. Speed-ups that give
the same numbers: surfels are found per structure inside its own bounding box (+1 vertex); in
voxel units the nearest distances are exact integer squared distances, from a distance transform
of the other surface on the box of both surfaces only (the reference transforms the box of both
masks), or from a k-d tree where that box is large and the surfaces small (structures far apart),
and a surface that covers the grid's border (background) is measured inside the border; the
percentile counts surfels per (squared distance, area) instead of sorting them. Every distance is
the square root of the exact integer (or, for other spacings, computed from integer offsets as
the distance transform does), so the numbers are bit-identical.

Only the distances up to the 95th percentile decide HD95, and in a registration worth scoring
most surfels lie within a few voxels of the other surface. So, given the percentile, the nearest
distances are first looked up locally (:func:`_local_squared`): shell by shell of offsets of equal
length (0, 1, sqrt 2, ...), each remaining surfel is tested against the other surface's vertices,
until the surfels found cover more than the percentile's share of the area; the rest are only
known to be farther (-1, "unknown"), which cannot move the percentile (checked with a margin for
rounding: :func:`directed_percentile_squared` returns ``None`` when it could, and the caller then
takes the complete distances). Where the surfaces are far apart the search stops once it would
cost a quarter of the distance transform, which then runs as before.
"""

from __future__ import annotations

import functools
import math
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from learn2reg import contract

# seung-lab's exact Euclidean distance transform (HD95's largest cost, ~2x faster than scipy's),
# imported at its first use (it imports multiprocessing): ... = not yet, None = not installed.
_edt: Any = ...

# Surfel areas of DeepMind's surface-distance lookup table (Apache-2.0), as data: for codes
# 0..127, the triangles of the code's marching-cubes patch, each as |area vector| x 8 (three
# digits, one per axis; "-" = no surface). Code c >= 128 has the same patch as 255 - c.
_TRIANGLES_0_127 = (  # one entry per code, separated by spaces
    '- 111 111 220,220 111 202,202 111,111 400,222,111 111 111,111 202,202 400,222,111 220,220 400,222,111 '
    '400,222,111 400,400 111 022,022 111,111 040,222,111 111,111 004,222,111 111,111,111 111,222,222,111 111,111 '
    '022,022,111 202,202,111 111,333,022,202 111,220,220 333,022,111,220 400,111,222,111 400,111,222 111 111,111 '
    '022,022 040,111,222 111,111 111,202,202 022,022,111 333,022,111,202 111,111 111,111,111 004,222,111 '
    '222,222,111,111 111,220,220 400,222,111,111 022,333,111,220 400,222,111 220,220 040,222,111 040,111,222 '
    '040,040 220,220,111 333,202,111,220 111,040,222,111 040,222,111 111,220,220 040,222,111,111 333,220,111,202 '
    '040,222,111 220,220,220,220 220,220,111 111,220,220 220,220 111 111,111 111,111 111,220,220 022,022 '
    '004,222,111 022,022,111 333,022,111,220 111,111 111,111,111 111,202,202 400,222,111,111 040,222,111 '
    '222,222,111,111 202,333,022,111 400,222,111 202,202 004,222,111 111,202,202 202,333,220,111 004,222,111 '
    '004,004 111,111,222,004 111,222,004 202,202,111 004,222,111,111 202,202,202,202 111,202,202 202,333,220,111 '
    '004,222,111 111,202,202 202,202 111,111 111,111,111 111,022,022 040,111,222,111 022,022,111 004,222,111,111 '
    '022,022,022,022 022,022,111 111,111,111 111,111,111,111 004,222,111,111 111,111,111 040,222,111,111 '
    '111,111,111 022,022,111 111,111 400,222,111 222,111,222,111 333,022,111,202 040,222,111 333,220,022,111 '
    '111,222,004 111,022,022 022,022 400,222,111,111 111,111,111 202,202,111 111,111 220,220,111 111,111 111,111 '
    '111'
)

Spacing = Sequence[float]


def surfel_area_table(spacing: Spacing = (1.0, 1.0, 1.0)) -> np.ndarray:
    """Area (mm^2) of the surface patch of every neighbourhood code, ``(256,)`` float64.

    A triangle's area vector ``n`` (voxel units) scales to ``(n0 s1 s2, n1 s0 s2, n2 s0 s1)``;
    the patch area is the sum of the norms, accumulated in the reference order (bit-identical).
    Tables are kept per spacing (read-only arrays).
    """
    return _area_table(tuple(float(s) for s in spacing))


@functools.lru_cache(maxsize=64)
def _area_table(spacing: tuple[float, ...]) -> np.ndarray:
    s0, s1, s2 = spacing
    half = np.zeros(128)
    for code, entry in enumerate(_TRIANGLES_0_127.split()):
        total = 0.0
        for tri in entry.split(","):
            if tri == "-":
                continue
            n = np.array([int(tri[0]) / 8 * s1 * s2, int(tri[1]) / 8 * s0 * s2, int(tri[2]) / 8 * s0 * s1])
            total += float(np.linalg.norm(n))
        half[code] = total
    table = np.concatenate([half, half[::-1]])
    table.flags.writeable = False
    return table


def neighbour_codes(mask: np.ndarray) -> np.ndarray:
    """8-bit neighbourhood codes of a 3-D boolean ``mask`` (``a x b x c``).

    Returns ``(a+1) x (b+1) x (c+1)`` uint8: entry ``v`` encodes voxels ``v-1 .. v`` (outside
    the array counts as background), bit ``7 - (4i + 2j + k)`` for voxel ``v - 1 + (i, j, k)``.
    Built axis by axis: pairs along the last axis (2 bits), then pairs of those (4), then of
    those (8): three shift-or passes instead of eight.
    """
    a, b, c = mask.shape
    padded = np.zeros((a + 2, b + 2, c + 2), dtype=np.uint8)
    padded[1:-1, 1:-1, 1:-1] = mask
    two = padded[:, :, :-1] << 1
    two |= padded[:, :, 1:]
    four = two[:, :-1] << 2
    four |= two[:, 1:]
    codes = four[:-1] << 4
    codes |= four[1:]
    return codes


@dataclass(frozen=True)
class Surface:
    """Surfels of one mask: ``vertices`` ``N x 3`` int64 (global vertex index, array order)
    and their neighbourhood ``codes`` ``(N,)`` uint8 (areas come from a table per spacing)."""

    vertices: np.ndarray
    codes: np.ndarray

    def __len__(self) -> int:
        return int(self.codes.shape[0])

    def areas(self, area_table: np.ndarray) -> np.ndarray:
        """Area of every surfel (mm^2 of the spacing ``area_table`` was made with)."""
        return area_table[self.codes]


def extract_surface(mask: np.ndarray, offset: Sequence[int] = (0, 0, 0)) -> Surface:
    """Surfels of a boolean ``mask`` cropped from a larger volume at ``offset`` (voxels).

    The crop must contain the whole structure (its bounding box is enough): vertex ``v`` of
    the crop is global vertex ``offset + v``. Surfels come in memory order of the codes.
    """
    codes = neighbour_codes(mask).ravel()
    flat = np.flatnonzero((codes - np.uint8(1)) < 254)  # code not 0 and not 255 (uint8 wraps 0 to 255)
    _, b, c = (n + 1 for n in mask.shape)
    first, rest = np.divmod(flat, b * c)
    second, third = np.divmod(rest, c)
    lo = [int(o) for o in offset]
    vertices = np.stack([first + lo[0], second + lo[1], third + lo[2]])  # 3 x N: the N x 3 view below costs no copy
    return Surface(vertices.T, codes[flat])


# Which exact method finds the nearest surfels (both give the same numbers). In voxel units, CPU
# seconds measured on this project's 2-core machine (AMD EPYC; 35 labels of 160x192x224 pairs,
# boxes of 0.2-1.2 M voxels), both directions together:
EDT_PER_VOXEL = 55e-9  # distance transforms of the two surfaces on the box of both (edt package: 47-63 ns)
TREE_PER_SURFEL = 0.15e-6  # building the two k-d trees
TREE_PER_QUERY = 2.5e-6  # one nearest-neighbour query (a surfel that is not on the other surface): 1.2-4.2 us,
# more the farther the structures are apart
TREE_IMPORT = 0.3  # importing scipy.spatial, once per process (0.31 CPU s measured): counted while not imported
# Boxes up to this many voxels always take the distance transform (<= ~60 ms).
EDT_BOX_MIN = 1 << 20
# Anisotropic spacing (scipy's slower transform): the tree when the box exceeds EDT_BOX_MIN and this
# many voxels per surfel (far-apart structures).
EDT_BOX_PER_SURFEL = 10.0


def pair_distances(a: Surface, b: Surface, spacing: Spacing = (1.0, 1.0, 1.0), method: str = "auto") -> tuple[np.ndarray, np.ndarray]:
    """Nearest-surfel distances (mm) both ways: ``a -> b`` for every surfel of ``a`` and
    ``b -> a``; ``inf`` for all surfels of one side when the other side is empty.

    ``method``: ``"edt"`` (Euclidean distance transform of the other surface on the box of both
    surfaces, as the reference does on the masks' box), ``"kdtree"`` (nearest neighbour search),
    ``"auto"``: the distance transform unless the box is large and sparse (far-apart structures). Both are
    exact and compute each distance as ``sqrt(sum((d_i s_i)^2))`` from integer offsets ``d``
    (in voxel units: the square root of the exact integer, :func:`pair_squared_distances`).
    """
    if len(a) == 0 or len(b) == 0:
        return np.full(len(a), np.inf), np.full(len(b), np.inf)
    if all(float(s) == 1.0 for s in spacing):
        a_to_b, b_to_a = pair_squared_distances(a, b, method)
        return np.sqrt(a_to_b.astype(np.float64)), np.sqrt(b_to_a.astype(np.float64))
    lo, box = _box(a, b)
    method = _method(a, b, box) if method == "auto" else method
    if method == "edt":
        return _edt_distances(a, b, lo, box, spacing), _edt_distances(b, a, lo, box, spacing)
    if method == "kdtree":
        return _tree_distances(a, b, spacing), _tree_distances(b, a, spacing)
    raise ValueError(f"unknown distance method {method!r} (auto, edt, kdtree)")


# The local search (module docstring): CPU seconds per surfel-offset test (a gather of the other
# surface's vertex grid; 2-4 ns measured), the share of the distance transform's estimated cost it
# may spend before giving way to it, and the largest offset length it looks at (voxels; the box is
# padded by it)...
LOCAL_PER_TEST = 3e-9
LOCAL_SHARE = 0.25
LOCAL_RADIUS = 6
# It does not start when, on a sample of ~512 surfels (of a surface larger than LOCAL_SAMPLE_ABOVE), the
# offsets up to this squared length (27) find less than this share of the percentile's area (surfaces
# mostly farther apart than that).
LOCAL_EARLY = (3, 0.5)
LOCAL_SAMPLE_ABOVE = 2048  # surfels; smaller surfaces skip the sample (their first shells cost as little)
# Callers with label statistics try it only for a label whose Dice reaches this (evaluation.metrics.hd95):
# below, the surfaces mostly lie apart and even the sample is wasted work.
LOCAL_MIN_DICE = 0.65


def pair_squared_distances(
    a: Surface, b: Surface, method: str = "auto", grid: Sequence[int] | None = None, percent: float | tuple[float, float] | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Squared nearest-surfel distances in voxel units, exact integers (int64), both ways
    (``a -> b``, ``b -> a``); both surfaces non-empty. ``method`` as :func:`pair_distances`;
    ``auto`` takes the distance transform for boxes up to ``EDT_BOX_MIN`` voxels, else the
    cheaper one by the cost model above, given how many surfels the trees would have to look up:
    those not on the other surface.

    ``grid``: the shape (voxels) of the volume the masks cover. When both surfaces hold the grid's
    whole border (every vertex on it: masks that cover the border, as background does), those
    surfels are at distance 0 and the others' distance to the border is their distance to the
    nearest face; only the inner surfels then need a transform, on their own box (for brains,
    ~40-60 % of the grid's).

    ``percent`` (with ``method`` "auto"): only the distances that can decide that area percentile
    of each direction are needed (one for both, or ``a -> b``'s and ``b -> a``'s); the others may
    come back as -1 (unknown: larger than every known one of that direction; module docstring)."""
    if grid is not None:
        found = _border_squared_distances(a, b, tuple(int(n) for n in grid), method, percent)
        if found is not None:
            return found
    lo, box = _box(a, b)
    if method == "auto" and percent is not None:
        budget = LOCAL_SHARE * EDT_PER_VOXEL / 2 * float(np.prod(box))  # a quarter of one direction's transform
        shares = _per_direction(percent)
        local = [_local_squared(a, b, shares[0], budget), _local_squared(b, a, shares[1], budget)]
        if all(found is not None for found in local):
            return local[0], local[1]  # type: ignore[return-value]
        missing = [side for side, found in enumerate(local) if found is None]
        if len(missing) == 1:  # one direction found locally: the other by the transform
            source, target = (a, b) if missing[0] == 0 else (b, a)
            local[missing[0]] = _edt_squared(source, target, lo, box)
            return local[0], local[1]  # type: ignore[return-value]
    search: tuple[np.ndarray | None, np.ndarray | None] = (None, None)
    if method == "auto":
        voxels = float(np.prod(box))
        method = "edt"
        if voxels > EDT_BOX_MIN:
            search = (_not_on(a, b, lo, box), _not_on(b, a, lo, box))
            tree = TREE_PER_SURFEL * (len(a) + len(b)) + TREE_PER_QUERY * (len(search[0]) + len(search[1]))
            method = "kdtree" if tree + tree_import_seconds() < EDT_PER_VOXEL * voxels else "edt"
    if method == "edt":
        return _edt_squared(a, b, lo, box), _edt_squared(b, a, lo, box)
    if method == "kdtree":
        return _tree_squared(a, b, search[0]), _tree_squared(b, a, search[1])
    raise ValueError(f"unknown distance method {method!r} (auto, edt, kdtree)")


@functools.lru_cache(maxsize=4)
def _shells(radius: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The integer offsets of squared length <= ``radius``^2 (``N x 3``), shortest first; their
    distinct squared lengths; where each length's offsets start (one more entry: the end)."""
    axis = np.arange(-radius, radius + 1)
    offsets = np.stack(np.meshgrid(axis, axis, axis, indexing="ij"), axis=-1).reshape(-1, 3)
    lengths = np.add.reduce(offsets * offsets, axis=1)
    keep = np.flatnonzero(lengths <= radius * radius)
    order = keep[np.argsort(lengths[keep], kind="stable")]
    distinct, starts = np.unique(lengths[order], return_index=True)
    return offsets[order], distinct, np.append(starts, order.size)


def _local_squared(source: Surface, target: Surface, percent: float, budget: float) -> np.ndarray | None:
    """Squared voxel distances of the ``source`` surfels to the nearest ``target`` surfel, found
    shell by shell of offsets of equal length (module docstring) until the surfels found hold
    more than ``percent`` of the source's area (voxel-unit areas); the others are -1 (farther than
    every one found). ``None`` when that needs offsets longer than ``LOCAL_RADIUS`` or more than
    ``budget`` CPU seconds (by ``LOCAL_PER_TEST``)."""
    radius = LOCAL_RADIUS
    lo = np.minimum(source.vertices.min(axis=0), target.vertices.min(axis=0)) - radius
    shape = np.maximum(source.vertices.max(axis=0), target.vertices.max(axis=0)) + radius + 1 - lo
    strides = np.array([shape[1] * shape[2], shape[2], 1], dtype=np.int64)
    grid = np.zeros(int(np.prod(shape)), dtype=bool)  # the target's vertices, in a box padded by the radius
    grid[(target.vertices - lo) @ strides] = True
    at = (source.vertices - lo) @ strides
    areas = _area_table((1.0, 1.0, 1.0))[source.codes]
    need = percent / 100.0 * float(np.sum(areas)) * (1.0 + 1e-9)
    offsets, lengths, starts = _shells(radius)
    shifts = offsets @ strides
    early, share = LOCAL_EARLY
    if len(source) > LOCAL_SAMPLE_ABOVE:  # a spread-out sample first: are the surfaces close?
        sample = slice(None, None, len(source) // 512)
        near = grid[at[sample, None] + shifts[: starts[int(np.searchsorted(lengths, early, side="right"))]]].any(axis=1)
        if float(np.sum(areas[sample][near])) < share * percent / 100.0 * float(np.sum(areas[sample])):
            return None  # mostly farther apart than that: the transform is the cheaper way
    out = np.full(len(source), -1, dtype=np.int64)
    todo = np.arange(len(source))
    found_area, spent = 0.0, 0.0
    for k, length in enumerate(lengths.tolist()):
        shell = shifts[starts[k] : starts[k + 1]]
        spent += todo.size * shell.size * LOCAL_PER_TEST
        if spent > budget:
            return None
        if k == 0:  # on the other surface itself
            hit = grid[at]
        elif todo.size <= 1 << 14:
            hit = grid[at[todo][:, None] + shell].any(axis=1)
        else:
            hit = np.zeros(todo.size, dtype=bool)
            for first in range(0, todo.size, 1 << 14):  # rows of offsets in blocks: bounded memory
                rows = at[todo[first : first + (1 << 14)]]
                hit[first : first + rows.size] = grid[rows[:, None] + shell].any(axis=1)
        found = todo[hit]
        out[found] = length
        found_area += float(np.sum(areas[found]))
        todo = todo[~hit]
        if todo.size == 0 or found_area > need:
            return out
    return None


def _border_squared_distances(
    a: Surface, b: Surface, grid: tuple[int, ...], method: str, percent: float | tuple[float, float] | None = None
) -> tuple[np.ndarray, np.ndarray] | None:
    """:func:`pair_squared_distances` when both surfaces contain every vertex on the border of
    the ``grid``'s vertex lattice (``0 .. n`` per axis), else ``None``."""
    top = np.asarray(grid, dtype=np.int64)
    count = math.prod(n + 1 for n in grid) - math.prod(max(n - 1, 0) for n in grid)  # vertices on the border
    on = [((s.vertices == 0) | (s.vertices == top)).any(axis=1) for s in (a, b)]
    if any(int(o.sum()) != count for o in on):  # vertices are distinct: this many means all of them
        return None
    inner = [Surface(s.vertices[~o], s.codes[~o]) for s, o in zip((a, b), on, strict=True)]
    out = [np.zeros(len(a), dtype=np.int64), np.zeros(len(b), dtype=np.int64)]
    if len(inner[0]) and len(inner[1]):
        # the border's surfels are all known, at 0: of the percentile's share of a side's area, the
        # inner surfels need to hold only what the border's do not (per direction)
        shares = None
        if percent is not None:
            wanted = _per_direction(percent)
            shares = (_inner_share(wanted[0], a, on[0]), _inner_share(wanted[1], b, on[1]))
        nearest = pair_squared_distances(inner[0], inner[1], method, percent=shares)
    else:  # one side is the border alone
        nearest = (np.full(len(inner[0]), np.iinfo(np.int64).max), np.full(len(inner[1]), np.iinfo(np.int64).max))
    for side, (s, o) in enumerate(zip(inner, on, strict=True)):
        if len(s):
            face = np.minimum(s.vertices, top - s.vertices).min(axis=1)  # distance to the nearest face
            near = nearest[side]
            known = np.minimum(near, face * face)
            # unknown (-1): farther than every known inner distance, so the face decides where it
            # is at most the largest of those; beyond, it stays unknown
            limit = near.max(initial=-1)
            out[side][~o] = np.where(near >= 0, known, np.where(face * face <= limit, face * face, -1))
    return out[0], out[1]


def _per_direction(percent: float | tuple[float, float]) -> tuple[float, float]:
    """``percent`` of :func:`pair_squared_distances` as ``(a -> b, b -> a)``."""
    return (percent, percent) if isinstance(percent, float | int) else percent


def _inner_share(percent: float, side: Surface, on_border: np.ndarray) -> float:
    """The percent of the inner surfels' area (``~on_border``) that, with the border's surfels
    (at distance 0), makes ``percent`` of the whole side's area (voxel-unit areas, as the local
    search counts them); 0 when the border alone holds enough."""
    areas = _area_table((1.0, 1.0, 1.0))[side.codes]
    total, border = float(np.sum(areas)), float(np.sum(areas[on_border]))
    inner = total - border
    return 0.0 if inner <= 0 else min(100.0, max(0.0, 100.0 * (percent / 100.0 * total - border) / inner))


def tree_import_seconds() -> float:
    """What the k-d tree would cost first in this process: importing scipy.spatial (0 once loaded)."""
    return 0.0 if "scipy.spatial" in sys.modules else TREE_IMPORT


def _box(a: Surface, b: Surface) -> tuple[np.ndarray, np.ndarray]:
    """Lowest vertex and size of the box of both surfaces (non-empty)."""
    lo = np.minimum(a.vertices.min(axis=0), b.vertices.min(axis=0))
    return lo, np.maximum(a.vertices.max(axis=0), b.vertices.max(axis=0)) + 1 - lo


def _method(a: Surface, b: Surface, box: np.ndarray) -> str:
    """``auto`` for an anisotropic spacing."""
    voxels = float(np.prod(box))
    return "edt" if voxels <= max(EDT_BOX_PER_SURFEL * (len(a) + len(b)), EDT_BOX_MIN) else "kdtree"


def _not_on(source: Surface, target: Surface, lo: np.ndarray, box: np.ndarray) -> np.ndarray:
    """Indices of the source surfels that are not target surfels (by linear index in the box)."""
    shape = tuple(int(n) for n in box)
    at = np.ravel_multi_index(tuple((source.vertices - lo).T), shape)
    targets = np.ravel_multi_index(tuple((target.vertices - lo).T), shape)
    if targets.size > 1 and not np.all(targets[1:] > targets[:-1]):  # surfels come in raster order, as a rule
        targets = np.sort(targets)
    found = np.minimum(np.searchsorted(targets, at), targets.size - 1)
    return np.flatnonzero(targets[found] != at)


def edt_package() -> Any:
    """The ``edt`` module, or ``None`` where it is not installed (scipy's transform is used)."""
    global _edt  # imported once, at the first HD95 (a run without HD95 never loads it)
    if _edt is ...:
        try:
            import edt  # here, not at the top: it imports multiprocessing (a plain import, so dependency scans see it)

            _edt = edt
        except ImportError:  # pragma: no cover - edt is pinned in requirements.txt
            _edt = None
    return _edt


def _edt_squared(source: Surface, target: Surface, lo: np.ndarray, box: np.ndarray) -> np.ndarray:
    """Squared voxel distances at the source surfels from a distance transform of the target's
    surfels on the box: the ``edt`` package's (exact integers in its float32 output below 2^24),
    else scipy's feature transform (nearest target vertex) and the integer offsets."""
    shape = tuple(int(n) for n in box)
    grid = np.ones(shape, dtype=np.uint8)  # 0 at the target's vertices
    grid[tuple((target.vertices - lo).T)] = 0
    at = tuple((source.vertices - lo).T)
    package = edt_package()
    if package is not None and sum((n - 1) ** 2 for n in shape) < 2**24:
        return package.edtsq(grid, black_border=False, parallel=1)[at].astype(np.int64)
    from scipy import ndimage  # only here (no edt, or a huge box): scipy.ndimage costs ~0.2 CPU s to import

    nearest = ndimage.distance_transform_edt(grid, return_distances=False, return_indices=True)
    offsets = nearest[(slice(None), *at)] - np.asarray(at)
    return np.add.reduce(offsets.astype(np.int64) ** 2, axis=0)


def _tree_squared(source: Surface, target: Surface, search: np.ndarray | None = None) -> np.ndarray:
    """Squared voxel distances at the source surfels from a k-d tree of the target's surfels;
    only the source surfels ``search`` (default: those not on the target) are looked up, the
    others are at distance 0."""
    from scipy.spatial import cKDTree  # here: importing scipy.spatial costs ~0.3 CPU s (TREE_IMPORT)

    if search is None:
        search = _not_on(source, target, *_box(source, target))
    out = np.zeros(len(source), dtype=np.int64)
    if search.size:
        tree = cKDTree(target.vertices.astype(np.float64), leafsize=32, balanced_tree=False, compact_nodes=False)
        _, nearest = tree.query(source.vertices[search].astype(np.float64), k=1)
        out[search] = np.add.reduce((target.vertices[nearest] - source.vertices[search]) ** 2, axis=1)
    return out


def _edt_distances(source: Surface, target: Surface, lo: np.ndarray, box: np.ndarray, spacing: Spacing) -> np.ndarray:
    """Distances (mm of an anisotropic ``spacing``) at the source surfels from scipy's feature
    transform (nearest target vertex of every box voxel), with the transform's own formula."""
    shape = tuple(int(n) for n in box)
    grid = np.ones(shape, dtype=np.uint8)  # 0 at the target's vertices
    grid[tuple((target.vertices - lo).T)] = 0
    at = (source.vertices - lo).T
    from scipy import ndimage  # only here (anisotropic spacing): scipy.ndimage costs ~0.2 CPU s to import

    nearest = ndimage.distance_transform_edt(grid, sampling=[float(s) for s in spacing], return_distances=False, return_indices=True)
    return _offset_lengths((nearest[(slice(None), *at)] - at).T, spacing)


def _tree_distances(source: Surface, target: Surface, spacing: Spacing) -> np.ndarray:
    from scipy.spatial import cKDTree  # here: importing scipy.spatial costs ~0.3 CPU s (TREE_IMPORT)

    scale = np.asarray(spacing, dtype=np.float64)
    tree = cKDTree(target.vertices * scale, leafsize=32, balanced_tree=False, compact_nodes=False)
    _, nearest = tree.query(source.vertices * scale, k=1)
    return _offset_lengths(target.vertices[nearest] - source.vertices, spacing)


def _offset_lengths(offsets: np.ndarray, spacing: Spacing) -> np.ndarray:
    """Lengths (mm) of integer vertex offsets ``N x 3``, in the distance transform's own order
    of operations: ``sqrt(sum((d_i s_i)^2))`` (so both distance methods agree bit for bit)."""
    delta = offsets.astype(np.float64) * np.asarray(spacing, dtype=np.float64)
    return np.sqrt(np.add.reduce(delta * delta, axis=1))


def directed_percentile(distances: np.ndarray, areas: np.ndarray, percent: float = 95.0) -> float:
    """Area-weighted percentile of one direction, as the reference: sort by (distance, area),
    first distance whose cumulative area fraction reaches ``percent``; ``inf`` if empty."""
    if distances.shape[0] == 0:
        return float("inf")
    order = np.lexsort((areas, distances))
    pairs = np.stack([distances, areas], axis=1)[order]  # same layout as the reference's sorted array
    sorted_d, sorted_a = pairs[:, 0], pairs[:, 1]
    cumulative = np.cumsum(sorted_a) / np.sum(sorted_a)
    idx = int(np.searchsorted(cumulative, percent / 100.0))
    return float(sorted_d[min(idx, len(sorted_d) - 1)])


def directed_percentile_squared(
    squared: np.ndarray, codes: np.ndarray, spacing: Spacing = (1.0, 1.0, 1.0), percent: float = 95.0, scale: float | None = None
) -> float | None:
    """:func:`directed_percentile` of the distances ``sqrt(squared)`` (times ``scale``, if given)
    and the areas of ``codes`` for ``spacing``, bit for bit, without sorting.

    ``squared``: exact integer squared voxel distances; distinct integers have distinct roots,
    so (distance, area) order is (squared, area value) order, and surfels with equal keys are
    interchangeable. Counting surfels per key gives the areas in sorted order; their running
    and total sums are then the reference's own (same values, same order, same numpy calls).

    Entries of -1 are unknown distances, larger than every known one (:func:`pair_squared_distances`
    with ``percent``): ``None`` when they could decide the percentile (it lies among them, or
    within 1e-12 of a boundary, where their order could move it), else the exact result."""
    n = squared.shape[0]
    if n == 0:
        return float("inf")
    values, rank = _area_ranks(tuple(float(s) for s in spacing))
    unknown = squared < 0
    present = np.zeros(max(int(squared.max()), 0) + 2, dtype=bool)
    present[squared[~unknown]] = True
    present[-1] = True  # one more key beyond every known distance: the unknown ones (-1 indexes it)
    distinct = np.flatnonzero(present)
    position = np.cumsum(present) - 1  # squared value -> its index among the distinct ones
    key = position[squared] * len(values) + rank[codes]
    counts = np.bincount(key, minlength=len(distinct) * len(values))
    sorted_areas = np.repeat(np.tile(values, len(distinct)), counts)
    cumulative = np.cumsum(sorted_areas) / np.sum(sorted_areas)
    p = percent / 100.0
    idx = min(int(np.searchsorted(cumulative, p)), n - 1)
    bucket = int(np.searchsorted(np.cumsum(counts), idx, side="right"))
    if unknown.any():
        if bucket // len(values) == len(distinct) - 1:
            return None  # the percentile lies among the unknown distances
        if not (cumulative[idx] - p > 1e-12 and (idx == 0 or p - cumulative[idx - 1] > 1e-12)):
            # the unknown ones are summed in another order than the reference's: its total may differ
            # in the last bits, which could move a percentile this close to a boundary
            return None
    distance = np.sqrt(np.float64(distinct[bucket // len(values)]))
    return float(distance if scale is None else distance * scale)


@functools.lru_cache(maxsize=64)
def _area_ranks(spacing: tuple[float, ...]) -> tuple[np.ndarray, np.ndarray]:
    """The distinct surfel areas of a spacing's table (ascending) and each code's index among them."""
    values, rank = np.unique(_area_table(spacing), return_inverse=True)
    return values, rank.astype(np.intp)


def robust_hausdorff(
    a: Surface,
    b: Surface,
    percent: float = 95.0,
    spacing: Spacing = (1.0, 1.0, 1.0),
    area_table: np.ndarray | None = None,
    distances: tuple[np.ndarray, np.ndarray] | None = None,
) -> float:
    """Symmetric robust Hausdorff distance (mm of ``spacing``) between two surfaces; ``inf`` if
    either is empty. ``area_table`` defaults to ``surfel_area_table(spacing)``; ``distances``
    are precomputed :func:`pair_distances` for this spacing."""
    if len(a) == 0 or len(b) == 0:
        return float("inf")
    table = surfel_area_table(spacing) if area_table is None else area_table
    a_to_b, b_to_a = pair_distances(a, b, spacing) if distances is None else distances
    return max(directed_percentile(a_to_b, a.areas(table), percent), directed_percentile(b_to_a, b.areas(table), percent))


def bounding_box(mask: np.ndarray) -> tuple[slice, ...] | None:
    """Tight bounding box of the nonzero voxels of a 3-D array (a boolean mask or an unsigned
    label map; other types are compared with 0 first) as slices; ``None`` if there are none.

    Reductions run along memory order (max over whole planes, then over the planes' span), ~10x
    faster than ``np.any`` over the other two axes for each axis."""
    arr = mask if mask.dtype == bool or np.issubdtype(mask.dtype, np.unsignedinteger) else mask != 0
    if arr.size == 0:
        return None
    perm = contract.walk_order(arr)
    v = arr.transpose(perm)  # slowest axis first
    planes = np.flatnonzero(v.reshape(v.shape[0], -1).max(axis=1))
    if planes.size == 0:
        return None
    profile = v[planes[0] : planes[-1] + 1].max(axis=0)
    hits = [planes, np.flatnonzero(profile.max(axis=1)), np.flatnonzero(profile.max(axis=0))]
    box = [slice(int(h[0]), int(h[-1]) + 1) for h in hits]
    return tuple(box[perm.index(axis)] for axis in range(3))


def mask_surface(mask: np.ndarray, box: tuple[slice, ...] | None = None) -> Surface:
    """Surfels of a full-volume boolean ``mask``, computed inside ``box`` (found if not given)."""
    box = bounding_box(mask) if box is None else box
    if box is None:
        return Surface(np.zeros((0, 3), dtype=np.int64), np.zeros(0, dtype=np.uint8))
    return extract_surface(mask[box], [s.start for s in box])


def hd95(mask_gt: np.ndarray, mask_pred: np.ndarray, spacing: Spacing = (1.0, 1.0, 1.0), percent: float = 95.0) -> float:
    """HD95 between two full-volume boolean masks (mm of ``spacing``; voxels for the default),
    the official definition: ``inf`` when either mask is empty."""
    return robust_hausdorff(mask_surface(mask_gt), mask_surface(mask_pred), percent, spacing)


def surface_distances(mask_gt: np.ndarray, mask_pred: np.ndarray, spacing: Spacing = (1.0, 1.0, 1.0)) -> dict[str, np.ndarray]:
    """Sorted surfel distances and areas in both directions (the reference's intermediate result):
    keys ``distances_gt_to_pred``, ``distances_pred_to_gt``, ``surfel_areas_gt``, ``surfel_areas_pred``."""
    table = surfel_area_table(spacing)
    gt, pred = mask_surface(mask_gt), mask_surface(mask_pred)
    out = {}
    for name, src, dist in zip(("gt_to_pred", "pred_to_gt"), (gt, pred), pair_distances(gt, pred, spacing), strict=True):
        areas = src.areas(table)
        order = np.lexsort((areas, dist))
        out[f"distances_{name}"] = dist[order]
        out[f"surfel_areas_{name.split('_')[0]}"] = areas[order]
    return out
