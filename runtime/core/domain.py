"""Is this input what the bundle was trained on? And how high is a score next to healthy slices?

``rlp-export`` records the training domain in the manifest's optional ``domain`` section
(:func:`training_domain`, from the run's prepared dataset) and a healthy reference (each path's
top-window scores on held-out healthy slices, :func:`healthy_reference`). The runtime computes
the same statistics of every input slice from what preprocessing already made
(:func:`slice_stats`) and checks them (:func:`check_slice`, :func:`check_axis`). A bundle whose
manifest has no ``domain`` section (made before it existed) skips the checks silently.

The checks and their tolerances, each derived from the spread of the training slices:

- **axis**: the slice orientation the model was trained on (a sagittal or coronal slice through
  an axial model is anatomy it has never seen). Exact.
- **brain fraction of the field of view** (model-grid pixels inside the brain mask, which is
  ``voxels > 0`` unless a mask is given): above ``FRACTION_MARGIN`` (1.25) times the largest
  training fraction, the background is not 0 (noise, a head that is not skull-stripped) or the
  field of view is cropped to the brain. 1.25 allows a brain a quarter larger in the field of view
  than the largest training one (more than the 15% scale augmentation); noise of even 1% of the
  maximum doubles the fraction of an MNI slice (0.27 -> 0.56, training at most 0.38).
- **field of view** (the slice's largest physical extent, mm): outside ``[min / FOV_FACTOR,
  max * FOV_FACTOR]`` of the training slices (``FOV_FACTOR`` 1.5). Preprocessing fits the field of
  view to the model grid, so a field of view 1.5 times smaller than training shows the brain 1.5
  times larger than any training slice (three times the 15% scale augmentation); a toy 5 mm
  image or a 41 mm crop is far outside.
- **voxel size** (the largest in-plane voxel, mm): above ``VOXEL_FACTOR`` (2) times the coarser of
  the training voxel and the training model-grid pixel (field of view / grid size): below that
  resolution the model never saw detail (the low-resolution augmentation goes to half).
- **brain intensity profile** after normalisation: the 1-Wasserstein distance between the slice's
  brain-intensity distribution and the mean profile of the training slices, both summarised by the
  ``QUANTILES`` (W1 of two distributions is the mean absolute difference of their quantile
  functions; 19 quantiles estimate it). Above ``DISTANCE_MARGIN`` (1.5) times the 99th percentile
  of the training slices' own distances, the slices taken as they are and at both ends of the
  training's gamma augmentation (``x ** (1 + g)`` and ``x ** (1 / (1 + g))``, renormalised; the
  model saw intensities that far off): another contrast (T2, FLAIR, an inverted image), or a
  background counted as brain. Slices whose brain covers less than ``SMALL`` (a quarter) of the
  largest training brain fraction (the top of the head, the cerebellum: few voxels, unsteady
  quantiles) are held to the spread of all training slices, the others to the spread of the
  training slices of their kind, so that tail does not blunt the check for whole slices. On the
  demo's template (gamma 0.3): limits 0.12 (whole slices) and 0.23 (small ones); the held-out
  slices reach 0.05, a square-root (gamma 0.5) slice 0.08, a T2-like inverted slice 0.21-0.25, a
  cubed (gamma 3) one 0.25, a slice with 3% background noise 0.40. Neither limit is below
  ``MIN_DISTANCE`` (0.05: about what separates two held-out slices of one brain; a run with a single
  training slice has no spread at all).

The healthy reference stores, per heatmap path, the sorted top-window scores of held-out healthy
slices and the score they are (``z`` or ``l1``); :func:`healthy_percentile` is the percentage of
those slices whose top score is at most the given one.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Iterable, Sequence

import numpy as np

from .preprocess import Prepared

VERSION = 1
QUANTILES = tuple(round(q, 2) for q in np.linspace(0.05, 0.95, 19))
FRACTION_MARGIN = 1.25
FOV_FACTOR = 1.5
VOXEL_FACTOR = 2.0
DISTANCE_MARGIN = 1.5
SMALL = 0.25
MIN_DISTANCE = 0.05


@dataclass(frozen=True)
class SliceStats:
    """What the checks look at in one preprocessed slice."""

    brain_fraction: float  # brain pixels / model-grid pixels
    fov_mm: float  # largest physical extent of the slice
    voxel_mm: float  # largest in-plane voxel size
    quantiles: tuple[float, ...]  # brain intensities after normalisation, at QUANTILES


def slice_stats(prep: Prepared) -> SliceStats | None:
    """The statistics of a preprocessed slice; None for an empty one (nothing to compare)."""
    if prep.empty or not prep.brain.any():
        return None
    rs = prep.resampler
    fov = max(n * s for n, s in zip(rs.shape, rs.spacing))
    q = np.quantile(prep.image[prep.brain].astype(np.float64), QUANTILES)
    return SliceStats(float(prep.brain.mean()), float(fov), float(max(rs.spacing)), tuple(float(v) for v in q))


def distance(quantiles: Sequence[float], reference: Sequence[float]) -> float:
    """1-Wasserstein distance estimated from two quantile profiles (mean absolute difference)."""
    return float(np.mean(np.abs(np.asarray(quantiles, np.float64) - np.asarray(reference, np.float64))))


# --------------------------------------------------------------------------- the domain
@dataclass(frozen=True)
class Domain:
    """The manifest's ``domain`` section: the training domain's limits and the healthy reference."""

    axis: str | None
    brain_fraction_max: float
    intensity_quantiles: tuple[float, ...]
    intensity_distance_max: float  # slices with a brain fraction of at least small_fraction
    intensity_distance_max_small: float  # the others
    small_fraction: float
    fov_mm: tuple[float, float] | None = None  # allowed range; None: not recorded (check skipped)
    voxel_mm_max: float | None = None
    training: dict | None = None  # what the limits were derived from (for the record)
    healthy: dict | None = None  # path -> {"score": str, "top_scores": [sorted floats], "slices": int}

    def to_dict(self) -> dict:
        return {"version": VERSION, "axis": self.axis, "brain_fraction_max": self.brain_fraction_max,
                "intensity": {"quantiles": list(QUANTILES), "profile": list(self.intensity_quantiles),
                              "distance": "1-Wasserstein (mean |quantile difference|)",
                              "distance_max": self.intensity_distance_max,
                              "distance_max_small": self.intensity_distance_max_small,
                              "small_fraction": self.small_fraction},
                "fov_mm": list(self.fov_mm) if self.fov_mm else None, "voxel_mm_max": self.voxel_mm_max,
                "training": self.training or {}, "healthy": self.healthy or {}}

    @classmethod
    def from_dict(cls, d: dict) -> "Domain":
        """The section as written by :meth:`to_dict`; ValueError naming the first bad field."""
        problem = domain_problem(d)
        if problem:
            raise ValueError(problem)
        it = d["intensity"]
        fov = tuple(map(float, d["fov_mm"])) if d.get("fov_mm") else None
        voxel = None if d.get("voxel_mm_max") is None else float(d["voxel_mm_max"])
        return cls(d.get("axis"), float(d["brain_fraction_max"]), tuple(float(v) for v in it["profile"]),
                   float(it["distance_max"]), float(it["distance_max_small"]), float(it["small_fraction"]), fov, voxel,
                   d.get("training") or {}, d.get("healthy") or {})


def _number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def domain_problem(d) -> str | None:
    """The first malformed field of a ``domain`` section, or None (a manifest is untrusted input)."""
    if not isinstance(d, dict):
        return "domain is not an object"
    if d.get("version") != VERSION:
        return f"domain.version {d.get('version')!r} is not {VERSION}"
    if d.get("axis") is not None and d.get("axis") not in ("axial", "coronal", "sagittal"):
        return f"domain.axis is {d.get('axis')!r}"
    if not _number(d.get("brain_fraction_max")) or d["brain_fraction_max"] <= 0:
        return f"domain.brain_fraction_max is {d.get('brain_fraction_max')!r}"
    it = d.get("intensity")
    if not isinstance(it, dict) or not isinstance(it.get("profile"), list) or len(it["profile"]) != len(QUANTILES) \
            or not all(_number(v) for v in it["profile"]) \
            or not all(_number(it.get(k)) and it[k] > 0 for k in ("distance_max", "distance_max_small")) \
            or not (_number(it.get("small_fraction")) and 0 <= it["small_fraction"] <= 1):
        return (f"domain.intensity is not a profile of {len(QUANTILES)} quantiles with positive limits "
                "distance_max, distance_max_small and a small_fraction in [0, 1]")
    fov = d.get("fov_mm")
    if fov is not None and not (isinstance(fov, list) and len(fov) == 2 and all(_number(v) for v in fov)
                                and 0 < fov[0] <= fov[1]):
        return f"domain.fov_mm is {fov!r}"
    if d.get("voxel_mm_max") is not None and not (_number(d["voxel_mm_max"]) and d["voxel_mm_max"] > 0):
        return f"domain.voxel_mm_max is {d['voxel_mm_max']!r}"
    healthy = d.get("healthy", {})
    if not isinstance(healthy, dict):
        return "domain.healthy is not an object"
    for path, ref in healthy.items():
        scores = ref.get("top_scores") if isinstance(ref, dict) else None
        if not isinstance(scores, list) or not scores or not all(_number(v) for v in scores) \
                or not isinstance(ref.get("score"), str):
            return f"domain.healthy.{path} is not a score name with a non-empty list of top scores"
    return None


def _profiles(images: np.ndarray, brains: np.ndarray, gamma: float, percentile: float) -> np.ndarray:
    """Brain-intensity quantiles of each slice, raised to ``gamma`` and renormalised as preprocessing would."""
    out = []
    for im, b in zip(images, brains):
        v = im[b].astype(np.float64) ** gamma
        ref = np.percentile(v, percentile)
        out.append(np.quantile(v / ref if ref > 0 else v, QUANTILES))
    return np.array(out)


def training_domain(images: np.ndarray, brains: np.ndarray, axis: str | None, fovs_mm: Iterable[float] = (),
                    voxels_mm: Iterable[float] = (), source: str = "", gamma: float = 0.0,
                    percentile: float = 90.0) -> Domain:
    """The domain of prepared training slices (``images``/``brains``: (N, S, S), already preprocessed), with
    the field of view and voxel sizes of their source volumes (empty: not known, those checks skipped) and the
    training's gamma augmentation ``gamma`` (0: none; preprocessing's ``percentile`` renormalises)."""
    keep = brains.reshape(len(brains), -1).any(axis=1)
    images, brains = images[keep], brains[keep]
    if not len(images):
        raise ValueError("no training slice holds brain")
    fractions = brains.reshape(len(brains), -1).mean(axis=1)
    qs = np.array([np.quantile(im[b].astype(np.float64), QUANTILES) for im, b in zip(images, brains)])
    small = SMALL * float(fractions.max())
    whole = fractions >= small  # never empty: the largest fraction is at least a quarter of itself
    profile = qs[whole].mean(axis=0)
    dists = np.abs(qs - profile).mean(axis=1)
    if gamma > 0:  # the slices as the augmentation's gamma ends made them: the model saw those too
        edges = [np.abs(_profiles(images, brains, g, percentile) - profile).mean(axis=1)
                 for g in (1 + gamma, 1 / (1 + gamma))]
        dists, whole = np.concatenate([dists, *edges]), np.concatenate([whole] * 3)
    fovs, voxels = [float(v) for v in fovs_mm], [float(v) for v in voxels_mm]
    size = images.shape[-1]
    fov = (min(fovs) / FOV_FACTOR, max(fovs) * FOV_FACTOR) if fovs else None
    voxel = VOXEL_FACTOR * max(max(voxels), max(fovs) / size) if voxels and fovs else None
    training = {"source": source, "slices": int(len(images)),
                "brain_fraction": [float(fractions.min()), float(np.median(fractions)), float(fractions.max())],
                "intensity_distance_p50_p99": [float(np.percentile(dists[whole], 50)),
                                               float(np.percentile(dists[whole], 99))],
                "intensity_distance_p99_all": float(np.percentile(dists, 99)),
                "fov_mm": [min(fovs), max(fovs)] if fovs else None,
                "voxel_mm": [min(voxels), max(voxels)] if voxels else None}
    return Domain(axis, float(FRACTION_MARGIN * fractions.max()), tuple(float(v) for v in profile),
                  max(MIN_DISTANCE, float(DISTANCE_MARGIN * np.percentile(dists[whole], 99))),
                  max(MIN_DISTANCE, float(DISTANCE_MARGIN * np.percentile(dists, 99))), small, fov, voxel, training)


def check_slice(stats: SliceStats | None, domain: Domain) -> dict[str, str]:
    """The failed checks of one slice: check name -> one short sentence (empty: in the domain, or nothing
    to check)."""
    if stats is None:
        return {}
    out = {}
    if stats.brain_fraction > domain.brain_fraction_max:
        out["background"] = (f"the brain (voxels > 0) fills {stats.brain_fraction:.0%} of the field of view, more "
                             f"than the {domain.brain_fraction_max:.0%} training allows: a background that is not 0 "
                             "(noise, not skull-stripped) or a field of view cropped to the brain")
    if domain.fov_mm and not domain.fov_mm[0] <= stats.fov_mm <= domain.fov_mm[1]:
        lo, hi = domain.fov_mm
        what = "too small for a whole brain" if stats.fov_mm < lo else "larger than training's"
        out["field_of_view"] = (f"the field of view is {stats.fov_mm:.3g} mm, outside the {lo:.0f}-{hi:.0f} mm "
                                f"training allows ({what})")
    if domain.voxel_mm_max and stats.voxel_mm > domain.voxel_mm_max:
        out["voxel_size"] = (f"voxels of {stats.voxel_mm:.3g} mm are coarser than the {domain.voxel_mm_max:.3g} mm "
                             "training allows")
    d = distance(stats.quantiles, domain.intensity_quantiles)
    limit = domain.intensity_distance_max if stats.brain_fraction >= domain.small_fraction \
        else domain.intensity_distance_max_small
    if d > limit:
        out["intensity"] = (f"the brain's intensity profile is {d:.3f} from training's (at most "
                            f"{limit:.3f}): another contrast than T1, or background counted "
                            "as brain")
    return out


def check_axis(axis: str | None, domain: Domain) -> str | None:
    """A warning when the slices are not along the training axis (None: same, or either not known)."""
    if axis and domain.axis and axis != domain.axis:
        return f"{axis} slices, but the bundle was trained on {domain.axis} slices"
    return None


def summarise(per_slice: Sequence[dict[str, str]]) -> dict[str, str]:
    """One warning per failed check over a volume's slices: the first failing slice's words, and how many
    slices failed it when there are several."""
    n = len(per_slice)
    first: dict[str, str] = {}
    counts: dict[str, int] = {}
    for problems in per_slice:
        for kind, text in problems.items():
            first.setdefault(kind, text)
            counts[kind] = counts.get(kind, 0) + 1
    return {k: text if n == 1 else f"{counts[k]} of {n} slices: {text}" for k, text in first.items()}


# --------------------------------------------------------------------------- the healthy reference
def healthy_reference(top_scores: Sequence[float], score: str) -> dict:
    """One path's entry of ``domain.healthy``: its score name and the sorted top scores of healthy slices."""
    scores = sorted(float(v) for v in top_scores)
    if not scores:
        raise ValueError("no healthy slice was scored")
    return {"score": score, "slices": len(scores), "top_scores": scores}


def healthy_percentile(score: float, reference: dict | None) -> float | None:
    """The percentage of healthy slices whose top score is at most ``score`` (None without a reference)."""
    if not reference:
        return None
    scores = np.asarray(reference["top_scores"], np.float64)
    return float(100.0 * np.count_nonzero(scores <= score) / scores.size)
