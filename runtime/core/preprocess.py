"""Preprocessing contract, shared by training and the runtime.

One slice (2D array on the input grid, with its in-plane voxel spacing) becomes
a ``size`` x ``size`` model image, background exactly 0:

1. non-finite voxels: ``nonfinite="error"`` refuses them, ``"zero"`` replaces
   them with 0 (background) and reports how many;
2. brain mask: given (e.g. an NFBS brain mask) or ``image > 0`` (the inputs are
   skull-stripped, background is 0); a slice with no brain voxel, or with one
   value everywhere (no contrast), is ``empty``;
3. robust normalisation: divide by the ``percentile`` of brain intensities, then
   clip to [0, ``ceiling``]; everything outside the brain is exactly 0. Version 2
   (the default) divides by the 90th percentile (inside the white-matter peak of a
   T1 slice, so white matter lands near 1) and keeps values above the healthy
   range: its ceiling is 4.0, well above any lesion (hyperintense lesions on T1
   reach about 1.5-2.5 times white matter), so a bright lesion reaches G brighter
   than white matter instead of flattened onto it, and a bright lesion covering up
   to a tenth of the slice's brain does not move the reference (the 99.5th
   percentile of version 1 became the lesion's own intensity as soon as it covered
   0.5%, darkening the whole slice). Version 1 (bundles made before it: the 99.5th
   percentile, clipped at 1.0) is kept exactly so that those bundles give the same
   maps;
4. geometry: the slice's physical field of view is centred in a square of side
   max(extent) and resampled to ``size`` (linear, anti-aliased when shrinking),
   so non-square and anisotropic slices keep their proportions.

:meth:`Resampler.to_input` is the exact inverse mapping of step 4 and puts any
model-grid map back on the input grid.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np
from scipy import ndimage

from .errors import BadInput

#: normalisation versions (what a manifest's preprocessing.version names): the percentile of brain voxels each
#: divides by unless told otherwise, and the ceiling each clips to
PERCENTILES = {1: 99.5, 2: 90.0}
CEILINGS = {1: 1.0, 2: 4.0}
DESCRIPTIONS = {1: "clip(x / percentile(brain voxels), 0, 1) * brain",
                2: "clip(x / percentile(brain voxels), 0, ceiling) * brain"}
CURRENT_VERSION = 2


@dataclass(frozen=True)
class Preprocessing:
    size: int = 256
    percentile: float | None = None  # None: the version's own (PERCENTILES)
    nonfinite: str = "error"  # "error" | "zero"
    interpolation_order: int = 1
    antialias: bool = True
    # Slices with fewer brain voxels than this (in the model grid) are treated as empty.
    min_brain_pixels: int = 16
    #: normalisation version (``CEILINGS``); a manifest without one was written by version 1
    version: int = CURRENT_VERSION

    def __post_init__(self):
        if self.version not in CEILINGS:
            raise BadInput(f"preprocessing version {self.version!r} is not known to this rlp "
                           f"(it knows {', '.join(map(str, CEILINGS))}); upgrade rlp")
        if self.percentile is None:
            object.__setattr__(self, "percentile", PERCENTILES[self.version])

    @property
    def ceiling(self) -> float:
        """The largest normalised intensity (1.0 at the ``percentile``)."""
        return CEILINGS[self.version]

    def to_dict(self) -> dict:
        d = asdict(self)
        d["ceiling"] = self.ceiling
        d["normalisation"] = DESCRIPTIONS[self.version]
        d["brain_mask"] = "given mask, else x > 0"
        d["resample"] = "centre field of view in a square of side max(extent), scipy.ndimage.affine_transform"
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "Preprocessing":
        keys = {"size", "percentile", "nonfinite", "interpolation_order", "antialias", "min_brain_pixels"}
        # written before versions existed: version 1 (the 99.5th percentile, clip at 1.0)
        return cls(**{k: d[k] for k in keys if k in d}, version=d.get("version", 1))


# Input pixels one model pixel may span along an axis: beyond this the voxel sizes are absurd
# (far past any scanner) and the anti-aliasing filter would not fit in memory.
MAX_SCALE = 1e4


@dataclass(frozen=True)
class Resampler:
    """Linear map between the input grid (shape, spacing) and the model grid."""

    shape: tuple[int, int]
    size: int
    spacing: tuple[float, float] = (1.0, 1.0)
    scale: tuple[float, float] = field(init=False)  # input index per model index
    offset: tuple[float, float] = field(init=False)

    def __post_init__(self):
        if len(self.shape) != 2 or min(self.shape) < 1:
            raise BadInput(f"slice shape {self.shape} is not a 2D image")
        sp = tuple(float(s) for s in self.spacing)
        if len(sp) != 2 or not all(np.isfinite(sp)) or min(sp) <= 0:
            raise BadInput(f"voxel spacing {self.spacing} must be finite and positive")
        extent = [n * s for n, s in zip(self.shape, sp)]
        e = max(extent)
        scale, offset = [], []
        for s, ea in zip(sp, extent):
            # model index i (pixel centre) -> physical (i + .5) e / N - (e - ea) / 2 -> input index / s - .5
            a = e / self.size / s
            b = (0.5 * e / self.size - (e - ea) / 2.0) / s - 0.5
            scale.append(a)
            offset.append(b)
        if max(scale) > MAX_SCALE:  # the anti-aliasing kernel alone would need terabytes
            raise BadInput(f"voxel spacing {self.spacing} on a {self.shape[0]}x{self.shape[1]} slice is too "
                           f"anisotropic to resample (one model pixel would span {max(scale):.3g} input pixels)")
        object.__setattr__(self, "spacing", sp)
        object.__setattr__(self, "scale", tuple(scale))
        object.__setattr__(self, "offset", tuple(offset))

    def to_model(self, image: np.ndarray, order: int = 1, antialias: bool = True, cval: float = 0.0) -> np.ndarray:
        img = np.asarray(image, dtype=np.float64)
        if img.shape != tuple(self.shape):
            raise ValueError(f"image shape {img.shape} != resampler shape {self.shape}")
        if antialias:
            sigma = [max(0.0, (a - 1.0) / 2.0) for a in self.scale]
            if any(s > 0 for s in sigma):
                img = ndimage.gaussian_filter(img, sigma, mode="constant", cval=cval)
        out = ndimage.affine_transform(
            img, np.asarray(self.scale), offset=np.asarray(self.offset), output_shape=(self.size, self.size),
            order=order, mode="constant", cval=cval, prefilter=order > 1,
        )
        return out

    def to_input(self, model_map: np.ndarray, order: int = 1) -> np.ndarray:
        """Exact inverse of :meth:`to_model`'s geometry: a model-grid map on the input grid."""
        m = np.asarray(model_map, dtype=np.float64)
        if m.shape != (self.size, self.size):
            raise ValueError(f"map shape {m.shape} != model grid {(self.size, self.size)}")
        inv = np.asarray([1.0 / a for a in self.scale])
        off = np.asarray([-b / a for a, b in zip(self.scale, self.offset)])
        return ndimage.affine_transform(m, inv, offset=off, output_shape=tuple(self.shape), order=order,
                                        mode="nearest", prefilter=order > 1)

    def model_to_input_coords(self, rows: np.ndarray, cols: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Continuous input-grid indices of model-grid indices (pixel centres)."""
        return (np.asarray(rows) * self.scale[0] + self.offset[0], np.asarray(cols) * self.scale[1] + self.offset[1])


@dataclass
class Prepared:
    image: np.ndarray  # (size, size) float32 in [0, cfg.ceiling]
    brain: np.ndarray  # (size, size) bool
    resampler: Resampler
    n_nonfinite: int = 0
    scale_value: float = 0.0  # the intensity that maps to 1.0
    empty: bool = False  # no (or too little) brain in this slice


def brain_mask(image: np.ndarray) -> np.ndarray:
    """Default brain mask of a skull-stripped slice: every voxel above 0."""
    return np.asarray(image) > 0


def preprocess_slice(
    image: np.ndarray,
    cfg: Preprocessing,
    spacing: tuple[float, float] = (1.0, 1.0),
    mask: np.ndarray | None = None,
    path=None,
) -> Prepared:
    """Apply the preprocessing contract to one 2D slice."""
    x = np.asarray(image)
    if x.ndim != 2:
        raise BadInput(f"expected a 2D slice, got shape {x.shape}", path)
    if not np.issubdtype(x.dtype, np.number) or np.issubdtype(x.dtype, np.complexfloating):
        raise BadInput(f"unsupported data type {x.dtype}", path)
    x = x.astype(np.float64, copy=True)
    finite = np.isfinite(x)
    n_bad = int(x.size - finite.sum())
    if n_bad:
        if cfg.nonfinite == "error":
            raise BadInput(f"{n_bad} non-finite voxel(s) (NaN/Inf) in the slice", path)
        if n_bad == x.size:
            raise BadInput("every voxel is non-finite (NaN/Inf)", path)
        x[~finite] = 0.0
    if mask is not None and np.asarray(mask).shape != x.shape:
        raise BadInput(f"mask shape {np.asarray(mask).shape} != image shape {x.shape}", path)
    brain_in = brain_mask(x) if mask is None else (np.asarray(mask) > 0) & finite
    try:
        rs = Resampler(tuple(x.shape), cfg.size, tuple(spacing))
    except BadInput as exc:
        raise BadInput(exc.message, path) from None
    vals = x[brain_in]
    vals = vals[vals > 0]
    if vals.size == 0 or float(x.min()) == float(x.max()):  # no tissue, or a constant slice: no contrast
        z = np.zeros((cfg.size, cfg.size), np.float32)
        return Prepared(z, z.astype(bool), rs, n_bad, 0.0, True)
    hi = float(np.percentile(vals, cfg.percentile))
    if not hi > 0:
        hi = float(vals.max())
    top = cfg.ceiling
    del vals
    norm = x  # in place: a full-resolution slice is not copied again (peak memory, README "Limits")
    np.divide(norm, hi, out=norm)
    np.clip(norm, 0.0, top, out=norm)
    norm *= brain_in
    img = rs.to_model(norm, order=cfg.interpolation_order, antialias=cfg.antialias)
    brain = rs.to_model(brain_in.astype(np.float64), order=1, antialias=False) > 0.5
    img = (np.clip(img, 0.0, top) * brain).astype(np.float32)
    empty = int(brain.sum()) < cfg.min_brain_pixels or float(img.max()) <= 0
    return Prepared(img, brain, rs, n_bad, hi, empty)
