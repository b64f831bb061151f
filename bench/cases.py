"""The slices ``rlp-bench`` measures on ("cases"), found, paired with lesion masks and loaded.

Two sets:

- ``lesion``: real slices with an inserted synthetic lesion and its ground-truth
  mask, on their own input grid. Localisation metrics use them, and so does
  fidelity. Sources, in order: ``--inputs`` (files or folders; a mask is paired
  by name, ``<stem>_lesion.nii.gz``), the demo slices that ship with rlp
  (:func:`rlp.runtime.heatmap.demo_slices`), or, with ``--run`` and neither of
  those, the run's held-out slices with a lesion inserted here (seeded;
  :func:`synthetic_lesion_cases`).
- ``heldout``: the run's held-out slices as they are (``RUN/heldout.npz``, no
  lesion; healthy tissue only), for fidelity only.

A case is a small JSON-able dict, so that the row subprocesses load exactly
the same slices as the parent: ``{"id", "set", "file", "lesion", "slice"}`` for
NIfTI files, ``{"id", "set", "npz", "index", "lesion_key"}`` for arrays.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from rlp.runtime.errors import BadInput, InputMissing
from rlp.runtime.nifti import LESION_SUFFIX, load_nifti, nifti_stem, nifti_suffix
from rlp.runtime.preprocess import brain_mask

from .lesions import insert_lesion

LESION = "lesion"
HELDOUT = "heldout"
#: lesion radius range in millimetres (voxels of the 1 mm demo slices), as the demo inputs use
LESION_RADIUS_MM = (5.0, 16.0)
MIN_RADIUS_PX = 3.0


def _mask_for(image: Path) -> Path | None:
    stem, folder = nifti_stem(image), image.parent
    for suffix in (".nii.gz", ".nii"):
        cand = folder / f"{stem}{LESION_SUFFIX}{suffix}"
        if cand.is_file():
            return cand
    return None


def _is_mask(path: Path) -> bool:
    return nifti_stem(path).endswith(LESION_SUFFIX)


def find_inputs(inputs: list[str | Path]) -> list[tuple[Path, Path | None]]:
    """(image, lesion mask or None) for files and folders (their NIfTI files, masks set aside)."""
    pairs: list[tuple[Path, Path | None]] = []
    for item in inputs:
        p = Path(item)
        if p.is_dir():
            found = sorted(f for f in p.iterdir() if f.is_file() and nifti_suffix(f) and not _is_mask(f))
            if not found:
                raise InputMissing("no NIfTI slices (.nii, .nii.gz) in this folder", p)
            pairs += [(f, _mask_for(f)) for f in found]
        elif p.is_file():
            if not nifti_suffix(p):
                raise BadInput("not a NIfTI file (.nii or .nii.gz)", p)
            if _is_mask(p):
                continue  # a mask given beside its image
            pairs.append((p, _mask_for(p)))
        else:
            raise InputMissing("no such file or folder", p)
    seen, out = set(), []
    for img, mask in pairs:
        key = img.resolve()
        if key not in seen:
            seen.add(key)
            out.append((img, mask))
    return out


def nifti_cases(pairs: list[tuple[Path, Path | None]]) -> list[dict]:
    ids: dict[str, int] = {}
    cases = []
    for img, mask in pairs:
        stem = nifti_stem(img)
        n = ids[stem] = ids.get(stem, 0) + 1
        cases.append({"id": stem if n == 1 else f"{stem}#{n}", "set": LESION, "file": str(img),
                      "lesion": None if mask is None else str(mask), "slice": None})
    return cases


def heldout_cases(run: Path, n: int) -> list[dict]:
    """Up to ``n`` of the run's held-out slices, evenly spread."""
    images = _npz_images(run / "heldout.npz", "images")
    idx = np.unique(np.linspace(0, len(images) - 1, min(n, len(images))).round().astype(int))
    return [{"id": f"heldout{int(i):02d}", "set": HELDOUT, "npz": str(run / "heldout.npz"), "index": int(i),
             "lesion_key": None} for i in idx]


def synthetic_lesion_cases(run: Path, n: int, out_npz: Path, seed: int = 0) -> list[dict]:
    """Lesions inserted into up to ``n`` held-out slices of ``run`` (hyper- and hypo-intense in turn).

    The held-out slices are on the model grid; the radius range is
    :data:`LESION_RADIUS_MM` scaled from a 256-pixel field of view to it, and
    at least :data:`MIN_RADIUS_PX` (the blob's soft edge is 1.5 pixels wide).
    """
    src = run / "heldout.npz"
    images = _npz_images(src, "images")
    brains = _npz_images(src, "brains").astype(bool)
    size = images.shape[-1]
    lo, hi = (max(MIN_RADIUS_PX, r * size / 256.0) for r in LESION_RADIUS_MM)
    rng = np.random.default_rng(seed)
    order = np.argsort(-brains.reshape(len(brains), -1).sum(1), kind="stable")[: min(n, len(images))]
    out_img, out_mask, records = [], [], []
    for j, i in enumerate(sorted(order.tolist())):
        kind = "hyper" if j % 2 == 0 else "hypo"
        les = insert_lesion(images[i], brains[i], rng, kind=kind, radius_range=(lo, max(lo + 1.0, hi)))
        out_img.append(les.image)
        out_mask.append(les.mask)
        records.append({"id": f"heldout{i:02d}_{kind}", "set": LESION, "npz": str(out_npz), "index": j,
                        "lesion_key": "lesions", "kind": kind, "radius": round(les.radius, 2)})
    np.savez(out_npz, images=np.stack(out_img).astype(np.float32), lesions=np.stack(out_mask))
    return records


def _npz_images(path: Path, key: str) -> np.ndarray:
    if not path.is_file():
        raise InputMissing("not found", path)
    try:
        with np.load(path, allow_pickle=False) as z:
            return z[key]
    except (KeyError, ValueError, OSError) as exc:
        raise BadInput(f"cannot read {key!r} ({exc})", path) from None


def load_case(case: dict) -> tuple[np.ndarray, tuple[float, float], np.ndarray | None]:
    """(slice, in-plane spacing, lesion mask or None) of a case, on the slice's own grid."""
    if "npz" in case:
        image = _npz_images(Path(case["npz"]), "images")[case["index"]].astype(np.float32)
        key = case.get("lesion_key")
        lesion = _npz_images(Path(case["npz"]), key)[case["index"]].astype(bool) if key else None
        return image, (1.0, 1.0), lesion
    vol = load_nifti(case["file"])
    lesion_vol = load_nifti(case["lesion"]) if case.get("lesion") else None
    k, n = vol.slices("axial")
    i = case.get("slice")
    if i is None:
        i = n // 2
        if lesion_vol is not None and n > 1:  # a volume: the slice with the most lesion
            i = int(np.argmax((np.moveaxis(lesion_vol.data, k, 0) > 0).reshape(n, -1).sum(1)))
    image, spacing = vol.get_slice(k, i)
    lesion = None
    if lesion_vol is not None:
        if lesion_vol.data.shape != vol.data.shape:
            raise BadInput(f"lesion mask has shape {lesion_vol.file_shape}, the slice {vol.file_shape}", case["lesion"])
        lesion = lesion_vol.get_slice(k, i)[0] > 0
    return image, spacing, lesion


def brain_of(image: np.ndarray) -> np.ndarray:
    """Brain voxels of a slice on its input grid (the preprocessing contract's default mask)."""
    return brain_mask(np.nan_to_num(image))
