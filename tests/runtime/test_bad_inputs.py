"""Every row of RELIABILITY.md's NIfTI table, through ``rlp-heatmap``.

A bad input must give the documented exit code, one line on stderr naming the
file, no traceback, and nothing in the output folder for that input; a
tolerated oddity (scl_slope 0/NaN, q/s-form disagreement, constant slice...)
succeeds with a warning in the summary.
"""

from __future__ import annotations

import json
import os
import tracemalloc

import nibabel as nib
import numpy as np
import pytest

from helpers.bad_inputs import AFF, BAD, VOL, good_nifti, gzip_bomb, truncate, with_header
from helpers.runtime import assert_clean_failure, make_bundle, outputs_of, run_heatmap, write_nifti
from rlp.runtime.core.errors import EX_DATAERR, EX_NOINPUT


@pytest.fixture(scope="module")
def bundle_dir(tmp_path_factory):
    """A valid bundle (size 32, window 8, stride 4: 7 x 7 windows) for the tests that do not change it."""
    return make_bundle(tmp_path_factory.mktemp("bundle") / "b")




@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_input_fails_cleanly(capsys, tmp_path, bundle_dir, case):
    name, make, want_code, words = BAD[case]
    path = tmp_path / name
    make(path)
    out = tmp_path / "out"
    code, stdout, err = run_heatmap(capsys, path, "--bundle", bundle_dir, "--out", out, "--quiet")
    assert_clean_failure(code, err, want_code, name)
    assert words.lower() in err.lower(), err
    assert outputs_of(out, name.split(".")[0]) == []
    assert not out.exists() or list(out.iterdir()) == []


def test_bomb_fails_fast_without_allocating(tmp_path):
    from rlp.runtime.core.errors import RlpError
    from rlp.runtime.core.nifti import load_nifti

    path = gzip_bomb(tmp_path / "bomb.nii.gz")
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
    "slope_zero": (with_header(scl_slope=0.0), "scl_slope"),
    "slope_nan": (with_header(scl_slope=np.nan), "scl_slope"),
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
    code, _, err = run_heatmap(capsys, path, "--bundle", bundle_dir, "--out", out)
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
    code, _, err = run_heatmap(capsys, path, "--bundle", bundle_dir, "--out", out, "--nonfinite", "zero")
    assert code == 0, err
    summary = json.loads((out / "nan_summary.json").read_text())
    assert any("replaced 5 non-finite" in w for w in summary["warnings"])
    assert np.isfinite(np.asarray(nib.load(str(out / "nan_heatmap.nii.gz")).dataobj)).all()
    # only the processed slices count: slice 2 is clean
    code, _, err = run_heatmap(capsys, path, "--bundle", bundle_dir, "--out", tmp_path / "o2", "--slice", "2")
    assert code == 0, err


def test_good_inputs_still_run_beside_bad_ones(capsys, tmp_path, bundle_dir):
    good1 = good_nifti(tmp_path / "good1.nii.gz")
    bad = truncate(good_nifti(tmp_path / "bad.nii.gz"), 0.5)
    missing = tmp_path / "missing.nii"
    good2 = write_nifti(tmp_path / "good2.nii", VOL[:, :, 1], AFF)
    out = tmp_path / "out"
    code, stdout, err = run_heatmap(capsys, good1, bad, missing, good2, "--bundle", bundle_dir, "--out", out, "--json")
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
