"""Every row of RELIABILITY.md's NIfTI table, through ``rlp-heatmap``.

A bad input must give the documented exit code, one line on stderr naming the
file, no traceback, and nothing in the output folder for that input; a
tolerated oddity (scl_slope 0/NaN, q/s-form disagreement, constant slice...)
succeeds with a warning in the summary.
"""

from __future__ import annotations

import gzip
import json
import os
import tracemalloc
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from rlp.runtime.core.errors import EX_DATAERR, EX_NOINPUT
from runtime_helpers import assert_clean_failure, make_bundle, outputs_of, phantom, run_cli, write_nifti


@pytest.fixture(scope="module")
def bundle_dir(tmp_path_factory):
    """A valid bundle (size 32, window 8, stride 4: 7 x 7 windows) for the tests that do not change it."""
    return make_bundle(tmp_path_factory.mktemp("bundle") / "b")


VOL = phantom((24, 28, 3))
AFF = np.diag([1.0, 1.0, 2.0, 1.0])


def _good(path: Path) -> Path:
    return write_nifti(path, VOL, AFF)


def _truncate(path: Path, frac: float) -> Path:
    raw = path.read_bytes()
    path.write_bytes(raw[: int(len(raw) * frac)])
    return path


def _flip_byte(path: Path) -> Path:
    raw = bytearray(path.read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    path.write_bytes(bytes(raw))
    return path


def _bomb(path: Path) -> Path:
    """A gzip of a bare header declaring 1024 x 1024 x 512 float32 (2 GiB): 73 bytes or so."""
    hdr = nib.Nifti1Header()
    hdr.set_data_shape((1024, 1024, 512))
    hdr.set_data_dtype(np.float32)
    raw = hdr.binaryblock + b"\0" * 4
    path.write_bytes(gzip.compress(raw, mtime=0))
    return path


def _random(path: Path) -> Path:
    path.write_bytes(np.random.default_rng(0).bytes(2000))
    return path


def _header(**fields):
    return lambda p: write_nifti(p, VOL, AFF, **fields)


BAD = {
    # case id: (file name, maker, exit code, words expected in the message)
    "truncated_nii_gz": ("t.nii.gz", lambda p: _truncate(_good(p), 0.6), EX_DATAERR, "truncated"),
    "truncated_nii": ("t.nii", lambda p: _truncate(_good(p), 0.6), EX_DATAERR, "truncated"),
    "truncated_header": ("th.nii", lambda p: _truncate(_good(p), 0.01), EX_DATAERR, "too short"),
    "flipped_byte_nii_gz": ("f.nii.gz", lambda p: _flip_byte(_good(p)), EX_DATAERR, "gzip"),
    "empty_file": ("e.nii.gz", lambda p: p.write_bytes(b"") and p, EX_DATAERR, "empty"),
    "random_bytes_nii": ("r.nii", _random, EX_DATAERR, "not a NIfTI"),
    "random_bytes_nii_gz": ("r.nii.gz", _random, EX_DATAERR, "not gzip"),
    "unknown_extension": ("x.img", lambda p: p.write_bytes(_good(p.with_suffix(".nii")).read_bytes()) and p,
                          EX_DATAERR, "extension"),
    "gzip_named_nii": ("g.nii", lambda p: p.write_bytes(gzip.compress(_good(p).read_bytes())) and p,
                       EX_DATAERR, "gzip-compressed"),
    "plain_named_nii_gz": ("p.nii.gz", lambda p: p.write_bytes(_good(p.with_name("p.nii")).read_bytes()) and p,
                           EX_DATAERR, "not gzip"),
    "huge_dims_bomb": ("bomb.nii.gz", _bomb, EX_DATAERR, "GiB"),
    "zero_dim": ("z.nii", _header(dim=[3, 24, 0, 3, 1, 1, 1, 1]), EX_DATAERR, "zero or negative"),
    "negative_dim": ("n.nii", _header(dim=[3, 24, -28, 3, 1, 1, 1, 1]), EX_DATAERR, "zero or negative"),
    "dim0_zero": ("d0.nii", _header(dim=[0, 24, 28, 3, 1, 1, 1, 1]), EX_DATAERR, "dim[0]"),
    "dim0_eight": ("d8.nii", _header(dim=[8, 24, 28, 3, 1, 1, 1, 1]), EX_DATAERR, "dim[0]"),
    "complex_dtype": ("c.nii", _header(datatype=32, bitpix=64), EX_DATAERR, "data type"),
    "rgb_dtype": ("rgb.nii", _header(datatype=128, bitpix=24), EX_DATAERR, "data type"),
    "unknown_dtype": ("u.nii", _header(datatype=999), EX_DATAERR, "data type"),
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
    "zoom_zero": ("pz.nii", _header(pixdim=[1, 0.0, 1, 2, 1, 1, 1, 1]), EX_DATAERR, "voxel size"),
    "zoom_negative": ("pn.nii", _header(pixdim=[1, -1.0, 1, 2, 1, 1, 1, 1]), EX_DATAERR, "voxel size"),
    "zoom_nan": ("pnan.nii", _header(pixdim=[1, 1.0, np.nan, 2, 1, 1, 1, 1]), EX_DATAERR, "voxel size"),
    "missing_file": ("missing.nii.gz", lambda p: p, EX_NOINPUT, "no such file"),
    "directory": ("dir.nii", lambda p: p.mkdir() or p, EX_DATAERR, "directory"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_input_fails_cleanly(capsys, tmp_path, bundle_dir, case):
    name, make, want_code, words = BAD[case]
    path = tmp_path / name
    make(path)
    out = tmp_path / "out"
    code, stdout, err = run_cli(capsys, path, "--bundle", bundle_dir, "--out", out, "--quiet")
    assert_clean_failure(code, err, want_code, name)
    assert words.lower() in err.lower(), err
    assert outputs_of(out, name.split(".")[0]) == []
    assert not out.exists() or list(out.iterdir()) == []


def test_bomb_fails_fast_without_allocating(tmp_path):
    from rlp.runtime.core.errors import RlpError
    from rlp.runtime.core.nifti import load_nifti

    path = _bomb(tmp_path / "bomb.nii.gz")
    assert path.stat().st_size < 100
    tracemalloc.start()
    with pytest.raises(RlpError, match="over the"):
        load_nifti(path)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert peak < 8 * 2**20  # refused from the header: no voxel buffer allocated (speed is the bench's to measure)


def test_dims_whose_product_overflows_int64_are_refused(tmp_path):
    """32767^5 x 4 bytes wraps around in int64 arithmetic: the cap must use exact integers."""
    from rlp.runtime.core.errors import RlpError
    from rlp.runtime.core.nifti import load_nifti

    hdr = nib.Nifti1Header()
    hdr.set_data_shape((32767,) * 5)
    hdr.set_data_dtype(np.float32)
    path = tmp_path / "wrap.nii"
    path.write_bytes(hdr.binaryblock + b"\0" * 4)
    with pytest.raises(RlpError, match="over the"):
        load_nifti(path)


# --------------------------------------------------------------------------- tolerated, with a warning
WARN = {
    "slope_zero": (_header(scl_slope=0.0), "scl_slope"),
    "slope_nan": (_header(scl_slope=np.nan), "scl_slope"),
    "qform_sform_disagree": (lambda p: write_nifti(p, VOL, AFF, qform=np.diag([2.0, 1.0, 2.0, 1.0])), "disagree"),
    "all_zero": (lambda p: write_nifti(p, np.zeros_like(VOL), AFF), "no brain tissue"),
    "constant": (lambda p: write_nifti(p, np.full_like(VOL, 37.0), AFF), "no brain tissue"),
    "one_empty_slice": (lambda p: write_nifti(p, np.concatenate([VOL[..., 1:2]] * 2 + [0 * VOL[..., :1]], -1),
                                              AFF), "1 of 3 slices"),
}


@pytest.mark.parametrize("case", sorted(WARN))
def test_tolerated_oddities_succeed_with_a_warning(capsys, tmp_path, bundle_dir, case):
    make, words = WARN[case]
    path = make(tmp_path / f"{case}.nii.gz")
    out = tmp_path / "out"
    code, _, err = run_cli(capsys, path, "--bundle", bundle_dir, "--out", out)
    assert code == 0, err
    assert "Traceback" not in err
    summary = json.loads((out / f"{case}_summary.json").read_text())
    assert any(words in w for w in summary["warnings"]), summary["warnings"]
    assert any(words in ln and "warning" in ln for ln in err.splitlines())
    heat = np.asarray(nib.load(str(out / f"{case}_heatmap.nii.gz")).dataobj)
    assert heat.shape == VOL.shape and np.isfinite(heat).all()
    if case in ("all_zero", "constant"):
        assert not heat.any() and summary["windows"]["evaluated"] == 0 and summary["max_score"] == 0.0
    if case == "one_empty_slice":
        assert not heat[..., 2].any() and heat[..., :2].any()


def test_nonfinite_zero_replaces_and_warns(capsys, tmp_path, bundle_dir):
    bad = VOL.copy()
    bad[10:12, 10:12, 1] = np.nan
    bad[0, 0, 0] = -np.inf
    path = write_nifti(tmp_path / "nan.nii.gz", bad, AFF)
    out = tmp_path / "out"
    code, _, err = run_cli(capsys, path, "--bundle", bundle_dir, "--out", out, "--nonfinite", "zero")
    assert code == 0, err
    summary = json.loads((out / "nan_summary.json").read_text())
    assert any("replaced 5 non-finite" in w for w in summary["warnings"])
    assert np.isfinite(np.asarray(nib.load(str(out / "nan_heatmap.nii.gz")).dataobj)).all()
    # only the processed slices count: slice 2 is clean
    code, _, err = run_cli(capsys, path, "--bundle", bundle_dir, "--out", tmp_path / "o2", "--slice", "2")
    assert code == 0, err


def test_good_inputs_still_run_beside_bad_ones(capsys, tmp_path, bundle_dir):
    good1 = _good(tmp_path / "good1.nii.gz")
    bad = _truncate(_good(tmp_path / "bad.nii.gz"), 0.5)
    missing = tmp_path / "missing.nii"
    good2 = write_nifti(tmp_path / "good2.nii", VOL[:, :, 1], AFF)
    out = tmp_path / "out"
    code, stdout, err = run_cli(capsys, good1, bad, missing, good2, "--bundle", bundle_dir, "--out", out, "--json")
    assert code == EX_DATAERR  # the first failure's code
    assert "Traceback" not in err
    for stem in ("good1", "good2"):
        assert [p.name for p in outputs_of(out, stem)] == [f"{stem}_heatmap.nii.gz", f"{stem}_overlay.png",
                                                           f"{stem}_summary.json"]
    assert outputs_of(out, "bad") == [] and outputs_of(out, "missing") == []
    reports = json.loads(stdout)
    assert [r["ok"] for r in reports] == [True, False, False, True]
    assert [r.get("exit_code") for r in reports] == [None, EX_DATAERR, EX_NOINPUT, None]
    assert sorted(os.listdir(out)) == sorted(p.name for s in ("good1", "good2") for p in outputs_of(out, s))
