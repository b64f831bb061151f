"""Careful NIfTI reading and writing (nibabel underneath): the volume loader and the heatmap writer.

:mod:`~rlp.runtime.core.nifti_header` checks a file's bytes and header before any voxel is read;
:mod:`~rlp.runtime.core.volume` holds the :class:`Volume` (closest-canonical orientation, the transform back to the
file's grid). Voxels are read inside :func:`load_nifti`, so truncation surfaces here, as one
:class:`~rlp.runtime.core.errors.RlpError` naming the file.
"""

from __future__ import annotations

import math
import os
import warnings
from pathlib import Path

import nibabel as nib
import numpy as np

from . import limits
from .atomic import atomic_path
from .errors import BadInput, RlpError, one_line
from .nifti_header import check_header, nibabel_log, nifti_suffix, read_stream
from .volume import AXES, Volume, make_volume, volume_from_array

__all__ = ["AXES", "HEATMAP_DESCRIP", "LESION_SUFFIX", "Volume", "check_header", "load_nifti", "nifti_stem",
           "nifti_suffix", "out_of_memory", "save_like", "volume_from_array"]

# Ground-truth lesion masks beside their slice: <stem>_lesion.nii.gz (demo inputs, bench).
LESION_SUFFIX = "_lesion"
#: the description (header ``descrip``) of every heatmap rlp writes
HEATMAP_DESCRIP = b"rlp reconstruction-loss heatmap"


def nifti_stem(path: str | os.PathLike) -> str:
    name = Path(path).name
    suf = nifti_suffix(name)
    return name[: -len(suf)] if suf else Path(name).stem


def load_nifti(path: str | os.PathLike, volume_index: int | None = None) -> Volume:
    """Load and check one NIfTI image; raise :class:`RlpError` on any problem.

    A 4D file holding several volumes is refused unless ``volume_index`` picks one (0-based, along the
    fourth axis); the :class:`Volume` is then that 3D volume, with the file's 3D grid and affine."""
    path = Path(path)
    klass, raw_hdr, raw = read_stream(path)
    notes: list[str] = []
    slope = float(raw_hdr["scl_slope"])
    if not np.isfinite(slope) or slope == 0:
        notes.append(f"scl_slope is {slope:g}; voxel values used unscaled (as nibabel does)")
    with warnings.catch_warnings(), nibabel_log(notes):
        warnings.simplefilter("ignore")  # nibabel and numpy warn about broken affines: they are checked below
        try:
            img = klass.from_bytes(raw)
            data = _pick_volume(img, volume_index, path)
        except RlpError:
            raise
        except MemoryError:
            raise BadInput(out_of_memory(path), path) from None
        except Exception as exc:
            raise BadInput(f"cannot read voxel data ({one_line(exc)})", path) from None
        vol = make_volume(path, data, img, notes)
    vol.volume_index = None if volume_index is None else int(volume_index)
    return vol


def _pick_volume(img, index: int | None, path: Path) -> np.ndarray:
    """The voxels as float32: all of them, or (``index``) only that volume of the fourth axis."""
    if index is None:
        return np.asarray(img.get_fdata(dtype=np.float32))
    shape = img.shape
    if len(shape) > 4 and math.prod(shape[4:]) != 1:
        raise BadInput(f"has more than four dimensions (shape {shape}); --volume-index picks a volume "
                       "of a 4D file only", path)
    n = int(shape[3]) if len(shape) > 3 else 1
    if not 0 <= int(index) < n:
        raise BadInput(f"volume index {index} is out of range: the file has {n} volume(s) (0..{n - 1})", path)
    if len(shape) <= 3:
        return np.asarray(img.get_fdata(dtype=np.float32))
    return np.asarray(img.dataobj[:, :, :, int(index)], dtype=np.float32)


def out_of_memory(path: str | os.PathLike) -> str:
    """The message for a MemoryError while processing ``path``: the cause (its size) and what to do."""
    try:
        shape = check_header(path)
    except (RlpError, OSError):
        shape = None
    return limits.out_of_memory(shape)


def save_like(path: str | os.PathLike, data_file_grid: np.ndarray, ref: Volume, *, force: bool = True) -> Path:
    """Write float32 data on ``ref``'s grid: same shape, affine, qform and sform, no scaling (nibabel stores
    ``scl_slope`` and ``scl_inter`` as NaN, "unset")."""
    arr = np.asarray(data_file_grid, dtype=np.float32)
    if arr.shape != tuple(ref.file_shape):
        raise ValueError(f"data shape {arr.shape} != input shape {ref.file_shape}")
    hdr = ref.header.copy()
    hdr.set_data_dtype(np.float32)
    klass = nib.Nifti2Image if isinstance(hdr, nib.Nifti2Header) else nib.Nifti1Image
    qform, qcode = hdr.get_qform(coded=True)
    sform, scode = hdr.get_sform(coded=True)
    img = klass(arr, None, header=hdr)
    img.set_qform(qform, int(qcode))
    img.set_sform(sform, int(scode))
    img.header.set_slope_inter(1.0, 0.0)
    img.header.set_intent("none", (), name="")  # the heatmap is not the input's statistic or label map
    img.header["cal_min"] = 0
    img.header["cal_max"] = float(arr.max()) if arr.size else 0.0
    img.header["descrip"] = HEATMAP_DESCRIP
    suf = nifti_suffix(path) or ".nii.gz"
    with atomic_path(path, force=force, suffix=suf) as tmp:
        nib.save(img, tmp)
    return Path(path)
