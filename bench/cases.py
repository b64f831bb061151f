"""The slices ``rlp-bench`` measures on ("cases"), found, paired with lesion masks and loaded.

Two sets:

- ``lesion``: real slices with an inserted synthetic lesion and its ground-truth
  mask, on their own input grid. Localisation metrics use them, and so does
  fidelity. Sources, in order: ``--inputs`` (files or folders; a mask is paired
  by name, ``<stem>_lesion.nii.gz``), with ``--run`` the lesion suite
  (:mod:`rlp.bench.suite`, which adds ``healthy`` slices), or the demo slices
  that ship with rlp (:func:`rlp.runtime.heatmap.demo_slices`).
- ``heldout``: the run's held-out slices as they are (``RUN/heldout.npz``, no
  lesion; healthy tissue only), for fidelity only.

A case is a small JSON-able dict, so that the row subprocesses load exactly
the same slices as the parent: ``{"id", "set", "file", "lesion", "slice"}`` for
NIfTI files, ``{"id", "set", "npz", "index", "lesion_key"}`` for arrays.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from rlp.runtime.core.errors import BadInput, InputMissing
from rlp.runtime.core.files import read_npz
from rlp.runtime.core.nifti import LESION_SUFFIX, load_nifti, nifti_stem, nifti_suffix
from rlp.runtime.core.preprocess import brain_mask
from rlp.runtime.core.runfolder import RunFolder
from rlp.runtime.inputs import nifti_files

LESION = "lesion"
HELDOUT = "heldout"


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
    """(image, lesion mask or None) for files, folders and quoted globs (their NIfTI files, masks set aside)."""
    pairs: list[tuple[Path, Path | None]] = []
    for item in inputs:
        p = Path(item)
        listed = nifti_files(item, recursive=False)  # a folder or a quoted glob, as rlp-heatmap lists them
        if listed is not None:
            found = [f for f in listed if not _is_mask(f)]
            if not found:
                raise InputMissing(f"no NIfTI slices (.nii, .nii.gz) in this {'folder' if p.is_dir() else 'glob'}", p)
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
    npz = RunFolder(run).heldout
    images = _npz_images(npz, "images")
    idx = np.unique(np.linspace(0, len(images) - 1, min(n, len(images))).round().astype(int))
    return [{"id": f"heldout{int(i):02d}", "set": HELDOUT, "npz": str(npz), "index": int(i),
             "lesion_key": None} for i in idx]


def _npz_images(path: Path, key: str) -> np.ndarray:
    return read_npz(path, (key,))[key]


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
