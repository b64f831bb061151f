"""NIfTI round trips: the heatmap lands on the input's own grid, whatever its shape and orientation."""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest
from nibabel import orientations as nio

from helpers.runtime import ORIENTATIONS, make_bundle, phantom, run_heatmap, write_nifti
from rlp.runtime.core.nifti import load_nifti, volume_from_array
from rlp.runtime.core.volume import _invert_ornt


@pytest.fixture(scope="module")
def bundle_dir(tmp_path_factory):
    """A valid bundle (size 32, window 8, stride 4: 7 x 7 windows) for the tests that do not change it."""
    return make_bundle(tmp_path_factory.mktemp("bundle") / "b")



def _raw_header(path):
    """The header as stored (nibabel's loaded header has its scaling moved into the data proxy)."""
    return nib.load(str(path)).header.__class__.from_fileobj(
        nib.openers.ImageOpener(str(path)), check=False)


def _assert_same_grid(inp, out):
    a, b = nib.load(str(inp)), nib.load(str(out))
    assert b.shape == a.shape
    assert b.get_data_dtype() == np.float32
    np.testing.assert_allclose(b.affine, a.affine, atol=1e-5)
    for get in ("get_qform", "get_sform"):
        (ma, ca), (mb, cb) = getattr(a, get)(coded=True), getattr(b, get)(coded=True)
        assert int(ca) == int(cb)
        if ca:
            np.testing.assert_allclose(mb, ma, atol=1e-5)
    raw = _raw_header(out)
    assert float(raw["scl_slope"]) == 1.0 and float(raw["scl_inter"]) == 0.0
    data = np.asarray(b.dataobj)
    assert data.dtype == np.float32 and np.isfinite(data).all()
    return data


def _heatmap(capsys, tmp_path, bundle, path, *extra):
    out = tmp_path / "out"
    code, _, err = run_heatmap(capsys, path, "--bundle", bundle, "--out", out, "--quiet", *extra)
    assert code == 0, err
    stem = path.name.split(".nii")[0]
    return out / f"{stem}_heatmap.nii.gz", json.loads((out / f"{stem}_summary.json").read_text())


# --------------------------------------------------------------------------- shapes
SLICE = phantom((40, 34))


@pytest.mark.parametrize("shape_kind", ["2d", "xy1", "1xy", "4d1"])
def test_single_slice_shapes_round_trip(capsys, tmp_path, bundle_dir, shape_kind):
    ref = write_nifti(tmp_path / "ref.nii.gz", SLICE, np.diag([1.0, 1.3, 2.0, 1.0]))
    data = {"2d": SLICE, "xy1": SLICE[:, :, None], "1xy": SLICE[None], "4d1": SLICE[:, :, None, None]}[shape_kind]
    aff = np.diag([2.0, 1.0, 1.3, 1.0]) if shape_kind == "1xy" else np.diag([1.0, 1.3, 2.0, 1.0])
    f = write_nifti(tmp_path / f"in_{shape_kind}.nii.gz", data, aff, qform_code=1, sform_code=2)
    out, summary = _heatmap(capsys, tmp_path, bundle_dir, f)
    heat = _assert_same_grid(f, out)
    ref_out, _ = _heatmap(capsys, tmp_path, bundle_dir, ref)
    ref_heat = np.asarray(nib.load(str(ref_out)).dataobj)
    # the same pixels with the same in-plane spacing give the same heatmap, whatever the shape
    np.testing.assert_allclose(heat.reshape(ref_heat.shape), ref_heat, rtol=1e-6, atol=1e-7)
    assert heat.max() > 0
    assert summary["slices"] == {"processed": 1, "total": 1, "empty": 0}
    assert summary["windows"]["total"] == 49


@pytest.mark.parametrize("name", sorted(ORIENTATIONS))
def test_volumes_in_any_orientation_come_back_on_their_own_grid(capsys, tmp_path, bundle_dir, name):
    aff = ORIENTATIONS[name]
    canonical = phantom((26, 30, 5))
    ornt = nio.io_orientation(aff)
    file_data = nio.apply_orientation(canonical, _invert_ornt(ornt))  # the same brain, stored in this orientation
    f = write_nifti(tmp_path / f"vol_{name}.nii", file_data, aff, qform_code=2, sform_code=1)
    vol = load_nifti(f)
    np.testing.assert_array_equal(vol.data, canonical)
    # a RAS file holding the canonical array with the same voxel sizes
    czooms = [0.0] * 3
    for i, (j, _flip) in enumerate(ornt):
        czooms[int(j)] = float(np.linalg.norm(aff[:3, i]))
    ref = write_nifti(tmp_path / "ref_ras.nii", canonical, np.diag(czooms + [1.0]))
    out, summary = _heatmap(capsys, tmp_path, bundle_dir, f)
    heat = _assert_same_grid(f, out)
    ref_out, ref_summary = _heatmap(capsys, tmp_path, bundle_dir, ref)
    ref_heat = np.asarray(nib.load(str(ref_out)).dataobj)
    np.testing.assert_allclose(nio.apply_orientation(heat, ornt), ref_heat, rtol=1e-6, atol=1e-7)
    # top windows: world = affine @ voxel, and the same anatomical place in both files
    for w in summary["top_windows"]:
        np.testing.assert_allclose(nib.affines.apply_affine(aff, w["voxel"]), w["world_mm"], atol=2e-3)
    top, ref_top = summary["top_windows"][0], ref_summary["top_windows"][0]
    assert top["score"] == pytest.approx(ref_top["score"], rel=1e-6)
    canon_of_top = nib.affines.apply_affine(np.linalg.inv(nio.inv_ornt_aff(ornt, file_data.shape)), top["voxel"])
    np.testing.assert_allclose(canon_of_top, ref_top["voxel"], atol=2e-3)


def test_int16_with_slope_gives_a_float32_heatmap_with_slope_one(capsys, tmp_path, bundle_dir):
    vals = np.round(phantom((30, 30, 3)) / 4.0)
    f_int = write_nifti(tmp_path / "scaled.nii.gz", vals, np.diag([1, 1, 2, 1.0]), dtype=np.int16,
                        scl_slope=4.0, scl_inter=0.0)
    f_float = write_nifti(tmp_path / "float.nii.gz", vals * 4.0, np.diag([1, 1, 2, 1.0]), dtype=np.float32)
    assert _raw_header(f_int)["scl_slope"] == 4.0
    out_int, _ = _heatmap(capsys, tmp_path, bundle_dir, f_int)
    out_float, _ = _heatmap(capsys, tmp_path, bundle_dir, f_float)
    heat = _assert_same_grid(f_int, out_int)
    np.testing.assert_allclose(heat, np.asarray(nib.load(str(out_float)).dataobj), rtol=1e-6, atol=1e-7)


def test_qform_only_sform_only_and_no_codes_are_kept(capsys, tmp_path, bundle_dir):
    aff = ORIENTATIONS["LAS"]
    for q, s in [(1, 0), (0, 2), (0, 0)]:
        f = write_nifti(tmp_path / f"codes_{q}{s}.nii.gz", phantom((24, 24, 2)), aff, qform_code=q, sform_code=s)
        out, summary = _heatmap(capsys, tmp_path, bundle_dir, f)
        _assert_same_grid(f, out)
        assert any("both 0" in w for w in summary["warnings"]) == (q == 0 and s == 0)


# --------------------------------------------------------------------------- the Volume contract
@pytest.mark.parametrize("name", sorted(ORIENTATIONS))
def test_canonical_indices_map_to_file_indices_and_world(tmp_path, name):
    aff = ORIENTATIONS[name]
    data = np.random.default_rng(0).random((7, 9, 5)).astype(np.float32)
    vol = load_nifti(write_nifti(tmp_path / "v.nii", data, aff))
    rng = np.random.default_rng(1)
    for _ in range(20):
        ijk = [int(rng.integers(0, n)) for n in vol.data.shape]
        f = vol.canonical_to_file(ijk)[0]
        fi = tuple(int(round(v)) for v in f)
        assert vol.data[tuple(ijk)] == data[fi]
        np.testing.assert_allclose(vol.voxel_to_world(ijk)[0], nib.affines.apply_affine(aff, f))
    for k in range(3):
        axis, flip = vol.file_axis(k)
        for idx in (0, 2):
            c = vol.file_to_canonical_index(k, idx)
            # the same voxels (in-plane order may differ): the canonical slice is that file slice
            assert np.array_equal(np.sort(np.take(vol.data, c, axis=k), axis=None),
                                  np.sort(np.take(data, idx, axis=axis), axis=None))
            assert c == (vol.data.shape[k] - 1 - idx if flip else idx)
    np.testing.assert_array_equal(vol.to_file_grid(vol.data), data)


def test_api_array_with_affine_matches_the_file(tmp_path, bundle_dir):
    from rlp.runtime import Bundle

    aff = ORIENTATIONS["PSL"]
    data = phantom((20, 6, 22))
    f = write_nifti(tmp_path / "a.nii.gz", data, aff)
    with Bundle.load(bundle_dir, backend="ort-cpu", threads=1) as b:
        from_file = b.heatmap_nifti(f, axis="axial")
        from_array = b.heatmap_array(data, aff, axis="axial")
        coronal = b.heatmap_array(data, aff, axis="coronal")
    assert from_file.heatmap.shape == data.shape
    np.testing.assert_array_equal(from_file.heatmap, from_array.heatmap)
    assert from_array.axis_name == "axial" and coronal.axis_name == "coronal"
    assert len(coronal.slices) == data.shape[0]  # file axis 0 is posterior: the coronal axis
    assert from_file.window_maps.shape == (6, 7, 7)  # file axis 1 is superior: 6 axial slices
    assert volume_from_array(data, aff).data.shape == (22, 20, 6)
