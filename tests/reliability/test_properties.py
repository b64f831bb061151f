"""Property tests (RELIABILITY.md, "How to test it" 2): random shapes, dtypes, slopes and affines.

For any such input the heatmap has the input's shape, affine, qform and sform; its
values are finite and not negative; the canonical volume goes back to the file grid
exactly; the written heatmap reads back bit for bit; and the same brain stored in
another orientation gives the same heatmap once reoriented. A fixed, small number of
examples per run (``RLP_FUZZ_EXAMPLES`` raises it, see the README's testing notes).
"""

from __future__ import annotations

import os

import nibabel as nib
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from nibabel import orientations as nio

from helpers.runtime import make_bundle, oblique_affine, phantom, write_nifti
from rlp.runtime.core.nifti import load_nifti, save_like
from rlp.runtime.core.volume import _invert_ornt
from rlp.runtime.heatmap import Bundle

EXAMPLES = max(50, int(os.environ.get("RLP_FUZZ_EXAMPLES", "0")) // 4)
SETTINGS = settings(max_examples=EXAMPLES, deadline=None, database=None,
                    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
DTYPES = {"uint8": 2.0, "int16": 40.0, "int32": 900.0, "float32": 1.0, "float64": 0.37}  # dtype -> value scale


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    with Bundle.load(make_bundle(tmp_path_factory.mktemp("bundle") / "b"), backend="ort-cpu", threads=1) as b:
        yield b


@st.composite
def affines(draw, oblique: bool = True):
    """Axes permuted and flipped, voxel sizes 0.4..3 mm, a translation; sometimes oblique."""
    perm = draw(st.permutations([0, 1, 2]))
    flips = draw(st.lists(st.sampled_from([-1.0, 1.0]), min_size=3, max_size=3))
    zooms = draw(st.lists(st.floats(0.4, 3.0), min_size=3, max_size=3))
    aff = np.zeros((4, 4))
    for i, j in enumerate(perm):
        aff[j, i] = flips[i] * zooms[i]
    aff[:3, 3] = draw(st.lists(st.floats(-100, 100), min_size=3, max_size=3))
    aff[3, 3] = 1.0
    if oblique and draw(st.booleans()):
        aff[:3, :3] = oblique_affine(draw(st.floats(-30, 30)))[:3, :3] @ aff[:3, :3]
    return aff


@st.composite
def volumes(draw):
    """Shapes: 2D, or 3D with 1..3 slices on any axis; sides 3..40 (square or not)."""
    sides = draw(st.lists(st.integers(3, 40), min_size=2, max_size=2))
    kind = draw(st.sampled_from(["2d", "3d", "1xy", "x1y"]))
    depth = draw(st.integers(1, 3))
    shape = {"2d": tuple(sides), "3d": (*sides, depth), "1xy": (1, *sides), "x1y": (sides[0], 1, sides[1])}[kind]
    return phantom(shape, seed=draw(st.integers(0, 3)))


def _grid_matches(out, inp) -> None:
    a, b = nib.load(str(inp)), nib.load(str(out))
    assert b.shape == a.shape
    np.testing.assert_allclose(b.affine, a.affine, atol=1e-5)
    for get in ("get_qform", "get_sform"):
        (ma, ca), (mb, cb) = getattr(a, get)(coded=True), getattr(b, get)(coded=True)
        assert int(ca) == int(cb) and (not ca or np.allclose(ma, mb, atol=1e-5))


@SETTINGS
@given(data=volumes(), aff=affines(), dtype=st.sampled_from(sorted(DTYPES)),
       slope=st.sampled_from([1.0, 0.5, 3.0, 0.0, float("nan")]), inter=st.sampled_from([0.0, 7.0]),
       with_nan=st.booleans())
def test_any_input_gives_a_finite_heatmap_on_its_own_grid(tmp_path_factory, bundle, data, aff, dtype, slope, inter,
                                                          with_nan):
    tmp = tmp_path_factory.mktemp("p")
    stored = np.round(data * DTYPES[dtype]) if dtype not in ("float32", "float64") else data * DTYPES[dtype]
    if with_nan and dtype.startswith("float"):
        stored.flat[len(stored.flat) // 2] = np.nan
    f = write_nifti(tmp / "in.nii.gz", stored, aff, dtype=dtype, scl_slope=slope, scl_inter=inter)
    vol = load_nifti(f)
    # the canonical volume goes back to the file grid exactly (values as nibabel scales them)
    want = np.asarray(nib.load(str(f)).get_fdata(dtype=np.float32))
    np.testing.assert_array_equal(vol.to_file_grid(vol.data), want.reshape(vol.file_shape))
    assert any("scl_slope" in w for w in vol.warnings) == (not np.isfinite(slope) or slope == 0)
    res = bundle.heatmap_volume(vol, nonfinite="zero")
    heat = res.heatmap
    assert heat.shape == want.shape and heat.dtype == np.float32
    assert np.isfinite(heat).all() and heat.min() >= 0
    out = save_like(tmp / "heat.nii.gz", heat, vol)
    _grid_matches(out, f)
    back = nib.load(str(out))
    assert back.get_data_dtype() == np.float32
    np.testing.assert_array_equal(np.asarray(back.dataobj), heat)  # slope 1, intercept 0: bit for bit


@SETTINGS
@given(aff=affines(oblique=False), depth=st.integers(1, 3), sides=st.tuples(st.integers(8, 36), st.integers(8, 36)))
def test_the_same_brain_in_any_orientation_gives_the_same_heatmap(tmp_path_factory, bundle, aff, depth, sides):
    tmp = tmp_path_factory.mktemp("o")
    canonical = phantom((*sides, depth))
    ornt = nio.io_orientation(aff)
    stored = nio.apply_orientation(canonical, _invert_ornt(ornt))
    zooms = [0.0] * 3
    for i, (j, _) in enumerate(ornt):
        zooms[int(j)] = float(np.linalg.norm(aff[:3, i]))
    heat = bundle.heatmap_nifti(write_nifti(tmp / "x.nii", stored, aff)).heatmap
    ref = bundle.heatmap_nifti(write_nifti(tmp / "ras.nii", canonical, np.diag(zooms + [1.0]))).heatmap
    assert heat.shape == stored.shape
    np.testing.assert_allclose(nio.apply_orientation(heat, ornt), ref, rtol=1e-6, atol=1e-7)
