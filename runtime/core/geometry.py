"""Window geometry: where the box is painted, which windows are evaluated, and
how a window map becomes a pixel map.

The paper slides a ``window`` x ``window`` box with ``stride`` over an
``size`` x ``size`` slice and stops at 60x60 positions at 256/16/4, so the last
4 rows and columns are never covered. Here positions are 0, s, 2s, ... and
always include ``size - window``: 61x61 = 3721 windows at 256/16/4.

``context`` is the side of the square crop around the box that G and the crop
predictors read (``None``: the whole slice, as in the paper). The crop is
centred on the box; the slice is zero-padded (background) so that every crop is
full size.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from typing import Iterable

import numpy as np

from .errors import BadInput
from .kinds import InputKind

PAINT = ("box", "tissue")
#: G's window scores (a bundle's manifest names its own in ``loss.kind``): the paper's L1 of the
#: reconstruction, or a Laplace G's calibrated error |x - mu| / b (both means over the box)
SCORES = {"l1": "mean over the window of |x - mu|",
          "z": "mean over the window of |x - mu| / b (G's Laplace mean mu and scale b)"}


def window_positions(size: int, window: int, stride: int) -> np.ndarray:
    """Top-left offsets along one axis: 0, s, 2s, ... and always ``size - window``."""
    if not (0 < window <= size) or stride <= 0:
        raise ValueError(f"bad geometry: size={size} window={window} stride={stride}")
    pos = list(range(0, size - window + 1, stride))
    if pos[-1] != size - window:
        pos.append(size - window)
    return np.asarray(pos, dtype=np.int64)


@dataclass(frozen=True)
class WindowGeometry:
    size: int = 256
    window: int = 16
    stride: int = 4
    fill: float = 1.0
    context: int | None = None
    # A window is evaluated when at least this fraction of its pixels is brain.
    min_tissue: float = 0.0
    # What of the box is painted with ``fill``: every pixel ("box", the paper) or only its tissue
    # pixels ("tissue": those above 0, the brain_mask rule; background inside the box stays 0, so
    # the model is told where the brain's outline runs instead of guessing it).
    paint: str = "box"

    def __post_init__(self):
        if self.size <= 0 or not (0 < self.window <= self.size) or self.stride <= 0:
            raise ValueError(f"bad geometry {self}")
        if self.context is not None:
            if self.context < self.window or (self.context - self.window) % 2:
                raise ValueError("context must be >= window and differ from it by an even number")
        if not (0.0 <= self.min_tissue <= 1.0):
            raise ValueError("min_tissue must lie in [0, 1]")
        if self.paint not in PAINT:
            raise ValueError(f"paint must be one of {', '.join(PAINT)}, got {self.paint!r}")

    # ---------------------------------------------------------------- layout
    @property
    def positions(self) -> np.ndarray:
        return window_positions(self.size, self.window, self.stride)

    @property
    def grid_shape(self) -> tuple[int, int]:
        n = len(self.positions)
        return (n, n)

    @property
    def n_windows(self) -> int:
        r, c = self.grid_shape
        return r * c

    @property
    def margin(self) -> int:
        """Zero padding around the slice so that every context crop is full size."""
        return 0 if self.context is None else (self.context - self.window) // 2

    @property
    def input_size(self) -> int:
        """Side of the square that G (and a crop predictor) reads."""
        return self.size if self.context is None else self.context

    def for_input(self, input_kind: str) -> "WindowGeometry":
        """The geometry of what a model reads: ``"crop"`` (this geometry's context crops),
        ``"image"`` (the whole inpainted slice) or ``"dense"`` (the whole slice, read once)."""
        if input_kind == InputKind.CROP:
            return self
        if input_kind in (InputKind.IMAGE, InputKind.DENSE):
            return replace(self, context=None)
        raise ValueError(f"unknown model input kind {input_kind!r} (expected 'crop', 'image' or 'dense')")

    def dense_ok(self) -> bool:
        """Is the window grid regular (every position a multiple of the stride), as a dense predictor's output is?"""
        return (self.size - self.window) % self.stride == 0

    def dense_index(self, boxes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(rows, cols) of windows at ``boxes`` in a dense predictor's output map."""
        boxes = np.asarray(boxes, dtype=np.int64).reshape(-1, 2)
        if not self.dense_ok() or (boxes % self.stride).any():
            raise ValueError("windows off the regular stride grid have no cell in a dense map")
        return boxes[:, 0] // self.stride, boxes[:, 1] // self.stride

    def window_boxes(self) -> np.ndarray:
        """(n_windows, 2) top-left (row, col) of every window, row-major."""
        p = self.positions
        rr, cc = np.meshgrid(p, p, indexing="ij")
        return np.stack([rr.ravel(), cc.ravel()], axis=1)

    def box_in_input(self, row: int = 0, col: int = 0) -> tuple[int, int]:
        """Top-left of the box inside the model input for a window at (row, col)."""
        if self.context is None:
            return int(row), int(col)
        m = self.margin
        return m, m

    # ------------------------------------------------------------ selection
    def tissue_fraction(self, brain: np.ndarray) -> np.ndarray:
        """Fraction of brain pixels inside every window, as a window map."""
        brain = _check_square(brain, self.size, "brain mask").astype(np.float64)
        ii = np.zeros((self.size + 1, self.size + 1))
        ii[1:, 1:] = brain.cumsum(0).cumsum(1)
        p = self.positions
        w = self.window
        r0 = p[:, None]
        c0 = p[None, :]
        s = ii[r0 + w, c0 + w] - ii[r0, c0 + w] - ii[r0 + w, c0] + ii[r0, c0]
        return s / float(w * w)

    def evaluated(self, brain: np.ndarray | None, all_windows: bool = False) -> np.ndarray:
        """Boolean window map: which windows are evaluated (skip-background rule)."""
        if all_windows or brain is None:
            return np.ones(self.grid_shape, dtype=bool)
        frac = self.tissue_fraction(brain)
        if self.min_tissue > 0:
            return frac >= self.min_tissue
        return frac > 0

    # ---------------------------------------------------------- inpainting
    def pad(self, image: np.ndarray) -> np.ndarray:
        """The slice with ``margin`` zeros on every side (context crops read from it)."""
        m = self.margin
        if m == 0:
            return image
        return np.pad(image, [(0, 0)] * (image.ndim - 2) + [(m, m), (m, m)])

    def crops(self, padded: np.ndarray, boxes: np.ndarray, *, inpaint: bool = True) -> np.ndarray:
        """Model inputs (N, 1, input_size, input_size) for windows at ``boxes``.

        ``padded`` is ``pad(image)``. With ``inpaint`` the box is filled with
        ``fill``; without, the crops are the original pixels (the targets).
        """
        boxes = np.asarray(boxes, dtype=np.int64).reshape(-1, 2)
        n = len(boxes)
        s = self.input_size
        out = np.empty((n, 1, s, s), dtype=np.float32)
        if self.context is None:
            out[:] = padded[None, None]
        else:
            for k, (r, c) in enumerate(boxes):
                out[k, 0] = padded[r : r + s, c : c + s]
        if inpaint:
            w = self.window
            for k, (r, c) in enumerate(boxes):
                br, bc = self.box_in_input(r, c)
                box = out[k, 0, br : br + w, bc : bc + w]
                box[self.paint_mask(box)] = self.fill
        return out

    def paint_mask(self, box):
        """Which of the box's pixels (numpy or torch, any shape) are painted with ``fill``: all of
        them, or (paint "tissue") those above 0."""
        return (box > 0) | (self.paint == "box")

    def box_score(self, recon: np.ndarray, target: np.ndarray, boxes: np.ndarray, score: str = "l1") -> np.ndarray:
        """G's window score inside the box for each of N reconstructions (:data:`SCORES`).

        ``recon`` is G's output, (N, 1, S, S) (a reconstruction) or (N, 2, S, S)
        (a Laplace G: the mean ``mu`` and the scale ``b > 0`` of each pixel).
        ``"l1"`` is the paper's mean |x - mu| over the box; ``"z"`` the mean of
        |x - mu| / b, the error in units of the error G expects there on healthy
        tissue.
        """
        if score not in SCORES:
            raise ValueError(f"unknown window score {score!r}; known: {', '.join(SCORES)}")
        recon = np.asarray(recon)
        if score == "z" and (recon.ndim != 4 or recon.shape[1] != 2):
            raise ValueError(f"the z score needs G's mean and scale (N, 2, S, S), got {recon.shape}")
        boxes = np.asarray(boxes, dtype=np.int64).reshape(-1, 2)
        w = self.window
        out = np.empty(len(boxes), dtype=np.float64)
        for k, (r, c) in enumerate(boxes):
            br, bc = self.box_in_input(r, c)
            sl = (slice(br, br + w), slice(bc, bc + w))
            mu = recon[k, 0][sl] if recon.ndim == 4 else recon[k][..., sl[0], sl[1]]
            d = np.abs(mu.astype(np.float64) - np.asarray(target[k])[..., sl[0], sl[1]])
            if score == "z":
                d = d / recon[k, 1][sl].astype(np.float64)
            out[k] = d.mean()
        return out

    def box_l1(self, recon: np.ndarray, target: np.ndarray, boxes: np.ndarray) -> np.ndarray:
        """Mean absolute error inside the box for each of N reconstructions (G's mean, channel 0)."""
        return self.box_score(recon, target, boxes, "l1")

    # ---------------------------------------------------------------- maps
    def pixel_map(self, window_map: np.ndarray, evaluated: np.ndarray | None = None) -> np.ndarray:
        """Each pixel = mean of the evaluated windows that cover it (0 where none)."""
        window_map = np.asarray(window_map, dtype=np.float64)
        if window_map.shape != self.grid_shape:
            raise ValueError(f"window map has shape {window_map.shape}, expected {self.grid_shape}")
        ev = np.ones(self.grid_shape, bool) if evaluated is None else np.asarray(evaluated, bool)
        acc = np.zeros((self.size, self.size))
        cnt = np.zeros((self.size, self.size))
        w = self.window
        p = self.positions
        vals = np.where(ev, window_map, 0.0)
        for i, r in enumerate(p):
            for j, c in enumerate(p):
                if ev[i, j]:
                    acc[r : r + w, c : c + w] += vals[i, j]
                    cnt[r : r + w, c : c + w] += 1
        return np.divide(acc, cnt, out=np.zeros_like(acc), where=cnt > 0).astype(np.float32)

    # --------------------------------------------------------- (de)serialise
    def to_dict(self) -> dict:
        d = asdict(self)
        d["positions_rule"] = "0, stride, 2*stride, ... and always size - window"
        d["grid_shape"] = list(self.grid_shape)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "WindowGeometry":
        keys = {"size", "window", "stride", "fill", "context", "min_tissue", "paint"}
        return cls(**{k: d[k] for k in keys if k in d})

    def scaled(self, size: int) -> "WindowGeometry":
        """The same geometry at another model size (window, stride, context scaled)."""
        f = size / self.size
        ctx = None if self.context is None else int(round(self.context * f))
        if ctx is not None and (ctx - int(round(self.window * f))) % 2:
            ctx += 1
        return WindowGeometry(size, max(1, int(round(self.window * f))), max(1, int(round(self.stride * f))), self.fill,
                              ctx, self.min_tissue, self.paint)


def _check_square(a: np.ndarray, size: int, what: str) -> np.ndarray:
    a = np.asarray(a)
    if a.shape != (size, size):
        raise BadInput(f"{what} has shape {a.shape}, expected ({size}, {size})")
    return a


def iter_batches(n: int, batch: int) -> Iterable[slice]:
    for s in range(0, n, batch):
        yield slice(s, min(n, s + batch))
