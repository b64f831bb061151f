"""Synthetic lesions in real slices, with ground-truth masks.

As in the MOOD challenge and much of the unsupervised anomaly-detection
literature: a smooth-edged, irregular blob inside the brain, hyper- or
hypo-intense, with the texture of the tissue it replaces partly kept.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage


@dataclass
class Lesion:
    image: np.ndarray  # the slice with the lesion
    mask: np.ndarray  # bool ground truth
    center: tuple[int, int]
    radius: float
    kind: str  # "hyper" | "hypo"


def insert_lesion(image: np.ndarray, brain: np.ndarray, rng: np.random.Generator, *, radius: float | None = None,
                  kind: str | None = None, radius_range=(5.0, 16.0), edge: float = 1.5) -> Lesion:
    """Insert one blob into ``image`` (values in [0, 1], background 0) inside ``brain``.

    ``radius`` (pixels of this grid) is drawn from ``radius_range`` unless given.
    The blob is an ellipse with a randomly perturbed outline, blended in with a
    Gaussian edge of width ``edge``; it stays inside the brain.
    """
    img = np.asarray(image, dtype=np.float64)
    brain = np.asarray(brain, bool)
    h, w = img.shape
    r = float(radius if radius is not None else rng.uniform(*radius_range))
    kind = kind or ("hyper" if rng.random() < 0.5 else "hypo")
    # Centre: a brain pixel at least ~r from the brain's edge when possible.
    depth = ndimage.distance_transform_edt(brain)
    cand = np.argwhere(depth >= r * 0.9)
    if len(cand) == 0:
        cand = np.argwhere(depth >= depth.max() * 0.8)
    cy, cx = cand[rng.integers(len(cand))]
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
    ang = rng.uniform(0, np.pi)
    ecc = rng.uniform(0.7, 1.0)
    dy, dx = yy - cy, xx - cx
    u = (dx * np.cos(ang) + dy * np.sin(ang)) / r
    v = (-dx * np.sin(ang) + dy * np.cos(ang)) / (r * ecc)
    theta = np.arctan2(v, u)
    wobble = 1 + sum(rng.uniform(-0.12, 0.12) * np.cos(k * theta + rng.uniform(0, 2 * np.pi)) for k in (2, 3, 5))
    inside = (np.hypot(u, v) <= wobble).astype(np.float64)
    alpha = np.clip(ndimage.gaussian_filter(inside, edge), 0, 1) * brain
    tissue = img[brain]
    ref = float(np.median(tissue)) if tissue.size else 0.5
    texture = ndimage.gaussian_filter(rng.normal(0, 1, img.shape), 1.0)
    texture = 0.04 * texture / (texture.std() + 1e-8)
    if kind == "hyper":
        target = np.clip(max(ref * 1.6, float(np.percentile(tissue, 99)) if tissue.size else 1.0) + texture, 0, 1)
    elif kind == "hypo":
        target = np.clip(ref * 0.35 + texture, 0.02, 1)
    else:
        raise ValueError(f"unknown lesion kind {kind!r}")
    out = (1 - alpha) * img + alpha * target
    out = np.where(brain, out, 0.0)
    mask = (alpha > 0.5) & brain
    return Lesion(out.astype(np.float32), mask, (int(cy), int(cx)), r, kind)
