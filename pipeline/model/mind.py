"""MIND-SSC: modality-independent neighbourhood descriptors (self-similarity context).

For every voxel, 12 numbers describe how the image patches around it resemble one another:
the six neighbours at ``dilation`` voxels along the axes form 12 pairs that are not opposite
each other; for each pair, the mean squared difference of the two ``(2 radius + 1)^3`` patches
centred on them (a patch distance ``D``), turned into ``exp(-D / V)`` with ``V`` the voxel's
mean distance over the 12 pairs (a local noise/contrast estimate), then divided by the largest
of the 12. The features depend on local structure only: an intensity change ``a I + b``
(``a > 0``) or a smooth bias that is nearly constant over a patch leaves them (nearly)
unchanged, which makes a sum of squared feature differences a similarity that works across
contrasts and modalities (Heinrich et al., "Towards realtime multimodal fusion for image-guided
interventions using self-similarities", MICCAI 2013). Images ``B x 1 x X x Y x Z``; edges are
extended (replicate padding).
"""

from __future__ import annotations

import itertools

import torch
import torch.nn.functional as F

CHANNELS = 12


def _neighbour_pairs() -> list[tuple[int, int]]:
    """Indices into the six axis neighbours (+x, -x, +y, -y, +z, -z) of the 12 pairs on different axes."""
    return [(i, j) for i, j in itertools.combinations(range(6), 2) if i // 2 != j // 2]


def mind_ssc(image: torch.Tensor, radius: int = 1, dilation: int = 2) -> torch.Tensor:
    """``B x 1 x X x Y x Z`` -> ``B x 12 x X x Y x Z`` MIND-SSC features in ``(0, 1]`` (see the module)."""
    if image.ndim != 5 or image.shape[1] != 1:
        raise ValueError(f"image must be B x 1 x X x Y x Z, got {tuple(image.shape)}")
    if radius < 0 or dilation < 1:
        raise ValueError(f"radius must be >= 0 and dilation >= 1, got {radius}, {dilation}")
    d = dilation
    padded = F.pad(image, (d,) * 6, mode="replicate")
    size = image.shape[2:]
    steps = [(d, 0, 0), (-d, 0, 0), (0, d, 0), (0, -d, 0), (0, 0, d), (0, 0, -d)]
    shifted = [padded[:, :, d + a : d + a + size[0], d + b : d + b + size[1], d + c : d + c + size[2]] for a, b, c in steps]
    squared = torch.cat([(shifted[i] - shifted[j]) ** 2 for i, j in _neighbour_pairs()], dim=1)
    k = 2 * radius + 1
    distance = F.avg_pool3d(F.pad(squared, (radius,) * 6, mode="replicate"), k, stride=1) if radius else squared
    variance = distance.mean(dim=1, keepdim=True)
    level = variance.mean()
    variance = variance.clamp(min=float(level) * 1e-3 + 1e-12, max=float(level) * 1e3 + 1e-12)
    features = torch.exp(-distance / variance)
    return features / features.amax(dim=1, keepdim=True)
