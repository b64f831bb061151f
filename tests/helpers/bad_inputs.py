"""The corpus of bad input files: each case makes one broken NIfTI that rlp-heatmap must refuse with the given exit
code and words (tests/runtime/test_bad_inputs.py checks each case, tests/reliability/test_corpus.py all together)."""

from __future__ import annotations

import gzip
from pathlib import Path

import nibabel as nib
import numpy as np

from helpers.runtime import phantom, write_nifti
from rlp.runtime.core.errors import EX_DATAERR, EX_NOINPUT

VOL = phantom((24, 28, 3))
AFF = np.diag([1.0, 1.0, 2.0, 1.0])


def good_nifti(path: Path) -> Path:
    return write_nifti(path, VOL, AFF)


def truncate(path: Path, frac: float) -> Path:
    raw = path.read_bytes()
    path.write_bytes(raw[: int(len(raw) * frac)])
    return path


def flip_byte(path: Path) -> Path:
    raw = bytearray(path.read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    path.write_bytes(bytes(raw))
    return path


def gzip_bomb(path: Path) -> Path:
    """A gzip of a bare header declaring 1024 x 1024 x 512 float32 (2 GiB): 73 bytes or so."""
    hdr = nib.Nifti1Header()
    hdr.set_data_shape((1024, 1024, 512))
    hdr.set_data_dtype(np.float32)
    raw = hdr.binaryblock + b"\0" * 4
    path.write_bytes(gzip.compress(raw, mtime=0))
    return path


def random_bytes(path: Path) -> Path:
    path.write_bytes(np.random.default_rng(0).bytes(2000))
    return path


def with_header(**fields):
    return lambda p: write_nifti(p, VOL, AFF, **fields)


BAD = {
    # case id: (file name, maker, exit code, words expected in the message)
    "truncated_nii_gz": ("t.nii.gz", lambda p: truncate(good_nifti(p), 0.6), EX_DATAERR, "truncated"),
    "truncated_nii": ("t.nii", lambda p: truncate(good_nifti(p), 0.6), EX_DATAERR, "truncated"),
    "truncated_header": ("th.nii", lambda p: truncate(good_nifti(p), 0.01), EX_DATAERR, "too short"),
    "flipped_byte_nii_gz": ("f.nii.gz", lambda p: flip_byte(good_nifti(p)), EX_DATAERR, "gzip"),
    "empty_file": ("e.nii.gz", lambda p: p.write_bytes(b"") and p, EX_DATAERR, "empty"),
    "random_bytes_nii": ("r.nii", random_bytes, EX_DATAERR, "not a NIfTI"),
    "random_bytes_nii_gz": ("r.nii.gz", random_bytes, EX_DATAERR, "not gzip"),
    "unknown_extension": ("x.img", lambda p: p.write_bytes(good_nifti(p.with_suffix(".nii")).read_bytes()) and p,
                          EX_DATAERR, "extension"),
    "gzip_named_nii": ("g.nii", lambda p: p.write_bytes(gzip.compress(good_nifti(p).read_bytes())) and p,
                       EX_DATAERR, "gzip-compressed"),
    "plain_named_nii_gz": ("p.nii.gz", lambda p: p.write_bytes(good_nifti(p.with_name("p.nii")).read_bytes()) and p,
                           EX_DATAERR, "not gzip"),
    "huge_dims_bomb": ("bomb.nii.gz", gzip_bomb, EX_DATAERR, "GiB"),
    "zero_dim": ("z.nii", with_header(dim=[3, 24, 0, 3, 1, 1, 1, 1]), EX_DATAERR, "zero or negative"),
    "negative_dim": ("n.nii", with_header(dim=[3, 24, -28, 3, 1, 1, 1, 1]), EX_DATAERR, "zero or negative"),
    "dim0_zero": ("d0.nii", with_header(dim=[0, 24, 28, 3, 1, 1, 1, 1]), EX_DATAERR, "dim[0]"),
    "dim0_eight": ("d8.nii", with_header(dim=[8, 24, 28, 3, 1, 1, 1, 1]), EX_DATAERR, "dim[0]"),
    "complex_dtype": ("c.nii", with_header(datatype=32, bitpix=64), EX_DATAERR, "data type"),
    "rgb_dtype": ("rgb.nii", with_header(datatype=128, bitpix=24), EX_DATAERR, "data type"),
    "unknown_dtype": ("u.nii", with_header(datatype=999), EX_DATAERR, "data type"),
    "nan_voxels": ("nan.nii.gz", lambda p: write_nifti(p, np.where(VOL > 120, np.nan, VOL), AFF), EX_DATAERR,
                   "--nonfinite zero"),
    "inf_voxels": ("inf.nii.gz", lambda p: write_nifti(p, np.where(VOL > 120, np.inf, VOL), AFF), EX_DATAERR,
                   "non-finite"),
    "all_nan": ("allnan.nii.gz", lambda p: write_nifti(p, np.full(VOL.shape, np.nan, np.float32), AFF),
                EX_DATAERR, "every voxel"),
    "singular_affine": ("s.nii.gz", lambda p: write_nifti(p, VOL, AFF, qform_code=0, srow_y=[0, 0, 0, 0]),
                        EX_DATAERR, "singular"),
    "nan_affine": ("na.nii.gz", lambda p: write_nifti(p, VOL, AFF, qform_code=0,
                                                       srow_x=[np.nan, 0, 0, 0]), EX_DATAERR, "singular"),
    "4d_three_volumes": ("v4.nii.gz", lambda p: write_nifti(p, np.stack([VOL] * 3, -1), AFF), EX_DATAERR,
                         "3 volumes"),
    "zoom_zero": ("pz.nii", with_header(pixdim=[1, 0.0, 1, 2, 1, 1, 1, 1]), EX_DATAERR, "voxel size"),
    "zoom_negative": ("pn.nii", with_header(pixdim=[1, -1.0, 1, 2, 1, 1, 1, 1]), EX_DATAERR, "voxel size"),
    "zoom_nan": ("pnan.nii", with_header(pixdim=[1, 1.0, np.nan, 2, 1, 1, 1, 1]), EX_DATAERR, "voxel size"),
    "missing_file": ("missing.nii.gz", lambda p: p, EX_NOINPUT, "no such file"),
    "directory": ("dir.nii", lambda p: p.mkdir() or p, EX_DATAERR, "directory"),
}
