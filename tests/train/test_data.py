import signal

import numpy as np
import pytest

h5py = pytest.importorskip("h5py")

from helpers.process import run_python  # noqa: E402
from helpers.runtime import synthetic_volume, write_nifti  # noqa: E402
from rlp.runtime.core.errors import RlpError  # noqa: E402
from rlp.train.data import SliceData, discover, prepare  # noqa: E402


def _nfbs(root, n=4):
    for i in range(n):
        vol, brain = synthetic_volume(seed=i)
        d = root / "NFBS_Dataset" / f"A0000{i}"
        write_nifti(d / f"sub-A0000{i}_ses-NFB3_T1w_brain.nii.gz", vol)
        write_nifti(d / f"sub-A0000{i}_ses-NFB3_T1w_brainmask.nii.gz", brain.astype(np.uint8))
        write_nifti(d / f"sub-A0000{i}_ses-NFB3_T1w.nii.gz", vol)  # the unstripped scan NFBS also ships
    return root / "NFBS_Dataset"


def test_prepare_nfbs_layout_subject_wise_split(tmp_path):
    src = _nfbs(tmp_path, n=5)
    kind, subs = discover(str(src))
    assert kind == "nfbs" and len(subs) == 5 and all(s.mask is not None for s in subs)
    res = prepare(str(src), tmp_path / "d.h5", size=32, quiet=True)
    d = SliceData(tmp_path / "d.h5")
    assert d.images.shape[1:] == (32, 32) and d.images.dtype == np.float32
    # preprocessing version 2: values above the 90th percentile (1.0) kept, up to the ceiling
    assert d.preprocessing.version == 2 and d.preprocessing.percentile == 90.0
    assert 0 <= d.images.min() and 1 < d.images.max() <= d.preprocessing.ceiling
    assert not np.any(d.images[~d.brains])  # background exactly 0
    # no subject in two splits; every split used
    per_subject = {s: set(d.split[d.subject == s]) for s in np.unique(d.subject)}
    assert all(len(v) == 1 for v in per_subject.values())
    assert set(d.split) == {0, 1, 2}
    assert res["subjects"] == 5 and sum(res["split"].values()) == res["slices"]
    prov = d.provenance()
    assert prov["source_kind"] == "nfbs" and len(prov["sources"]) == 5
    assert all(len(s["sha256"]) == 64 for s in prov["sources"])


def test_prepare_glob_pairs_masks_and_drops_empty_slices(tmp_path):
    vol, brain = synthetic_volume(shape=(30, 30, 12))
    vol[:, :, :2] = 0  # two slices with no brain
    write_nifti(tmp_path / "a.nii.gz", vol)
    write_nifti(tmp_path / "a_mask.nii.gz", brain.astype(np.uint8))
    res = prepare(str(tmp_path / "*.nii.gz"), tmp_path / "d.h5", size=16, quiet=True)
    assert res["subjects"] == 1 and res["empty_slices_skipped"] >= 2
    d = SliceData(tmp_path / "d.h5")
    assert not {0, 1} & set(d.slice_index.tolist())


def test_prepare_mni152_is_real_and_split_by_slice_ranges(mni_tiny):
    d = SliceData(mni_tiny)
    assert d.attrs["source_kind"] == "mni152"
    assert "slice ranges" in d.attrs["split_rule"]
    assert len(d.indices("train")) > 5 * len(d.indices("test")) > 0
    # contiguous ranges: a test slice's neighbours on at least one side are test slices too
    test = set(d.slice_index[d.indices("test")].tolist())
    assert all((s - 1 in test) or (s + 1 in test) for s in test)
    assert 120 < len(d.images) < 190  # brain slices of the 189 axial ones


def test_bad_volume_is_a_clean_error_or_skipped(tmp_path):
    vol, _ = synthetic_volume()
    write_nifti(tmp_path / "good.nii.gz", vol)
    raw = (tmp_path / "good.nii.gz").read_bytes()
    (tmp_path / "bad.nii.gz").write_bytes(raw[: len(raw) // 2])
    with pytest.raises(RlpError, match="bad.nii.gz"):
        prepare(str(tmp_path), tmp_path / "out" / "d.h5", size=16, quiet=True)
    assert not any((tmp_path / "out").glob("*"))  # nothing left behind
    res = prepare(str(tmp_path), tmp_path / "out" / "d.h5", size=16, quiet=True, skip_bad=True)
    assert res["bad_volumes_skipped"] == 1 and res["subjects"] == 1


def test_flipped_byte_in_gzip_is_caught(tmp_path):
    vol, _ = synthetic_volume()
    p = write_nifti(tmp_path / "v.nii.gz", vol)
    raw = bytearray(p.read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    p.write_bytes(bytes(raw))
    with pytest.raises(RlpError, match="v.nii.gz"):
        prepare(str(p), tmp_path / "d.h5", size=16, quiet=True)


def test_cli_prepare_errors_are_one_line(tmp_path):
    r = run_python(["-m", "rlp.train.cli", "prepare", str(tmp_path / "nope"), "--out", str(tmp_path / "d.h5")])
    assert r.returncode == 66
    assert r.stderr.strip().count("\n") == 0 and "nope" in r.stderr and "Traceback" not in r.stderr
    (tmp_path / "empty").mkdir()
    r = run_python(["-m", "rlp.train.cli", "prepare", str(tmp_path / "empty"), "--out", str(tmp_path / "d.h5")])
    assert r.returncode == 66 and "no NIfTI" in r.stderr


def test_existing_output_needs_force(tmp_path, mni_tiny):
    out = tmp_path / "d.h5"
    out.write_bytes(b"keep me")
    with pytest.raises(RlpError, match="--force"):
        prepare("mni152", out, size=16, quiet=True)
    assert out.read_bytes() == b"keep me"


def test_reader_refuses_incomplete_file(tmp_path):
    p = tmp_path / "x.h5"
    with h5py.File(p, "w") as f:
        f.create_dataset("images", data=np.zeros((1, 8, 8), np.float32))
    with pytest.raises(RlpError, match="incomplete"):
        SliceData(p)


def test_killed_writer_leaves_no_complete_file(tmp_path):
    """SIGKILL prepare mid-write: no x.h5 appears, only a .partial that readers refuse."""
    import subprocess

    from helpers.child_hooks import start_until

    vol, _ = synthetic_volume(shape=(64, 64, 60))
    for i in range(6):
        write_nifti(tmp_path / "src" / f"s{i}.nii.gz", vol)
    out = tmp_path / "x.h5"
    # the child holds still right after its first slices are written into the .partial file
    hook = ("import h5py\n_set = h5py.Dataset.__setitem__\n"
            "def _setitem(self, key, value):\n    _set(self, key, value)\n"
            "    if self.name == '/images':\n        _reached()\n"
            "h5py.Dataset.__setitem__ = _setitem\n")
    proc, writing = start_until("rlp.train.cli",
                                ["prepare", tmp_path / "src", "--out", out, "--size", "128", "--quiet"],
                                hook, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    partial = out.with_name(out.name + ".partial")
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert writing, "prepare never started writing slices (or ended first): nothing was killed mid-write"
    assert proc.returncode == -signal.SIGKILL
    assert not out.exists()
    assert partial.exists()
    with pytest.raises(RlpError):
        SliceData(partial)
