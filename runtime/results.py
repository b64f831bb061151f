"""What a heatmap is: the result types of a slice and of a volume, and the scored windows they list.

:class:`SliceHeatmap` is one slice's maps on the model grid and the input's; :class:`VolumeHeatmap` a NIfTI
image's (or an array's) heatmap on its own grid, with :meth:`~VolumeHeatmap.summary`, the body of
``rlp-heatmap``'s ``<stem>_summary.json``. :func:`top_windows` and :func:`box_hits` locate windows on a slice;
:mod:`.orchestrate` fills these in.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from .core.geometry import WindowGeometry
from .core.nifti import AXES, Volume
from .core.preprocess import Resampler

AXIS_NAMES = {v: k for k, v in AXES.items()}
__all__ = ["Window", "SliceHeatmap", "VolumeHeatmap", "top_windows", "box_hits", "AXIS_NAMES"]


@dataclass
class Window:
    """One scored window, located on the model grid, the input slice and (volumes) in the file and world."""

    score: float
    grid: tuple[int, int]  # (row, col) in the window map
    box_model: tuple[int, int, int, int]  # r0, c0, r1, c1 on the model grid, end exclusive
    centre: tuple[float, float]  # window centre, continuous (row, col) index on the input slice
    box: tuple[float, float, float, float]  # a0, b0, a1, b1: window edges on the input slice (may reach the padding)
    rank: int = 0
    slice: int | None = None  # file index along the slice axis (volumes)
    voxel: tuple[float, ...] | None = None  # window centre, continuous voxel index in the file's array
    world: tuple[float, float, float] | None = None  # window centre in mm, through the input's affine

    def to_dict(self) -> dict:
        d = {"rank": self.rank, "score": float(self.score), "grid": list(self.grid), "box_model": list(self.box_model),
             "centre_slice": [round(float(v), 3) for v in self.centre],
             "box_slice": [round(float(v), 3) for v in self.box]}
        if self.slice is not None:
            d["slice"] = int(self.slice)
        if self.voxel is not None:
            d["voxel"] = [round(float(v), 3) for v in self.voxel]
        if self.world is not None:
            d["world_mm"] = [round(float(v), 3) for v in self.world]
        return d


@dataclass
class SliceHeatmap:
    pixel_map: np.ndarray  # on the input slice's grid, float32
    window_map: np.ndarray  # geometry.grid_shape, float32; 0 where not evaluated
    evaluated: np.ndarray  # geometry.grid_shape, bool
    model_map: np.ndarray  # pixel map on the model grid (size x size)
    top: list[Window]
    n_evaluated: int
    n_windows: int
    timings: dict[str, float]
    warnings: list[str] = field(default_factory=list)
    empty: bool = False
    resampler: Resampler | None = None
    #: an approximate method's settings and how many windows it scored exactly (None: every score is exact)
    approximate: dict | None = None
    #: the training-domain checks this slice failed (:mod:`.domain`; check -> words), and its top score as a
    #: percentile of the bundle's healthy slices (None: the bundle has no reference for this path and score)
    domain: dict = field(default_factory=dict)
    healthy_percentile: float | None = None

    @property
    def max_score(self) -> float:
        return float(self.window_map.max()) if self.n_evaluated else 0.0


@dataclass
class VolumeHeatmap:
    """A heatmap for a NIfTI image (or an array with an affine), on the input's own grid."""

    heatmap: np.ndarray  # the file's shape and orientation, float32
    volume: Volume
    axis: int  # canonical (RAS+) axis the slices are normal to
    slices: list[int]  # file indices along that axis, ascending
    results: list[SliceHeatmap]
    top: list[Window]
    head: str  # g, r or r-NAME (the summary's "path": rlp-heatmap --path)
    timings: dict[str, float]
    warnings: list[str]
    canonical_heatmap: np.ndarray  # same values on the canonical grid of volume.data
    score: str = "l1"  # the window score the values are (geometry.SCORES)
    #: the training-domain checks it failed (:mod:`.domain`), also in ``warnings``; None: the bundle records no domain
    domain_warnings: list[str] | None = None
    healthy_percentile: float | None = None  # the top slice's top score as a percentile of healthy slices

    @property
    def axis_name(self) -> str:
        return AXIS_NAMES[self.axis]

    @property
    def window_maps(self) -> np.ndarray:
        """(slices, rows, cols) window maps, slices in file-index order."""
        return np.stack([r.window_map for r in self.results])

    @property
    def max_score(self) -> float:
        return max((r.max_score for r in self.results), default=0.0)

    def summary(self) -> dict:
        v = self.volume
        n_ev = sum(r.n_evaluated for r in self.results)
        n_all = sum(r.n_windows for r in self.results)
        file_axis, _ = v.file_axis(self.axis)
        return {
            "input": str(v.path),
            **({} if v.volume_index is None else {"volume_index": v.volume_index}),
            "shape": list(v.file_shape),
            "path": self.head,
            "score": self.score,
            "axis": self.axis_name,
            "file_axis": file_axis,
            "slices": {"processed": len(self.slices), "total": int(v.data.shape[self.axis]),
                       "empty": sum(r.empty for r in self.results)},
            "windows": {"evaluated": n_ev, "total": n_all,
                        "scored_exactly": sum(r.approximate["scored"] if r.approximate else r.n_evaluated
                                              for r in self.results)},
            "max_score": self.max_score,
            "heatmap_max": float(self.heatmap.max()) if self.heatmap.size else 0.0,
            "healthy_percentile": self.healthy_percentile,
            "domain": {"checked": self.domain_warnings is not None, "warnings": list(self.domain_warnings or [])},
            "top_windows": [w.to_dict() for w in self.top],
            "per_slice": [{"slice": s, "max_score": r.max_score, "windows_evaluated": r.n_evaluated,
                           "empty": r.empty, "healthy_percentile": r.healthy_percentile}
                          for s, r in zip(self.slices, self.results)],
            "timings": {k: round(t, 4) for k, t in self.timings.items()},
            "warnings": list(self.warnings),
        }


def top_windows(window_map: np.ndarray, evaluated: np.ndarray, geometry: WindowGeometry,
                resampler: Resampler, k: int) -> list[Window]:
    """The ``k`` evaluated windows with the highest scores, located on the input slice."""
    idx = np.flatnonzero(evaluated.ravel())
    if k <= 0 or idx.size == 0:
        return []
    scores = window_map.ravel()[idx]
    order = np.argsort(-scores, kind="stable")[:k]
    pos, w = geometry.positions, geometry.window
    cols = geometry.grid_shape[1]
    out = []
    for rank, o in enumerate(order, 1):
        i, j = divmod(int(idx[o]), cols)
        r0, c0 = int(pos[i]), int(pos[j])
        centre = resampler.model_to_input_coords(r0 + (w - 1) / 2, c0 + (w - 1) / 2)
        lo = resampler.model_to_input_coords(r0 - 0.5, c0 - 0.5)
        hi = resampler.model_to_input_coords(r0 + w - 0.5, c0 + w - 0.5)
        out.append(Window(float(scores[o]), (i, j), (r0, c0, r0 + w, c0 + w),
                          (float(centre[0]), float(centre[1])),
                          (float(lo[0]), float(lo[1]), float(hi[0]), float(hi[1])), rank))
    return out


def box_hits(box, lesion: np.ndarray) -> bool:
    """Does a window box (continuous index edges a0, b0, a1, b1 on the slice: ``Window.box``, a summary's
    ``box_slice``) hold a lesion pixel (a non-zero of the 2D ``lesion``)? The demo's table and the bench's
    top-window hit rate both ask this."""
    if box is None or not np.all(np.isfinite(box)):
        return False
    a0, b0, a1, b1 = box
    h, w = lesion.shape
    r0, r1 = max(0, math.ceil(a0)), min(h - 1, math.floor(a1))
    c0, c1 = max(0, math.ceil(b0)), min(w - 1, math.floor(b1))
    return r0 <= r1 and c0 <= c1 and bool(lesion[r0 : r1 + 1, c0 : c1 + 1].any())
