"""Starting points of the affine pre-alignment: exhaustive searches on a coarse level.

L-BFGS finds the nearest minimum of NGF. Between a partial field of view (an ultrasound cone)
and a full image the nearest one can be the wrong one (the cone's edge on the brain's
outline), so, as elastix/ANTs/SimpleITK initialisers do, the registration first scores a grid
of translations within the stated bound (:class:`pipeline.affine.bounds.Bounds`) on its first
level, runs L-BFGS from the best few, and carries the best of those to the finer levels.
Rotations are not searched: on the ReMIND2Reg-like demo (seed 0) a grid of rotations (half
the bound per axis) and translations on the coarsest level left one ceT1 pair at 9.5 mm (from
6.6) and turned another by 21 degrees (true: 1.5) with a better NGF than the true transform's
(measured while building this stage); the rotation is left to the rigid stage, within its bound. Parameters are those of
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
    problem: NGFProblem, to_matrix: ToMatrix, x0: np.ndarray, translation: float, optimise: Optimise, steps: int = 5, keep: int = 4
) -> tuple[np.ndarray, int]:
    """Translation start (6 rigid parameters, the rotation as in ``x0``): score ``x0`` moved by
    every combination of ``steps`` equal steps over ``[-translation, translation]`` mm per axis,
    run ``optimise`` from the ``keep`` best, return the best result and the evaluations spent
    (the grid's included). ``x0`` itself is always among the starts."""
    candidates = []
    for t in itertools.product(np.linspace(-translation, translation, steps), repeat=3):
        x = x0.copy()
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
