"""NIfTI reading and writing (``runtime/core/nifti.py``) pinned where mutation testing found it loose (issue 23,
tests/MUTATION.md): the header checks at their boundaries and with their messages, the Volume's
axes, ``volume_from_array`` and what ``save_like`` writes. Public functions only, no CLI (fast)."""

from __future__ import annotations

import gzip
import os

import nibabel as nib
import numpy as np
import pytest

from helpers.runtime import ORIENTATIONS, write_nifti
from rlp.runtime.core import limits
from rlp.runtime.core.errors import EX_IOERR, BadInput, InputMissing, RlpError
from rlp.runtime.core.nifti import (
    HEATMAP_DESCRIP,
    check_header,
    load_nifti,
    nifti_stem,
    nifti_suffix,
    save_like,
    volume_from_array,
)
from rlp.runtime.core.nifti_header import not_regular

DATA = np.arange(4 * 5 * 3, dtype=np.float32).reshape(4, 5, 3)
AFF = np.diag([2.0, 3.0, 4.0, 1.0])


def _refused(path, words, kind=BadInput):
    with pytest.raises(kind) as exc:
        load_nifti(path)
    msg = str(exc.value)
    assert exc.value.path == str(path) and msg.startswith(f"{path}: {words}"), msg
    return msg


def test_suffix_and_stem():
    assert nifti_suffix("a/B.NII.GZ") == ".nii.gz" and nifti_suffix("x.Nii") == ".nii"
    assert nifti_suffix("x.img") is None and nifti_suffix("x.gz") is None
    assert nifti_stem("d/brain.T1.nii.gz") == "brain.T1" and nifti_stem("d/b.NII") == "b"
    assert nifti_stem("d/b.img") == "b"


def test_a_volume_reads_with_its_zooms_affine_and_shape(tmp_path):
    for name in ("v.nii", "v.nii.gz"):
        vol = load_nifti(write_nifti(tmp_path / name, DATA, AFF))
        assert vol.data.dtype == np.float32 and vol.data.flags.c_contiguous
        np.testing.assert_array_equal(vol.data, DATA)
        assert vol.zooms == (2.0, 3.0, 4.0) and vol.file_shape == (4, 5, 3) and vol.warnings == []
        np.testing.assert_array_equal(vol.affine, AFF)
        assert vol.affine.dtype == np.float64 and vol.path == tmp_path / name
        assert check_header(tmp_path / name) == (4, 5, 3)


def test_the_slice_axis_and_slices():
    vol = volume_from_array(DATA, AFF)
    assert vol.slice_axis() == 2 and vol.slice_axis("axial") == 2
    assert vol.slice_axis("coronal") == 1 and vol.slice_axis("sagittal") == 0
    assert vol.slices("coronal") == (1, 5) and vol.slices() == (2, 3)
    with pytest.raises(BadInput, match=r"array: unknown axis 'oblique'; choose one of sagittal, coronal, axial"):
        vol.slice_axis("oblique")
    sl, sp = vol.get_slice(1, 2)
    np.testing.assert_array_equal(sl, DATA[:, 2, :])
    assert sp == (2.0, 4.0)
    assert vol.get_slice(0, 3)[1] == (3.0, 4.0) and vol.get_slice(2, 0)[1] == (2.0, 3.0)
    # a singleton axis is the slice axis whatever is asked; the last one where there are two
    one = volume_from_array(np.zeros((4, 1, 1), np.float32))
    assert one.slice_axis("sagittal") == 2 and one.slices("oblique") == (2, 1)
    assert volume_from_array(np.zeros((1, 4, 5), np.float32)).slice_axis("axial") == 0


def test_a_2d_file_is_a_volume_of_one_slice_and_goes_back_to_2d(tmp_path):
    img = np.arange(12, dtype=np.float32).reshape(3, 4)
    vol = load_nifti(write_nifti(tmp_path / "s.nii", img, AFF))
    assert vol.data.shape == (3, 4, 1) and vol.file_shape == (3, 4) and vol.slice_axis() == 2
    assert vol.zooms == (2.0, 3.0, 1.0)
    np.testing.assert_array_equal(vol.to_file_grid(vol.data), img)
    np.testing.assert_allclose(vol.canonical_to_file([1, 2, 0]), [[1, 2, 0]])
    np.testing.assert_allclose(vol.voxel_to_world([1, 2, 0]), [[2, 6, 0]])


def test_file_axes_of_a_flipped_and_permuted_volume(tmp_path):
    aff = ORIENTATIONS["PSL"] if "PSL" in ORIENTATIONS else np.array([[0, 0, -1, 0], [-1, 0, 0, 0], [0, 1, 0, 0],
                                                                      [0, 0, 0, 1.0]])
    vol = load_nifti(write_nifti(tmp_path / "p.nii", DATA, aff))
    seen = sorted(vol.file_axis(k)[0] for k in range(3))
    assert seen == [0, 1, 2]
    for k in range(3):
        i, flip = vol.file_axis(k)
        assert isinstance(flip, bool) and isinstance(i, int)
        assert vol.data.shape[k] == DATA.shape[i]
        n = vol.data.shape[k]
        assert vol.file_to_canonical_index(k, 0) == (n - 1 if flip else 0)
    with pytest.raises(ValueError, match="canonical axis 5 has no file axis"):
        vol.file_axis(5)
    np.testing.assert_array_equal(vol.to_file_grid(vol.data), DATA)


def test_not_regular_names_the_kind(tmp_path):
    assert not_regular(os.stat(__file__).st_mode) is None
    assert not_regular(os.stat(tmp_path).st_mode) == "a directory"
    os.mkfifo(tmp_path / "f")
    assert not_regular(os.stat(tmp_path / "f").st_mode) == "a FIFO (named pipe)"
    assert not_regular(os.stat("/dev/null").st_mode) == "a character device"
    assert not_regular(0) == "not a file"


def test_files_that_cannot_be_opened_as_nifti(tmp_path):
    os.mkfifo(tmp_path / "f.nii")
    _refused(tmp_path / "f.nii", "not a regular file (it is a FIFO (named pipe)); expected a .nii or .nii.gz file")
    _refused(tmp_path / "none.nii", "no such file", InputMissing)
    (tmp_path / "file").write_bytes(b"x")
    _refused(tmp_path / "file" / "x.nii", "no such file", InputMissing)  # a file as a folder: NotADirectoryError
    with pytest.raises(RlpError) as exc:
        load_nifti(tmp_path / ("x" * 300 + ".nii"))
    assert exc.value.code == EX_IOERR and "too long" in str(exc.value).lower()
    (tmp_path / "e.nii").write_bytes(b"")
    _refused(tmp_path / "e.nii", "empty file")
    write_nifti(tmp_path / "a.img", DATA, AFF)
    _refused(tmp_path / "a.img", "unknown extension; expected .nii or .nii.gz")
    (tmp_path / "g.nii").write_bytes(gzip.compress(write_nifti(tmp_path / "p.nii", DATA, AFF).read_bytes()))
    _refused(tmp_path / "g.nii", "named .nii but is gzip-compressed (rename it to .nii.gz)")
    (tmp_path / "p.nii.gz").write_bytes((tmp_path / "p.nii").read_bytes())
    _refused(tmp_path / "p.nii.gz", "named .nii.gz but is not gzip-compressed")
    # a file whose first byte only is the gzip magic is not gzip
    (tmp_path / "h.nii.gz").write_bytes(b"\x1f" + b"\0" * 400)
    _refused(tmp_path / "h.nii.gz", "named .nii.gz but is not gzip-compressed")


def test_the_size_cap(tmp_path, monkeypatch):
    f = write_nifti(tmp_path / "v.nii", np.zeros((10, 10, 10)), AFF, dtype=np.float32)  # 4000 bytes
    monkeypatch.setenv("RLP_MAX_VOXEL_BYTES", "4000")  # the limit set outright (limits read it at import)
    monkeypatch.setattr(limits, "MAX_VOXEL_BYTES", 4000)
    assert load_nifti(f).data.shape == (10, 10, 10)
    monkeypatch.setattr(limits, "MAX_VOXEL_BYTES", 3999)
    msg = _refused(f, "header declares 10x10x10 voxels (0.0 MiB as float32); over the limit of 0.0 MiB of voxel "
                      "data (RLP_MAX_VOXEL_BYTES; raise it, or crop or downsample the image)")
    with pytest.raises(BadInput, match="over the limit of 0.0 MiB"):
        check_header(f)
    monkeypatch.setattr(limits, "MAX_VOXEL_BYTES", 3 << 30)
    f = write_nifti(tmp_path / "big.nii", np.zeros((2, 2, 2)), AFF, dtype=np.float32, dim=[3, 1024, 1024, 1024, 1, 1,
                                                                                          1, 1])
    _refused(f, "header declares 1024x1024x1024 voxels (4.00 GiB as float32); over the limit of 3.00 GiB")
    assert msg


def test_vox_offset_and_truncation(tmp_path):
    f = write_nifti(tmp_path / "o.nii", DATA, AFF, vox_offset=351)
    _refused(f, "header vox_offset 351 is not a usable data offset")
    write_nifti(tmp_path / "n.nii", DATA, AFF, vox_offset=np.nan)
    _refused(tmp_path / "n.nii", "header vox_offset nan is not a usable data offset")
    f = write_nifti(tmp_path / "ok.nii", DATA, AFF)
    assert load_nifti(f).data.shape == (4, 5, 3)
    raw = f.read_bytes()
    assert len(raw) == 352 + 240
    (tmp_path / "t.nii").write_bytes(raw[:-1])
    _refused(tmp_path / "t.nii", "truncated: 591 bytes, header needs 592")
    with pytest.raises(BadInput, match="truncated: 591 bytes, header needs 592"):
        check_header(tmp_path / "t.nii")
    (tmp_path / "t.nii.gz").write_bytes(gzip.compress(raw[:-1]))
    _refused(tmp_path / "t.nii.gz", "truncated: 591 bytes of data, header needs 592")
    (tmp_path / "x.nii").write_bytes(raw + b"extra")  # more than the header needs is fine
    np.testing.assert_array_equal(load_nifti(tmp_path / "x.nii").data, DATA)


def test_a_large_gzip_volume_is_read_in_full(tmp_path):
    big = np.zeros((256, 256, 72), np.float32)  # 18 MiB: more than one 16 MiB read (zeros compress fast)
    big[::17, ::13, ::5] = np.arange(big[::17, ::13, ::5].size).reshape(big[::17, ::13, ::5].shape)
    f = write_nifti(tmp_path / "b.nii.gz", big, AFF)
    np.testing.assert_array_equal(load_nifti(f).data, big)


def test_a_corrupt_gzip_trailer_is_found(tmp_path):
    f = write_nifti(tmp_path / "c.nii.gz", DATA, AFF)
    raw = bytearray(f.read_bytes())
    raw[-8] ^= 0xFF  # the CRC32: the data decompress fine, only the trailer is wrong
    f.write_bytes(bytes(raw))
    assert check_header(f) == (4, 5, 3)  # the header alone does not see it
    msg = _refused(f, "corrupt or truncated gzip stream (")
    assert "\n" not in msg


def test_header_sizes_and_endianness(tmp_path):
    (tmp_path / "s.nii").write_bytes(write_nifti(tmp_path / "full.nii", DATA, AFF).read_bytes()[:347])
    _refused(tmp_path / "s.nii", "too short to be a NIfTI file (no complete header)")
    big = nib.Nifti1Image(DATA.astype(">f4"), AFF, header=nib.Nifti1Header(endianness=">"))
    (tmp_path / "be.nii").write_bytes(big.to_bytes())
    assert big.to_bytes()[:4] == (348).to_bytes(4, "big")
    np.testing.assert_array_equal(load_nifti(tmp_path / "be.nii").data, DATA)
    two = write_nifti(tmp_path / "two.nii", DATA, AFF, nifti2=True)
    np.testing.assert_array_equal(load_nifti(two).data, DATA)
    assert load_nifti(two).zooms == (2.0, 3.0, 4.0)
    (tmp_path / "two_short.nii").write_bytes(two.read_bytes()[:539])
    _refused(tmp_path / "two_short.nii", "too short to be a NIfTI-2 file (no complete header)")
    be2 = nib.Nifti2Image(DATA.astype(">f4"), AFF, header=nib.Nifti2Header(endianness=">"))
    (tmp_path / "be2.nii").write_bytes(be2.to_bytes())
    assert be2.to_bytes()[:4] == (540).to_bytes(4, "big")
    np.testing.assert_array_equal(load_nifti(tmp_path / "be2.nii").data, DATA)
    (tmp_path / "bad.nii").write_bytes(b"\x01\x02\x03\x04" + b"\0" * 600)
    _refused(tmp_path / "bad.nii", "not a NIfTI file (bad header size)")


@pytest.mark.parametrize("dim0, ok", [(0, False), (1, "is not an image (shape (6,))"), (7, True), (8, False)])
def test_dim0_from_1_to_7(tmp_path, dim0, ok):
    line = np.arange(6, dtype=np.float32)
    dim = [dim0, 6, 1, 1, 1, 1, 1, 1]
    f = write_nifti(tmp_path / "d.nii", line.reshape(6, 1, 1, 1, 1, 1, 1) if dim0 == 7 else line.reshape(6, 1, 1),
                    AFF, dim=dim)
    if isinstance(ok, str):  # past the header check: refused later, as a line is not an image
        _refused(f, ok)
    elif ok:
        vol = load_nifti(f)
        assert vol.data.shape == (6, 1, 1)
    else:
        _refused(f, f"header dim[0]={dim0} outside 1..7")


def test_only_the_declared_dimensions_must_be_positive(tmp_path):
    # dim[0] = 3: dim[4] and up are not dimensions and may be anything
    f = write_nifti(tmp_path / "ok.nii", DATA, AFF, dim=[3, 4, 5, 3, 0, -1, 0, 0])
    assert load_nifti(f).data.shape == (4, 5, 3)
    f = write_nifti(tmp_path / "z.nii", DATA, AFF, dim=[3, 4, 5, 0, 1, 1, 1, 1])
    _refused(f, "header has a zero or negative dimension (4, 5, 0)")
    f = write_nifti(tmp_path / "z1.nii", DATA, AFF, dim=[3, 0, 5, 3, 1, 1, 1, 1])
    _refused(f, "header has a zero or negative dimension (0, 5, 3)")


def test_data_types_and_bitpix(tmp_path):
    for dt in (np.uint8, np.int16, np.int32, np.float64, np.int8, np.uint16, np.uint32):
        np.testing.assert_array_equal(load_nifti(write_nifti(tmp_path / f"{np.dtype(dt).name}.nii", DATA, AFF,
                                                             dtype=dt)).data, DATA)
    f = write_nifti(tmp_path / "c.nii", DATA, AFF, datatype=32, bitpix=64)
    _refused(f, "unsupported NIfTI data type code 32 (complex, RGB or unknown)")
    f = write_nifti(tmp_path / "b.nii", DATA, AFF, bitpix=16)
    _refused(f, "header datatype 16 (32 bits) disagrees with bitpix 16")


def test_voxel_sizes_are_checked_only_along_real_axes(tmp_path):
    f = write_nifti(tmp_path / "z.nii", DATA, AFF, pixdim=[1, 2.0, 3.0, 0.0, 1, 1, 1, 1])
    _refused(f, "voxel size pixdim[3]=0 is not a positive number")
    f = write_nifti(tmp_path / "i.nii", DATA, AFF, pixdim=[1, np.inf, 3.0, 4.0, 1, 1, 1, 1])
    _refused(f, "voxel size pixdim[1]=inf is not a positive number")
    # a one-voxel axis may have any voxel size: a single slice with pixdim 0 through the slice
    one = np.arange(20, dtype=np.float32).reshape(4, 5, 1)
    f = write_nifti(tmp_path / "one.nii", one, AFF, pixdim=[1, 2.0, 3.0, 0.0, 1, 1, 1, 1])
    vol = load_nifti(f)
    assert vol.data.shape == (4, 5, 1) and vol.zooms == (2.0, 3.0, 1.0)
    # dim[0] = 2: only pixdim[1] and pixdim[2] are voxel sizes
    f = write_nifti(tmp_path / "two.nii", one[..., 0], AFF, pixdim=[1, 2.0, 3.0, np.nan, 1, 1, 1, 1])
    assert load_nifti(f).data.shape == (4, 5, 1)


def test_scale_slope_notes(tmp_path):
    for slope in (0.0, np.nan):
        vol = load_nifti(write_nifti(tmp_path / "s.nii", DATA, AFF, scl_slope=slope))
        assert vol.warnings == [f"scl_slope is {slope:g}; voxel values used unscaled (as nibabel does)"]
        np.testing.assert_array_equal(vol.data, DATA)
    vol = load_nifti(write_nifti(tmp_path / "two.nii", DATA, AFF, dtype=np.int16, scl_slope=2.0, scl_inter=1.0))
    np.testing.assert_array_equal(vol.data, 2 * DATA + 1)
    assert vol.warnings == []


def test_qform_and_sform_notes(tmp_path):
    q = AFF.copy()
    q[0, 3] = 0.01  # within 1e-3 mm? no: 0.01 mm apart is a disagreement
    vol = load_nifti(write_nifti(tmp_path / "d.nii", DATA, AFF, qform=q))
    assert vol.warnings == ["qform and sform disagree; using the sform (nibabel's choice)"]
    q[0, 3] = 0.0005
    assert load_nifti(write_nifti(tmp_path / "s.nii", DATA, AFF, qform=q)).warnings == []
    q[0, 3] = 5.0
    for qc, sc in ((0, 1), (1, 0)):
        assert load_nifti(write_nifti(tmp_path / "o.nii", DATA, AFF, qform=q, qform_code=qc,
                                      sform_code=sc)).warnings == []
    vol = load_nifti(write_nifti(tmp_path / "n.nii", DATA, AFF, qform_code=0, sform_code=0))
    assert vol.warnings == ["qform and sform codes are both 0; orientation is unknown, assuming the voxel axes"]


def test_volume_from_array_checks(tmp_path):
    vol = volume_from_array(DATA.astype(np.int16))
    assert vol.data.dtype == np.float32 and vol.zooms == (1.0, 1.0, 1.0) and vol.path.name == "array"
    np.testing.assert_array_equal(vol.affine, np.eye(4))
    np.testing.assert_array_equal(volume_from_array(DATA > 30).data, (DATA > 30).astype(np.float32))
    for bad in (DATA.astype(np.complex64), np.array([["a"]]), np.zeros((2, 2), object)):
        with pytest.raises(BadInput, match=r"^in\.nii: unsupported data type "):
            volume_from_array(bad, name="in.nii")
    with pytest.raises(BadInput, match=r"affine has shape \(3, 3\), expected \(4, 4\)"):
        volume_from_array(DATA, np.eye(3))
    bad = np.eye(4)
    bad[0, 0] = np.inf
    with pytest.raises(BadInput, match="affine is singular or non-finite"):
        volume_from_array(DATA, bad)
    bad[0, 0] = 0.0
    with pytest.raises(BadInput, match="affine is singular or non-finite"):
        volume_from_array(DATA, bad)
    with pytest.raises(BadInput, match=r"is not an image \(shape \(6,\)\)"):
        volume_from_array(np.zeros(6))
    four = volume_from_array(DATA[..., None])
    assert four.data.shape == (4, 5, 3) and four.file_shape == (4, 5, 3, 1)
    with pytest.raises(BadInput, match=r"has 2 volumes \(shape \(4, 5, 3, 2\)\); pick one with --volume-index N"):
        volume_from_array(np.stack([DATA, DATA], -1))
    v = volume_from_array(DATA, np.diag([-2.0, 3.0, 0.5, 1.0]))
    assert v.zooms == (2.0, 3.0, 0.5)  # canonical order, positive
    np.testing.assert_array_equal(v.data, DATA[::-1])


def test_save_like_writes_a_float32_heatmap_on_the_input_grid(tmp_path):
    src = write_nifti(tmp_path / "in.nii", DATA.astype(np.int16), AFF, dtype=np.int16, scl_slope=2.0, intent_code=2)
    vol = load_nifti(src)
    heat = np.linspace(0, 3, DATA.size).reshape(DATA.shape)
    out = save_like(tmp_path / "h", heat, vol)
    assert out == tmp_path / "h"
    raw = (tmp_path / "h").read_bytes()
    assert raw[:2] == b"\x1f\x8b"  # no NIfTI suffix: written gzip-compressed
    img = nib.Nifti1Image.from_bytes(gzip.decompress(raw))
    assert img.get_data_dtype() == np.float32 and img.shape == DATA.shape
    np.testing.assert_allclose(np.asarray(img.dataobj), heat.astype(np.float32))
    h = img.header
    assert h.get_slope_inter() in ((None, None), (1.0, 0.0))  # the input's slope 2 is not kept
    assert int(h["intent_code"]) == 0 and h["intent_name"].item() == b""
    assert float(h["cal_min"]) == 0.0 and float(h["cal_max"]) == pytest.approx(3.0)
    assert h["descrip"].item() == HEATMAP_DESCRIP
    np.testing.assert_array_equal(img.affine, AFF)
    plain = save_like(tmp_path / "h.nii", heat, vol, force=False)
    assert plain.read_bytes()[348:352] != b"" and plain.read_bytes()[:2] != b"\x1f\x8b"
    with pytest.raises(RlpError, match="exists"):
        save_like(tmp_path / "h.nii", heat, vol, force=False)
    with pytest.raises(ValueError, match=r"data shape \(4, 5\) != input shape \(4, 5, 3\)"):
        save_like(tmp_path / "w.nii", heat[..., 0], vol)
    assert not (tmp_path / "w.nii").exists()


def test_save_like_keeps_nifti2(tmp_path):
    vol = load_nifti(write_nifti(tmp_path / "in.nii", DATA, AFF, nifti2=True))
    save_like(tmp_path / "h.nii", np.zeros(DATA.shape), vol)
    assert int.from_bytes((tmp_path / "h.nii").read_bytes()[:4], "little") == 540
    assert float(nib.load(str(tmp_path / "h.nii")).header["cal_max"]) == 0.0


def test_indices_of_a_2d_file_with_a_flipped_slice_axis_and_of_a_4d_file(tmp_path):
    img = np.arange(12, dtype=np.float32).reshape(3, 4)
    vol = load_nifti(write_nifti(tmp_path / "f.nii", img, np.diag([2.0, 3.0, -4.0, 1.0])))
    np.testing.assert_allclose(vol.canonical_to_file([1, 2, 0]), [[1, 2, 0]])
    np.testing.assert_allclose(vol.voxel_to_world([1, 2, 0]), [[2, 6, 0]])
    four = load_nifti(write_nifti(tmp_path / "four.nii", DATA[..., None], np.diag([2.0, 3.0, -4.0, 1.0])))
    assert four.file_shape == (4, 5, 3, 1) and four.data.shape == (4, 5, 3)
    np.testing.assert_allclose(four.canonical_to_file([1, 2, 0]), [[1, 2, 2]])
    np.testing.assert_array_equal(four.to_file_grid(four.data), DATA[..., None])


def test_a_corrupt_gzip_header_is_named_by_check_header(tmp_path):
    f = write_nifti(tmp_path / "c.nii.gz", DATA, AFF)
    f.write_bytes(f.read_bytes()[:30])
    with pytest.raises(BadInput) as exc:
        check_header(f)
    assert exc.value.path == str(f) and "corrupt or truncated gzip stream" in str(exc.value)


def test_nibabel_fixes_are_reported_as_warnings(tmp_path):
    f = write_nifti(tmp_path / "q.nii", DATA, AFF)
    raw = bytearray(f.read_bytes())
    raw[252:256] = (9).to_bytes(2, "little") + (9).to_bytes(2, "little")  # qform_code, sform_code: not codes
    f.write_bytes(bytes(raw))
    vol = load_nifti(f)
    assert "header fixed by nibabel: qform_code 9 not valid; setting to 0" in vol.warnings
    assert "header fixed by nibabel: sform_code 9 not valid; setting to 0" in vol.warnings
    assert len(vol.warnings) == len(set(vol.warnings))


def test_volume_from_array_names_and_limits(tmp_path):
    assert volume_from_array(DATA).warnings == []
    with pytest.raises(BadInput) as exc:
        volume_from_array(DATA, np.eye(3), name="a.nii")
    assert exc.value.path == "a.nii"
    with pytest.raises(BadInput) as exc:
        volume_from_array(DATA, np.zeros((4, 4)), name="a.nii")
    assert str(exc.value) == "a.nii: affine is singular or non-finite"
    tiny = volume_from_array(DATA, np.diag([1e-12, 1.0, 1.0, 1.0]))  # a determinant of exactly 1e-12 is usable
    assert tiny.data.shape == (4, 5, 3)


def test_save_like_replaces_an_existing_file_by_default(tmp_path):
    vol = load_nifti(write_nifti(tmp_path / "in.nii", DATA, AFF))
    out = tmp_path / "h.nii.gz"
    out.write_bytes(b"old")
    save_like(out, np.ones(DATA.shape), vol)
    np.testing.assert_array_equal(np.asarray(nib.load(str(out)).dataobj), np.ones(DATA.shape, np.float32))


def test_header_refusals_word_for_word(tmp_path):
    full = write_nifti(tmp_path / "full.nii", DATA, AFF).read_bytes()
    cases = {"short.nii": (full[:347], "too short to be a NIfTI file (no complete header)"),
             "head.nii": (full[:348], "truncated: 348 bytes, header needs 592"),  # a whole header, no voxels
             "bad.nii": (b"\x01\x02\x03\x04" + b"\0" * 600, "not a NIfTI file (bad header size)")}
    two = write_nifti(tmp_path / "two.nii", DATA, AFF, nifti2=True).read_bytes()
    cases["two.nii"] = (two[:539], "too short to be a NIfTI-2 file (no complete header)")
    for name, (raw, msg) in cases.items():
        (tmp_path / name).write_bytes(raw)
        with pytest.raises(BadInput) as exc:
            load_nifti(tmp_path / name)
        assert str(exc.value) == f"{tmp_path / name}: {msg}"


def test_a_data_offset_at_the_cap_is_usable(tmp_path, monkeypatch):
    f = write_nifti(tmp_path / "v.nii", DATA, AFF)  # voxels at 352, 240 bytes of them
    monkeypatch.setenv("RLP_MAX_VOXEL_BYTES", "352")
    monkeypatch.setattr(limits, "MAX_VOXEL_BYTES", 352)
    np.testing.assert_array_equal(load_nifti(f).data, DATA)


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_a_singleton_axis_with_an_unusable_voxel_size_counts_as_1_mm(tmp_path, bad):
    one = np.arange(20, dtype=np.float32).reshape(4, 5, 1)
    f = write_nifti(tmp_path / "one.nii", one, AFF, pixdim=[1, 2.0, 3.0, bad, 1, 1, 1, 1])
    assert load_nifti(f).zooms == (2.0, 3.0, 1.0)


def test_voxel_sizes_of_small_and_timed_images(tmp_path):
    small = np.zeros((2, 5, 3), np.float32)  # fewer rows than axes
    _refused(write_nifti(tmp_path / "s.nii", small, AFF, pixdim=[1, 2.0, 3.0, 0.0, 1, 1, 1, 1]),
             "voxel size pixdim[3]=0 is not a positive number")
    two = np.zeros((4, 5, 2), np.float32)  # two slices are more than one
    _refused(write_nifti(tmp_path / "t.nii", two, AFF, pixdim=[1, 2.0, 3.0, 0.0, 1, 1, 1, 1]),
             "voxel size pixdim[3]=0 is not a positive number")
    timed = np.stack([DATA] * 3, -1)  # the time step is not a voxel size
    f = write_nifti(tmp_path / "v.nii", timed, AFF, pixdim=[1, 2.0, 3.0, 4.0, 0.0, 1, 1, 1])
    msg = _refused(f, "has 3 volumes (shape (4, 5, 3, 3)); pick one with --volume-index N")
    assert "pixdim" not in msg


def test_a_header_nibabel_cannot_read_is_one_line(tmp_path, monkeypatch):
    f = write_nifti(tmp_path / "h.nii", DATA, AFF)

    def broken(*a, **k):
        raise ValueError("bad\nheader")

    monkeypatch.setattr(nib.Nifti1Header, "from_fileobj", classmethod(lambda cls, *a, **k: broken()))
    assert _refused(f, "invalid NIfTI header (bad header)") == f"{f}: invalid NIfTI header (bad header)"
    monkeypatch.undo()
    monkeypatch.setattr(nib.Nifti1Header, "get_data_dtype", lambda self: broken())
    assert _refused(f, "unsupported data type (bad header)") == f"{f}: unsupported data type (bad header)"


def test_a_file_swapped_or_removed_between_the_check_and_the_open(tmp_path, monkeypatch):
    f = write_nifti(tmp_path / "v.nii", DATA, AFF)
    os.mkfifo(tmp_path / "fifo.nii")
    real_stat, real_open = os.stat, os.open
    # the name looked like a regular file, but a FIFO is what gets opened: refused without blocking on it
    monkeypatch.setattr(os, "stat",
                        lambda p, *a, **k: real_stat(f) if str(p).endswith("fifo.nii") else real_stat(p, *a, **k))
    assert _refused(tmp_path / "fifo.nii", "not a regular file (it is a FIFO (named pipe)); expected a .nii or .nii.gz "
                    "file") == f"{tmp_path / 'fifo.nii'}: not a regular file (it is a FIFO (named pipe)); expected a " \
                                ".nii or .nii.gz file"
    for exc, kind, msg in ((FileNotFoundError(2, "gone"), InputMissing, "no such file"),
                           (PermissionError(13, "Permission denied"), RlpError, "Permission denied"),
                           (OSError("no errno"), RlpError, "no errno")):
        def failing(p, *a, exc=exc, **k):
            if str(p) == str(f):
                raise exc
            return real_open(p, *a, **k)

        monkeypatch.setattr(os, "open", failing)
        with pytest.raises(kind) as got:
            load_nifti(f)
        assert str(got.value) == f"{f}: {msg}" and got.value.path == str(f)
        if kind is RlpError:
            assert got.value.code == EX_IOERR


def test_stat_errors_are_io_errors_naming_the_file(tmp_path, monkeypatch):
    f = tmp_path / "v.nii"
    for exc, msg in ((PermissionError(13, "Permission denied"), "Permission denied"), (OSError("odd"), "odd")):
        monkeypatch.setattr(os, "stat", lambda p, *a, exc=exc, **k: (_ for _ in ()).throw(exc))
        with pytest.raises(RlpError) as got:
            load_nifti(f)
        assert str(got.value) == f"{f}: {msg}" and got.value.code == EX_IOERR and got.value.path == str(f)
    monkeypatch.undo()
    with pytest.raises(InputMissing) as got:
        load_nifti(f)
    assert str(got.value) == f"{f}: no such file"


def test_a_read_error_on_the_first_bytes_is_an_io_error(tmp_path, monkeypatch):
    f = write_nifti(tmp_path / "v.nii", DATA, AFF)
    real = os.fdopen

    class Failing:
        def __init__(self, fd, *a, **k):
            self.fh = real(fd, *a, **k)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.fh.close()

        def read(self, n=-1):
            raise OSError(5, "Input/output error")

    for err in (OSError(5, "Input/output error"), OSError("odd")):
        Failing.read = lambda self, n=-1, err=err: (_ for _ in ()).throw(err)
        monkeypatch.setattr(os, "fdopen", Failing)
        with pytest.raises(RlpError) as got:
            load_nifti(f)
        assert str(got.value) == f"{f}: {err.strerror or err}" and got.value.code == EX_IOERR


def test_a_file_one_byte_longer_than_its_header_read(tmp_path):
    img = np.arange(189, dtype=np.uint8).reshape(7, 27)  # 352 + 189 bytes: one byte after the first 540
    f = write_nifti(tmp_path / "u.nii", img, AFF, dtype=np.uint8)
    assert f.stat().st_size == 541
    np.testing.assert_array_equal(load_nifti(f).data[..., 0], img)


def test_voxel_data_errors(tmp_path, monkeypatch):
    f = write_nifti(tmp_path / "m.nii", DATA, AFF, magic=b"xx\0\0")
    assert _refused(f, "cannot read voxel data (") == f"{f}: cannot read voxel data (magic string 'xx' is not valid)"
    good = write_nifti(tmp_path / "g.nii", DATA, AFF)

    def no_memory(self, *a, **k):
        raise MemoryError

    monkeypatch.setattr(nib.Nifti1Image, "get_fdata", no_memory)
    assert _refused(good, "out of memory: its 4x5x3 voxels (0.0 MiB as float32) need up to 10x that") == (
        f"{good}: out of memory: its 4x5x3 voxels (0.0 MiB as float32) need up to 10x that and more (README "
        '"Limits"), more than this machine had free; free memory, crop or downsample the image, or lower '
        "RLP_MAX_MEMORY so that such inputs are refused before they are read")


def test_a_file_with_a_singular_or_non_finite_affine_is_refused(tmp_path):
    f = write_nifti(tmp_path / "s.nii", DATA, AFF, qform_code=0, srow_y=[0, 0, 0, 0])
    assert _refused(f, "affine is singular or non-finite") == f"{f}: affine is singular or non-finite"
    f = write_nifti(tmp_path / "n.nii", DATA, AFF, qform_code=0, srow_x=[np.nan, 0, 0, 0])
    _refused(f, "affine is singular or non-finite")


def test_memory_follows_the_declared_size_not_the_stream(tmp_path):
    import tracemalloc
    import zlib

    raw = write_nifti(tmp_path / "v.nii", DATA, AFF).read_bytes()
    f = tmp_path / "tail.nii.gz"  # a valid image followed by 128 MiB of zeros in the same gzip stream
    z = zlib.compressobj(6, zlib.DEFLATED, 31)
    with open(f, "wb") as fh:
        fh.write(z.compress(raw))
        block = bytes(1 << 20)
        for _ in range(128):
            fh.write(z.compress(block))
        fh.write(z.flush())
    tracemalloc.start()
    try:
        vol = load_nifti(f)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    np.testing.assert_array_equal(vol.data, DATA)
    assert peak < 32 << 20, peak  # read to the end (the CRC) in small chunks, never held
