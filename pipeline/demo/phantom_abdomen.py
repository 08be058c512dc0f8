"""T3-like demo subject (abdomen CT, inter-patient): 13 organ labels in Hounsfield units.

Organs (ids as in Learn2Reg AbdomenCTCT / BTCV): ellipsoid-like solid organs with irregular
outlines (liver large, spleen, stomach, kidney pair, gallbladder), thin ones (adrenal
glands, a few voxels thick) and tubes (aorta, inferior vena cava, esophagus, portal/splenic
vein, pancreas), on a body of subcutaneous and visceral fat, muscle, spine, bowel loops and
lung bases (unlabelled context). Subjects differ by body size, organ positions and sizes,
contrast phase and a random smooth diffeomorphism. Frames as in :mod:`pipeline.demo.phantoms`.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from learn2reg.contract import warp, warp_labels
from pipeline.demo.phantoms import (
    Grid,
    PhantomImage,
    PhantomSubject,
    bias_field,
    ellipsoid,
    paint,
    random_diffeo,
    smooth_noise,
    tube,
)

LABELS = {
    1: "spleen",
    2: "right kidney",
    3: "left kidney",
    4: "gallbladder",
    5: "esophagus",
    6: "liver",
    7: "stomach",
    8: "aorta",
    9: "inferior vena cava",
    10: "portal vein and splenic vein",
    11: "pancreas",
    12: "right adrenal gland",
    13: "left adrenal gland",
}
# Template organs in paint order (later ones cover earlier ones): id -> (centre, radii) for
# blobs or (polyline points, radii) for tubes, mm; +x = patient left, +y = posterior, +z = up.
BLOBS = {
    6: ((-50.0, -5.0, 95.0), (70.0, 62.0, 62.0)),
    1: ((85.0, 40.0, 95.0), (25.0, 40.0, 45.0)),
    7: ((45.0, -25.0, 100.0), (45.0, 32.0, 50.0)),
    2: ((-65.0, 45.0, 15.0), (25.0, 28.0, 50.0)),
    3: ((65.0, 45.0, 25.0), (25.0, 28.0, 50.0)),
    4: ((-45.0, -50.0, 45.0), (15.0, 15.0, 28.0)),
}
TUBES = {
    11: (((-20.0, 0.0, 30.0), (15.0, 15.0, 45.0), (65.0, 30.0, 65.0)), (14.0, 11.0, 9.0)),
    8: (((15.0, 40.0, 210.0), (15.0, 40.0, -210.0)), (12.0, 12.0)),
    9: (((-20.0, 35.0, 210.0), (-20.0, 35.0, -210.0)), (12.0, 12.0)),
    5: (((10.0, 25.0, 210.0), (15.0, 15.0, 140.0), (35.0, -15.0, 120.0)), (8.0, 8.0, 8.0)),
    10: (((80.0, 30.0, 85.0), (15.0, 15.0, 65.0), (-25.0, 0.0, 70.0), (-45.0, -5.0, 95.0)), (6.0, 6.0, 6.0, 6.0)),
}
ADRENALS = {12: ((-45.0, 45.0, 75.0), (5.0, 12.0, 18.0)), 13: ((45.0, 40.0, 70.0), (5.0, 12.0, 18.0))}
HU = {1: 50, 2: 150, 3: 150, 4: 10, 5: 40, 6: 60, 7: 25, 8: 200, 9: 130, 10: 160, 11: 45, 12: 30, 13: 30}


def _organ_labels(rng: np.random.Generator, grid: Grid, inside: np.ndarray) -> np.ndarray:
    """Label map (``X x Y x Z`` uint8) of the 13 organs with random positions and sizes."""
    labels = np.zeros(grid.shape, dtype=np.uint8)
    shift = rng.normal(0.0, [6.0, 6.0, 12.0])

    def jitter(point: tuple[float, ...], sd: float = 10.0) -> np.ndarray:
        return np.asarray(point) + shift + rng.normal(0.0, sd, 3)

    for lab, (centre, radii) in BLOBS.items():
        scale = rng.uniform(0.8, 1.2) * rng.uniform(0.9, 1.1, 3)
        sdf = ellipsoid(grid, jitter(centre), np.asarray(radii) * scale, 0.12 * smooth_noise(rng, grid.shape, 5))
        paint(labels, sdf, lab, inside)
    for lab in (11, 8, 9, 5, 10):
        points, tube_radii = TUBES[lab]
        offset = rng.normal(0.0, 6.0, 3)
        pts = np.array([jitter(p, 4.0) + offset for p in points])
        sdf, _ = tube(grid, pts, np.asarray(tube_radii) * rng.uniform(0.85, 1.15))
        paint(labels, sdf, lab, inside)
    for lab, (centre, radii) in ADRENALS.items():
        paint(labels, ellipsoid(grid, jitter(centre, 6.0), np.asarray(radii) * rng.uniform(0.9, 1.2)), lab, inside)
    return labels


def _context(rng: np.random.Generator, grid: Grid, body: np.ndarray, fat: float) -> np.ndarray:
    """Unlabelled surroundings in HU (``X x Y x Z`` float32): air, fat, muscle wall, visceral
    fat, spine, paraspinal muscles, bowel loops and lung bases."""
    x, y, z = grid.axes()
    hu = np.full(grid.shape, -1000.0, dtype=np.float32)
    hu[body < 0] = -100.0
    hu[(body + fat < 0) & (body + fat + 8.0 >= 0)] = 50.0
    hu[body + fat + 8.0 < 0] = -90.0
    spine = np.broadcast_to(np.sqrt(x**2 + (y - 65.0) ** 2) - 18.0, grid.shape)
    hu[spine < 0] = np.broadcast_to(350.0 + 250.0 * np.cos(2 * np.pi * z / 30.0), grid.shape)[spine < 0]
    for side in (-1.0, 1.0):
        hu[ellipsoid(grid, (side * 35.0, 75.0, 0.0), (22.0, 18.0, 400.0)) < 0] = 50.0
        hu[ellipsoid(grid, (side * 70.0, 20.0, 240.0), (55.0, 60.0, 70.0)) < 0] = -850.0
    for _ in range(14):
        centre = (rng.uniform(-90.0, 90.0), rng.uniform(-70.0, 20.0), rng.uniform(-190.0, 40.0))
        loop = ellipsoid(grid, centre, rng.uniform(12.0, 25.0, 3), 0.2 * smooth_noise(rng, grid.shape, 4))
        hu[(loop < 0) & (body + fat + 10.0 < 0)] = 30.0
        hu[(loop < -8.0) & (body + fat + 10.0 < 0)] = -900.0 if rng.random() < 0.3 else 10.0
    return hu


def abdomen_subject(rng: np.random.Generator, grid: Grid) -> PhantomSubject:
    """One T3-like subject: CT (int16 HU) and its 13-organ label map (uint8), with all 13
    labels present (parameters are redrawn if a small structure got covered)."""
    x, y, _ = grid.axes()
    for _ in range(10):
        ax, ay, fat = rng.uniform(125.0, 150.0), rng.uniform(85.0, 105.0), rng.uniform(10.0, 25.0)
        body = np.broadcast_to((np.sqrt((x / ax) ** 2 + (y / ay) ** 2) - 1.0) * min(ax, ay), grid.shape)
        labels = _organ_labels(rng, grid, body + fat + 8.0 < 0)
        phi = random_diffeo(rng, grid, 12.0, cells=5)
        labels = warp_labels(labels, phi)
        if np.all(np.bincount(labels.ravel(), minlength=14)[1:14] >= 3):
            break
    hu_of = np.zeros(14, dtype=np.float32)
    for lab, value in HU.items():
        hu_of[lab] = value + rng.normal(0.0, 8.0)
    hu_of[[8, 9, 10]] += rng.uniform(-50.0, 40.0)  # contrast phase
    context = warp(_context(rng, grid, body, fat), phi, order=1, cval=-1000.0)
    hu = np.where(labels > 0, hu_of[labels], context)
    hu = ndimage.gaussian_filter(hu, 0.6)
    hu = (hu + 1000.0) * bias_field(rng, grid.shape, 0.02) - 1000.0 + rng.normal(0.0, 10.0, grid.shape)
    image = np.clip(np.round(hu), -1024, 3071).astype(np.int16)
    return PhantomSubject(images=(PhantomImage(image, label=labels),))
