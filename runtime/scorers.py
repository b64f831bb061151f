"""The window-scorer interface: what scores the windows of one model-grid slice.

A :class:`WindowScorer` maps a preprocessed slice (the model grid) and the
top-left corners of windows to their scores. Three implement it:

- :class:`PlainScorer`: every window through the model, in batches (:func:`score_windows`);
- :class:`~rlp.runtime.incremental.IncrementalScorer`: the same scores, recomputing only what each box
  changes (predictors that read the whole slice; exact);
- :class:`~rlp.runtime.coarse.CoarseScorer`: a coarse lattice, then the windows it finds high (approximate).

A scorer is given what it needs (a predict callable or a session factory, the
window geometry, what the model reads, the output transform, where to record
model latencies); the :class:`~rlp.runtime.heatmap.Bundle` builds them from its
models and backends and reads only what the interface offers.
:func:`score_windows` is the plain scoring as a pure function of a predictor
callable (in the style of MONAI's ``sliding_window_inference``), for use without a bundle.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Callable

import numpy as np

from .core.errors import BadInput
from .core.geometry import WindowGeometry, iter_batches
from .core.kinds import InputKind
from .core.manifest import REBUILD, ModelEntry, head_role

DEFAULT_BATCH = 64
#: how a predictor's output maps to its window score (``ModelEntry.target_transform``)
TARGET_TRANSFORMS: dict[str, Callable[[np.ndarray], np.ndarray]] = {"identity": lambda y: y}


def model_geometry(geometry: WindowGeometry, entry: ModelEntry, where=None) -> WindowGeometry:
    """The geometry of what a model reads (its ``input_kind``): context crops, the whole slice, or (dense) the
    slice once. The one place a model's input is derived from the bundle's geometry."""
    try:
        return geometry.for_input(entry.input_kind)
    except ValueError:
        raise BadInput(f"model {entry.file} has unknown input_kind {entry.input_kind!r}; {REBUILD}", where) from None


def score_windows(image: np.ndarray, geometry: WindowGeometry, boxes: np.ndarray,
                  predict: Callable[[np.ndarray], np.ndarray], *, head: str = "r", batch: int = DEFAULT_BATCH,
                  on_batch: Callable[[int], None] | None = None, dense: bool = False, score: str = "l1") -> np.ndarray:
    """Scores of the windows at ``boxes`` (top-left rows, cols) of one model-grid slice.

    ``predict`` maps a float32 batch (B, 1, S, S) of inpainted model inputs to
    R's predicted scores (B, 1) (a predictor head, ``"r"`` or ``"r-NAME"``) or
    to G's output (B, 1 or 2, S, S) (head ``"g"``, scored by
    ``geometry.box_score(..., score)`` against the original pixels). With ``dense`` (a dense
    predictor) ``predict`` gets the slice itself once, (1, 1, S, S), and
    returns the window map (1, 1, rows, cols) that the scores are read from.
    """
    try:
        role = head_role(head)
    except ValueError as exc:
        raise ValueError(f"path must be g, r or r-NAME: {exc}") from None
    boxes = np.asarray(boxes, dtype=np.int64).reshape(-1, 2)
    image = np.asarray(image, dtype=np.float32)
    if dense:
        if role != "r":
            raise ValueError("only a predictor can be dense")
        wmap = np.asarray(predict(image[None, None]), dtype=np.float64)
        if wmap.shape != (1, 1) + geometry.grid_shape:
            raise ValueError(f"dense predictor returned shape {wmap.shape}, expected {(1, 1) + geometry.grid_shape}")
        if on_batch is not None:
            on_batch(len(boxes))
        return wmap[0, 0][geometry.dense_index(boxes)]
    padded = geometry.pad(image)
    out = np.empty(len(boxes), dtype=np.float64)
    for sl in iter_batches(len(boxes), max(1, int(batch))):
        b = boxes[sl]
        y = predict(geometry.crops(padded, b, inpaint=True))
        if role == "r":
            out[sl] = np.asarray(y, dtype=np.float64).reshape(len(b), -1)[:, 0]
        else:
            out[sl] = geometry.box_score(np.asarray(y), geometry.crops(padded, b, inpaint=False), b, score)
        if on_batch is not None:
            on_batch(len(b))
    return out


class WindowScorer(ABC):
    """Scores windows of one slice on the model grid of :attr:`geometry` (the bundle's window geometry).

    ``latencies`` receives the seconds of every model call; ``approximate`` says
    whether some scores are estimates (then :meth:`score_grid`'s mask says which
    windows were scored exactly).
    """

    geometry: WindowGeometry
    latencies: list[float]
    approximate: bool = False

    @abstractmethod
    def score(self, image: np.ndarray, boxes: np.ndarray, *,
              on_batch: Callable[[int], None] | None = None) -> np.ndarray:
        """The scores (float64) of the windows at ``boxes`` (top-left rows, cols) of ``image``."""

    def score_grid(self, image: np.ndarray, evaluated: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(window map over the grid, float64, 0 outside ``evaluated``; mask of the windows scored exactly)."""
        wm = np.zeros(evaluated.shape, np.float64)
        wm[evaluated] = self.score(image, self.geometry.window_boxes()[evaluated.ravel()])
        return wm, evaluated

    def describe(self) -> dict:
        """What the scorer does (for summaries and the bench)."""
        return {"method": "plain"}


class PlainScorer(WindowScorer):
    """Every window through ``predict`` (:func:`score_windows`): a model that reads ``input_kind`` for head
    ``head``, in batches of ``batch`` (a dense predictor: the slice once); G's windows get the ``score``."""

    def __init__(self, predict: Callable[[np.ndarray], np.ndarray], geometry: WindowGeometry, input_kind: str, *,
                 head: str = "r", batch: int = DEFAULT_BATCH, score: str = "l1",
                 latencies: list[float] | None = None):
        self.predict, self.geometry, self.head, self.batch, self.window_score = predict, geometry, head, batch, score
        self.input_kind = input_kind
        self.model_geometry = geometry.for_input(input_kind)
        self.dense = input_kind == InputKind.DENSE
        self.latencies = [] if latencies is None else latencies

    def score(self, image, boxes, *, on_batch=None) -> np.ndarray:
        return score_windows(image, self.model_geometry, boxes, self.predict, head=self.head, batch=self.batch,
                             on_batch=on_batch, dense=self.dense, score=self.window_score)


def backend_predict(backend, transform: Callable[[np.ndarray], np.ndarray] | None = None) -> Callable:
    """A predict callable over a backend (:class:`~rlp.runtime.backends.Backend`): float32 in the model's input
    dtype, float32 out, then ``transform`` (a predictor's target transform)."""
    dtype = backend.input_dtype

    def predict(x: np.ndarray) -> np.ndarray:
        y = backend.run(x.astype(dtype, copy=False)).astype(np.float32, copy=False)
        return transform(y) if transform is not None else y

    return predict


def plain_scorer(backend, geometry: WindowGeometry, head: str, *, batch: int, score: str) -> PlainScorer:
    """The plain scorer of ``head``'s model on ``backend`` (its latencies are the backend's)."""
    entry = backend.model.entry
    transform = TARGET_TRANSFORMS[entry.target_transform] if head_role(head) == "r" else None
    return PlainScorer(backend_predict(backend, transform), geometry, entry.input_kind, head=head,
                       batch=min(batch, backend.max_batch or batch), score=score, latencies=backend.latencies)
