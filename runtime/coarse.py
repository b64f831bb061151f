"""Approximate heatmaps, coarse to fine: Krypton's adaptive drill-down (Nakandala et al., SIGMOD 2019).

Never the default, and always labelled approximate. For a path scored window
by window (G, or a predictor that reads crops or the whole painted slice):

1. score the windows of a coarse lattice, every ``factor``-th row and column
   of the window grid (the last row and column too, so that the lattice spans
   the slice);
2. estimate every other evaluated window by linear interpolation between the
   lattice windows around it (along rows, then columns, at the windows' real
   positions, over evaluated lattice windows only);
3. score exactly the windows whose estimate is in the top ``refine`` fraction,
   and every window with no evaluated lattice neighbour to estimate it from.

The map holds exact scores where a window was scored and estimates elsewhere;
the top windows are chosen among scored windows only, so a reported window's
score is never an estimate. The work is about ``1 / factor**2 + refine`` of
the plain method's. The bench measures its speed and its fidelity to the
exact map of the same path. :class:`CoarseScorer` is the method as a
:class:`~rlp.runtime.scorers.WindowScorer` over an exact one.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np

from .core.errors import EX_USAGE, RlpError
from .scorers import WindowScorer

NAME = "coarse-to-fine"


@dataclass(frozen=True)
class CoarseToFine:
    """The settings: lattice step (in windows) and the fraction of the other windows refined exactly."""

    factor: int = 2
    refine: float = 0.25

    def __post_init__(self):
        if not isinstance(self.factor, int) or self.factor < 2:
            raise RlpError(f"coarse-to-fine factor must be an integer of at least 2, got {self.factor!r}",
                           code=EX_USAGE)
        if not 0.0 <= float(self.refine) <= 1.0:
            raise RlpError(f"coarse-to-fine refine must be a fraction in [0, 1], got {self.refine!r}", code=EX_USAGE)

    def describe(self) -> dict:
        return {"method": NAME, "factor": self.factor, "refine": float(self.refine)}


def lattice(n: int, factor: int) -> np.ndarray:
    """Indices of the coarse lattice along an axis of ``n`` windows: every ``factor``-th and the last."""
    return np.unique(np.r_[np.arange(0, n, factor), n - 1])


def _weights(positions: np.ndarray, at: np.ndarray) -> np.ndarray:
    """(len(positions), len(at)) linear interpolation weights from the lattice positions ``positions[at]``."""
    x = np.asarray(positions, np.float64)
    xa = x[at]
    w = np.zeros((len(x), len(at)))
    if len(at) == 1:
        w[:, 0] = 1.0
        return w
    k = np.clip(np.searchsorted(xa, x, side="right") - 1, 0, len(at) - 2)
    t = np.clip((x - xa[k]) / (xa[k + 1] - xa[k]), 0.0, 1.0)
    rows = np.arange(len(x))
    w[rows, k] = 1.0 - t
    w[rows, k + 1] += t
    return w


def estimate(values: np.ndarray, known: np.ndarray, positions: np.ndarray, rows: np.ndarray,
             cols: np.ndarray) -> np.ndarray:
    """Every window's estimate from the known lattice windows (NaN where no known window is near).

    ``values`` and ``known`` are full grid maps; only the lattice ``rows`` x ``cols`` is read. The
    interpolation is normalised by the known windows' own weights, so an unevaluated lattice window
    (background) does not pull its neighbours down.
    """
    wr, wc = _weights(positions, rows), _weights(positions, cols)
    k = known[np.ix_(rows, cols)].astype(np.float64)
    v = np.where(k > 0, values[np.ix_(rows, cols)], 0.0)
    num, den = wr @ v @ wc.T, wr @ k @ wc.T
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(den > 1e-9, num / den, np.nan)


def coarse_to_fine(evaluated: np.ndarray, positions: np.ndarray,
                   score: Callable[[np.ndarray], np.ndarray], settings: CoarseToFine = CoarseToFine()
                   ) -> tuple[np.ndarray, np.ndarray]:
    """(window map, scored mask) over the grid of ``evaluated``.

    ``score(mask)`` returns the exact scores of the windows where ``mask`` is set, in row-major order.
    Cells outside ``evaluated`` are 0 and never scored.
    """
    ev = np.asarray(evaluated, bool)
    rows, cols = lattice(ev.shape[0], settings.factor), lattice(ev.shape[1], settings.factor)
    coarse = np.zeros_like(ev)
    coarse[np.ix_(rows, cols)] = True
    coarse &= ev
    wm = np.zeros(ev.shape, np.float64)
    if coarse.any():
        wm[coarse] = score(coarse)
    est = estimate(wm, coarse, positions, rows, cols)
    rest = ev & ~coarse
    blind = rest & ~np.isfinite(est)
    guess = rest & ~blind
    fine = blind.copy()
    n_top = int(np.ceil(float(settings.refine) * guess.sum()))
    if n_top:
        idx = np.flatnonzero(guess)
        top = idx[np.argsort(-est.ravel()[idx], kind="stable")[:n_top]]
        fine.ravel()[top] = True
    wm[guess] = est[guess]
    if fine.any():
        wm[fine] = score(fine)
    return wm, coarse | fine


class CoarseScorer(WindowScorer):
    """Coarse to fine over ``exact`` (a scorer of every window it is asked for): approximate, and says so."""

    approximate = True

    def __init__(self, exact: WindowScorer, settings: CoarseToFine = CoarseToFine()):
        self.exact, self.settings = exact, settings
        self.geometry, self.latencies = exact.geometry, exact.latencies

    def score_grid(self, image: np.ndarray, evaluated: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        boxes = self.geometry.window_boxes()
        return coarse_to_fine(evaluated, self.geometry.positions,
                              lambda m: self.exact.score(image, boxes[m.ravel()]), self.settings)

    def score(self, image, boxes, *, on_batch=None) -> np.ndarray:
        """The map's values at ``boxes``: exact scores and estimates (:meth:`score_grid` says which are which)."""
        boxes, pos = np.asarray(boxes, np.int64).reshape(-1, 2), self.geometry.positions
        at = tuple(np.minimum(np.searchsorted(pos, boxes[:, k]), len(pos) - 1) for k in range(2))
        if not (np.array_equal(pos[at[0]], boxes[:, 0]) and np.array_equal(pos[at[1]], boxes[:, 1])):
            raise ValueError("coarse to fine scores the geometry's window positions only")
        evaluated = np.zeros(self.geometry.grid_shape, bool)
        evaluated[at] = True
        values = self.score_grid(image, evaluated)[0][at]
        if on_batch is not None:
            on_batch(len(values))
        return values

    def describe(self) -> dict:
        return self.settings.describe()
