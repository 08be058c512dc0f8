"""Affine augmentation: consistent across image, labels, mask and points; reproducible."""

from __future__ import annotations

import numpy as np
import torch

from pipeline.config import AugmentConfig
from pipeline.training.augment import augment, sample_affine

SHAPE = (24, 20, 28)


def _blob(center, shape=SHAPE, radius=3.0):
    grid = np.stack(np.meshgrid(*[np.arange(n) for n in shape], indexing="ij"), axis=-1)
    return (np.linalg.norm(grid - np.asarray(center), axis=-1) <= radius).astype(np.uint8)


def test_probability_and_ranges_follow_the_paper():
    gen = torch.Generator().manual_seed(0)
    cfg = AugmentConfig()
    draws = [sample_affine(SHAPE, gen, cfg) for _ in range(3000)]
    hits = [m for m in draws if m is not None]
    assert 0.08 < len(hits) / len(draws) < 0.12
    for m in hits:
        sv = np.linalg.svd(m[:3, :3], compute_uv=False)
        assert sv.max() <= 1.08 + 1e-9 and sv.min() >= 0.92 - 1e-9
        # the grid centre moves by at most the translation bound (5 % of the half-extent)
        half = (np.asarray(SHAPE) - 1) / 2
        assert np.all(np.abs(m[:3, :3] @ half + m[:3, 3] - half) <= 0.05 * half + 1e-9)
    always = AugmentConfig(prob=1.0)
    assert sample_affine(SHAPE, torch.Generator().manual_seed(1), always) is not None


def test_same_generator_state_gives_the_same_draws():
    g1, g2 = torch.Generator().manual_seed(7), torch.Generator().manual_seed(7)
    cfg = AugmentConfig(prob=0.5)
    for _ in range(20):
        a, b = sample_affine(SHAPE, g1, cfg), sample_affine(SHAPE, g2, cfg)
        assert (a is None and b is None) or np.array_equal(a, b)


def test_integer_translation_shifts_everything_exactly():
    m = np.eye(4)
    m[:3, 3] = (2.0, -1.0, 3.0)
    rng = np.random.default_rng(0)
    img = torch.from_numpy(rng.random(SHAPE).astype(np.float32))[None, None]
    lab = torch.from_numpy(_blob((10, 10, 12)))[None, None]
    out, out_lab, out_mask, pts = augment(m, img, lab, lab.clone(), np.array([[10.0, 10.0, 12.0]]))
    np.testing.assert_allclose(out[0, 0, :-2, 1:, :-3].numpy(), img[0, 0, 2:, :-1, 3:].numpy(), atol=1e-5)  # float32 grid round-off
    np.testing.assert_allclose(pts, [[8.0, 11.0, 9.0]])
    assert out_lab.dtype == lab.dtype and torch.equal(out_lab, out_mask)
    centroid = np.argwhere(out_lab[0, 0].numpy()).mean(axis=0)
    np.testing.assert_allclose(centroid, pts[0], atol=1e-6)


def test_random_affine_moves_labels_and_points_together():
    gen = torch.Generator().manual_seed(3)
    cfg = AugmentConfig(prob=1.0)
    for _ in range(5):
        m = sample_affine(SHAPE, gen, cfg)
        center = np.array([12.0, 9.0, 14.0])
        lab = torch.from_numpy(_blob(center, radius=4.0))[None, None]
        img = lab.float()
        _, out_lab, _, pts = augment(m, img, lab, None, center[None])
        centroid = np.argwhere(out_lab[0, 0].numpy()).mean(axis=0)
        assert np.linalg.norm(centroid - pts[0]) < 0.5


def test_images_are_extended_by_their_edge_values_and_labels_by_background():
    """A rotation and shift that sample outside the grid: a constant image stays constant
    (border padding, no dark rim), a label map of ones gets background (0) there."""
    m = sample_affine(SHAPE, torch.Generator().manual_seed(0), AugmentConfig(prob=1.0, rotation_deg=10.0, translation=0.05))
    m[:3, 3] += 3.0  # at least three voxels beyond the grid
    img = torch.full((1, 1, *SHAPE), 0.8)
    lab = torch.ones((1, 1, *SHAPE), dtype=torch.uint8)
    out, out_lab, out_mask, _ = augment(m, img, lab, lab.clone())
    torch.testing.assert_close(out, img, atol=1e-6, rtol=0)
    assert (out_lab == 0).any() and torch.equal(out_lab, out_mask)
