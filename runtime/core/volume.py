"""A NIfTI image in memory: :class:`Volume`, the voxels in closest-canonical (RAS+) orientation.

The volume keeps the transform from and to the file's own grid, so heatmaps go back on the input's grid and
affine; :func:`volume_from_array` makes one from an array, with the checks a file gets.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from pathlib import Path

import nibabel as nib
import numpy as np
from nibabel import orientations as nio

from .errors import BadInput, one_line
from .nifti_header import nibabel_log

AXES = {"sagittal": 0, "coronal": 1, "axial": 2}  # world axis (RAS) normal to the slice


@dataclass
class Volume:
    """A NIfTI image as a 3D float32 array in closest-canonical (RAS+) orientation."""

    path: Path
    data: np.ndarray  # canonical, 3D, float32
    zooms: tuple[float, float, float]  # canonical order
    affine: np.ndarray  # the input's affine (img.affine)
    header: object  # a copy of the input header
    file_shape: tuple[int, ...]  # shape as stored in the file
    ornt: np.ndarray  # file array axes -> canonical
    warnings: list[str] = field(default_factory=list)
    volume_index: int | None = None  # the volume taken from a 4D file (``load_nifti(volume_index=)``)

    def slice_axis(self, axis: str = "axial") -> int:
        """Canonical axis to slice along: a singleton axis wins (single-slice files)."""
        singleton = [i for i, n in enumerate(self.data.shape) if n == 1]
        if singleton:
            return singleton[-1]
        if axis not in AXES:
            raise BadInput(f"unknown axis {axis!r}; choose one of {', '.join(AXES)}", self.path)
        return AXES[axis]

    def slices(self, axis: str = "axial") -> tuple[int, int]:
        k = self.slice_axis(axis)
        return k, self.data.shape[k]

    def get_slice(self, k: int, i: int) -> tuple[np.ndarray, tuple[float, float]]:
        sl = np.take(self.data, i, axis=k)
        sp = tuple(z for j, z in enumerate(self.zooms) if j != k)
        return sl, sp

    def to_file_grid(self, canonical: np.ndarray) -> np.ndarray:
        """Put a canonical-orientation 3D array back in the file's array order and shape."""
        inv = _invert_ornt(self.ornt)
        out = nio.apply_orientation(canonical, inv)
        return out.reshape(self.file_shape)

    def canonical_to_file(self, ijk_canonical: np.ndarray) -> np.ndarray:
        """File voxel indices (continuous, first three axes) of canonical voxel indices."""
        ijk = np.atleast_2d(np.asarray(ijk_canonical, dtype=np.float64))
        return nib.affines.apply_affine(self._canonical_to_file_affine(), ijk)

    def _canonical_to_file_affine(self) -> np.ndarray:
        return nio.inv_ornt_aff(self.ornt, _shape3(self.file_shape))  # canonical index -> file index

    def axcodes(self) -> tuple[str, str, str]:
        """The anatomical letter (R/L, A/P, S/I) that each canonical array axis runs towards, read from the
        input's affine (``nibabel.orientations.aff2axcodes``): what an overlay marks on each side."""
        return tuple(nio.aff2axcodes(self.affine @ self._canonical_to_file_affine()))

    def voxel_to_world(self, ijk_canonical: np.ndarray) -> np.ndarray:
        """World (mm) coordinates of canonical voxel indices."""
        return nib.affines.apply_affine(self.affine, self.canonical_to_file(ijk_canonical))

    def file_axis(self, k: int) -> tuple[int, bool]:
        """The file array axis that canonical axis ``k`` comes from, and whether it is flipped."""
        for i, (j, flip) in enumerate(self.ornt):
            if int(j) == k:
                return i, bool(flip < 0)
        raise ValueError(f"canonical axis {k} has no file axis")  # io_orientation is a permutation

    def file_to_canonical_index(self, k: int, index: int) -> int:
        """Index along canonical axis ``k`` of the slice with file index ``index`` on that axis."""
        _, flip = self.file_axis(k)
        n = self.data.shape[k]
        return n - 1 - index if flip else index


def _shape3(shape):
    s = tuple(shape)
    if len(s) == 2:
        return s + (1,)
    return s[:3]


def _invert_ornt(ornt: np.ndarray) -> np.ndarray:
    inv = np.zeros_like(ornt)
    for i, (j, flip) in enumerate(ornt):
        inv[int(j)] = (i, flip)
    return inv


def volume_from_array(data: np.ndarray, affine: np.ndarray | None = None, name: str = "array") -> Volume:
    """A :class:`Volume` from an in-memory 2D/3D array and its voxel-to-world affine.

    ``affine`` defaults to the identity (1 mm voxels, RAS axes). The same checks
    as for files apply (finite, non-singular affine; at most one volume).
    """
    arr = np.asarray(data)
    if not (np.issubdtype(arr.dtype, np.number) or arr.dtype == bool) or np.issubdtype(arr.dtype, np.complexfloating):
        raise BadInput(f"unsupported data type {arr.dtype}", name)
    aff = np.eye(4) if affine is None else np.asarray(affine, dtype=np.float64)
    if aff.shape != (4, 4):
        raise BadInput(f"affine has shape {aff.shape}, expected (4, 4)", name)
    if not np.all(np.isfinite(aff)) or abs(np.linalg.det(aff[:3, :3])) < 1e-12:  # nibabel cannot take a singular one
        raise BadInput("affine is singular or non-finite", name)
    with warnings.catch_warnings(), nibabel_log(None):
        warnings.simplefilter("ignore")
        img = nib.Nifti1Image(arr.astype(np.float32), aff)
        return make_volume(Path(name), np.asarray(img.dataobj, dtype=np.float32), img, [])


def make_volume(path: Path, data: np.ndarray, img, notes: list[str]) -> Volume:
    hdr = img.header
    file_shape = tuple(int(s) for s in data.shape)
    # Squeeze singleton non-spatial dimensions only; 4D with one volume is fine.
    if data.ndim > 3:
        extra = data.shape[3:]
        if int(np.prod(extra)) != 1:
            raise BadInput(f"has {int(np.prod(extra))} volumes (shape {data.shape}); pick one with "
                           "--volume-index N", path)
        data = data.reshape(data.shape[:3])
    if data.ndim < 2:
        raise BadInput(f"is not an image (shape {data.shape})", path)
    if data.ndim == 2:
        data = data[:, :, None]
    zooms = tuple(float(z) for z in hdr.get_zooms()[:3])
    zooms = (zooms + (1.0, 1.0, 1.0))[:3]
    for ax, z in enumerate(zooms):
        if data.shape[ax] > 1 and not (np.isfinite(z) and z > 0):
            raise BadInput(f"voxel size {z:g} along axis {ax} is not a positive number", path)
    zooms = tuple(z if np.isfinite(z) and z > 0 else 1.0 for z in zooms)
    try:
        affine = np.asarray(img.affine, dtype=np.float64)
        qform, qcode = img.get_qform(coded=True)
        sform, scode = img.get_sform(coded=True)
    except ValueError as exc:  # e.g. a qform quaternion that is not a rotation
        raise BadInput(f"invalid qform or sform ({one_line(exc)})", path) from None
    if not np.all(np.isfinite(affine)) or abs(np.linalg.det(affine[:3, :3])) < 1e-12:
        raise BadInput("affine is singular or non-finite", path)
    if qcode and scode and qform is not None and sform is not None and not np.allclose(qform, sform, atol=1e-3):
        notes.append("qform and sform disagree; using the sform (nibabel's choice)")
    if not qcode and not scode:
        notes.append("qform and sform codes are both 0; orientation is unknown, assuming the voxel axes")
    ornt = nio.io_orientation(affine)
    if np.isnan(ornt).any():  # a voxel axis with (almost) no extent in the world: no closest orientation
        raise BadInput("affine is degenerate (a voxel axis has no clear world direction)", path)
    canonical = nio.apply_orientation(data, ornt)
    czooms = [1.0, 1.0, 1.0]
    for i, (j, _flip) in enumerate(ornt):
        czooms[int(j)] = zooms[i]
    return Volume(path, np.ascontiguousarray(canonical, dtype=np.float32), tuple(czooms), affine,
                  hdr.copy(), file_shape, ornt, notes)
