"""T4-like demo subject (hippocampus MR crop, inter-patient): labels 1 = head, 2 = body/tail.

The hippocampus is a curved tapered tube (thick anterior head, thin posterior tail curving up
and medially) embedded in grey matter, with white matter above and a thin white-matter rim (alveus), the temporal horn of the
lateral ventricle (CSF) alongside, the amygdala in front and a CSF cistern medially, so the
structure is not separable by intensity alone. Intensities are MR arbitrary units with a
per-subject scale (not normalised), a bias field and Rician noise. Subjects differ by shape,
pose and a random smooth diffeomorphism. Frames as in :mod:`pipeline.demo.phantoms`.
"""

from __future__ import annotations

import numpy as np

from learn2reg.contract import warp, warp_labels
from pipeline.demo.phantoms import (
    Grid,
    PhantomImage,
    PhantomSubject,
    bias_field,
    composite,
    ellipsoid,
    mix,
    occupancy,
    random_diffeo,
    rician,
    rotation_matrix,
    smooth_noise,
    tube,
)

LABELS = {1: "hippocampus head", 2: "hippocampus body and tail"}
# Centre line of the template hippocampus (mm; +y posterior, +z superior, -x medial) and radii.
CURVE = np.array([(-2.0, -16.0, -6.0), (0.0, -10.0, -6.0), (1.0, -3.0, -5.0), (0.0, 4.0, -3.0), (-2.0, 10.0, 0.0), (-5.0, 15.0, 4.0), (-8.0, 18.0, 8.0)])
RADII = np.array([5.0, 6.0, 5.0, 3.8, 3.0, 2.5, 2.0])
HEAD_END = 2.3 / 6.0  # curve parameter where the head ends
VALUES = {"gm": 660.0, "wm": 880.0, "csf": 180.0, "amygdala": 640.0, "hippocampus": 570.0}


def hippocampus_subject(rng: np.random.Generator, grid: Grid) -> PhantomSubject:
    """One T4-like subject: MR crop (float32 a.u.) and its 2-label map (uint8)."""
    rot = rotation_matrix(np.deg2rad(rng.uniform(-6.0, 6.0, 3)))
    shift = rng.normal(0.0, 1.5, 3)
    curve = (CURVE + rng.normal(0.0, 0.8, CURVE.shape)) @ rot.T + shift
    radii = RADII * rng.uniform(0.85, 1.15)
    hippo, t = tube(grid, curve, radii)
    horn, _ = tube(grid, curve[1:] + rot @ np.array([6.0, 0.0, 4.5]), 0.45 * radii[1:] + 0.6)
    amygdala = ellipsoid(grid, curve[0] + rot @ np.array([1.0, -6.0, 4.0]), (7.0, 6.0, 6.0))
    x, _, z = grid.axes()
    wm = np.broadcast_to(6.0 - z + 3.0 * smooth_noise(rng, grid.shape, 4), grid.shape)
    cistern = np.broadcast_to(x - (-13.0 + shift[0]) + 2.0 * smooth_noise(rng, grid.shape, 4), grid.shape)
    fractions = composite([
        ("gm", np.ones(grid.shape, dtype=np.float32)),
        ("wm", occupancy(wm, 1.5)),
        ("csf", occupancy(cistern, 1.5)),
        ("amygdala", occupancy(amygdala, 1.0)),
        ("wm", occupancy(hippo - 1.3, 1.0)),  # alveus: a thin white-matter rim
        ("csf", occupancy(horn, 1.0)),
        ("hippocampus", occupancy(hippo, 1.0)),
    ])
    labels = np.zeros(grid.shape, dtype=np.uint8)
    labels[(hippo < 0) & (t <= HEAD_END)] = 1
    labels[(hippo < 0) & (t > HEAD_END)] = 2
    phi = random_diffeo(rng, grid, 3.0, cells=4)
    labels = warp_labels(labels, phi)
    scale = rng.uniform(0.6, 1.6)
    clean = warp((mix(fractions, VALUES) + 25.0 * smooth_noise(rng, grid.shape, 10)) * scale, phi, order=1)
    image = rician(rng, clean * bias_field(rng, grid.shape, 0.15), 15.0 * scale)
    return PhantomSubject(images=(PhantomImage(image, label=labels),))
