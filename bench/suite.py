"""The lesion suite: held-out slices with one synthetic lesion each, and healthy ones, from a seed.

``rlp-bench --run RUN`` measures localisation on it. It is built from the run's
held-out slices (``RUN/heldout.npz``: the validation and test splits, never a
training slice), on the model grid as the preprocessing left them:

- ``lesions`` slices (default 72), each with one lesion of a kind from
  :data:`~rlp.bench.lesions.SUITE_KINDS` in turn (bright and dark, uniform and
  textured, and rings: a bright rim round a dark core in a faint halo of
  oedema), radius log-uniform in :data:`RADIUS` pixels, centred anywhere in the
  tissue (beside the ventricles and at the cortex included);
- ``healthy`` slices (default 24) as they are;
- every third slice of each set unregistered: rotated by 8-25 degrees either
  way and shifted by up to :data:`SHIFT` of the side, before the lesion goes in.

Every slice's recipe (base slice, kind, radius, centre, intensity, rotation,
shift) is recorded in the cases and the report, so any figure can be
reproduced from the seed.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
from scipy import ndimage

from rlp.runtime.core.errors import BadInput
from rlp.runtime.core.files import read_npz
from rlp.runtime.core.runfolder import RunFolder

from .lesions import SUITE_KINDS, make_lesion

LESION = "lesion"
HEALTHY = "healthy"
SUITE_LESIONS = 72
SUITE_HEALTHY = 24
RADIUS = (3.0, 16.0)  # pixels of the slice grid
ROTATION_DEG = (8.0, 25.0)
SHIFT = 0.06  # largest shift, fraction of the side
UNREGISTERED_EVERY = 3  # every third slice of each set
#: size classes of the report (radius in pixels)
SIZES = ((0.0, 6.0, "r<6"), (6.0, 10.0, "r6-10"), (10.0, math.inf, "r>=10"))


def size_class(radius: float) -> str:
    return next(name for lo, hi, name in SIZES if lo <= radius < hi)


def _heldout(run: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    path = RunFolder(run).heldout
    z = read_npz(path, ("images", "brains"), ("split",),
                 missing="held-out slices not found (the lesion suite is built from them)")
    images, brains = z["images"].astype(np.float32), z["brains"].astype(bool)
    return images, brains, z["split"] if "split" in z else np.full(len(images), 2, np.int8)


def unregister(image: np.ndarray, brain: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, dict]:
    """The slice rotated about its centre and shifted (linear interpolation; background stays 0)."""
    h, w = image.shape
    deg = float(rng.uniform(*ROTATION_DEG) * rng.choice([-1.0, 1.0]))
    shift = rng.uniform(-SHIFT, SHIFT, 2) * np.array([h, w])
    a = math.radians(deg)
    rot = np.array([[math.cos(a), -math.sin(a)], [math.sin(a), math.cos(a)]])
    centre = (np.array([h, w]) - 1) / 2.0
    offset = centre - rot @ (centre + shift)  # output index o reads input rot @ o + offset
    img = ndimage.affine_transform(image.astype(np.float64), rot, offset=offset, order=1, mode="constant")
    brn = ndimage.affine_transform(brain.astype(np.float64), rot, offset=offset, order=1, mode="constant") > 0.5
    return (np.where(brn, np.maximum(img, 0), 0.0)).astype(np.float32), brn, {
        "rotation_deg": round(deg, 2), "shift_px": [round(float(s), 2) for s in shift]}


def suite_cases(run: Path, out_npz: Path, seed: int = 0, lesions: int = SUITE_LESIONS,
                healthy: int = SUITE_HEALTHY) -> list[dict]:
    """Build the suite from ``run``'s held-out slices into ``out_npz``; returns its cases (with recipes)."""
    images, brains, split = _heldout(Path(run))
    area = brains.reshape(len(brains), -1).sum(1)
    need = 3 * math.pi * RADIUS[1] ** 2 * (images.shape[-1] / 128.0) ** 2  # room for the largest lesion
    usable = np.flatnonzero(area >= min(need, float(np.median(area))))
    if len(usable) == 0:
        raise BadInput("no held-out slice has enough brain for the lesion suite", RunFolder(run).heldout)
    rng = np.random.default_rng(seed)
    order = rng.permutation(usable)
    out_img, out_mask, cases = [], [], []
    for j in range(lesions + healthy):
        lesion_slice = j < lesions
        k = j if lesion_slice else j - lesions
        base = int(order[k % len(order)])
        img, brn = images[base], brains[base]
        rec: dict = {"base": base, "split": {1: "val", 2: "test"}.get(int(split[base]), str(split[base])),
                     "registered": True}
        if k % UNREGISTERED_EVERY == UNREGISTERED_EVERY - 1:
            img, brn, how = unregister(img, brn, rng)
            rec.update(registered=False, **how)
        if lesion_slice:
            kind = SUITE_KINDS[k % len(SUITE_KINDS)]
            radius = float(math.exp(rng.uniform(math.log(RADIUS[0]), math.log(RADIUS[1]))))
            les, lrec = make_lesion(img, brn, rng, kind, radius)
            img, mask = les.image, les.mask
            rec.update(lrec, size=size_class(radius), lesion_voxels=int(mask.sum()))
            cid = f"suite{k:03d}_{kind}" + ("" if rec["registered"] else "_unreg")
        else:
            mask = np.zeros_like(brn)
            cid = f"healthy{k:03d}" + ("" if rec["registered"] else "_unreg")
        out_img.append(img)
        out_mask.append(mask)
        cases.append({"id": cid, "set": LESION if lesion_slice else HEALTHY, "npz": str(out_npz), "index": j,
                      "lesion_key": "lesions" if lesion_slice else None, "suite": rec})
    np.savez(out_npz, images=np.stack(out_img).astype(np.float32), lesions=np.stack(out_mask).astype(bool))
    return cases
