"""File names near the file system's limit (#21, item 6): an input whose outputs fit is processed (the
temporary names are shortened to fit too); one whose outputs cannot fit gets one clean line."""

from __future__ import annotations

import os

import pytest

from helpers.process import run_python
from helpers.runtime import make_bundle, phantom, write_nifti
from rlp.runtime.core.atomic import NAME_MAX, atomic_path, temp_prefix
from rlp.runtime.core.errors import EX_CANTCREAT


def test_temp_prefix_fits_and_keeps_long_names_apart():
    short = temp_prefix("x_heatmap.nii.gz", ".nii.gz")
    assert short == ".x_heatmap.nii.gz."
    a, b = (temp_prefix("a" * 240 + tail, ".nii.gz") for tail in ("1_heatmap.nii.gz", "2_heatmap.nii.gz"))
    assert a != b
    for p in (a, b):
        assert len(os.fsencode(p)) + 8 + len(".nii.gz") <= NAME_MAX


def test_atomic_path_writes_a_file_whose_temporary_name_would_be_too_long(tmp_path):
    target = tmp_path / ("y" * 245 + ".nii.gz")  # 252 bytes: fits, but ".<name>.XXXXXXXX.nii.gz" would not
    with atomic_path(target, suffix=".nii.gz") as tmp:
        assert len(os.fsencode(tmp.name)) <= NAME_MAX
        tmp.write_bytes(b"data")
    assert target.read_bytes() == b"data" and [p.name for p in tmp_path.iterdir()] == [target.name]


@pytest.mark.parametrize("length, ok", [(232, True), (245, False)])
def test_long_input_names(tmp_path, length, ok):
    b = make_bundle(tmp_path / "b")
    stem = "s" * length
    f = write_nifti(tmp_path / f"{stem}.nii.gz", phantom((40, 40)))  # 245: the input fits, its outputs not
    out = tmp_path / "out"
    r = run_python(["-m", "rlp.runtime.cli", str(f), "--bundle", str(b), "--out", str(out), "--quiet"])
    if ok:  # "<stem>_heatmap.nii.gz" is 247 bytes: the output fits, and so must the work on the way
        assert r.returncode == 0, r.stderr
        assert sorted(p.name for p in out.iterdir()) == sorted(f"{stem}{x}" for x in ("_heatmap.nii.gz", "_overlay.png",
                                                                                       "_summary.json"))
    else:
        assert r.returncode == EX_CANTCREAT
        lines = r.stderr.strip().splitlines()
        assert len(lines) == 1 and "more than the 255 a file name can have" in lines[0] and "Traceback" not in r.stderr
        assert not out.exists() or not any(out.iterdir())
