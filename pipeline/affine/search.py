"""Starting points of the affine pre-alignment: exhaustive searches on a coarse level.

L-BFGS finds the nearest minimum of NGF. Between a partial field of view (an ultrasound cone)
and a full image the nearest one can be the wrong one (the cone's edge on the brain's
outline), so, as elastix/ANTs/SimpleITK initialisers do, the registration first scores a
coarse grid of rotations and translations within the stated bounds
(:class:`pipeline.affine.bounds.Bounds`) on the coarsest level, runs L-BFGS from the best few,
and carries the best of those to the finer levels. Parameters are those of
``pipeline.affine.registration`` (rigid: rotation vector times the radius, then translation,
both mm).
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Callable

import numpy as np
import torch

from pipeline.affine.ngf import NGFProblem

log = logging.getLogger(__name__)

ToMatrix = Callable[[torch.Tensor], torch.Tensor]  # parameters (6 or 12) -> physical 4x4
Optimise = Callable[[NGFProblem, np.ndarray], tuple[np.ndarray, int]]  # L-BFGS on one level -> (x, evaluations)


def _score(problem: NGFProblem, to_matrix: ToMatrix, candidates: list[np.ndarray]) -> np.ndarray:
    """NGF of each parameter vector (no gradients)."""
    with torch.no_grad():
        return np.array([float(problem.loss(to_matrix(torch.from_numpy(x)))) for x in candidates])


def translation_search(problem: NGFProblem, to_matrix: ToMatrix, x0: np.ndarray, radius: float, step: float) -> np.ndarray:
    """Exhaustive search of translations ``x0 + d`` (``d`` on a cubic grid, ``|d_k| <= radius`` mm);
    returns the parameters with the lowest NGF."""
    offsets = np.arange(-radius, radius + 1e-9, step)
    candidates = []
    for shift in itertools.product(offsets, repeat=3):
        x = x0.copy()
        x[-3:] += shift
        candidates.append(x)
    scores = _score(problem, to_matrix, candidates)
    best = candidates[int(np.argmin(scores))]
    log.debug("translation search: best shift %s mm, NGF %.5f", np.round(best[-3:] - x0[-3:], 2), scores.min())
    return best


def start_search(
    problem: NGFProblem, to_matrix: ToMatrix, x0: np.ndarray, rotation: float, translation: float, optimise: Optimise,
    steps: int = 5, keep: int = 4,
) -> tuple[np.ndarray, int]:
    """Rigid start (6 parameters): score ``x0`` moved by every combination of translations in
    ``steps`` equal steps over ``[-translation, translation]`` mm per axis and, if ``rotation``
    > 0, rotation-vector components in ``{-rotation, 0, +rotation}`` (parameter units: mm at
    the radius); run ``optimise`` from the ``keep`` best, return the best result and the
    evaluations spent (the grid's included). ``x0`` itself is always among the starts."""
    rotations = list(itertools.product((-rotation, 0.0, rotation), repeat=3)) if rotation > 0 else [(0.0, 0.0, 0.0)]
    shifts = np.linspace(-translation, translation, steps)
    candidates = []
    for r in rotations:
        for t in itertools.product(shifts, repeat=3):
            x = x0.copy()
            x[:3] += np.asarray(r)
            x[3:6] += np.asarray(t)
            candidates.append(x)
    scores = _score(problem, to_matrix, candidates)
    order = [int(i) for i in np.argsort(scores, kind="stable")[:keep]]
    starts = [x0] + [candidates[i] for i in order if not np.array_equal(candidates[i], x0)][: keep - 1]
    best_x, best, evaluations = x0, np.inf, len(candidates)
    for start in starts:
        x, nfev = optimise(problem, start)
        value = float(_score(problem, to_matrix, [x])[0])
        evaluations += nfev
        if value < best:
            best, best_x = value, x
    log.debug("start search: %d candidates, best NGF %.5f from %d starts", len(candidates), best, len(starts))
    return best_x, evaluations
