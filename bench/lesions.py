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


def _outline(shape: tuple[int, int], centre, r: float, rng: np.random.Generator) -> np.ndarray:
    """Each pixel's distance from ``centre`` in units of a random irregular outline's radius there (1 on the
    outline): an ellipse of radius ``r`` (eccentricity 0.7-1, any angle) whose radius wobbles by up to 12% in
    three angular harmonics."""
    yy, xx = np.mgrid[0 : shape[0], 0 : shape[1]].astype(np.float64)
    ang = rng.uniform(0, np.pi)
    ecc = rng.uniform(0.7, 1.0)
    dy, dx = yy - centre[0], xx - centre[1]
    u = (dx * np.cos(ang) + dy * np.sin(ang)) / r
    v = (-dx * np.sin(ang) + dy * np.cos(ang)) / (r * ecc)
    theta = np.arctan2(v, u)
    wobble = 1 + sum(rng.uniform(-0.12, 0.12) * np.cos(k * theta + rng.uniform(0, 2 * np.pi)) for k in (2, 3, 5))
    return np.hypot(u, v) / wobble


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
    inside = (_outline((h, w), (cy, cx), r, rng) <= 1).astype(np.float64)
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


#: the lesion suite's kinds: polarity-pattern, and the ring (a bright rim round a darker core, with a faint halo)
SUITE_KINDS = ("bright-uniform", "bright-textured", "dark-uniform", "dark-textured", "ring")
#: intensities relative to white matter (the 90th percentile of the slice's tissue): bright lesions lie above
#: the healthy range (hyperintense on T1: enhancing rims, subacute blood, fat), dark ones at about CSF
BRIGHT = (1.3, 1.8)
DARK = (0.15, 0.45)


def make_lesion(image: np.ndarray, brain: np.ndarray, rng: np.random.Generator, kind: str, radius: float,
                edge: float = 1.0) -> tuple[Lesion, dict]:
    """One lesion of the suite's ``kind`` (:data:`SUITE_KINDS`) with ``radius`` (pixels), anywhere in the tissue.

    The centre is drawn uniformly among brain pixels at least 2 pixels from the background, so lesions sit
    beside the ventricles and at the cortex as often as the tissue allows (the mask is cut at the brain's
    edge). ``textured`` lesions carry a smooth random texture of 15% of their level; a ``ring`` is a bright
    rim (0.4 of the radius thick, at least 1.5 pixels) round a dark core, in a faint halo of oedema (tissue darkened by
    8-15% out to 1.6 radii, not part of the mask). Returns the lesion and a record (kind, level, centre,
    radius, depth from the brain's edge).
    """
    if kind not in SUITE_KINDS:
        raise ValueError(f"unknown lesion kind {kind!r}; known: {', '.join(SUITE_KINDS)}")
    img = np.asarray(image, dtype=np.float64)
    brain = np.asarray(brain, bool)
    h, w = img.shape
    r = float(radius)
    depth = ndimage.distance_transform_edt(brain)
    cand = np.argwhere(depth >= 2)
    if len(cand) == 0:
        cand = np.argwhere(brain)
    cy, cx = cand[rng.integers(len(cand))]
    rho = _outline((h, w), (cy, cx), r, rng)
    soft = lambda inside: np.clip(ndimage.gaussian_filter(inside.astype(np.float64), edge), 0, 1) * brain  # noqa: E731
    alpha = soft(rho <= 1)
    tissue = img[brain]
    wm = float(np.percentile(tissue, 90)) if tissue.size else 1.0
    polarity = "bright" if kind.startswith("bright") or kind == "ring" else "dark"
    level = wm * rng.uniform(*(BRIGHT if polarity == "bright" else DARK))
    texture = ndimage.gaussian_filter(rng.normal(0, 1, img.shape), 1.5)
    texture = texture / (texture.std() + 1e-8)
    rec = {"kind": kind, "polarity": polarity, "radius": round(r, 2), "center": [int(cy), int(cx)],
           "depth": round(float(depth[cy, cx]), 2), "site": "cortex" if depth[cy, cx] < r else "deep"}
    out = img.copy()
    if kind == "ring":
        core_level = wm * rng.uniform(*DARK)
        thick = max(1.5, 0.4 * r)
        halo = soft(rho <= 1.6) * (1 - alpha)
        out = out * (1 - halo * rng.uniform(0.08, 0.15))
        inner = np.clip(ndimage.gaussian_filter((rho <= max(0.0, 1 - thick / r)).astype(np.float64), 0.6), 0, 1)
        target = inner * (core_level + 0.03 * wm * texture) + (1 - inner) * (level + 0.03 * wm * texture)
        rec.update(level=round(level / wm, 3), core_level=round(core_level / wm, 3), rim_px=round(thick, 2))
    else:
        spread = 0.15 if kind.endswith("textured") else 0.03
        target = level * (1 + spread * texture)
        rec["level"] = round(level / wm, 3)
    target = np.maximum(target, 0.02 * wm)
    out = (1 - alpha) * out + alpha * target
    out = np.where(brain, out, 0.0)
    mask = (alpha > 0.5) & brain
    return Lesion(out.astype(np.float32), mask, (int(cy), int(cx)), r, "hyper" if polarity == "bright" else "hypo"), rec
